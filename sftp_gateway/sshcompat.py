"""Everything the gateway does to paramiko below its public API, in one place.

paramiko leaves a public port open to three cheap attacks before authentication, and two
hot spots in its packet layer; this module closes them and is the only one (with
`sftp/protocol.py`, which extends `SFTPServer`) allowed to touch paramiko's internals.
tests/test_paramiko_compat.py checks every touch point below, so a paramiko release
that moves one fails loudly, naming it; pyproject.toml pins paramiko to the range
where that test passed.

Touch points (private or undocumented paramiko API):

- `Transport(packetizer_class=...)` (public since 3.4) builds our `BoundedPacketizer`.
- `Transport._channel_handler_table` (message type -> `Channel` method) is extended so
  channel data beyond the granted window is refused; it reads `Channel.in_window_size`,
  `in_window_sofar`, and the `_buffer` of `in_buffer` and `in_stderr_buffer`
  (BufferedPipes), and calls `Channel._feed` / `_feed_extended` once checked.
- `Transport._check_banner()` is overridden to turn a refused identification into one
  WARNING line and a quiet close instead of paramiko's ERROR traceback.
- `Packetizer.readline(timeout)` is replaced; it relies on `Packetizer._read_timeout`
  and the name-mangled `Packetizer.__remainder` (bytes read past the version line).
- `Packetizer.read_all(n, check_rekey)`: `read_message` reads every packet body through
  it with `n` derived from the packet's length field, so checking `n` bounds a packet
  before its body is read or allocated.
- `Packetizer.start_handshake/handshake_timed_out/complete_handshake` are replaced (a
  deadline instead of a Timer thread); `Transport.run` and `Packetizer.read_all` call them.
- `Transport._preferred_{kex,ciphers,macs,keys,pubkeys}`: paramiko's default algorithm
  lists, read by `crypto_policy` (which then disables what it forbids, public API).
- `paramiko.packet.compute_hmac` and `paramiko.util.constant_time_bytes_eq`, looked up by
  `Packetizer.read_message`/`send_message` at call time, are replaced by C versions.
- `Channel.in_buffer` (a `BufferedPipe`) with its `_lock` and `_buffer` (an `array`).
- Read only: `Channel.in_window_sofar`, `Channel.out_window_size`, `len(Channel.in_buffer)`
  (`channel_activity`), `Transport._channels` (`open_channel_count`),
  `Transport.server_object` (`server_object`), `Transport.auth_handler.authenticated`
  (`was_authenticated`).
- The SFTP server: `BaseSFTP._read_all` (`read_sftp_packet`, which replaces
  `_read_packet`), `Message.packet` (`request_buffer`), `SFTPServer.file_table` and
  `folder_table` (`open_handle_count`; protocol.py also looks handles up in them), and
  the SFTPServer methods protocol.py overrides (`_process`, `_send_server_version`,
  `_read_packet`, `_send_packet`, `start_subsystem`, `finish_subsystem`).

Nothing here imports the rest of the gateway: the modules that use these helpers
(app, ssh, idle, sftp/protocol, crypto_policy) sit above it.
"""

from __future__ import annotations

import hmac
import io
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, cast

import paramiko
import paramiko.common
import paramiko.packet
import paramiko.util
from paramiko.message import Message
from paramiko.packet import Packetizer
from paramiko.sftp import BaseSFTP
from paramiko.sftp_server import SFTPServer

log = logging.getLogger(__name__)

KIB = 1024
IDENTIFICATION_LIMIT = 8 * KIB  # the version line, and all lines before it together
PACKET_MARGIN = 64 * KIB  # packet length, padding and MAC around a channel data payload
PRE_AUTH_PACKET_LIMIT = 64 * KIB  # KEXINIT, key exchange and auth packets are ~1-10 KiB
ALGORITHM_CATEGORIES = ("kex", "ciphers", "macs", "keys", "pubkeys")


class ConnectionRefused(EOFError):
    """A limit was exceeded; already logged. An EOFError, so paramiko closes quietly."""


# -- the packet layer ------------------------------------------------------------------


@dataclass(frozen=True)
class TransportLimits:
    """Bounds on what a peer may make the server buffer."""

    max_packet: int  # after authentication: the channel packet size plus a margin
    pre_auth_packet: int = PRE_AUTH_PACKET_LIMIT
    identification: int = IDENTIFICATION_LIMIT

    @classmethod
    def for_channel_packets(cls, max_packet_size: int) -> TransportLimits:
        return cls(max_packet=max_packet_size + PACKET_MARGIN)


def _peer_host(sock: Any) -> str:
    try:
        return str(sock.getpeername()[0])
    except (OSError, AttributeError, IndexError):
        return "unknown"


# Linux only; elsewhere the handshake keeps the kernel's delayed ACKs.
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class BoundedPacketizer(Packetizer):  # type: ignore[misc]
    """paramiko's Packetizer with a size limit on every line and packet it reads.

    Relies on `Packetizer._read_timeout`, `Packetizer.__remainder` and on `read_message`
    reading each body through `read_all` (see the module docstring).
    """

    def __init__(self, sock: Any, *, limits: TransportLimits) -> None:
        super().__init__(sock)
        self.limits = limits
        self._sock = sock
        self._quickack = QUICKACK  # None once ACKs may be delayed again
        self.peer = _peer_host(sock)  # app sets the real address (PROXY protocol)
        self.conn: str | None = None  # the connection id in the logs
        self.bytes_in = 0  # bytes of SSH packets read and written, for session.end
        self.bytes_out = 0
        self.identification_deadline = float("inf")
        self.is_authenticated: Callable[[], bool] = lambda: False
        self._identification_bytes = 0
        self._authenticated = False
        self._handshake_deadline: float | None = None
        self._handshake_complete = False

    # paramiko runs a threading.Timer per connection for the handshake timeout, and the
    # Timer outlives a connection that dies before its KEXINIT (a thread for 30 s per
    # probe); a deadline checked where paramiko checks the Timer costs no thread.
    def start_handshake(self, timeout: float) -> None:
        if self._handshake_deadline is None:
            self._handshake_deadline = time.monotonic() + float(timeout)

    def handshake_timed_out(self) -> bool:
        if self._handshake_complete or self._handshake_deadline is None:
            return False
        return time.monotonic() > self._handshake_deadline

    def complete_handshake(self) -> None:
        self._handshake_complete = True

    def refuse(self, reason: str) -> ConnectionRefused:
        """Log the refusal once, in a form fail2ban can match, and return the error."""
        extra = {"event": "refused", "conn": self.conn, "addr": self.peer}
        log.warning("refused %s: %s", self.peer, reason, extra=extra)
        return ConnectionRefused(reason)

    def read_all(self, n: int, check_rekey: bool = False) -> bytes:
        if n > self.limits.pre_auth_packet:
            self._check_packet_size(n)
        self.bytes_in += n
        data: bytes = super().read_all(n, check_rekey)
        if self._quickack is not None:
            self._ack_now(self._quickack)
        return data

    def _ack_now(self, quickack: int) -> None:
        """ACK what was just read at once, until the client is authenticated.

        OpenSSH's client leaves Nagle on for sftp and scp, so it holds a small packet
        (KEX_ECDH_INIT after KEXINIT, SERVICE_REQUEST after NEWKEYS) until the one before
        it is ACKed, and Linux delays that ACK by up to 40 ms when the server has nothing
        to send back: each such pair cost a login 40 ms. After authentication every
        request gets an answer that carries the ACK, so the syscall stops there."""
        if self._client_authenticated():
            self._quickack = None
            return
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:  # not TCP (a socketpair in tests): nothing to ACK
            self._quickack = None

    def write_all(self, out: bytes) -> None:
        self.bytes_out += len(out)
        super().write_all(out)

    def _client_authenticated(self) -> bool:
        """Asked of the transport until it says yes: authentication is never undone."""
        if not self._authenticated:
            self._authenticated = self.is_authenticated()
        return self._authenticated

    def _check_packet_size(self, n: int) -> None:
        authenticated = self._client_authenticated()
        limit = self.limits.max_packet if authenticated else self.limits.pre_auth_packet
        if n > limit:
            when = "" if authenticated else " before authentication"
            raise self.refuse(f"SSH packet of {n} bytes{when} exceeds the {limit} byte limit")

    def readline(self, timeout: float) -> str:
        """One identification line; at most `limits.identification` bytes, all lines
        together too, and all of them before `identification_deadline`."""
        buffer = bytearray(self._Packetizer__remainder)  # type: ignore[attr-defined, has-type]
        while (end := buffer.find(b"\n")) < 0:
            if self._identification_bytes + len(buffer) > self.limits.identification:
                raise self.refuse(self._too_long_reason())
            buffer += self._read_timeout(self._wait_time(timeout))
        self._identification_bytes += end + 1
        if self._identification_bytes > self.limits.identification:
            raise self.refuse(self._too_long_reason())
        self._Packetizer__remainder = bytes(buffer[end + 1 :])  # type: ignore[attr-defined]
        line = bytes(buffer[:end]).removesuffix(b"\r")
        return paramiko.util.u(line)  # type: ignore[no-any-return]

    def _too_long_reason(self) -> str:
        limit = self.limits.identification // KIB
        if self._identification_bytes:
            return f"more than {limit} KiB of lines before the version line"
        return f"version line longer than {limit} KiB"

    def _wait_time(self, timeout: float) -> float:
        left = self.identification_deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no SSH version line in time")
        return min(timeout, left)


WINDOW_CHECK_SHARE = 1 / 8


def _held_by(channel: paramiko.Channel) -> int:
    """Bytes the peer sent on `channel` that the window still counts: read but not yet
    given back by a WINDOW_ADJUST, plus received and not yet read.

    The order matters: a reader takes bytes out of the buffer first and counts them in
    `in_window_sofar` after, so reading the counter first can only miss bytes in that
    gap (a bound too generous for an instant), never count them twice (which could
    refuse a client that filled its window legitimately)."""
    read_not_adjusted = int(channel.in_window_sofar)
    return read_not_adjusted + _buffered(channel.in_buffer) + _buffered(channel.in_stderr_buffer)


def _buffered(pipe: Any) -> int:
    """A BufferedPipe's length without taking its lock (the reader may hold it while
    it copies data out): one consistent read under the GIL."""
    return len(pipe._buffer)


def _within_window(channel: paramiko.Channel, size: int) -> None:
    """SSH flow control is the peer's to respect: paramiko buffers whatever arrives,
    so a peer that ignores the window could fill memory. Refuse it, as OpenSSH does.
    The full count runs once per WINDOW_CHECK_SHARE of the window received (a counter
    per packet costs next to nothing; counting at every packet measured up to 5% more
    CPU per GiB), so a peer holds at most 1 + WINDOW_CHECK_SHARE windows before it is
    refused."""
    unchecked = getattr(channel, "gateway_unchecked", 0) + size
    if unchecked < channel.in_window_size * WINDOW_CHECK_SHARE:
        channel.gateway_unchecked = unchecked
        return
    channel.gateway_unchecked = 0
    if _held_by(channel) + size > channel.in_window_size:
        packetizer = cast(BoundedPacketizer, channel.transport.packetizer)
        raise packetizer.refuse(
            f"channel {channel.chanid}: data beyond the window the server granted "
            f"({channel.in_window_size} bytes)"
        )


def _feed_within_window(channel: paramiko.Channel, message: Message) -> None:
    data = message.get_binary()
    _within_window(channel, len(data))
    channel._feed(data)


def _feed_extended_within_window(channel: paramiko.Channel, message: Message) -> None:
    code, data = message.get_int(), message.get_binary()
    _within_window(channel, len(data))
    rebuilt = Message()
    rebuilt.add_int(code)
    rebuilt.add_string(data)
    rebuilt.rewind()
    channel._feed_extended(rebuilt)


class HardenedTransport(paramiko.Transport):  # type: ignore[misc]
    """A server Transport whose packetizer is bounded, whose channels hold no more than
    the window they granted, and whose identification exchange ends with one WARNING
    line when a peer misbehaves (paramiko logs a traceback)."""

    _channel_handler_table = {
        **paramiko.Transport._channel_handler_table,
        paramiko.common.MSG_CHANNEL_DATA: _feed_within_window,
        paramiko.common.MSG_CHANNEL_EXTENDED_DATA: _feed_extended_within_window,
    }

    def __init__(self, sock: socket.socket, *, limits: TransportLimits, **kwargs: Any) -> None:
        super().__init__(sock, packetizer_class=partial(BoundedPacketizer, limits=limits), **kwargs)
        self.packetizer.is_authenticated = self.is_authenticated

    def _check_banner(self) -> None:
        packetizer = cast(BoundedPacketizer, self.packetizer)
        packetizer.identification_deadline = time.monotonic() + self.banner_timeout
        try:
            super()._check_banner()
        except paramiko.SSHException as exc:
            if isinstance(exc.__context__, ConnectionRefused):
                raise exc.__context__ from None
            if isinstance(exc.__context__, EOFError):  # a port probe or health check
                log.info("connection from %s closed before its version line", packetizer.peer)
                raise EOFError("closed before its version line") from None
            if isinstance(exc.__context__, TimeoutError):  # socket.timeout too
                reason = f"no SSH version line within {self.banner_timeout:g} s"
            else:
                reason = str(exc).replace("\n", " ")[:200]
            raise packetizer.refuse(reason) from None


def server_transport(
    sock: socket.socket,
    *,
    version: str,
    max_packet_size: int,
    window_size: int,
    timeout: float,
    disabled_algorithms: dict[str, list[str]],
) -> HardenedTransport:
    """A server-side Transport with the gateway's limits, timeouts and algorithms."""
    transport = HardenedTransport(
        sock,
        limits=TransportLimits.for_channel_packets(max_packet_size),
        default_window_size=window_size,
        default_max_packet_size=max_packet_size,
        disabled_algorithms=disabled_algorithms,
        strict_kex=True,  # the Terrapin countermeasure (kex-strict-s-v00@openssh.com)
    )
    transport.local_version = version
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    transport.auth_timeout = timeout
    return transport


def paramiko_algorithms() -> dict[str, tuple[str, ...]]:
    """paramiko's default algorithm lists (what a Transport offers with nothing disabled),
    in its preference order, by `disabled_algorithms` category."""
    return {
        category: tuple(getattr(paramiko.Transport, f"_preferred_{category}"))
        for category in ALGORITHM_CATEGORIES
    }


# -- MACs in C -----------------------------------------------------------------------


@cache
def _digest_name(digest_class: Callable[[], Any]) -> str:
    return str(digest_class().name)


def compute_hmac(key: bytes, message: bytes, digest_class: Callable[[], Any]) -> bytes:
    """paramiko.packet.compute_hmac, in C.

    paramiko builds an `hmac.HMAC` per packet (the key pads are built in Python) and
    compares MACs with a Python loop; `hmac.digest` and `hmac.compare_digest` give the
    same results in C: the receive thread spends a sixth of its time less on MACs.
    """
    return hmac.digest(key, message, _digest_name(digest_class))


def install_fast_hmac() -> None:
    """Point paramiko's packet layer at the C MAC functions (idempotent; process-wide)."""
    paramiko.packet.compute_hmac = compute_hmac
    paramiko.util.constant_time_bytes_eq = hmac.compare_digest


# -- channel receive buffer ------------------------------------------------------------


def use_receive_buffer(channel: paramiko.Channel, buffer_class: type[Any]) -> None:
    """Swap the channel's receive buffer storage for `buffer_class(bytes)` (sftp/pipe.py's
    ChunkBuffer: paramiko's array costs O(buffered) per read), under the pipe's own lock
    so no byte fed concurrently by the transport thread is lost. Relies on
    `Channel.in_buffer` (a BufferedPipe) with its `_lock` and `_buffer` (an `array`
    with `tobytes()`); falls back silently if they change shape."""
    pipe = channel.in_buffer
    lock = getattr(pipe, "_lock", None)
    if lock is None or not hasattr(pipe, "_buffer"):
        log.debug("paramiko BufferedPipe changed; keeping its own buffer")
        return
    with lock:
        current = pipe._buffer
        if isinstance(current, buffer_class):
            return
        pipe._buffer = buffer_class(current.tobytes())


# -- what the idle watcher and the session limit read -----------------------------------


@dataclass(frozen=True)
class ChannelActivity:
    """A channel's flow-control counters: they change whenever channel data moves."""

    received: int  # Channel.in_window_sofar: bytes received since the last window adjust
    send_window: int  # Channel.out_window_size: what the peer still lets us send
    unread: int  # len(Channel.in_buffer): received, not yet read by the server

    @property
    def counters(self) -> tuple[int, int]:
        return self.received, self.send_window


def channel_activity(channel: paramiko.Channel) -> ChannelActivity:
    """Relies on `Channel.in_window_sofar`, `Channel.out_window_size` and the length of
    `Channel.in_buffer` (public attributes, undocumented)."""
    return ChannelActivity(
        received=int(channel.in_window_sofar),
        send_window=int(channel.out_window_size),
        unread=len(channel.in_buffer),
    )


def open_channel_count(transport: paramiko.Transport) -> int:
    """Channels open on a connection; a channel leaves the count as soon as the client
    closes it. Relies on `Transport._channels` (a ChannelMap with `__len__`)."""
    return len(transport._channels)


def was_authenticated(transport: paramiko.Transport) -> bool:
    """Whether the client completed authentication, also after the connection ended
    (`is_authenticated()` turns false once it is closed). Relies on
    `Transport.auth_handler.authenticated` (undocumented attributes)."""
    handler = getattr(transport, "auth_handler", None)
    return bool(handler is not None and getattr(handler, "authenticated", False))


def server_object(transport: paramiko.Transport) -> object | None:
    """The ServerInterface a server Transport was started with (`start_server(server=)`).
    Relies on `Transport.server_object` (set by start_server, undocumented)."""
    return getattr(transport, "server_object", None)


# -- the SFTP server (sftp/protocol.py extends paramiko's SFTPServer) -------------------


def read_sftp_packet(
    server: BaseSFTP, max_packet: int, refuse: Callable[[int], Exception]
) -> tuple[int, bytes]:
    """paramiko's `BaseSFTP._read_packet` with the length checked before the body is read
    or allocated: a length over `max_packet` raises `refuse(length)`. Relies on
    `BaseSFTP._read_all(n)` (reads exactly n bytes from the channel)."""
    (size,) = struct.unpack(">I", server._read_all(4))
    if size > max_packet:
        raise refuse(size)
    if size == 0:
        return 0, b""
    data = server._read_all(size)
    return data[0], data[1:]


def request_buffer(message: Message) -> io.BytesIO:
    """The BytesIO behind a received SFTP request. Relies on `Message.packet`."""
    return cast(io.BytesIO, message.packet)


def open_handle_count(server: SFTPServer) -> int:
    """Files and directories a client holds open in one SFTP session. Relies on
    `SFTPServer.file_table` and `SFTPServer.folder_table` (dicts by handle)."""
    return len(server.file_table) + len(server.folder_table)
