"""The fault matrix: each backend fails in each way that matters, while uploads are in flight.

A FaultProxy (tests/faultproxy.py) sits between the in-process gateway and S3 (moto over
HTTP), PostgreSQL, SQS or SMTP. After every fault the same invariants hold: an upload
either completes with the right SHA-256 or fails with a clear status (and stays
resumable when its parts are safe); no object without its row, no row without its
object; after gc no multipart upload is left open; each completed upload is emailed
once. docs/reliability.md lists each case and what the client sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paramiko
import pytest
from paramiko.sftp import CMD_CLOSE

from sftp_gateway.catalog.repository import COMPLETED, utcnow
from sftp_gateway.events.dispatcher import Dispatcher
from sftp_gateway.gc import collect_garbage
from sftp_gateway.notifier.worker import run_worker
from tests.faultproxy import FaultProxy, HttpRequest
from tests.helpers import MIB, RunningGateway, make_pdf, sha256_file
from tests.notify_support import (
    SmtpCapture,
    create_queue,
    drain_queue,
    events_settings,
    new_catalog,
    queue_depth,
    smtp_server,
    wait_until,
)

SIZE = 12 * MIB  # three 5 MiB parts
PDF = {"uploads": {"max_file_size": "1GiB"}}


def address_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url.replace("postgresql+psycopg", "postgresql"))
    return parts.hostname or "127.0.0.1", int(parts.port or 0)


@pytest.fixture
def s3_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(address_of(moto_endpoint)) as proxy:
        yield proxy


def upload_part(request: HttpRequest) -> bool:
    return request.method == "PUT" and "partNumber=" in request.target


def complete_multipart(request: HttpRequest) -> bool:
    return request.method == "POST" and "uploadId=" in request.target


def put_object(request: HttpRequest) -> bool:
    return request.method == "PUT" and "uploadId=" not in request.target


def behind(
    gateway_factory: Callable[..., RunningGateway],
    proxy: FaultProxy,
    config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> RunningGateway:
    """A gateway whose S3 is reached through the proxy (small timeouts, few retries)."""
    storage = {"read_timeout": 1.5, "connect_timeout": 2, "max_attempts": 4}
    merged = {**PDF, "storage": storage, **(config or {})}
    return gateway_factory(merged, endpoint=proxy.url, **kwargs)


def put(running: RunningGateway, source: Path, name: str) -> Any:
    return running.sftp(f"put {source} {name}\n", check=False, timeout=120)


def assert_consistent(running: RunningGateway, proxy: FaultProxy | None = None) -> None:
    """No object without a completed row and its SHA-256, no completed row without its
    object, and after gc (a resume_ttl later) no multipart upload left open."""
    if proxy is not None:
        proxy.pass_through()
    later = utcnow() + timedelta(days=3)
    collect_garbage(running.settings, running.catalog, running.storage, now=later)
    assert running.open_multipart_uploads() == []
    listed = running.storage.client.list_objects_v2(Bucket=running.bucket, Prefix="incoming/")
    objects = {obj["Key"] for obj in listed.get("Contents", [])}
    completed = {r.object_key: r for r in running.catalog.list_uploads() if r.status == COMPLETED}
    assert objects == set(completed), "objects and completed rows differ"
    for key, row in completed.items():
        assert running.object_sha256(key) == row.sha256


def assert_stored(running: RunningGateway, source: Path, name: str) -> None:
    key = running.key_for(name)
    assert running.object_sha256(key) == sha256_file(source)
    rows = [
        r for r in running.catalog.uploads_for_key(running.bucket, key) if r.status == COMPLETED
    ]
    assert len(rows) == 1 and rows[0].sha256 == sha256_file(source)


# -- S3 answers with errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "status", "code", "size"),
    [
        (upload_part, 503, "SlowDown", SIZE),
        (complete_multipart, 500, "InternalError", SIZE),
        (put_object, 503, "SlowDown", 200_000),
    ],
    ids=["part-503", "complete-500", "put-503"],
)
def test_s3_errors_that_pass_are_retried_and_the_upload_completes(
    gateway_factory, s3_proxy: FaultProxy, tmp_path: Path, match, status, code, size
) -> None:
    running = behind(gateway_factory, s3_proxy)
    source = make_pdf(tmp_path / "a.pdf", size)
    fault = s3_proxy.http_error(status, code, match=match, times=2)
    result = put(running, source, "a.pdf")
    assert result.returncode == 0, result.stderr
    assert fault.injected == 2
    assert_stored(running, source, "a.pdf")
    assert_consistent(running, s3_proxy)


@pytest.mark.parametrize(
    ("match", "size"),
    [(upload_part, SIZE), (complete_multipart, SIZE), (put_object, 200_000)],
    ids=["part", "complete", "put"],
)
def test_s3_503_on_every_retry_fails_the_upload_with_a_status_and_leaves_nothing(
    gateway_factory, s3_proxy: FaultProxy, tmp_path: Path, match, size
) -> None:
    running = behind(gateway_factory, s3_proxy, {"storage": {"max_attempts": 2}})
    source = make_pdf(tmp_path / "a.pdf", size)
    s3_proxy.http_error(503, "SlowDown", match=match, times=1000)
    result = put(running, source, "a.pdf")
    assert result.returncode != 0
    assert "storage" in result.stderr.lower() or "failure" in result.stderr.lower()
    s3_proxy.pass_through()
    assert not running.object_exists(running.key_for("a.pdf"))
    [row] = running.catalog.uploads_for_key(running.bucket, running.key_for("a.pdf"))
    assert row.status in ("failed", "interrupted") and row.error
    assert_consistent(running, s3_proxy)


# -- S3's connection breaks or stalls --------------------------------------------------


def received(running: RunningGateway) -> int:
    return max((w.size for w in running.gateway.active.all()), default=0)


def test_connection_reset_mid_part_is_retried_and_the_upload_completes(
    gateway_factory, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    running = behind(gateway_factory, s3_proxy)
    source = make_pdf(tmp_path / "a.pdf", SIZE)
    s3_proxy.delay(0.01, "up")  # keep parts on the wire long enough to cut one
    done: list[Any] = []
    client = threading.Thread(target=lambda: done.append(put(running, source, "a.pdf")))
    client.start()
    wait_until(lambda: received(running) > 6 * MIB, timeout=60, step=0.02)
    s3_proxy.reset_all()  # RST on every S3 connection, part bodies in flight
    s3_proxy.pass_through()
    client.join(120)
    assert done and done[0].returncode == 0, done and done[0].stderr
    assert_stored(running, source, "a.pdf")
    assert_consistent(running, s3_proxy)


def test_s3_stall_longer_than_the_read_timeout_is_retried_and_the_upload_completes(
    gateway_factory, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    running = behind(gateway_factory, s3_proxy, {"storage": {"read_timeout": 1.0}})
    source = make_pdf(tmp_path / "a.pdf", SIZE)
    s3_proxy.stall(2.5)  # > read_timeout: the request in hand times out, its retry passes
    started = time.monotonic()
    result = put(running, source, "a.pdf")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 2.0
    assert_stored(running, source, "a.pdf")
    assert_consistent(running, s3_proxy)


def test_s3_stalled_for_good_fails_the_close_with_a_status_in_bounded_time(
    gateway_factory, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    config = {"storage": {"read_timeout": 1.0, "max_attempts": 2}}
    running = behind(gateway_factory, s3_proxy, config)
    source = make_pdf(tmp_path / "a.pdf", SIZE)
    s3_proxy.stall(None, "down")  # requests arrive, no answer ever comes back
    started = time.monotonic()
    result = put(running, source, "a.pdf")
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    s3_proxy.pass_through()
    assert not running.object_exists(running.key_for("a.pdf"))
    assert_consistent(running, s3_proxy)


@pytest.mark.parametrize("client", ["crt", "botocore"])
def test_a_small_file_whose_put_answer_never_comes_is_recorded_once_s3_answers(
    gateway_factory, s3_proxy: FaultProxy, tmp_path: Path, client: str
) -> None:
    """S3 stores the PUT but its answer never comes back (nor does any other): the
    CLOSE fails in bounded time without calling the file failed, and once S3 answers
    recovery finds the object and records it, so S3 and the catalog agree."""
    storage = {"connect_timeout": 2.0, "read_timeout": 1.0, "max_attempts": 2}
    running = behind(gateway_factory, s3_proxy, {"storage": {**storage, "put_client": client}})
    source = make_pdf(tmp_path / "a.pdf", 200_000)
    s3_proxy.stall(None, "down")
    started = time.monotonic()
    result = put(running, source, "a.pdf")
    assert result.returncode != 0  # OpenSSH shows "Failure"; the status text says why
    assert time.monotonic() - started < 30
    [row] = running.catalog.uploads_for_key(running.bucket, running.key_for("a.pdf"))
    assert row.status == "completing"
    assert_consistent(running, s3_proxy)  # gc, once S3 answers: the object is ours
    assert_stored(running, source, "a.pdf")


# -- the catalog (PostgreSQL) goes away ------------------------------------------------


@pytest.fixture
def pg_proxy(postgres_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(address_of(postgres_url)) as proxy:
        yield proxy


def through(postgres_url: str, proxy: FaultProxy) -> str:
    host, port = address_of(postgres_url)
    return postgres_url.replace(f"{host}:{port}", proxy.address, 1)


def close_reporting(sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile) -> None:
    """CLOSE that raises OSError with the server's status text: paramiko's own close()
    swallows a failed CLOSE, as OpenSSH's sftp does not."""
    handle._closed = True  # the file object must not send a second CLOSE
    sftp._request(CMD_CLOSE, handle.handle)


def sftp_client(running: RunningGateway) -> tuple[paramiko.SSHClient, paramiko.SFTPClient]:
    ssh = running.ssh_client()
    return ssh, ssh.open_sftp()


def write_all(handle: paramiko.SFTPFile, source: Path) -> None:
    with open(source, "rb") as local:
        while chunk := local.read(256 * 1024):
            handle.write(chunk)


@pytest.mark.postgres
def test_postgresql_restarted_mid_upload_the_upload_completes_or_resumes_whole(
    gateway_factory, postgres_url: str, pg_proxy: FaultProxy, tmp_path: Path
) -> None:
    running = gateway_factory(PDF, catalog_url=through(postgres_url, pg_proxy))
    source = make_pdf(tmp_path / "a.pdf", 30 * MIB)
    done: list[Any] = []
    client = threading.Thread(target=lambda: done.append(put(running, source, "a.pdf")))
    client.start()
    wait_until(lambda: received(running) > 8 * MIB, timeout=60, step=0.02)
    pg_proxy.reset_all()  # every catalog connection dies, as in a restart
    pg_proxy.refuse()
    time.sleep(1.5)
    pg_proxy.pass_through()
    client.join(120)
    assert done
    if done[0].returncode != 0:  # failed with a status: what is in S3 resumes
        running.sftp(f"reput {source} a.pdf\n")
    assert_stored(running, source, "a.pdf")
    assert_consistent(running)


@pytest.mark.postgres
def test_postgresql_down_briefly_at_close_the_close_waits_and_completes(
    gateway_factory, postgres_url: str, pg_proxy: FaultProxy, tmp_path: Path
) -> None:
    running = gateway_factory(PDF, catalog_url=through(postgres_url, pg_proxy))
    source = make_pdf(tmp_path / "a.pdf", SIZE)
    ssh, sftp = sftp_client(running)
    try:
        handle = sftp.open("a.pdf", "wb")
        write_all(handle, source)
        pg_proxy.reset_all()
        pg_proxy.refuse()
        threading.Timer(2.0, pg_proxy.pass_through).start()
        close_reporting(sftp, handle)  # waits for the catalog, then reports OK
    finally:
        ssh.close()
    assert_stored(running, source, "a.pdf")
    [row] = running.catalog.uploads_for_key(running.bucket, running.key_for("a.pdf"))
    with running.catalog.dispatch_batch(100) as (events, _):
        assert [e.payload["upload_id"] for e in events] == [row.id]
    assert_consistent(running)


@pytest.mark.postgres
def test_postgresql_down_at_close_for_longer_fails_the_close_and_publishes_nothing(
    gateway_factory, postgres_url: str, pg_proxy: FaultProxy, tmp_path: Path
) -> None:
    config = {**PDF, "uploads": {**PDF["uploads"], "catalog_retry": 2.0}}
    running = gateway_factory(config, catalog_url=through(postgres_url, pg_proxy))
    source = make_pdf(tmp_path / "a.pdf", SIZE)
    key = running.key_for("a.pdf")
    ssh, sftp = sftp_client(running)
    try:
        handle = sftp.open("a.pdf", "wb")
        write_all(handle, source)
        pg_proxy.reset_all()
        pg_proxy.refuse()
        with pytest.raises(OSError, match="catalog"):
            close_reporting(sftp, handle)
    finally:
        ssh.close()
    assert not running.object_exists(key)  # nothing published without its row
    assert running.open_multipart_uploads() != []  # the parts are kept
    pg_proxy.pass_through()
    wait_until(lambda: running.catalog.interrupted_upload(running.bucket, key), timeout=30)
    running.sftp(f"reput {source} a.pdf\n")  # resumes the parts kept
    assert_stored(running, source, "a.pdf")
    assert_consistent(running)


# -- SQS and SMTP go away --------------------------------------------------------------


def test_sqs_down_the_upload_succeeds_and_its_event_is_sent_once_sqs_is_back(
    gateway_factory, moto_endpoint: str, tmp_path: Path
) -> None:
    queue = create_queue(moto_endpoint)
    with FaultProxy(address_of(moto_endpoint)) as sqs_proxy:
        sqs_proxy.refuse()
        queue_url = queue.replace(moto_endpoint, sqs_proxy.url)
        settings = events_settings(
            tmp_path, sqs_proxy.url, queue_url, events={"dispatch_interval": 0.1}
        )
        catalog = new_catalog(settings)
        dispatcher = Dispatcher(catalog, settings.events)
        running = gateway_factory(PDF, catalog_url=settings.catalog.url, background=[dispatcher])
        source = make_pdf(tmp_path / "a.pdf", 300_000)
        assert put(running, source, "a.pdf").returncode == 0
        wait_until(lambda: sqs_proxy.refused >= 2, timeout=30)
        assert catalog.pending_event_count() == 1
        sqs_proxy.pass_through()
        wait_until(lambda: catalog.pending_event_count() == 0, timeout=30)
    [message] = drain_queue(moto_endpoint, queue)
    assert sha256_file(source) in message["Body"]
    assert catalog.parked_event_count() == 0
    assert_consistent(running)


def test_smtp_down_the_email_is_sent_exactly_once_when_it_is_back(
    gateway_factory, moto_endpoint: str, tmp_path: Path
) -> None:
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture()
    with smtp_server(handler) as port, FaultProxy(("127.0.0.1", port)) as smtp_proxy:
        settings = events_settings(
            tmp_path,
            moto_endpoint,
            queue,
            notifier={
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_proxy.port,
                "visibility_timeout": 1,
                "timeout": 3,
            },
        )
        catalog = new_catalog(settings)
        dispatcher = Dispatcher(catalog, settings.events)
        running = gateway_factory(PDF, catalog_url=settings.catalog.url, background=[dispatcher])
        source = make_pdf(tmp_path / "a.pdf", 300_000)
        assert put(running, source, "a.pdf").returncode == 0
        wait_until(lambda: queue_depth(moto_endpoint, queue)[0] == 1)

        smtp_proxy.refuse()
        first = run_worker(settings, catalog, once=True)
        assert first.done == 0 and handler.messages == []
        assert sum(queue_depth(moto_endpoint, queue)) == 1  # kept for a retry

        smtp_proxy.pass_through()
        wait_until(lambda: run_worker(settings, catalog, once=True).done == 1, timeout=20)
        time.sleep(1.2)  # past the visibility timeout: a leftover copy would show now
        assert run_worker(settings, catalog, once=True).done == 0
    [mail] = handler.messages
    assert sha256_file(source) in mail.message.as_string()
    assert queue_depth(moto_endpoint, queue) == (0, 0)


# -- the disk under the reorder spill fills up ------------------------------------------


@pytest.fixture
def tiny_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 1 MiB tmpfs as the temporary directory (needs root, as on the test machine)."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    monkeypatch.setattr(tempfile, "tempdir", str(mount))
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_under_the_reorder_spill_fails_the_write_with_a_status(
    gateway_factory, tiny_tmp: Path, tmp_path: Path
) -> None:
    config = {**PDF, "uploads": {**PDF["uploads"], "reorder_memory": 256 * 1024}}
    running = gateway_factory(config)
    block = 256 * 1024
    data = b"%PDF-1.7\n" + bytes(8 * MIB - 9)
    ssh, sftp = sftp_client(running)
    try:
        handle = sftp.open("gap.pdf", "wb")
        with pytest.raises(OSError) as refused:
            for offset in range(len(data) - block, 0, -block):  # from the end: all ahead
                handle.seek(offset)
                handle.write(data[offset : offset + block])
                handle.flush()
        assert "no disk space left for out-of-order writes" in str(refused.value)
        with pytest.raises(OSError):
            close_reporting(sftp, handle)  # a file with holes never becomes an object
    finally:
        ssh.close()
    assert not running.object_exists(running.key_for("gap.pdf"))
    ok = make_pdf(tmp_path / "after.pdf", 300_000)
    assert put(running, ok, "after.pdf").returncode == 0  # the gateway still serves
    assert_consistent(running)


def test_an_append_whose_read_back_s3_cuts_fails_with_a_status_and_keeps_nothing(
    gateway_factory: Callable[..., RunningGateway], s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """APPEND copies the stored object into the new one first. When S3 cut that read,
    the client got 'internal server error' and the new upload kept its memory charge
    (for good: later uploads were refused), its multipart upload and an in_progress row."""
    running = behind(gateway_factory, s3_proxy, {"storage": {"max_attempts": 1}})
    source = make_pdf(tmp_path / "a.pdf", 20 * MIB)
    assert put(running, source, "a.pdf").returncode == 0
    ssh, sftp = sftp_client(running)
    try:
        s3_proxy.reset_after(7 * MIB, "down")  # the read-back GET is cut after 7 MiB
        handle = sftp.open("a.pdf", "a")
        with pytest.raises(OSError, match="storage unavailable during read"):
            handle.write(b"more bytes")
            handle.flush()
        s3_proxy.pass_through()
        with contextlib.suppress(OSError):  # the CLOSE repeats the failure
            close_reporting(sftp, handle)
    finally:
        ssh.close()
    wait_until(lambda: running.gateway.active.all() == [], timeout=10)
    assert running.gateway.uploads.memory.in_use == 0
    assert running.open_multipart_uploads() == []
    rows = running.catalog.uploads_for_key(running.bucket, running.key_for("a.pdf"))
    assert sorted(row.status for row in rows) == ["aborted", "completed"]
    assert_stored(running, source, "a.pdf")  # the file is as it was


def test_a_download_s3_cuts_midway_goes_on_from_a_new_request(
    gateway_factory: Callable[..., RunningGateway], s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A GET cut after 1 MiB: the download reads on from a new ranged GET; it was
    'internal server error' with an ERROR traceback."""
    config = {"storage": {"read_timeout": 1.0, "max_attempts": 1}}
    running = behind(gateway_factory, s3_proxy, config)
    source = make_pdf(tmp_path / "a.pdf", 12 * MIB)
    assert put(running, source, "a.pdf").returncode == 0
    ssh, sftp = sftp_client(running)
    try:
        handle = sftp.open("a.pdf", "rb")
        received = handle.read(MIB)
        s3_proxy.reset_all()
        while chunk := handle.read(256 * 1024):
            received += chunk
    finally:
        ssh.close()
    assert hashlib.sha256(received).hexdigest() == sha256_file(source)


class LoseCompleteAnswer(FaultProxy):
    """S3 completes the multipart upload, its answer is lost (reset), and the retry is
    answered 404 NoSuchUpload, as MinIO and Ceph RGW answer for a completed upload."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost = 0

    def _forward(self, link: Any, sink: Any, direction: str, data: bytes, mode: Any) -> bool:
        request_line = data.split(b"\r\n", 1)[0]
        if direction == "up" and data.startswith(b"POST ") and b"uploadId=" in request_line:
            link.doomed = True
        if direction == "down" and getattr(link, "doomed", False) and not self.lost:
            self.lost += 1
            self.http_error(
                404,
                "NoSuchUpload",
                match=lambda r: r.method == "POST" and "uploadId=" in r.target,
                times=1,
            )
            link.close(reset=True)
            return False
        result: bool = super()._forward(link, sink, direction, data, mode)
        return result


def test_a_completion_whose_answer_is_lost_and_whose_retry_is_no_such_upload_is_published(
    gateway_factory: Callable[..., RunningGateway], moto_endpoint: str, tmp_path: Path
) -> None:
    """The object is in S3: it was recorded `failed` and the client told 'no such file',
    an object without its row. S3 is asked, and the upload is completed."""
    with LoseCompleteAnswer(address_of(moto_endpoint)) as proxy:
        running = behind(gateway_factory, proxy)
        source = make_pdf(tmp_path / "a.pdf", 12 * MIB)
        result = put(running, source, "a.pdf")
        assert proxy.lost == 1
        assert result.returncode == 0, result.stderr
        assert_stored(running, source, "a.pdf")
