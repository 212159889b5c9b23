"""Limits after login, against a real `sftp-gateway serve`: SFTP packet, READ and WRITE
sizes, channels per connection, handles per session, uploads per user, idle timeout.

Each attack runs beside a real user's upload (OpenSSH sftp), which must still work.
"""

from __future__ import annotations

import io
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import paramiko
import pytest
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_INIT,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_REALPATH,
    CMD_STAT,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
)
from paramiko.sftp_client import int64

from sftp_gateway.sftp.protocol import MAX_IO
from tests.helpers import MIB, wait_until
from tests.serving import ServeProcess

OPEN_FOR_WRITE = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC
RSS_GROWTH_MIB = 100


@contextmanager
def login(served: ServeProcess) -> Iterator[paramiko.Transport]:
    """An authenticated paramiko transport as `alice`, closed afterwards."""
    transport = paramiko.Transport(("127.0.0.1", served.port))
    try:
        transport.connect(
            username=served.user, pkey=paramiko.Ed25519Key(filename=str(served.key_path))
        )
        yield transport
    finally:
        transport.close()


@contextmanager
def sftp_session(served: ServeProcess) -> Iterator[paramiko.SFTPClient]:
    with login(served) as transport:
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        yield client


def status_text(request: Callable[[], Any]) -> str:
    """The text of the error status a raw request gets (it must get one)."""
    with pytest.raises(OSError) as refused:
        request()
    return str(refused.value)


def open_handle(client: paramiko.SFTPClient, path: str, flags: int = OPEN_FOR_WRITE) -> bytes:
    _, msg = client._request(CMD_OPEN, path, flags, paramiko.SFTPAttributes())
    return bytes(msg.get_binary())


def close_handle(client: paramiko.SFTPClient, handle: bytes) -> None:
    client._request(CMD_CLOSE, handle)


def upload_exists(served: ServeProcess, name: str) -> bool:
    listed = served.s3().list_objects_v2(Bucket=served.bucket, Prefix=f"incoming/alice/{name}")
    return bool(listed.get("KeyCount"))


def raw_sftp_channel(transport: paramiko.Transport) -> paramiko.Channel:
    """An sftp subsystem channel past INIT/VERSION, for hand-built packets."""
    channel = transport.open_session(timeout=10)
    channel.invoke_subsystem("sftp")
    channel.sendall(struct.pack(">IBI", 5, CMD_INIT, 3))
    (length,) = struct.unpack(">I", channel.recv(4))
    received = b""
    while len(received) < length:
        received += channel.recv(length - len(received))
    return channel


def channel_closes(channel: paramiko.Channel, timeout: float = 10) -> bool:
    """True when the server ends the channel (EOF) within timeout."""
    channel.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if channel.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
    return False


def test_oversize_read_is_answered_with_at_most_the_advertised_limit(serve_factory):
    served = serve_factory()
    with sftp_session(served) as client:
        client.putfo(_pdf(1 * MIB), "/big.pdf")
        handle = open_handle(client, "/big.pdf", flags=0x1)  # READ
        kind, msg = client._request(CMD_READ, handle, int64(0), 8 * MIB)
        assert kind == CMD_DATA
        assert len(msg.get_binary()) == MAX_IO <= 256 * 1024
        close_handle(client, handle)
    assert served.user_can_upload()


def test_write_over_the_limit_is_refused_with_status_and_never_published(serve_factory):
    served = serve_factory()
    with sftp_session(served) as client:
        handle = open_handle(client, "/oversize.pdf")
        client._request(CMD_WRITE, handle, int64(0), b"%PDF-" + bytes(1000))
        too_big = bytes(MAX_IO + 1)
        text = status_text(lambda: client._request(CMD_WRITE, handle, int64(1005), too_big))
        assert text == f"write of {MAX_IO + 1} bytes exceeds the 261120-byte limit"
        assert "exceeds the 261120-byte limit" in status_text(lambda: close_handle(client, handle))
    assert not upload_exists(served, "oversize.pdf")
    assert "SFTP WRITE refused for alice from 127.0.0.1: write of 261121 bytes" in served.log_text()
    assert served.user_can_upload()


def test_eight_mib_write_closes_the_channel_and_publishes_nothing(serve_factory):
    served = serve_factory()
    rss_before = served.rss_mib()
    with sftp_session(served) as client:
        handle = open_handle(client, "/huge.pdf")
        sender = threading.Thread(
            target=_quietly,
            args=(
                client._async_request,
                type(None),
                CMD_WRITE,
                handle,
                int64(0),
                b"%PDF-" + bytes(8 * MIB),
            ),
            daemon=True,
        )
        sender.start()
        assert channel_closes(client.sock)
    assert not upload_exists(served, "huge.pdf")
    assert "SFTP packet refused for alice from 127.0.0.1: packet of 8388" in served.log_text()
    assert served.rss_mib() - rss_before < RSS_GROWTH_MIB
    assert served.user_can_upload()


def test_packet_header_claiming_sixteen_mib_closes_the_channel(serve_factory):
    served = serve_factory()
    with login(served) as transport:
        channel = raw_sftp_channel(transport)
        channel.sendall(struct.pack(">IBI", 16 * MIB, CMD_WRITE, 7) + bytes(1024))
        assert channel_closes(channel)
        assert transport.is_active()  # the channel, not the connection
    log = served.log_text()
    assert "packet of 16777216 bytes exceeds the 278528-byte limit; channel closed" in log
    assert "Traceback" not in log
    assert served.user_can_upload()


def test_only_max_sessions_channels_open_on_one_connection(serve_factory):
    served = serve_factory()
    with login(served) as transport:
        opened, refused = [], 0
        for _ in range(60):
            try:
                opened.append(transport.open_session(timeout=10))
            except paramiko.ChannelException:
                refused += 1
        assert (len(opened), refused) == (10, 50)
        opened.pop().close()  # a closed channel frees its slot
        wait_until(lambda: _can_open(transport), timeout=10)
    log = served.log_text()
    assert "channel refused for alice from 127.0.0.1: too many sessions on one connection" in log
    assert served.user_can_upload()


def test_handle_beyond_max_handles_per_session_is_refused(serve_factory):
    served = serve_factory()
    with sftp_session(served) as client:
        handles = [client._request(CMD_OPENDIR, "/")[1].get_binary() for _ in range(64)]
        assert status_text(lambda: client._request(CMD_OPENDIR, "/")) == (
            "too many open files (limit 64)"
        )
        assert status_text(lambda: open_handle(client, "/one-more.pdf")) == (
            "too many open files (limit 64)"
        )
        close_handle(client, handles.pop())
        close_handle(client, open_handle(client, "/one-more.pdf"))
    assert "SFTP OPEN refused for alice from 127.0.0.1: too many open files" in served.log_text()
    assert served.user_can_upload()


def test_concurrent_uploads_per_user_are_capped_across_connections(serve_factory):
    served = serve_factory({"uploads": {"max_concurrent_per_user": 4}})
    with sftp_session(served) as first, sftp_session(served) as second:
        held = [open_handle(first, f"/a{i}.pdf") for i in range(2)]
        held += [open_handle(second, f"/b{i}.pdf") for i in range(2)]
        text = status_text(lambda: open_handle(second, "/c.pdf"))
        assert text == "too many uploads in progress (limit 4); close one first"
        assert not served.user_can_upload()  # the user's own new session is refused too
        close_handle(first, held[0])
        close_handle(second, open_handle(second, "/c.pdf"))
    assert "upload refused for alice from 127.0.0.1: too many uploads" in served.log_text()
    assert served.user_can_upload()  # the slots come back when the sessions end


def test_idle_connection_is_closed_after_idle_timeout_but_an_active_upload_is_not(
    serve_factory,
):
    served = serve_factory({"server": {"idle_timeout": 2, "keepalive_interval": 1}})
    with login(served) as idle, sftp_session(served) as active:
        paramiko.SFTPClient.from_transport(idle)
        with active.open("/slow.pdf", "wb") as handle:
            handle.write(b"%PDF-")
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:  # 6 s of a slow but moving upload
                handle.write(bytes(32 * 1024))
                time.sleep(0.2)
        assert not idle.is_active()
        assert active.stat("/slow.pdf").st_size > 5
    assert upload_exists(served, "slow.pdf")
    assert "session of alice from 127.0.0.1 closed: idle for 2s" in served.log_text()
    assert served.user_can_upload()


def test_a_client_that_queues_requests_and_never_reads_replies_is_idle(serve_factory):
    """The server stops reading once its replies fill the client's window; its unread
    input is then the client's doing, not the server's: idle_timeout applies."""
    served = serve_factory({"server": {"idle_timeout": 2}})
    with login(served) as transport:
        channel = raw_sftp_channel(transport)
        path = b"/" + b"a" * 60
        body = struct.pack(">BI", CMD_REALPATH, 1) + struct.pack(">I", len(path)) + path
        requests = (struct.pack(">I", len(body)) + body) * 40_000  # replies: past its window
        channel.sendall(requests)  # within the window; the replies are never read
        wait_until(lambda: not transport.is_active(), timeout=15)
    assert "session of alice from 127.0.0.1 closed: idle for 2s" in served.log_text()
    assert served.user_can_upload()


def test_unknown_request_types_and_bad_names_get_a_status_not_a_traceback(serve_factory):
    served = serve_factory()
    with sftp_session(served) as client:
        assert status_text(lambda: client._request(99, 1)) == "unsupported request type 99"
        assert status_text(lambda: client._request(CMD_STAT, b"/\xff\xfe.pdf")) == (
            "file names must be valid UTF-8"
        )
        crafted_attrs = (0x80000000, 0xFFFFFFFF)  # EXTENDED, then 2**32 - 1 pairs
        started = time.monotonic()
        text = status_text(
            lambda: client._request(CMD_OPEN, "/x.pdf", OPEN_FOR_WRITE, *crafted_attrs)
        )
        assert text == "malformed request: it ends before its fields"
        assert time.monotonic() - started < 5
        client.stat("/")  # the session still answers
    log = served.log_text()
    assert "SFTP 99 refused for alice from 127.0.0.1: unsupported request type 99" in log
    assert "SFTP STAT refused for alice from 127.0.0.1: file names must be valid UTF-8" in log
    assert "Traceback" not in log
    assert served.user_can_upload()


def _pdf(size: int) -> io.BytesIO:
    return io.BytesIO(b"%PDF-1.7\n" + bytes(size - 9))


def _quietly(function: Callable[..., Any], *args: Any) -> None:
    with suppress(Exception):  # the server closed the channel under the sender: expected
        function(*args)


def _can_open(transport: paramiko.Transport) -> bool:
    try:
        transport.open_session(timeout=10).close()
    except paramiko.ChannelException:
        return False
    return True
