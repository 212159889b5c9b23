"""Users and uploads through the CLI, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sftp_gateway.catalog import build_catalog
from sftp_gateway.catalog.repository import COMPLETED, IN_PROGRESS, UploadRecord, utcnow
from sftp_gateway.cli import main
from sftp_gateway.config import settings_from_dict
from tests.helpers import make_user_key


@pytest.fixture(params=["sqlite", "postgres"])
def config_file(request, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    path = tmp_path / "gateway.yaml"
    path.write_text(f"storage: {{bucket: acme-inbound}}\ncatalog: {{url: '{url}'}}\n")
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_users_lifecycle(config_file: Path, tmp_path: Path) -> None:
    key = make_user_key(tmp_path / "k1").with_suffix(".pub")
    key2 = make_user_key(tmp_path / "k2").with_suffix(".pub")
    cfg = ["--config", str(config_file)]
    code, out = run("db", "upgrade", *cfg)
    assert code == 0, out
    code, out = run(
        "users", "add", "bob", "--key", str(key), "--email", "bob@example.com",
        "--permissions", "list,read,write", *cfg,
    )  # fmt: skip
    assert code == 0, out
    code, out = run("users", "add", "bob", "--key", str(key), *cfg)
    assert code == 1 and "already exists" in out
    code, out = run("users", "add-key", "bob", "--key", str(key2), *cfg)
    assert code == 0, out
    code, out = run("users", "list", "--json", *cfg)
    [bob] = json.loads(out)
    assert bob["email"] == "bob@example.com"
    assert bob["permissions"] == ["list", "read", "write"]
    assert len(bob["keys"]) == 2
    fingerprint = bob["keys"][0]["fingerprint"]
    code, out = run("users", "remove-key", "bob", fingerprint, *cfg)
    assert code == 0, out
    code, out = run("users", "remove", "bob", *cfg)
    assert code == 0, out
    code, out = run("users", "list", "--json", *cfg)
    assert json.loads(out) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--permissions", "read,fly"], "unknown permission fly"),
        (["--email", "not-an-address"], "--email"),
        (["--home", "../escape"], "--home"),
    ],
)
def test_users_add_rejects_bad_input_naming_the_option(
    config_file: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    key = make_user_key(tmp_path / "k").with_suffix(".pub")
    code, out = run("users", "add", "carol", "--key", str(key), *args, "--config", str(config_file))
    assert code == 2
    assert message in out


def test_users_add_rejects_a_file_that_is_not_a_key(config_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 not-base64!!\n")
    code, out = run("users", "add", "dave", "--key", str(bad), "--config", str(config_file))
    assert code == 2
    assert "--key" in out and "not a valid ssh-ed25519 key" in out


def test_uploads_list_and_show_answer_who_uploaded_a_key(config_file: Path) -> None:
    from sftp_gateway.config import load_settings

    settings = load_settings(config_file)
    catalog = build_catalog(settings)
    record = UploadRecord(
        id="11111111-2222-3333-4444-555555555555",
        user_name="alice",
        path="/a.pdf",
        bucket="acme-inbound",
        object_key="incoming/alice/a.pdf",
        status=IN_PROGRESS,
        started_at=utcnow(),
        client_ip="192.0.2.7",
    )
    catalog.start_upload(record)
    catalog.finish_upload(record.id, status=COMPLETED, size=42, sha256="ab" * 32)
    cfg = ["--config", str(config_file)]
    code, out = run("uploads", "list", "--user", "alice", "--json", *cfg)
    assert code == 0, out
    [row] = json.loads(out)
    assert row["status"] == "completed" and row["size"] == 42
    code, out = run("uploads", "show", "incoming/alice/a.pdf", "--json", *cfg)
    assert json.loads(out)[0]["client_ip"] == "192.0.2.7"
    code, out = run("uploads", "show", "s3://acme-inbound/incoming/alice/a.pdf", *cfg)
    assert "alice" in out and "ab" * 32 in out
    code, out = run("uploads", "show", record.id, "--json", *cfg)
    assert json.loads(out)["id"] == record.id
    code, out = run("uploads", "list", "--since", "2999-01-01", "--json", *cfg)
    assert json.loads(out) == []
    code, out = run("uploads", "list", "--since", "last-tuesday", *cfg)
    assert code == 2 and "--since" in out
    code, out = run("uploads", "show", "incoming/nobody.pdf", *cfg)
    assert code == 1 and "no upload" in out


def test_finish_upload_writes_the_event_in_the_same_transaction(tmp_path: Path) -> None:
    settings = settings_from_dict(
        {"storage": {"bucket": "abc"}, "catalog": {"url": f"sqlite:///{tmp_path / 'c.db'}"}},
        environ={},
    )
    catalog = build_catalog(settings)
    record = UploadRecord(
        id="u1", user_name="alice", path="/a.pdf", bucket="abc",
        object_key="incoming/alice/a.pdf", status=IN_PROGRESS, started_at=utcnow(),
    )  # fmt: skip
    catalog.start_upload(record)
    catalog.finish_upload("u1", status=COMPLETED, size=1, sha256="00" * 32)
    with catalog.dispatch_batch() as (events, _settle):
        [event] = events
    assert event.payload["type"] == "upload.completed"
    assert event.payload["upload_id"] == "u1"
    assert event.payload["completed_at"].endswith("Z")


def test_sqlite_catalog_syncs_every_commit_so_an_acknowledged_upload_survives_power_loss(
    tmp_path: Path,
) -> None:
    """WAL with synchronous=NORMAL is consistent but not durable: a commit may be undone
    by a power loss. FULL (2) syncs the WAL before the commit returns."""
    settings = settings_from_dict(
        {"storage": {"bucket": "abc"}, "catalog": {"url": f"sqlite:///{tmp_path / 'c.db'}"}},
        environ={},
    )
    engine = build_catalog(settings).engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
