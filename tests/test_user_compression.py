"""Per-user compression: `users add|set --compression`, the users.compression column
(migration 0006, on SQLite and PostgreSQL), the Principal that carries it, and uploads
stored the user's way whatever storage.compression says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy
from alembic import command
from alembic.config import Config as AlembicConfig
from click.testing import CliRunner

from sftp_gateway.auth import DEFAULT_PERMISSIONS, Principal
from sftp_gateway.catalog.db import MIGRATIONS_DIR, make_engine, upgrade
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.cli import main
from sftp_gateway.config import StorageConfig
from sftp_gateway.filesystem import UserFilesystem
from sftp_gateway.records import ClientInfo
from sftp_gateway.upload.compress import decompress_all
from sftp_gateway.upload.stream import StreamOptions
from tests.helpers import make_user_key
from tests.test_compression import compressible
from tests.test_upload_unit import Bench, write_all


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return str(request.getfixturevalue("postgres_url"))


def downgrade(engine: sqlalchemy.Engine, revision: str) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def user_columns(engine: sqlalchemy.Engine) -> set[str]:
    return {column["name"] for column in sqlalchemy.inspect(engine).get_columns("users")}


def test_migration_0006_adds_the_column_and_keeps_existing_users(catalog_url: str) -> None:
    engine = make_engine(catalog_url)
    upgrade(engine, "0005")
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO users (name, home, permissions, created_at)"
                " VALUES ('old', 'old', 'read', :now)"
            ),
            {"now": datetime.now(UTC)},
        )
    assert "compression" not in user_columns(engine)

    upgrade(engine)
    catalog = Catalog(engine)
    old = catalog.get_user("old")
    assert old is not None and old.compression is None  # the deployment's default
    catalog.set_user_compression("old", "zstd")
    assert (catalog.get_user("old") or old).compression == "zstd"

    downgrade(engine, "0005")
    assert "compression" not in user_columns(engine)
    upgrade(engine)
    again = Catalog(engine).get_user("old")
    assert again is not None and again.compression is None
    engine.dispose()


@pytest.fixture
def config_file(catalog_url: str, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"storage: {{bucket: acme-inbound}}\ncatalog: {{url: '{catalog_url}'}}\n")
    yield path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_users_add_and_set_compression_reach_the_principal(
    config_file: Path, tmp_path: Path
) -> None:
    key = make_user_key(tmp_path / "k").with_suffix(".pub")
    cfg = ["--config", str(config_file)]
    code, out = run("users", "add", "bob", "--key", str(key), "--compression", "zstd", *cfg)
    assert code == 0, out
    code, out = run("users", "add", "eve", "--key", str(key), *cfg)
    assert code == 0, out
    code, out = run("users", "list", "--json", *cfg)
    assert {u["name"]: u["compression"] for u in json.loads(out)} == {"bob": "zstd", "eve": None}

    from sftp_gateway.auth import parse_public_key
    from sftp_gateway.catalog import build_catalog
    from sftp_gateway.config import load_settings

    catalog = build_catalog(load_settings(config_file))
    fingerprint = parse_public_key(key.read_text()).fingerprint
    bob = catalog.principal_for_key("bob", fingerprint)
    assert bob is not None and bob.compression == "zstd"

    code, out = run("users", "set", "bob", "--compression", "none", *cfg)
    assert code == 0 and "compression none" in out
    assert (catalog.principal_for_key("bob", fingerprint) or bob).compression == "none"
    code, out = run("users", "set", "bob", "--compression", "default", *cfg)
    assert code == 0, out
    assert (catalog.principal_for_key("bob", fingerprint) or bob).compression is None
    code, out = run("users", "set", "nobody", "--compression", "gzip", *cfg)
    assert code == 1 and "no user named nobody" in out


@pytest.mark.parametrize("command", ["add", "set"])
def test_a_bad_compression_is_exit_2_naming_the_option(
    config_file: Path, tmp_path: Path, command: str
) -> None:
    key = make_user_key(tmp_path / "k").with_suffix(".pub")
    extra = ["--key", str(key)] if command == "add" else []
    code, out = run(
        "users", command, "carol", *extra, "--compression", "lz4", "--config", str(config_file)
    )
    assert code == 2
    assert "--compression" in out and "lz4" in out


def test_stream_options_take_the_users_compression_over_the_deployments() -> None:
    config = StorageConfig(bucket="b-1", compression="zstd", compression_level=19)
    assert StreamOptions.for_upload(config, None).compression == "zstd"
    assert StreamOptions.for_upload(config, None).compression_level == 19
    own = StreamOptions.for_upload(config, None, compression="gzip")
    assert (own.compression, own.compression_level) == ("gzip", None)  # gzip's own level
    assert StreamOptions.for_upload(config, None, compression="none").compression is None
    plain = StorageConfig(bucket="b-1")
    assert StreamOptions.for_upload(plain, None, compression="zstd").compression == "zstd"


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = Bench(tmp_path)
    yield made
    made.services.close()


def test_a_users_compression_decides_how_its_uploads_are_stored(bench: Bench) -> None:
    principal = Principal("alice", "alice", DEFAULT_PERMISSIONS, compression="zstd")
    fs = UserFilesystem(
        principal=principal,
        settings=bench.settings,  # storage.compression: none
        storage=bench.storage,
        catalog=bench.catalog,
        client=ClientInfo("127.0.0.2", "SSH-2.0-test"),
        active=bench.active,
        services=bench.services,
    )
    data = compressible(300_000)
    writer = fs.open_upload("/a.pdf")
    write_all(writer, data, step=32 * 1024)
    record = writer.commit()
    assert record is not None and record.compression == "zstd"
    stored = bench.storage.read_bytes("incoming/alice/a.pdf")
    assert decompress_all("zstd", stored) == data
