"""Users and uploads through the CLI, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sftp_gateway.auth import parse_public_key
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


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    path.write_text(f"storage: {{bucket: acme-inbound}}\ncatalog: {{url: '{url}'}}\n")
    return path


def no_users(config: Path) -> bool:
    code, out = run("users", "list", "--json", "--config", str(config))
    return code == 0 and json.loads(out) == []


@pytest.mark.parametrize("permissions", ["", ",", " , "])
def test_users_add_refuses_a_blank_permissions_value_rather_than_granting_every_permission(
    sqlite_config: Path, tmp_path: Path, permissions: str
) -> None:
    key = make_user_key(tmp_path / "k").with_suffix(".pub")
    code, out = run(
        "users", "add", "gina", "--key", str(key), "--permissions", permissions,
        "--config", str(sqlite_config),
    )  # fmt: skip
    assert code == 2
    assert (
        f"Error: Invalid value for --permissions: {permissions!r} names no permission:"
        " give one or more of list, read, write, overwrite, delete, rename, mkdir"
    ) in out
    assert no_users(sqlite_config)


@pytest.mark.parametrize(
    ("email", "why"),
    [
        ("bob@example.com\r", "it contains the control character \\r"),
        ("bob@example.com\nBcc: eve@example.com", "it contains the control character \\n"),
        ("bob@example.com, carol@example.com", "give one address only"),
        ("bob@example.com;carol@example.com", "give one address only"),
        ("Bob <bob@example.com>", "it contains a space"),
        ("@", "it needs a name and a domain, as in name@example.com"),
        ("bob@", "it needs a name and a domain, as in name@example.com"),
        ("@example.com", "it needs a name and a domain, as in name@example.com"),
        ("bob@@example.com", "write it as name@example.com"),
        ("bob.@example.com", "write it as name@example.com"),
    ],
)
def test_users_add_refuses_an_email_that_is_not_exactly_one_plain_address(
    sqlite_config: Path, tmp_path: Path, email: str, why: str
) -> None:
    key = make_user_key(tmp_path / "k").with_suffix(".pub")
    code, out = run(
        "users", "add", "bob", "--key", str(key), "--email", email, "--config", str(sqlite_config)
    )
    assert code == 2
    assert f"Error: Invalid value for --email: {email!r} is not an email address: {why}" in out
    assert no_users(sqlite_config)


@pytest.mark.parametrize("name", [".", ".."])
def test_users_add_refuses_dot_names_naming_the_name_not_home(
    sqlite_config: Path, tmp_path: Path, name: str
) -> None:
    key = make_user_key(tmp_path / "k").with_suffix(".pub")
    code, out = run("users", "add", name, "--key", str(key), "--config", str(sqlite_config))
    assert code == 2
    assert f"Error: Invalid value for NAME: {name!r} cannot be a user name" in out
    assert "--home" not in out
    assert no_users(sqlite_config)


@pytest.mark.parametrize(
    ("home", "why"),
    [
        ("./", "must be a relative prefix without '.' or '..' segments"),
        ("a/./b", "must be a relative prefix without '.' or '..' segments"),
        ("a//b", "has an empty segment ('//')"),
        ("x\ny", "contains the control character \\n"),
        ("a\x01b", "contains the control character \\x01"),
        ("a\u2028b", "contains the control character \\u2028"),
        (" ", "the segment ' ' begins or ends with a space"),
        ("acme /in", "the segment 'acme ' begins or ends with a space"),
    ],
)
def test_users_add_refuses_a_home_that_is_not_a_plain_relative_prefix(
    sqlite_config: Path, tmp_path: Path, home: str, why: str
) -> None:
    key = make_user_key(tmp_path / "k").with_suffix(".pub")
    code, out = run(
        "users", "add", "kim", "--key", str(key), "--home", home, "--config", str(sqlite_config)
    )
    assert code == 2
    assert f"Error: Invalid value for --home: {home!r}: {why}" in out
    assert no_users(sqlite_config)


def rfc4716(public_line: str) -> str:
    """The key as `ssh-keygen -e` and PuTTYgen write it."""
    blob = public_line.split()[1]
    body = "\n".join(blob[i : i + 70] for i in range(0, len(blob), 70))
    return (
        "---- BEGIN SSH2 PUBLIC KEY ----\n"
        'Comment: "256-bit ED25519, converted by alice@host from OpenSSH"\n'
        f"{body}\n---- END SSH2 PUBLIC KEY ----\n"
    )


@pytest.mark.parametrize("command", ["add", "add-key"])
def test_a_key_file_that_is_no_public_key_line_is_named_for_what_it_is(
    sqlite_config: Path, tmp_path: Path, command: str
) -> None:
    private = make_user_key(tmp_path / "k")
    public = private.with_suffix(".pub").read_text()
    other = make_user_key(tmp_path / "k2").with_suffix(".pub").read_text()
    cfg = ["--config", str(sqlite_config)]
    if command == "add-key":
        assert run("users", "add", "bob", "--key", f"{private}.pub", *cfg)[0] == 0
    files = {
        "ppk.pub": "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n",
        "ssh2.pub": rfc4716(public),
        "two.pub": public + "\n# another\n" + other,
        "latin1.pub": "ssh-ed25519 AAAA caf\xe9".encode("latin-1"),
        "dupfrom.pub": f'from="10.9.9.9",from="*" {public}',
    }
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    expected = {
        private: f"{private} is a private key: give its public key, the .pub file"
        f" (ssh-keygen -y -f {private} prints it)",
        tmp_path / "ppk.pub": f"{tmp_path / 'ppk.pub'} is a PuTTY private key (.ppk): give its"
        f" public key in OpenSSH format (puttygen {tmp_path / 'ppk.pub'} -O public-openssh)",
        tmp_path / "ssh2.pub": f"{tmp_path / 'ssh2.pub'} is an RFC 4716 public key (as PuTTYgen"
        f" and ssh-keygen -e write it): convert it with ssh-keygen -i -f {tmp_path / 'ssh2.pub'}",
        tmp_path / "two.pub": f"{tmp_path / 'two.pub'} holds 2 keys: give a file with one key"
        " (users add-key adds each further key)",
        tmp_path / "latin1.pub": f"{tmp_path / 'latin1.pub'} is not a text file (not UTF-8):"
        " give the public key, one line such as ssh-ed25519 AAAA... (the .pub file)",
        tmp_path / "dupfrom.pub": f"{tmp_path / 'dupfrom.pub'}: option from is given twice:"
        ' give it once (list every pattern in one from="...")',
    }
    for path, message in expected.items():
        user = "carol" if command == "add" else "bob"
        code, out = run("users", command, user, "--key", str(path), *cfg)
        assert (code, "Traceback" in out) == (2, False), out
        assert f"Error: Invalid value for --key: {message}" in out.replace("\n", " "), out
    code, out = run("users", "list", "--json", *cfg)
    listed = json.loads(out)
    assert [u["name"] for u in listed] == ([] if command == "add" else ["bob"])
    assert all(len(u["keys"]) == 1 for u in listed)


def test_a_key_file_with_a_byte_order_mark_or_an_indented_comment_is_read(
    sqlite_config: Path, tmp_path: Path
) -> None:
    public = make_user_key(tmp_path / "k").with_suffix(".pub").read_text().strip()
    fingerprint = parse_public_key(public).fingerprint
    bom = tmp_path / "bom.pub"
    bom.write_bytes(b"\xef\xbb\xbf" + public.encode() + b"\r\n")
    commented = tmp_path / "commented.pub"
    commented.write_text(f"  # alice's laptop\n\n\t# since 2026\n{public}\n")
    cfg = ["--config", str(sqlite_config)]
    for name, path in (("ann", bom), ("ben", commented)):
        code, out = run("users", "add", name, "--key", str(path), *cfg)
        assert code == 0, out
    code, out = run("users", "list", "--json", *cfg)
    assert [(u["name"], u["keys"][0]["fingerprint"]) for u in json.loads(out)] == [
        ("ann", fingerprint),
        ("ben", fingerprint),
    ]
