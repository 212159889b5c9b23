"""uvicorn on a background thread, with its own event loop, started and stopped like the
gateway's other background workers."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from sftp_gateway.errors import ConfigError

log = logging.getLogger(__name__)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


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
            self.app,
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
