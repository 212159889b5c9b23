"""Holes through which an accepted upload could be lost, each against a real `serve`
process, a real paramiko client and moto's S3: a temporary name never renamed, a
catalog locked at CLOSE, two resumes at once, SIGTERM beside an idle open handle."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import boto3
import paramiko
import pytest
from botocore.config import Config
from paramiko.sftp import CMD_CLOSE

from sftp_gateway.catalog.db import make_engine
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.records import UploadRecord
from tests.helpers import tagged_sha256, wait_until
from tests.serving import ServeProcess

MIB = 1024 * 1024
PART = 5 * MIB
FILE_BUSY = "file busy: another session is uploading it"


def pdf_bytes(size: int) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size - 9)


@contextmanager
def sftp_session(served: ServeProcess) -> Iterator[paramiko.SFTPClient]:
    """alice's paramiko SFTP session; leaving the block drops the connection."""
    client = served.ssh_client()
    try:
        yield client.open_sftp()
    finally:
        client.close()


def catalog_of(served: ServeProcess) -> Catalog:
    return Catalog(make_engine(f"sqlite:///{served.tmp / 'catalog.db'}"))


def rows_of(served: ServeProcess, name: str) -> list[UploadRecord]:
    return catalog_of(served).uploads_for_key(served.bucket, f"incoming/alice/{name}")


def events_of(served: ServeProcess, upload_id: str) -> list[str]:
    with sqlite3.connect(served.tmp / "catalog.db") as conn:
        found = conn.execute("SELECT event_type FROM outbox WHERE upload_id = ?", (upload_id,))
        return [row[0] for row in found]


def wait_for_status(served: ServeProcess, name: str, status: str, timeout: float = 15) -> None:
    def reached() -> bool:
        rows = rows_of(served, name)
        return bool(rows) and rows[0].status == status

    wait_until(reached, timeout=timeout)


def stored_sha256(served: ServeProcess, key: str) -> str:
    """SHA-256 of the object's bytes. Read without botocore's CRC check: moto serves a
    wrong whole-object CRC32 for a multipart object copied in place (the sha256
    metadata update), though the bytes are right."""
    client = boto3.client(
        "s3",
        endpoint_url=served.endpoint,
        region_name="us-east-1",
        config=Config(response_checksum_validation="when_required"),
    )
    got = client.get_object(Bucket=served.bucket, Key=key)
    digest = hashlib.sha256(got["Body"].read()).hexdigest()
    assert tagged_sha256(client, served.bucket, key) == digest  # what a user checks
    return digest


def object_exists(served: ServeProcess, key: str) -> bool:
    found = served.s3().list_objects_v2(Bucket=served.bucket, Prefix=key)
    return any(item["Key"] == key for item in found.get("Contents", []))


def cut_after_parts(served: ServeProcess, name: str, data: bytes) -> int:
    """Upload `data` and drop the connection before CLOSE: returns the resumable size."""
    with sftp_session(served) as sftp:
        remote = sftp.open(f"/{name}", "w")
        remote.write(data)
        remote.flush()  # every WRITE answered; no CLOSE follows
    wait_for_status(served, name, "interrupted")
    return rows_of(served, name)[0].size


def test_a_filepart_closed_but_never_renamed_is_published_under_its_final_name(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    data = pdf_bytes(3 * 1000 * 1000)
    with sftp_session(served) as sftp:
        remote = sftp.open("/x.pdf.filepart", "w")
        remote.write(data)
        _close_into(remote, failure := [])  # CLOSE answers OK...
        assert failure == []
        # ...and the client disconnects before its rename to x.pdf
    wait_for_status(served, "x.pdf", "completed")
    assert served.object_sha256("incoming/alice/x.pdf") == hashlib.sha256(data).hexdigest()
    [row] = rows_of(served, "x.pdf")
    assert row.path == "/x.pdf" and row.size == len(data)
    assert events_of(served, row.id) == ["upload.completed"]
    listed = served.cli("uploads", "list", "--json").stdout
    assert row.id in listed
    assert served.user_can_upload("x.pdf")  # the name is free again, not "being uploaded"


def test_a_close_with_the_catalog_locked_fails_and_leaves_the_upload_resumable(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory({"uploads": {"catalog_retry": 0}})
    data = pdf_bytes(2 * PART + 2 * MIB)
    failure: list[BaseException] = []
    with sftp_session(served) as sftp:
        remote = sftp.open("/locked.pdf", "w")
        remote.write(data)
        remote.flush()  # every byte is in; only the CLOSE meets the locked catalog
        lock = sqlite3.connect(served.tmp / "catalog.db", isolation_level=None, timeout=30)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            closing = threading.Thread(target=_close_into, args=(remote, failure))
            closing.start()
            # hold the catalog until the server gave up recording `completing`
            wait_until(lambda: "as completing" in served.log_text(), timeout=30)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        closing.join(timeout=30)
    assert failure and "catalog is unavailable" in str(failure[0])
    assert not object_exists(served, "incoming/alice/locked.pdf")  # nothing published
    wait_for_status(served, "locked.pdf", "interrupted")
    [row] = rows_of(served, "locked.pdf")
    assert row.size == 2 * PART and events_of(served, row.id) == []
    assert "not published: the catalog is unavailable" in served.log_text()
    with sftp_session(served) as sftp:
        assert sftp.stat("/locked.pdf").st_size == row.size  # what `reput` resumes from
        with sftp.open("/locked.pdf", "a") as remote:
            remote.write(data[row.size :])
    wait_for_status(served, "locked.pdf", "completed")
    assert stored_sha256(served, "incoming/alice/locked.pdf") == hashlib.sha256(data).hexdigest()
    assert events_of(served, row.id) == ["upload.completed"]


def _close_into(remote: paramiko.SFTPFile, failure: list[BaseException]) -> None:
    """CLOSE, keeping its status: paramiko's SFTPFile.close() swallows a failed one."""
    try:
        remote.flush()
        remote.sftp._request(CMD_CLOSE, remote.handle)
    except OSError as exc:
        failure.append(exc)


def test_a_second_concurrent_resume_is_told_the_file_is_busy(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    data = pdf_bytes(2 * PART + MIB)
    size = cut_after_parts(served, "twice.pdf", data)
    with sftp_session(served) as first, sftp_session(served) as second:
        resuming = first.open("/twice.pdf", "a")
        resuming.write(data[size : size + MIB])
        with pytest.raises(OSError, match=FILE_BUSY):
            second.open("/twice.pdf", "a")
        resuming.write(data[size + MIB :])
        resuming.close()
    wait_for_status(served, "twice.pdf", "completed")
    assert stored_sha256(served, "incoming/alice/twice.pdf") == hashlib.sha256(data).hexdigest()
    assert f"upload refused for alice from 127.0.0.1: incoming/alice/twice.pdf: {FILE_BUSY}" in (
        served.log_text()
    )


def test_sigterm_beside_an_idle_open_handle_stops_quickly_and_keeps_the_upload(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory({"server": {"drain_timeout": 60}})
    data = pdf_bytes(PART + MIB)
    with sftp_session(served) as sftp:
        remote = sftp.open("/idle.pdf", "w")
        remote.write(data)
        remote.flush()  # then the client does nothing with its open handle
        wait_until(
            lambda: (
                len(served.s3().list_multipart_uploads(Bucket=served.bucket).get("Uploads", []))
                == 1
            ),
            timeout=15,
        )
        time.sleep(2.5)  # longer than the quiet time that makes a writer idle
        began = time.monotonic()
        served.process.terminate()
        served.process.wait(timeout=30)
        took = time.monotonic() - began
    assert took < 15, f"SIGTERM waited {took:.1f} s for an idle handle (drain_timeout 60)"
    [row] = rows_of(served, "idle.pdf")
    assert row.status == "interrupted" and row.size == PART  # resumable at the next start
