"""PROXY protocol v1 and v2 (haproxy.org/download/2.9/doc/proxy-protocol.txt).

Behind AWS NLB or HAProxy every connection comes from the balancer; the client's real
address arrives in a header the balancer sends before the first byte of SSH. This
module reads that header, strictly, from trusted peers only:

- v1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n` or `PROXY UNKNOWN ...\\r\\n`, at most
  107 bytes; v2: the 12-byte signature `\\r\\n\\r\\n\\0\\r\\nQUIT\\n`, version/command,
  family/protocol, a length, then the addresses and TLVs (skipped).
- `LOCAL` (v2) is the balancer's own health check: the connection is closed quietly.
- `UNKNOWN` (v1) and the v2 families without an IP address keep the peer's address.

The parsers are pure functions of bytes (fuzzed by tests/test_proxy_protocol.py);
`read_header()` takes exactly the header's bytes from the socket, so SSH starts at the
first byte after it. No library fits: `proxy-protocol` on PyPI is built around asyncio.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Literal

from sftp_gateway import logs
from sftp_gateway.addresses import canonical_ip

log = logging.getLogger(__name__)
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the spec's worst case, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16  # signature, version/command, family/protocol, length
HEADER_TIMEOUT = 5.0  # seconds a trusted peer has to send the whole header
_V2_ADDRESS_LENGTHS = {0x1: 12, 0x2: 36, 0x3: 216}  # AF_INET, AF_INET6, AF_UNIX
_V2_STREAM = 0x1
Mode = Literal["off", "optional", "required"]
Route = Literal["direct", "header", "refuse"]


class ProxyProtocolError(ValueError):
    """A header that is malformed, truncated, or not allowed from this peer."""


class HealthCheck(Exception):
    """A v2 LOCAL header or a connection closed before any byte: the balancer checking."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header says; `source` is None when it carries no IP address (keep the peer's)."""

    version: int
    local: bool = False
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


# -- parsers (pure) ----------------------------------------------------------------------


def parse(data: bytes) -> tuple[ProxyHeader, int]:
    """The header at the start of `data` and its length in bytes, or ProxyProtocolError."""
    if data[:1] == b"\r":
        length = v2_length(data[:V2_HEADER_LENGTH])
        if len(data) < length:
            raise ProxyProtocolError("truncated v2 header")
        return parse_v2(data[:length]), length
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        raise ProxyProtocolError("no PROXY header (v1 line without CRLF in 107 bytes)")
    return parse_v1(data[: end + 2]), end + 2


def parse_v1(line: bytes) -> ProxyHeader:
    """`PROXY TCP4 1.2.3.4 5.6.7.8 1234 22\\r\\n` (the whole line, CRLF included)."""
    if len(line) > V1_MAX_LENGTH or not line.endswith(b"\r\n"):
        raise ProxyProtocolError("v1 header longer than 107 bytes or without CRLF")
    if not line.startswith(V1_PREFIX):
        raise ProxyProtocolError("not a PROXY header")
    try:
        words = line[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(version=1)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("v1 header is not PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    family = 4 if words[1] == "TCP4" else 6
    source = (_ip(words[2], family), _port(words[4]))
    destination = (_ip(words[3], family), _port(words[5]))
    return ProxyHeader(version=1, source=source, destination=destination)


def v2_length(head: bytes) -> int:
    """The whole v2 header's length, from its first 16 bytes."""
    if len(head) < V2_HEADER_LENGTH:
        raise ProxyProtocolError("truncated v2 header")
    if head[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("not a PROXY v2 signature")
    if head[12] >> 4 != 2:
        raise ProxyProtocolError(f"unsupported PROXY version {head[12] >> 4}")
    return V2_HEADER_LENGTH + int(struct.unpack("!H", head[14:16])[0])


def parse_v2(header: bytes) -> ProxyHeader:
    """A whole v2 header: 16 bytes, then `length` bytes of addresses and TLVs."""
    if len(header) != v2_length(header):
        raise ProxyProtocolError("v2 header length does not match its length field")
    command, family, protocol = header[12] & 0x0F, header[13] >> 4, header[13] & 0x0F
    if command == 0x0:
        return ProxyHeader(version=2, local=True)
    if command != 0x1:
        raise ProxyProtocolError(f"unknown PROXY v2 command {command}")
    if family == 0x0:  # AF_UNSPEC: the proxy does not know; keep the peer's address
        return ProxyHeader(version=2)
    needed = _V2_ADDRESS_LENGTHS.get(family)
    if needed is None or protocol not in (0x1, 0x2):
        raise ProxyProtocolError(f"unknown PROXY v2 family/protocol {header[13]:#04x}")
    body = header[V2_HEADER_LENGTH:]
    if len(body) < needed:
        raise ProxyProtocolError("v2 addresses shorter than their family needs")
    if family == 0x3 or protocol != _V2_STREAM:  # a UNIX socket or UDP: no TCP client
        return ProxyHeader(version=2)
    size = 4 if family == 0x1 else 16
    src = ipaddress.ip_address(body[:size])
    dst = ipaddress.ip_address(body[size : 2 * size])
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    return ProxyHeader(version=2, source=(str(src), sport), destination=(str(dst), dport))


def _ip(text: str, family: int) -> str:
    if "%" in text:  # an IPv6 scope id names an interface of the proxy, not a client
        raise ProxyProtocolError(f"{text[:40]!r} is not an IP address")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"{text[:40]!r} is not an IP address") from None
    if address.version != family:
        raise ProxyProtocolError(f"{text!r} is not an IPv{family} address")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > 65535:
        raise ProxyProtocolError(f"{text[:10]!r} is not a port")
    return int(text)


# -- building headers (tests, and anyone checking a balancer) ------------------------------


def build_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    family = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
    src, dst = source, destination
    return f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode("ascii")


def build_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None = None,
    *,
    local: bool = False,
    tlvs: bytes = b"",
) -> bytes:
    if local or source is None:
        return V2_SIGNATURE + bytes([0x20 if local else 0x21, 0x00]) + struct.pack("!H", 0)
    destination = destination or ("0.0.0.0" if ":" not in source[0] else "::", 0)
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


# -- the socket side ---------------------------------------------------------------------


class TrustedNetworks:
    """The peers whose PROXY header is believed (the balancers)."""

    def __init__(self, networks: list[str]) -> None:
        self._networks = [ipaddress.ip_network(net) for net in networks]

    def __contains__(self, address: object) -> bool:
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            return False
        return any(ip in net for net in self._networks)


class ProxyGate:
    """`server.proxy_protocol` at accept: which peers send a header, and the real address.

    The accept thread only asks `refuses()` and `reads_header()` (no I/O); the header is
    read by `client_address()` in the connection's own thread, so a slow balancer never
    holds up accept. At most `max_waiting` connections wait for their header at once.
    A bad header from a balancer is logged without the `refused ADDR:` form, so a
    fail2ban filter never bans the balancer itself.
    """

    def __init__(
        self,
        mode: Mode,
        trusted: list[str],
        *,
        max_waiting: int = 100,
        timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.mode = mode
        self.trusted = TrustedNetworks(trusted)
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(max_waiting)

    def route(self, peer: str) -> Route:
        """What accept does with a connection from `peer`: `direct` (no header: admit the
        peer's address), `header` (read it in the connection's thread; a slot is taken
        that `client_address()` gives back), or `refuse` (closed; one WARNING line)."""
        if self.mode == "off":
            return "direct"
        if peer not in self.trusted:
            if self.mode == "optional":
                return "direct"
            log.warning(
                "refused %s: not a trusted PROXY protocol peer",
                peer,
                extra=logs.fields("refused", addr=peer, reason="proxy_untrusted"),
            )
            return "refuse"
        if self._slots.acquire(blocking=False):
            return "header"
        log.warning(
            "PROXY connection from %s closed: too many connections wait for their header",
            peer,
            extra=logs.fields("proxy.refused", peer=peer, reason="too_many_waiting"),
        )
        return "refuse"

    def unread(self) -> None:
        """A `header` route whose header will never be read (its thread could not
        start): the slot `route()` took goes back."""
        self._slots.release()

    def client_address(self, sock: socket.socket, peer: str) -> str | None:
        """The client's address from the header (the peer's without one); None: closed."""
        try:
            header = read_header(sock, required=self.mode == "required", timeout=self.timeout)
        except HealthCheck as check:
            log.debug("health check from %s: %s", peer, check)
            return None
        except (ProxyProtocolError, TimeoutError, OSError) as exc:
            log.warning(
                "PROXY header from %s refused: %s",
                peer,
                exc or "timed out",
                extra=logs.fields("proxy.refused", peer=peer, reason="bad_header"),
            )
            return None
        finally:
            self._slots.release()
        if header is None or header.source is None:
            return peer
        return canonical_ip(header.source[0])


def read_header(
    sock: socket.socket, *, required: bool, timeout: float = HEADER_TIMEOUT
) -> ProxyHeader | None:
    """Take the PROXY header off `sock`, leaving SSH's bytes unread.

    None: no header (only when not `required`: the first byte is not a header's, or
    nothing came within `timeout` from a client that waits for the server's banner).
    Raises HealthCheck (LOCAL, or closed before any byte), ProxyProtocolError, or
    TimeoutError (`required` and the header did not arrive in time).
    """
    deadline = time.monotonic() + timeout
    previous = sock.gettimeout()
    try:
        first = _peek_first(sock, deadline, required)
        if first is None:
            return None
        if first == b"\r":
            head = _read_exactly(sock, V2_HEADER_LENGTH, deadline)
            rest = _read_exactly(sock, v2_length(head) - V2_HEADER_LENGTH, deadline)
            header = parse_v2(head + rest)
        elif first == b"P":
            header = parse_v1(_read_line(sock, deadline))
        else:
            raise ProxyProtocolError("no PROXY header before the SSH version line")
    finally:
        sock.settimeout(previous)
    if header.local:
        raise HealthCheck("PROXY v2 LOCAL")
    return header


def _peek_first(sock: socket.socket, deadline: float, required: bool) -> bytes | None:
    """The first byte, left in the socket; None when a header is optional and none comes."""
    try:
        sock.settimeout(_left(deadline))
        first = sock.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        if required:
            raise
        return None
    if not first:
        raise HealthCheck("closed before sending anything")
    if not required and first not in (b"\r", b"P"):
        return None
    return first


def _read_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        sock.settimeout(_left(deadline))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ProxyProtocolError("connection closed inside the PROXY header")
        data += chunk
    return bytes(data)


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """A v1 line, byte by byte (at most 107) so nothing after its CRLF is consumed."""
    line = bytearray()
    while not line.endswith(b"\r\n"):
        if len(line) >= V1_MAX_LENGTH:
            raise ProxyProtocolError("v1 header longer than 107 bytes")
        line += _read_exactly(sock, 1, deadline)
    return bytes(line)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("PROXY header not received in time")
    return left
