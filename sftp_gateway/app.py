"""Server lifecycle: build the parts, listen, hand each connection to paramiko, drain.

`Gateway.start()` binds and serves in background threads (tests and the demo use it);
`Gateway.run()` adds signal handling and blocks until SIGTERM/SIGINT, then drains:
it stops accepting, lets uploads in progress finish for `server.drain_timeout`
seconds, and closes the rest (their uploads are abandoned, never half-completed).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko

from sftp_gateway import __version__, sshtuning
from sftp_gateway.auth import Authenticator, Principal
from sftp_gateway.catalog.db import make_engine, upgrade
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import Settings
from sftp_gateway.filesystem import UserFilesystem
from sftp_gateway.gc import PeriodicGc, recover_after_crash
from sftp_gateway.hostkeys import load_host_keys
from sftp_gateway.scp import handle_exec
from sftp_gateway.sftp.handler import GatewaySFTPInterface
from sftp_gateway.sftp.protocol import GatewaySFTPServer
from sftp_gateway.ssh import GatewayServer
from sftp_gateway.storage.base import Storage
from sftp_gateway.storage.s3 import S3Storage
from sftp_gateway.transfer import ActiveUploads, ClientInfo

log = logging.getLogger(__name__)
sshtuning.install()
SERVER_VERSION = f"SSH-2.0-sftp-gateway_{__version__}"


def build_catalog(settings: Settings) -> Catalog:
    engine = make_engine(settings.catalog.url)
    if settings.catalog.auto_migrate:
        upgrade(engine)
    return Catalog(engine)


class Gateway:
    """The SFTP server and its background workers, in one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        storage: Storage | None = None,
        catalog: Catalog | None = None,
        background: list[Any] | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage or S3Storage(settings.storage)
        self.catalog = catalog or build_catalog(settings)
        self.active = ActiveUploads()
        self.authenticator = Authenticator(self.catalog)
        self.host_keys = load_host_keys(settings.server.host_keys_dir)
        self.background = [  # objects with start() and stop()
            *(background or []),
            PeriodicGc(settings, self.catalog, self.storage),
        ]
        self._listener: socket.socket | None = None
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind and start serving in the background; returns the bound (host, port)."""
        server = self.settings.server
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((server.host, server.port))
        listener.listen(128)
        listener.settimeout(0.5)
        self._listener = listener
        self.address = listener.getsockname()[:2]
        recovered = recover_after_crash(self.settings, self.storage, self.catalog)
        if recovered.recovered or recovered.aborted:
            log.info(
                "after restart: %d upload(s) resumable, %d aborted",
                len(recovered.recovered),
                len(recovered.aborted),
            )
        for worker in self.background:
            worker.start()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="accept", daemon=True)
        self._accept_thread.start()
        log.info("listening on %s:%s", *self.address)
        return self.address

    def run(self, on_started: Callable[[tuple[str, int]], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop."""
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            address = self.start()
            if on_started:
                on_started(address)
            stop.wait()
            log.info("shutting down: draining uploads in progress")
        finally:
            self.stop(self.settings.server.drain_timeout)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop accepting, wait for open uploads up to drain_timeout, close the rest."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        deadline = time.monotonic() + drain_timeout
        while self.active.all() and time.monotonic() < deadline:
            time.sleep(0.1)
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport.close()
        for transport in transports:
            transport.join(timeout=5)
        for worker in reversed(self.background):
            worker.stop()

    # -- connections -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept failed")
                time.sleep(0.1)
                continue
            if self._connection_count() >= self.settings.server.max_connections:
                log.warning("refusing %s: max_connections reached", peer[0])
                sock.close()
                continue
            threading.Thread(
                target=self._handshake, args=(sock, peer[0]), name=f"ssh-{peer[0]}", daemon=True
            ).start()

    def _connection_count(self) -> int:
        with self._lock:
            self._transports = {t for t in self._transports if t.is_active()}
            return len(self._transports)

    def _handshake(self, sock: socket.socket, client_ip: str) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = self.settings.server
        transport = paramiko.Transport(
            sock,
            default_window_size=config.window_size,
            default_max_packet_size=config.max_packet_size,
        )
        transport.local_version = SERVER_VERSION
        transport.banner_timeout = config.auth_timeout
        transport.handshake_timeout = config.auth_timeout
        transport.auth_timeout = config.auth_timeout
        for key in self.host_keys:
            transport.add_server_key(key)
        transport.set_subsystem_handler("sftp", GatewaySFTPServer, GatewaySFTPInterface)
        server = GatewayServer(
            self.authenticator,
            client_ip,
            self._filesystem_for,
            transport,
            exec_handler=handle_exec,
        )
        with self._lock:
            self._transports.add(transport)
        try:
            transport.start_server(server=server)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info("SSH handshake with %s failed: %s", client_ip, exc)
            transport.close()

    def _filesystem_for(self, principal: Principal, client: ClientInfo) -> UserFilesystem:
        return UserFilesystem(
            principal=principal,
            settings=self.settings,
            storage=self.storage,
            catalog=self.catalog,
            client=client,
            active=self.active,
        )
