"""A peer cannot make the server buffer more than a few KiB it did not agree to.

Each attack runs against a real `sftp-gateway serve` process from 127.0.0.2 over raw
sockets, and the test checks what an operator would: the connection is closed at once,
RSS and thread count stay flat, one WARNING line names the source address, and a real
user still uploads beside it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import paramiko
import pytest

from tests.helpers import MIB, wait_until
from tests.serving import ServeProcess

ATTACKER = "127.0.0.2"
KIB = 1024


def connect_from_attacker(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KIB)  # little slack in flight
    sock.bind((ATTACKER, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def read_line(sock: socket.socket, limit: int = 1024) -> bytes:
    line = b""
    while not line.endswith(b"\n") and len(line) < limit:
        piece = sock.recv(1)
        if not piece:
            break
        line += piece
    return line


def peer_closed(sock: socket.socket) -> bool:
    """True once the server has closed (EOF or reset); drains what it sent meanwhile."""
    while select.select([sock], [], [], 0)[0]:
        try:
            if not sock.recv(65536):
                return True
        except OSError:
            return True
    return False


def send_until_closed(sock: socket.socket, chunk: bytes, max_bytes: int, seconds: float) -> int:
    """Send `chunk` repeatedly until the server closes; the bytes it accepted, or raise
    when it still reads after max_bytes or `seconds` (bounded in both)."""
    sent, deadline = 0, time.monotonic() + seconds
    sock.settimeout(1)
    while sent < max_bytes and time.monotonic() < deadline:
        if peer_closed(sock):
            return sent
        try:
            sent += sock.send(chunk)
        except TimeoutError:
            continue  # the server stopped reading; wait for it to close
        except OSError:
            return sent  # reset: closed
    raise AssertionError(f"the server still accepted data after {sent} bytes")


@contextlib.contextmanager
def watched(served: ServeProcess) -> Iterator[None]:
    """Around an attack: afterwards, RSS (and its peak) grew by less than 20 MiB and the
    thread count came back down."""
    threads, rss, peak = served.settled_threads(), served.rss_mib(), served.status_field("VmHWM")
    yield
    wait_until(lambda: served.threads() <= threads, timeout=10)
    peak_growth = (served.status_field("VmHWM") - peak) / 1024
    assert served.rss_mib() - rss < 20, f"RSS grew by {served.rss_mib() - rss:.1f} MiB"
    assert peak_growth < 20, f"peak RSS grew by {peak_growth:.1f} MiB"


def wait_for_log(served: ServeProcess, text: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while text not in served.log_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log:\n{served.log_text()[-3000:]}")
        time.sleep(0.05)
    return next(line for line in served.log_text().splitlines() if text in line)


@pytest.fixture
def served(serve_factory: Callable[..., ServeProcess]) -> ServeProcess:
    return serve_factory()


def test_a_2_gib_packet_header_before_auth_is_closed_without_buffering_it(
    served: ServeProcess,
) -> None:
    with watched(served), connect_from_attacker(served.port) as sock:
        sock.sendall(b"SSH-2.0-attacker\r\n")
        assert read_line(sock).startswith(b"SSH-2.0-")
        started = time.monotonic()
        # A length that passes paramiko's block-size check (0x7fffffff fails it early).
        sock.sendall(struct.pack(">I", 0x7FFFFFFC) + bytes(4))
        accepted = send_until_closed(sock, bytes(64 * KIB), max_bytes=64 * MIB, seconds=10)
        assert time.monotonic() - started < 3
        assert accepted < 2 * MIB  # what sat in socket buffers, not in the server
    line = wait_for_log(served, f"refused {ATTACKER}: SSH packet of")
    assert "WARNING" in line and "before authentication" in line
    assert served.user_can_upload()


def test_a_version_line_without_newline_is_closed_after_8_kib(served: ServeProcess) -> None:
    with watched(served), connect_from_attacker(served.port) as sock:
        started = time.monotonic()
        sock.sendall(b"SSH-2.0-")
        accepted = send_until_closed(sock, b"A" * 4 * KIB, max_bytes=8 * MIB, seconds=10)
        assert time.monotonic() - started < 3
        assert accepted < 1 * MIB  # 8 KiB read, the rest sat in socket buffers
    line = wait_for_log(served, f"refused {ATTACKER}: version line longer than 8 KiB")
    assert "WARNING" in line
    assert served.user_can_upload()


def test_many_lines_before_the_version_line_are_closed_after_8_kib(served: ServeProcess) -> None:
    with watched(served), connect_from_attacker(served.port) as sock:
        accepted = send_until_closed(sock, b"x" * 80 + b"\r\n", max_bytes=MIB, seconds=10)
        assert accepted < 512 * KIB
    wait_for_log(served, f"refused {ATTACKER}: more than 8 KiB of lines before the version")
    assert served.user_can_upload()


def test_an_oversized_packet_after_auth_is_closed(served: ServeProcess) -> None:
    """After login the length of an AES-GCM packet travels in clear: claim 2 GiB."""
    with watched(served), connect_from_attacker(served.port) as sock:
        ciphers = paramiko.Transport._preferred_ciphers
        transport = paramiko.Transport(
            sock,
            disabled_algorithms={"ciphers": [c for c in ciphers if c != "aes128-gcm@openssh.com"]},
        )
        try:
            transport.connect()
            key = paramiko.Ed25519Key.from_private_key_file(str(served.key_path))
            transport.auth_publickey(served.user, key)
            assert transport.is_authenticated()
            # The client is idle after login, so nothing else writes to the socket.
            sock.sendall(struct.pack(">I", 0x7FFFFFF0) + bytes(12))
            started = time.monotonic()
            wait_until(lambda: not transport.is_active(), timeout=5)
            assert time.monotonic() - started < 3
        finally:
            transport.close()
    line = wait_for_log(served, f"refused {ATTACKER}: SSH packet of")
    assert "before authentication" not in line
    assert served.user_can_upload()


def _realpath_requests(size: int) -> bytes:
    """SFTP REALPATH requests, about `size` bytes of them."""
    path = b"/" + b"a" * 60
    body = struct.pack(">BI", 16, 1) + struct.pack(">I", len(path)) + path
    one = struct.pack(">I", len(body)) + body
    return one * (size // len(one))


def _channel_data(channel: paramiko.Channel, payload: bytes) -> paramiko.Message:
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_DATA)
    message.add_int(channel.remote_chanid)
    message.add_string(payload)
    return message


@pytest.mark.parametrize("subsystem", [None, "sftp"], ids=["plain-session", "sftp"])
def test_channel_data_beyond_the_granted_window_closes_the_connection(
    served: ServeProcess, subsystem: str | None
) -> None:
    """A peer that ignores SSH flow control (paramiko would buffer every byte: 300 MiB
    sent grew the server by 300 MiB) is refused once it overruns the window."""
    with watched(served), connect_from_attacker(served.port) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.connect()
            key = paramiko.Ed25519Key.from_private_key_file(str(served.key_path))
            transport.auth_publickey(served.user, key)
            channel = transport.open_session()
            if subsystem:
                channel.invoke_subsystem(subsystem)
            granted = channel.out_window_size
            chunk = _realpath_requests(128 * 1024) if subsystem else b"\0" * (128 * 1024)
            if subsystem:  # SFTP: INIT, then requests whose replies this client never reads
                transport._send_user_message(_channel_data(channel, struct.pack(">IBI", 5, 1, 3)))
            sent = 0
            while transport.is_active() and sent < granted + 64 * MIB:
                try:  # no wait for the window: what a hostile peer does
                    transport._send_user_message(_channel_data(channel, chunk))
                except (EOFError, OSError):
                    break  # the server closed the connection
                sent += len(chunk)
            assert sent < granted + 64 * MIB  # the server closed it long before
        finally:
            transport.close()
    line = wait_for_log(served, f"refused {ATTACKER}: channel 0: data beyond the window")
    assert "granted" in line
    assert served.user_can_upload()


def test_a_download_cut_by_the_client_ends_quietly_and_serves_nothing_more(
    served: ServeProcess,
) -> None:
    """Ctrl-C during `get`: the READs still queued are not served to a closed channel,
    each with an ERROR traceback (about 1,200 of them per cut download before)."""
    served.s3().put_object(
        Bucket=served.bucket, Key="incoming/alice/big.pdf", Body=b"x" * (40 * MIB)
    )
    transport = paramiko.Transport(("127.0.0.1", served.port))
    try:
        key = paramiko.Ed25519Key.from_private_key_file(str(served.key_path))
        transport.connect(username=served.user, pkey=key)
        remote = paramiko.SFTPClient.from_transport(transport).open("/big.pdf", "rb")
        remote.prefetch()  # READs for the whole file, pipelined
        remote.read(MIB)
        transport.sock.close()  # the client process dies
    finally:
        transport.close()
    wait_for_log(served, "session.end")
    time.sleep(1)
    log = served.log_text()
    assert '"level":"ERROR"' not in log and "Traceback" not in log
    assert served.user_can_upload()
