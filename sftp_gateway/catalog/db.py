"""Engine creation and schema migrations (Alembic) for the catalog."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.pool import NullPool

from sftp_gateway.catalog.repository import Catalog

if TYPE_CHECKING:
    from sftp_gateway.config import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
IDLE_BEFORE_PING = 1.0  # seconds a pooled PostgreSQL connection rests before it is pinged
LAST_USED = "sftp_gateway_last_used"  # in a pool record's info: time.monotonic() at checkin


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """WAL lets readers run beside the writer; a busy timeout rides out brief locks.

    synchronous=FULL syncs the WAL at every commit. NORMAL would be quicker (one
    fdatasync less per write, ~0.2 ms here), but a commit could then be undone by a power
    loss after the client was told its file is stored."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for the catalog URL; SQLite gets WAL mode and its parent folder."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, poolclass=NullPool if not database else None)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20)
    ping_when_idle(engine, IDLE_BEFORE_PING)
    return engine


def ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection is alive before use, as pool_pre_ping does, but only
    when it sat idle `idle_seconds` or more.

    pool_pre_ping asks the server at every checkout: a third of a small file's round
    trips to PostgreSQL. A connection used a moment ago is as trustworthy as one in use
    now (both fail alike if the server restarts this instant); one idle for a while may
    have been closed by the server, a proxy or a restart, and is replaced unseen."""

    @event.listens_for(engine, "checkin")
    def _remember_use(_dbapi_connection: Any, record: Any) -> None:
        record.info[LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last_used = record.info.get(LAST_USED)
        if last_used is None or time.monotonic() - last_used < idle_seconds:
            return  # new, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:  # replace it (and its elders)
            raise InvalidatePoolError(f"pooled connection lost: {exc}") from exc


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic, on the engine's own connection."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def build_catalog(settings: Settings) -> Catalog:
    """The catalog the config names, migrated first when `catalog.auto_migrate` is on.

    Here, not in app.py: the CLI's catalog commands and the notifier Lambda build a
    catalog without loading the SSH server (or paramiko)."""
    engine = make_engine(settings.catalog.url)
    if settings.catalog.auto_migrate:
        upgrade(engine)
    return Catalog(engine)
