"""Uploads through the real OpenSSH sftp client land in S3 intact, identified, and whole."""

from __future__ import annotations

import hashlib
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
import sqlalchemy.exc

from tests.helpers import (
    MIB,
    SSH_OPTIONS,
    RunningGateway,
    make_pdf,
    sha256_file,
    tagged_sha256,
)

PART = 5 * MIB
NO_POLICY = {"uploads": {"allowed_extensions": [], "require_pdf_signature": False}}


@pytest.mark.parametrize(
    "size",
    [0, 1, PART - 1, PART, PART + 1, 3 * PART + 12345],
    ids=["empty", "one-byte", "part-minus-one", "exactly-one-part", "part-plus-one", "multi"],
)
def test_upload_lands_byte_identical_with_metadata_and_catalog_row(
    gateway_factory, tmp_path: Path, size: int
) -> None:
    running = gateway_factory(NO_POLICY)
    source = make_pdf(tmp_path / "file.pdf", size)
    running.sftp(f"put {source} report.pdf\n")

    key = running.key_for("report.pdf")
    expected = sha256_file(source)
    assert running.object_sha256(key) == expected
    head = running.storage.client.head_object(Bucket=running.bucket, Key=key)
    meta = head["Metadata"]
    assert head["ContentLength"] == size
    assert head["ContentType"] == "application/pdf"
    assert meta["uploaded-by"] == "alice"
    assert tagged_sha256(running.storage.client, running.bucket, key) == expected
    if size < PART:  # one PutObject: known before it, so in the metadata too
        assert meta["sha256"] == expected
    assert meta["client-ip"] == "127.0.0.1"
    assert meta["original-name"] == "report.pdf"
    assert meta["uploaded-at"].endswith("Z")

    [row] = running.catalog.uploads_for_key(running.bucket, key)
    assert row.status == "completed"
    assert row.size == size
    assert row.sha256 == expected
    assert row.id == meta["upload-id"]
    assert row.user_name == "alice"
    assert row.client_ip == "127.0.0.1"
    assert row.client_version and row.client_version.startswith("SSH-2.0-OpenSSH")
    assert row.key_fingerprint and row.key_fingerprint.startswith("SHA256:")
    assert row.path == "/report.pdf"
    assert running.open_multipart_uploads() == []


def test_large_upload_streams_and_downloads_back(gateway_factory, tmp_path: Path) -> None:
    running = gateway_factory({"uploads": {"max_file_size": "1GiB"}})
    source = make_pdf(tmp_path / "big.pdf", 200 * 1000 * 1000)
    running.sftp(f"put {source} big.pdf\nget big.pdf {tmp_path / 'back.pdf'}\n")
    expected = sha256_file(source)
    assert running.object_sha256(running.key_for("big.pdf")) == expected
    assert sha256_file(tmp_path / "back.pdf") == expected


def test_list_rename_remove_mkdir_rmdir(gateway, tmp_path: Path) -> None:
    source = make_pdf(tmp_path / "a.pdf", 1000)
    out = gateway.sftp(
        f"mkdir docs\nput {source} docs/a.pdf\nls -l docs\nrename docs/a.pdf docs/b.pdf\nls docs\n"
    ).stdout
    assert "a.pdf" in out and "1000" in out
    assert gateway.object_exists(gateway.key_for("docs/b.pdf"))
    assert not gateway.object_exists(gateway.key_for("docs/a.pdf"))
    [row] = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("docs/b.pdf"))
    assert row.path == "/docs/b.pdf"  # the catalog follows a rename
    gateway.sftp("rm docs/b.pdf\nrmdir docs\n")
    assert gateway.storage.client.list_objects_v2(Bucket=gateway.bucket).get("KeyCount") == 0


def test_plain_rename_onto_existing_file_is_refused_posix_rename_overwrites(
    gateway, tmp_path: Path
) -> None:
    source = make_pdf(tmp_path / "a.pdf", 100)
    other = make_pdf(tmp_path / "b.pdf", 200)
    gateway.sftp(f"put {source} a.pdf\nput {other} b.pdf\n")
    with paramiko_sftp(gateway) as sftp:
        with pytest.raises(OSError):
            sftp.rename("a.pdf", "b.pdf")  # SSH_FXP_RENAME: must not overwrite
        assert sftp.stat("b.pdf").st_size == 200
        sftp.posix_rename("a.pdf", "b.pdf")
        assert sftp.stat("b.pdf").st_size == 100
    assert not gateway.object_exists(gateway.key_for("a.pdf"))


def test_directory_of_many_files_lists_completely(gateway) -> None:
    client = gateway.storage.client
    count = 2500  # three ListObjectsV2 pages, the last one partial

    def put(i: int) -> None:
        client.put_object(Bucket=gateway.bucket, Key=gateway.key_for(f"many/f{i:05}.pdf"), Body=b"")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(count)))
    out = gateway.sftp("ls -1 many\n").stdout
    names = [line.strip() for line in out.splitlines() if line.strip().startswith("many/f")]
    assert len(names) == count


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.txt", b"%PDF-1.4 but named .txt", "extension"),
        ("fake.pdf", b"MZ this is not a PDF" * 100000, "signature"),
    ],
    ids=["wrong-extension", "not-a-pdf"],
)
def test_refused_upload_leaves_no_object_and_no_multipart(
    gateway, tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    result = gateway.sftp(f"put {source} {name}\n", check=False)
    assert result.returncode != 0
    assert not gateway.object_exists(gateway.key_for(name))
    assert gateway.open_multipart_uploads() == []
    rows = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for(name))
    assert all(row.status == "failed" for row in rows)


def test_size_limit_is_enforced_as_bytes_arrive(gateway_factory, tmp_path: Path) -> None:
    running = gateway_factory({"uploads": {"max_file_size": "12MiB"}})
    source = make_pdf(tmp_path / "big.pdf", 20 * MIB)
    result = running.sftp(f"put {source} big.pdf\n", check=False)
    assert result.returncode != 0
    assert not running.object_exists(running.key_for("big.pdf"))
    assert running.open_multipart_uploads() == []
    [row] = running.catalog.uploads_for_key(running.bucket, running.key_for("big.pdf"))
    assert row.status == "failed"
    assert "maximum size" in (row.error or "")


def test_killed_client_leaves_no_object(gateway_factory, tmp_path: Path) -> None:
    running = gateway_factory({"uploads": {"max_file_size": "2GiB"}})
    source = make_pdf(tmp_path / "big.pdf", 300 * MIB)
    args = ["sftp", *SSH_OPTIONS, "-i", str(running.key_path), "-P", str(running.port)]
    args += ["-b", "-", "alice@127.0.0.1"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(f"put {source} big.pdf\n")
    proc.stdin.flush()
    _wait_until(lambda: _uploaded_bytes(running) > 30 * MIB, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    key = running.key_for("big.pdf")
    _wait_until(lambda: _status(running, key) not in (None, "in_progress"), timeout=30)
    assert not running.object_exists(key)
    assert _status(running, key) in ("aborted", "interrupted")


def test_path_traversal_stays_in_home(gateway, tmp_path: Path) -> None:
    source = make_pdf(tmp_path / "a.pdf", 10)
    gateway.sftp(f"put {source} ../../escape.pdf\nput {source} //x//y.pdf\n")
    keys = {
        obj["Key"]
        for obj in gateway.storage.client.list_objects_v2(Bucket=gateway.bucket)["Contents"]
    }
    assert keys == {"incoming/alice/escape.pdf", "incoming/alice/x/y.pdf"}


def test_unknown_key_cannot_log_in(gateway, tmp_path: Path) -> None:
    from tests.helpers import make_user_key

    other = make_user_key(tmp_path / "other")
    result = gateway.sftp("ls\n", key=other, check=False)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr


def test_read_only_user_cannot_upload(gateway_factory, tmp_path: Path) -> None:
    running = gateway_factory(permissions=frozenset({"list", "read"}))
    source = make_pdf(tmp_path / "a.pdf", 10)
    result = running.sftp(f"put {source} a.pdf\n", check=False)
    assert result.returncode != 0
    assert not running.object_exists(running.key_for("a.pdf"))


def test_many_concurrent_sessions(gateway, tmp_path: Path) -> None:
    sources = [make_pdf(tmp_path / f"f{i}.pdf", 64 * 1024 + i) for i in range(8)]
    args = ["sftp", *SSH_OPTIONS, "-i", str(gateway.key_path), "-P", str(gateway.port)]
    procs = [
        subprocess.Popen([*args, "-b", "-", "alice@127.0.0.1"], stdin=subprocess.PIPE, text=True)
        for _ in sources
    ]
    for proc, src in zip(procs, sources, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(f"put {src} {src.name}\n")
        proc.stdin.close()
    assert [proc.wait(timeout=120) for proc in procs] == [0] * len(procs)
    for src in sources:
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        assert gateway.object_sha256(gateway.key_for(src.name)) == digest


@contextmanager
def paramiko_sftp(running) -> Iterator[paramiko.SFTPClient]:  # type: ignore[no-untyped-def]
    """paramiko's own SFTP client, logged in as the running gateway's user."""
    client = running.ssh_client()
    try:
        yield client.open_sftp()
    finally:
        client.close()


def _uploaded_bytes(running) -> int:  # type: ignore[no-untyped-def]
    uploads = running.gateway.active.all()
    return max((u.size for u in uploads), default=0)


def _status(running, key: str) -> str | None:  # type: ignore[no-untyped-def]
    rows = running.catalog.uploads_for_key(running.bucket, key)
    return rows[0].status if rows else None


def _wait_until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_rsa_sha2_and_ecdsa_keys_log_in(gateway, tmp_path: Path, kind: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from sftp_gateway.auth import parse_public_key
    from sftp_gateway.hostkeys import public_line, write_private_key

    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    key_path = tmp_path / f"id_{kind}"
    write_private_key(key_path, pem)
    gateway.catalog.add_key("alice", parse_public_key(public_line(pem)))
    result = gateway.sftp("ls\n", key=key_path, extra_args=["-v"])
    if kind == "rsa":  # OpenSSH signs with SHA-2, never the SHA-1 ssh-rsa signature
        assert "rsa-sha2-512" in result.stderr or "rsa-sha2-256" in result.stderr


def test_a_catalog_outage_at_open_is_a_clear_status_not_an_internal_error(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database went away (a restart, a dropped connection): the client is told so
    in words, the log has one WARNING without a traceback, and nothing is stored."""

    def catalog_down(*_args: object) -> None:
        raise sqlalchemy.exc.OperationalError(
            "SELECT uploads.id FROM uploads", {}, ConnectionError("server closed the connection")
        )

    monkeypatch.setattr(gateway.catalog, "interrupted_upload", catalog_down)
    client = gateway.ssh_client()
    try:
        sftp = client.open_sftp()
        with (
            caplog.at_level(logging.WARNING, logger="sftp_gateway.sftp.errors"),
            pytest.raises(OSError, match="catalog is unavailable; try again in a moment"),
        ):
            sftp.open("/report.pdf", "wb")
    finally:
        client.close()
    assert "catalog unavailable during an SFTP request: server closed the connection" in (
        caplog.text
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not gateway.object_exists(gateway.key_for("report.pdf"))
