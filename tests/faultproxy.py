"""A small threaded TCP proxy that injects network faults between the gateway and a backend.

Put it in front of S3, SQS, PostgreSQL or SMTP (all on loopback) and drive it from the
test while traffic flows:

    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/db"
        proxy.refuse()            # new connections are reset at once (backend "down")
        proxy.reset_all()         # every open connection gets an RST (backend restarted)
        proxy.stall(5)            # nothing forwarded for 5 s (None: until changed)
        proxy.delay(0.01)         # each chunk waits 10 ms
        proxy.close_after(1000)   # each connection is closed after 1000 bytes
        proxy.http_error(503, "SlowDown", match=upload_part, times=2)  # HTTP-aware
        proxy.pass_through()      # back to normal

Modes apply to open connections too (each chunk reads the current mode) and may be
limited to one direction: "up" (client to backend), "down" (backend to client) or
"both". Every thread is a daemon polling a stop flag every 0.1 s; close() (the context
manager's exit) stops the listener, closes every connection and joins every thread.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["up", "down", "both"]
POLL = 0.1
CHUNK = 64 * 1024
MAX_CONNECTIONS = 256


def rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass(frozen=True)
class HttpRequest:
    """The head of one HTTP request, as the HTTP-aware mode sees it."""

    method: str
    target: str
    headers: dict[str, str]

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", "0") or 0)


def parse_head(head: bytes) -> HttpRequest:
    lines = head.decode("latin-1").split("\r\n")
    method, target, *_ = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return HttpRequest(method, target, headers)


@dataclass
class HttpFault:
    """Answer matching requests with an error instead of forwarding them, `times` times."""

    status: int
    code: str
    match: Callable[[HttpRequest], bool]
    times: int
    injected: int = 0

    def response(self) -> bytes:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{self.code}</Code><Message>injected by faultproxy</Message>"
            "<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        head = (
            f"HTTP/1.1 {self.status} {self.code}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        return head + body


@dataclass
class Mode:
    """The proxy's current behaviour; read by every pump for every chunk."""

    name: str = "pass"  # pass | refuse | stall | delay | close_after | reset_after
    direction: Direction = "both"
    until: float | None = None  # stall deadline (monotonic), None: until changed
    delay: float = 0.0
    limit: int = 0  # bytes per connection and direction for close_after / reset_after

    def applies(self, direction: str) -> bool:
        return self.direction in ("both", direction)


@dataclass
class Link:
    """One proxied connection: the client's socket and the backend's."""

    client: socket.socket
    backend: socket.socket
    sent: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    closed: threading.Event = field(default_factory=threading.Event)
    body_left: int = 0  # HTTP-aware mode: bytes of the current request body still to pass
    raw: bool = False  # HTTP-aware mode gave up on this connection (not plain HTTP/1.1)

    def close(self, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.backend):
            if reset:
                rst_close(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


class FaultProxy:
    """Listens on 127.0.0.1:<free port> and forwards to `target`, with faults on demand."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(POLL)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._mode = Mode()
        self._http: HttpFault | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._links: list[Link] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.refused = 0
        self._accept = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._accept.start()

    # -- driving it -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """http://host:port, for an HTTP backend (S3, SQS)."""
        return f"http://{self.address}"

    def pass_through(self) -> None:
        self._set(Mode())
        with self._lock:
            self._http = None

    def refuse(self) -> None:
        """New connections are reset at once; open ones carry on (see reset_all)."""
        self._set(Mode("refuse"))

    def reset_all(self) -> None:
        """Send an RST on every open connection now (a backend restart, a cut link)."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close(reset=True)

    def stall(self, seconds: float | None = None, direction: Direction = "both") -> None:
        """Forward nothing (reads stop, so TCP backpressure builds) for `seconds`."""
        until = None if seconds is None else time.monotonic() + seconds
        self._set(Mode("stall", direction, until=until))

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        self._set(Mode("delay", direction, delay=seconds))

    def close_after(self, limit: int, direction: Direction = "both") -> None:
        """Close (FIN) a connection once it has carried `limit` bytes in `direction`."""
        self._set(Mode("close_after", direction, limit=limit))

    def reset_after(self, limit: int, direction: Direction = "both") -> None:
        """Reset (RST) a connection mid-stream once it has carried `limit` bytes."""
        self._set(Mode("reset_after", direction, limit=limit))

    def http_error(
        self,
        status: int,
        code: str,
        *,
        match: Callable[[HttpRequest], bool] = lambda request: True,
        times: int = 1,
    ) -> HttpFault:
        """HTTP-aware: the next `times` requests that `match` get `status` (S3-style XML
        error `code`) from the proxy, on a connection it then closes; others pass."""
        fault = HttpFault(status, code, match, times)
        with self._lock:
            self._http = fault
        return fault

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if not link.closed.is_set())

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        self._listener.close()
        with self._lock:
            links, threads = list(self._links), list(self._threads)
        for link in links:
            link.close()
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _set(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode

    def mode(self) -> Mode:
        with self._lock:
            mode = self._mode
            if mode.name == "stall" and mode.until is not None and time.monotonic() >= mode.until:
                self._mode = mode = Mode()
            return mode

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.mode().name == "refuse" or self.open_connections() >= MAX_CONNECTIONS:
                self.refused += 1
                rst_close(client)
                continue
            try:
                backend = socket.create_connection(self.target, timeout=5)
            except OSError:
                rst_close(client)
                continue
            self.connections += 1
            link = Link(client, backend)
            with self._lock:
                self._links = [x for x in self._links if not x.closed.is_set()]
                self._links.append(link)
                self._threads = [t for t in self._threads if t.is_alive()]
                for direction in ("up", "down"):
                    thread = threading.Thread(
                        target=self._pump, args=(link, direction), daemon=True
                    )
                    self._threads.append(thread)
                    thread.start()

    def _pump(self, link: Link, direction: str) -> None:
        source, sink = (
            (link.client, link.backend) if direction == "up" else (link.backend, link.client)
        )
        pending = b""  # up: bytes of an HTTP request head not yet complete
        try:
            while not self._stop.is_set() and not link.closed.is_set():
                mode = self.mode()
                if mode.name == "stall" and mode.applies(direction):
                    time.sleep(POLL)
                    continue
                ready, _, _ = select.select([source], [], [], POLL)
                if not ready:
                    continue
                data = source.recv(CHUNK)
                if not data:
                    break
                if direction == "up" and (pending or self._http_fault_active()):
                    pending, data, answered = self._filter_http(link, pending + data)
                    if answered:
                        return
                if not data:
                    continue
                if not self._forward(link, sink, direction, data, self.mode()):
                    return
        except (OSError, ValueError):  # the other pump or close() closed the sockets
            pass
        link.close()

    def _forward(
        self, link: Link, sink: socket.socket, direction: str, data: bytes, mode: Mode
    ) -> bool:
        """Send data on, applying delay and byte limits; False when the link is ended."""
        if mode.applies(direction) and mode.name == "delay":
            time.sleep(mode.delay)
        if mode.applies(direction) and mode.name in ("close_after", "reset_after"):
            room = max(0, mode.limit - link.sent[direction])
            if len(data) >= room:
                sink.sendall(data[:room])
                link.close(reset=mode.name == "reset_after")
                return False
        sink.sendall(data)
        link.sent[direction] += len(data)
        return True

    def _http_fault_active(self) -> bool:
        with self._lock:
            return self._http is not None and self._http.injected < self._http.times

    def _filter_http(self, link: Link, buffered: bytes) -> tuple[bytes, bytes, bool]:
        """Split the upstream bytes into (kept for later, to forward, answered by us).

        Request heads are inspected, bodies (by Content-Length) pass untouched: a
        matching request gets the error and its connection closed after its body is
        drained. A chunked body or a head that is not HTTP turns inspection off for
        the connection.
        """
        out = b""
        while buffered and not link.raw:
            if link.body_left > 0:
                body, buffered = buffered[: link.body_left], buffered[link.body_left :]
                link.body_left -= len(body)
                out += body
                continue
            end = buffered.find(b"\r\n\r\n")
            if end < 0:
                if len(buffered) <= 65536:
                    return buffered, out, False  # wait for the rest of the head
                link.raw = True
                break
            request = parse_head(buffered[:end])
            if "transfer-encoding" in request.headers:
                link.raw = True
                break
            fault = self._claim_fault(request)
            if fault is not None:
                link.backend.sendall(out)
                self._answer(link, fault, request, len(buffered) - end - 4)
                return b"", b"", True
            out += buffered[: end + 4]
            buffered = buffered[end + 4 :]
            link.body_left = request.content_length
        return b"", out + buffered, False

    def _claim_fault(self, request: HttpRequest) -> HttpFault | None:
        with self._lock:
            fault = self._http
            if fault is None or fault.injected >= fault.times or not fault.match(request):
                return None
            fault.injected += 1
            return fault

    def _answer(self, link: Link, fault: HttpFault, request: HttpRequest, body_seen: int) -> None:
        if request.headers.get("expect", "").lower() != "100-continue":
            self._drain(link.client, request.content_length - body_seen)
        link.client.sendall(fault.response())
        link.close()

    def _drain(self, sock: socket.socket, count: int) -> None:
        deadline = time.monotonic() + 10
        while count > 0 and time.monotonic() < deadline and not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], POLL)
            if ready:
                data = sock.recv(min(CHUNK, count))
                if not data:
                    return
                count -= len(data)
