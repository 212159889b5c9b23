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

from sftp_gateway import __version__, crypto_policy, sshcompat
from sftp_gateway.admission import Admission, Ticket
from sftp_gateway.auth import Authenticator, Principal
from sftp_gateway.catalog.bans import BanStore
from sftp_gateway.catalog.db import make_engine, upgrade
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import ServerConfig, Settings
from sftp_gateway.errors import ConfigError
from sftp_gateway.filesystem import UserFilesystem
from sftp_gateway.gc import PeriodicGc, recover_after_crash
from sftp_gateway.hostkeys import load_host_keys
from sftp_gateway.idle import IdleWatcher
from sftp_gateway.scp import handle_exec
from sftp_gateway.sessions import RevocationWatcher, SessionRegistry
from sftp_gateway.sftp.handler import GatewaySFTPInterface
from sftp_gateway.sftp.protocol import GatewaySFTPServer
from sftp_gateway.ssh import GatewayServer
from sftp_gateway.storage.base import Storage
from sftp_gateway.storage.s3 import S3Storage
from sftp_gateway.transfer import ActiveUploads, ClientInfo
from sftp_gateway.upload.budget import Owner
from sftp_gateway.upload.services import UploadServices

log = logging.getLogger(__name__)
SERVER_VERSION = f"SSH-2.0-sftp-gateway_{__version__}"


def build_catalog(settings: Settings) -> Catalog:
    engine = make_engine(settings.catalog.url)
    if settings.catalog.auto_migrate:
        upgrade(engine)
    return Catalog(engine)


def usable_host_keys(server: ServerConfig) -> list[paramiko.PKey]:
    """The host keys the crypto policy allows; a policy that leaves none fails at start."""
    keys = crypto_policy.usable_host_keys(
        server.crypto_policy, load_host_keys(server.host_keys_dir)
    )
    if not keys:
        raise ConfigError(
            f"server.crypto_policy: {server.crypto_policy} allows none of the host keys"
            f" in {server.host_keys_dir}"
        )
    return keys


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
        self.active = ActiveUploads(settings.uploads.max_concurrent_per_user)
        self.uploads = UploadServices.from_settings(settings)  # one budget, one sender
        self.authenticator = Authenticator(self.catalog)
        self.sessions = SessionRegistry()
        sshcompat.install_fast_hmac()
        self.host_keys = usable_host_keys(settings.server)
        self.admission = Admission(
            settings.server,
            BanStore(self.catalog.engine),
            user_exists=lambda name: self.catalog.get_user(name) is not None,
        )
        self.background = [  # objects with start() and stop()
            self.admission,
            *(background or []),
            PeriodicGc(settings, self.catalog, self.storage),
            RevocationWatcher(
                self.sessions, self.authenticator, settings.server.revocation_check_interval
            ),
            IdleWatcher(self.sessions, settings.server),
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
        self.uploads.close()

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
            ticket = self.admission.admit(peer[0], sock)
            if ticket is None:  # banned or over a limit: no Transport, no thread
                sock.close()
                continue
            threading.Thread(
                target=self._handshake,
                args=(sock, peer[0], ticket),
                name=f"ssh-{peer[0]}",
                daemon=True,
            ).start()

    def _track(self, transport: paramiko.Transport) -> None:
        """Remember open transports (closed at stop), forgetting the ended ones."""
        with self._lock:
            self._transports = {t for t in self._transports if t.is_active()}
            self._transports.add(transport)

    def _handshake(self, sock: socket.socket, client_ip: str, ticket: Ticket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = self.settings.server
        transport = sshcompat.server_transport(
            sock,
            version=SERVER_VERSION,
            max_packet_size=config.max_packet_size,
            window_size=config.window_size,
            timeout=config.auth_timeout,
            disabled_algorithms=crypto_policy.disabled_algorithms(config.crypto_policy),
        )
        for key in self.host_keys:
            transport.add_server_key(key)
        transport.set_subsystem_handler("sftp", GatewaySFTPServer, GatewaySFTPInterface)
        server = GatewayServer(
            self.authenticator,
            client_ip,
            self._filesystem_for,
            transport,
            exec_handler=handle_exec,
            sessions=self.sessions,
            ticket=ticket,
            max_auth_tries=config.max_auth_tries,
        )
        ticket.attach(transport)
        self._track(transport)
        try:
            transport.start_server(server=server)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            ticket.handshake_failed()
            if not ticket.expired:
                log.info("SSH handshake with %s failed: %s", client_ip, exc)
            transport.close()

    def _filesystem_for(self, principal: Principal, client: ClientInfo) -> UserFilesystem:
        return UserFilesystem(
            principal=principal,
            settings=self.settings,
            storage=self.storage,
            catalog=self.catalog,
            client=client,
            active=self.active.for_user(Owner(principal.name, client.ip)),
            services=self.uploads,
        )
