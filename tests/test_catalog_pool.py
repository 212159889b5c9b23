"""The PostgreSQL catalog's pool checks a connection only after it rested, and replaces
one the server closed while it rested (the real PostgreSQL on this machine)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy

from sftp_gateway.catalog import db
from tests.conftest import PG_ADMIN_URL

REST = 0.3  # seconds; make_engine uses db.IDLE_BEFORE_PING


@pytest.fixture
def engine(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> sqlalchemy.Engine:
    monkeypatch.setattr(db, "IDLE_BEFORE_PING", REST)
    engine = db.make_engine(postgres_url)
    yield engine
    engine.dispose()


def backend_pid(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def count_pings(engine: sqlalchemy.Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(1)
        return bool(ping(dbapi_connection))

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def test_a_connection_used_a_moment_ago_is_not_pinged_a_rested_one_is(
    engine: sqlalchemy.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = count_pings(engine, monkeypatch)
    first = backend_pid(engine)  # a new connection: no ping
    for _ in range(5):  # a burst, as a small file's lookups and writes are
        assert backend_pid(engine) == first
    assert pings == []
    time.sleep(REST + 0.1)
    assert backend_pid(engine) == first
    assert pings == [1]


def test_a_connection_the_server_closed_while_it_rested_is_replaced_unseen(
    engine: sqlalchemy.Engine,
) -> None:
    first = backend_pid(engine)
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_terminate_backend({first})")
    admin.dispose()
    time.sleep(REST + 0.1)
    second = backend_pid(engine)  # no error: the ping found it dead
    assert second != first
