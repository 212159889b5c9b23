"""uvicorn on a background thread, with its own event loop, started and stopped like the
gateway's other background workers.

Limits on what a client may hold (both listeners, admin and upload links): a request
head must arrive whole within HEADER_TIMEOUT seconds of its first byte (or of the
connection, for a silent one), else 408 and the connection is closed (uvicorn itself
never times a half-sent head out); heads are at most uvicorn's h11 default of 16 KiB
(h11_max_incomplete_event_size); idle keep-alive connections close after
KEEP_ALIVE_TIMEOUT; past LIMIT_CONCURRENCY connections or requests, uvicorn answers 503.
A request with both Content-Length and Transfer-Encoding (request smuggling) is
answered 400 and its connection closed. Slow request bodies are the application's
to time out (web/upload_tus.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import h11
import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from sftp_gateway.errors import ConfigError

log = logging.getLogger(__name__)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
HEADER_TIMEOUT = 20.0  # seconds for a whole request head (slowloris headers)
KEEP_ALIVE_TIMEOUT = 5  # uvicorn's default, stated
LIMIT_CONCURRENCY = 512  # connections + requests of one listener; more: 503
TIMED_OUT_HEAD = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head does not arrive
    whole within HEADER_TIMEOUT (uvicorn cancels its keep-alive timer at the first byte
    and never times the rest out)."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_head_timer()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(HEADER_TIMEOUT, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(TIMED_OUT_HEAD)
            self.transport.close()


class RequestGuard:
    """Refuse what uvicorn/h11 let through but should not: Content-Length together with
    Transfer-Encoding (400, connection closed, so nothing pipelined behind it is read)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope.get("headers", [])}
            if b"content-length" in names and b"transfer-encoding" in names:
                response = PlainTextResponse(
                    "a request may not carry both Content-Length and Transfer-Encoding\n",
                    status_code=400,
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AdminServer:
    """The admin HTTP listener: binds at start (errors name admin.listen), serves on a
    thread, stops on stop()."""

    name = "admin-http"

    def __init__(self, host: str, port: int, app: Any) -> None:
        self.host = host
        self.port = port
        self.app = app
        self.address: tuple[str, int] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.address or (self.host, self.port)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def start(self) -> None:
        sock = self._bind()
        self.address = sock.getsockname()[:2]
        config = uvicorn.Config(
            RequestGuard(self.app),
            http=HeadTimeoutProtocol,
            timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
            limit_concurrency=LIMIT_CONCURRENCY,
            log_config=None,  # keep the gateway's logging (text or JSON) as it is
            log_level="warning",  # our own line says where it listens
            access_log=False,
            lifespan="off",
            proxy_headers=False,  # the logged address is the peer's, never a header's
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="admin-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        log.info("admin listener on %s (/metrics, /healthz, /readyz, /uploads)", self.url)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            where = f"{self.host}:{self.port}"
            raise ConfigError(f"admin.listen: cannot listen on {where}: {exc.strerror}") from None
        sock.listen(128)
        sock.set_inheritable(True)
        return sock

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=STOP_TIMEOUT)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=STOP_TIMEOUT)
        readiness = getattr(self.app.state, "readiness", None)
        if readiness is not None:
            readiness.close()
