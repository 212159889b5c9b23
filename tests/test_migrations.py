"""The catalog's migrations build exactly the schema the models describe, from an empty
database and from one written by the first release, on SQLite and PostgreSQL: a column
added to a model without its migration (or the reverse) fails here, not in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from sftp_gateway.catalog.db import make_engine, upgrade
from sftp_gateway.catalog.models import Base
from sftp_gateway.catalog.repository import Catalog


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_a_catalog_of_the_first_release_upgrades_to_the_models_keeping_its_rows(
    catalog_url: str,
) -> None:
    engine = make_engine(catalog_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "insert into users (name, email, home, permissions, created_at) values"
                " ('bob', 'bob@example.com', 'bob', 'list,write', '2025-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "insert into uploads (id, user_name, path, bucket, object_key, size, status,"
                " started_at) values ('u1', 'bob', '/a.pdf', 'bkt', 'incoming/bob/a.pdf', 5,"
                " 'completed', '2025-01-01 00:00:00')"
            )
        )

    upgrade(engine)
    upgrade(engine)  # a second run changes nothing

    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []
    catalog = Catalog(engine)
    row = catalog.get_upload("u1")
    assert row is not None and row.size == 5 and row.client_ref is None
    assert catalog.get_user("bob") is not None
    engine.dispose()
