"""A dropped upload continues where it stopped: interrupted, visible, resumed, whole."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from sftp_gateway.catalog.repository import utcnow
from sftp_gateway.gc import collect_garbage
from tests.helpers import (
    MIB,
    SSH_OPTIONS,
    free_port,
    make_pdf,
    make_user_key,
    serve_subprocess,
    sha256_file,
    tagged_sha256,
    wait_port,
    wait_until,
)

SIZE = 150 * MIB
KILL_AFTER = 50 * MIB
POLICY = {"uploads": {"max_file_size": "2GiB"}}


def sftp_args(port: int, key: Path) -> list[str]:
    return ["sftp", *SSH_OPTIONS, "-i", str(key), "-P", str(port), "-b", "-", "alice@127.0.0.1"]


def start_put(port: int, key: Path, source: Path, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        sftp_args(port, key),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(f"put {source} {name}\n")
    proc.stdin.flush()
    return proc


def interrupted_row(running, key: str):  # type: ignore[no-untyped-def]
    rows = running.catalog.uploads_for_key(running.bucket, key)
    return rows[0] if rows and rows[0].status == "interrupted" else None


def received_bytes(running) -> int:  # type: ignore[no-untyped-def]
    return max((w.size for w in running.gateway.active.all()), default=0)


def interrupt_with_killed_client(running, source: Path, name: str, after: int):  # type: ignore[no-untyped-def]
    """Start `put`, kill -9 the sftp client past `after` bytes; return the interrupted row."""
    key = running.key_for(name)
    proc = start_put(running.port, running.key_path, source, name)
    wait_until(lambda: received_bytes(running) > after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_until(lambda: interrupted_row(running, key) is not None)
    return interrupted_row(running, key)


def reput(running, source: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    running.sftp(f"reput {source} {name}\n")


def test_killed_client_resumes_with_reput_and_the_object_is_whole(
    gateway_factory, tmp_path: Path
) -> None:
    running = gateway_factory(POLICY)
    source = make_pdf(tmp_path / "big.pdf", SIZE)
    key = running.key_for("big.pdf")
    proc = start_put(running.port, running.key_path, source, "big.pdf")
    wait_until(lambda: received_bytes(running) > KILL_AFTER)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_until(lambda: interrupted_row(running, key) is not None)
    partial = interrupted_row(running, key)
    received = int(re.search(r"(\d+) bytes received", partial.error).group(1))
    lost = received - partial.size  # received but not durable: the resume sends it again
    part_size = running.settings.storage.part_size
    assert lost <= part_size + running.settings.server.window_size
    assert partial.size > 0 and partial.size % (5 * MIB) == 0
    assert not running.object_exists(key)  # not visible in S3 while interrupted
    listing = running.sftp("ls -l big.pdf\n").stdout
    assert str(partial.size) in listing  # visible to clients at its resumable size

    reput(running, source, "big.pdf")
    assert running.object_sha256(key) == sha256_file(source)
    [row] = running.catalog.uploads_for_key(running.bucket, key)
    assert row.id == partial.id and row.status == "completed"
    assert row.sha256 == sha256_file(source)
    assert tagged_sha256(running.storage.client, running.bucket, key) == row.sha256
    assert running.open_multipart_uploads() == []
    print(
        f"interrupted at {received} bytes received, {partial.size} durable: resume re-sent {lost}"
    )


class CuttableProxy:
    """A TCP proxy on loopback whose connections the test can cut at once."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        """Reset both sides. shutdown() first: a close() alone does not wake a pipe
        thread blocked in recv() on the socket, and while that recv holds the socket the
        kernel sends nothing, so a client waiting for window space hung (seen in CI)."""
        for sock in self._sockets:
            try:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._sockets.clear()

    def close(self) -> None:
        self.cut()
        self._server.close()


def test_cut_connection_resumes(gateway_factory, tmp_path: Path) -> None:
    running = gateway_factory(POLICY)
    proxy = CuttableProxy(running.port)
    try:
        source = make_pdf(tmp_path / "big.pdf", SIZE)
        key = running.key_for("big.pdf")
        proc = start_put(proxy.port, running.key_path, source, "big.pdf")
        wait_until(lambda: received_bytes(running) > KILL_AFTER)
        proxy.cut()
        proc.wait(timeout=60)
        wait_until(lambda: interrupted_row(running, key) is not None)
        assert not running.object_exists(key)
        reput(running, source, "big.pdf")
        assert running.object_sha256(key) == sha256_file(source)
        assert running.open_multipart_uploads() == []
    finally:
        proxy.close()


def test_put_starts_over_after_an_interruption(gateway_factory, tmp_path: Path) -> None:
    running = gateway_factory(POLICY)
    source = make_pdf(tmp_path / "big.pdf", 64 * MIB)  # killed at 15 MiB: ample margin
    key = running.key_for("big.pdf")
    interrupt_with_killed_client(running, source, "big.pdf", 15 * MIB)
    running.sftp(f"put {source} big.pdf\n")  # TRUNC: a new upload, the old one aborted
    assert running.object_sha256(key) == sha256_file(source)
    statuses = sorted(r.status for r in running.catalog.uploads_for_key(running.bucket, key))
    assert statuses == ["aborted", "completed"]
    assert running.open_multipart_uploads() == []


def test_resume_at_a_wrong_offset_says_the_resumable_size(gateway_factory, tmp_path: Path) -> None:
    from tests.test_sftp_uploads import paramiko_sftp

    running = gateway_factory(POLICY)
    source = make_pdf(tmp_path / "big.pdf", 64 * MIB)  # killed at 15 MiB: ample margin
    key = running.key_for("big.pdf")
    interrupt_with_killed_client(running, source, "big.pdf", 15 * MIB)
    committed = interrupted_row(running, key).size
    with paramiko_sftp(running) as sftp, sftp.open("big.pdf", "r+") as handle:
        handle.seek(committed + 12345)
        with pytest.raises(OSError, match=f"resumed at byte {committed}"):
            handle.write(b"x" * 1000)
            handle.flush()
    # the refused write and the close leave the resumable upload as it was
    assert interrupted_row(running, key).size == committed
    assert not running.object_exists(key)


def test_gc_aborts_expired_interrupted_uploads(gateway_factory, tmp_path: Path) -> None:
    running = gateway_factory(POLICY)
    source = make_pdf(tmp_path / "big.pdf", 64 * MIB)  # killed at 15 MiB: ample margin
    key = running.key_for("big.pdf")
    interrupt_with_killed_client(running, source, "big.pdf", 15 * MIB)
    assert running.open_multipart_uploads() != []
    report = collect_garbage(
        running.settings, running.catalog, running.storage, now=utcnow() + timedelta(days=2)
    )
    assert len(report.expired) == 1
    assert running.open_multipart_uploads() == []
    [row] = running.catalog.uploads_for_key(running.bucket, key)
    assert row.status == "aborted"
    with running.catalog.dispatch_batch(100) as (events, _):
        assert [e.event_type for e in events if e.payload["key"] == key] == ["upload.failed"]


def test_gc_aborts_orphan_multipart_uploads(gateway) -> None:
    client = gateway.storage.client
    orphan = client.create_multipart_upload(Bucket=gateway.bucket, Key="incoming/x/orphan.pdf")
    report = collect_garbage(
        gateway.settings, gateway.catalog, gateway.storage, now=utcnow() + timedelta(hours=2)
    )
    assert report.orphans == [orphan["UploadId"]]
    assert gateway.open_multipart_uploads() == []


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("postgres_url")


def test_gateway_killed_mid_upload_recovers_and_resumes(
    moto_endpoint: str, bucket_name: str, tmp_path: Path, catalog_url: str
) -> None:
    """kill -9 of the gateway process; restart; reput finishes the same upload."""
    import yaml

    from sftp_gateway.app import build_catalog
    from sftp_gateway.config import load_settings
    from sftp_gateway.storage.s3 import S3Storage

    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {  # one process: kill -9 kills the gateway, no supervisor
                    "listen": f"127.0.0.1:{port}",
                    "host_keys_dir": str(tmp_path / "hk"),
                    "workers": 1,
                },
                "storage": {
                    "bucket": bucket_name,
                    "prefix": "incoming",
                    "endpoint_url": moto_endpoint,
                    "part_size": "5MiB",
                },
                "catalog": {"url": catalog_url},
                "uploads": {"max_file_size": "2GiB"},
            }
        )
    )
    settings = load_settings(config)
    storage = S3Storage(settings.storage)
    storage.client.create_bucket(Bucket=bucket_name)
    key_path = make_user_key(tmp_path / "keys")
    cli = [sys.executable, "-m", "sftp_gateway"]
    subprocess.run(
        [*cli, "users", "add", "alice", "--key", f"{key_path}.pub", "--config", str(config)],
        check=True,
        capture_output=True,
    )
    catalog = build_catalog(settings)
    source = make_pdf(tmp_path / "big.pdf", SIZE)
    key = "incoming/alice/big.pdf"
    log = tmp_path / "gateway.log"

    gateway = serve_subprocess(config, log)
    try:
        wait_port(port)
        client = start_put(port, key_path, source, "big.pdf")

        def checkpointed() -> bool:  # the first parts are recorded, the upload goes on
            rows = catalog.uploads_for_key(bucket_name, key)
            return bool(rows) and rows[0].status == "in_progress" and rows[0].size > 0

        wait_until(checkpointed)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
        client.kill()
        client.wait()
        assert storage.head(key) is None

        gateway = serve_subprocess(config, log)
        wait_port(port)
        wait_until(lambda: catalog.uploads_for_key(bucket_name, key)[0].status == "interrupted")
        args = sftp_args(port, key_path)
        subprocess.run(args, input=f"reput {source} big.pdf\n", text=True, check=True)
        digest = storage.client.get_object(Bucket=bucket_name, Key=key)["Body"].read()
        import hashlib

        assert hashlib.sha256(digest).hexdigest() == sha256_file(source)
        [row] = catalog.uploads_for_key(bucket_name, key)
        assert row.status == "completed"
        assert storage.client.list_multipart_uploads(Bucket=bucket_name).get("Uploads") is None
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)


def test_resume_through_a_second_gateway_on_the_same_postgres(
    gateway_factory, tmp_path: Path, postgres_url: str
) -> None:
    first = gateway_factory({**POLICY, "server": {"instance_id": "gw-a"}}, catalog_url=postgres_url)
    source = make_pdf(tmp_path / "big.pdf", 64 * MIB)  # killed at 15 MiB: ample margin
    key = first.key_for("big.pdf")
    interrupt_with_killed_client(first, source, "big.pdf", 15 * MIB)

    second = gateway_factory(
        {**POLICY, "server": {"instance_id": "gw-b"}}, catalog_url=postgres_url, add_user=False
    )
    subprocess.run(
        sftp_args(second.port, first.key_path),
        input=f"reput {source} big.pdf\n",
        text=True,
        check=True,
        capture_output=True,
    )
    assert second.object_sha256(key) == sha256_file(source)
    [row] = first.catalog.uploads_for_key(first.bucket, key)
    assert row.status == "completed"


def test_gc_aborts_in_progress_uploads_with_no_progress(gateway) -> None:
    from sftp_gateway.catalog.repository import UploadRecord

    key = gateway.key_for("stale.pdf")
    s3_id = gateway.storage.create_multipart(key, {}, "application/pdf")
    record = UploadRecord(
        id="stale-upload",
        user_name="alice",
        path="/stale.pdf",
        bucket=gateway.bucket,
        object_key=key,
        status="in_progress",
        started_at=utcnow() - timedelta(days=3),
        s3_upload_id=s3_id,
        owner="a-host-that-never-came-back",
    )
    gateway.catalog.start_upload(record)
    report = collect_garbage(gateway.settings, gateway.catalog, gateway.storage)
    assert report.expired == ["stale-upload"]
    assert gateway.catalog.get_upload("stale-upload").status == "aborted"
    assert gateway.open_multipart_uploads() == []
