"""Server lifecycle: build the parts, listen, hand each connection to paramiko, drain.

`Gateway.start()` binds and serves in background threads (tests and the demo use it);
`Gateway.run()` adds signal handling and blocks until SIGTERM/SIGINT, then drains:
it stops accepting, lets uploads in progress finish for `server.drain_timeout`
seconds, and closes the rest (their uploads are abandoned, never half-completed).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko

from sftp_gateway import __version__, crypto_policy, logs, metrics, sshcompat
from sftp_gateway.addresses import canonical_ip
from sftp_gateway.admission import Admission, Ticket
from sftp_gateway.auth import Authenticator, Principal
from sftp_gateway.catalog import build_catalog
from sftp_gateway.catalog.bans import BanStore
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import ServerConfig, Settings
from sftp_gateway.errors import ConfigError
from sftp_gateway.filesystem import UserFilesystem
from sftp_gateway.gc import PeriodicGc, recover_after_crash
from sftp_gateway.hostkeys import load_host_keys
from sftp_gateway.idle import IdleWatcher
from sftp_gateway.proxyproto import ProxyGate
from sftp_gateway.records import ClientInfo
from sftp_gateway.scp import handle_exec
from sftp_gateway.sessions import RevocationWatcher, SessionRegistry
from sftp_gateway.sftp.handler import GatewaySFTPInterface
from sftp_gateway.sftp.protocol import GatewaySFTPServer
from sftp_gateway.signals import capture_signals, sleep_until_stopped
from sftp_gateway.ssh import GatewayServer
from sftp_gateway.storage.base import Storage
from sftp_gateway.storage.naming import storage_for
from sftp_gateway.supervisor import bind_listener
from sftp_gateway.transfer import ActiveUploads
from sftp_gateway.upload.budget import Owner
from sftp_gateway.upload.services import UploadServices
from sftp_gateway.web import admin_server
from sftp_gateway.web.upload_page import upload_server
from sftp_gateway.workers import Worker

log = logging.getLogger(__name__)
SERVER_VERSION = f"SSH-2.0-sftp-gateway_{__version__}"
CLOSE_OUT_SECONDS = 10.0  # at stop: for sessions to record their uploads as interrupted


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
        background: list[Worker] | None = None,
        listener: socket.socket | None = None,
        host_jobs: bool = True,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        """`listener`: a socket already bound and listening (a worker of `serve
        --workers N` gets the supervisor's); `host_jobs=False` leaves the periodic gc and
        the admin listener to the supervisor, which runs them once per host;
        `heartbeat` is called at every turn of the accept loop (at least every 0.5 s):
        the supervisor's sign that this worker is not stuck."""
        self.settings = settings
        self._heartbeat = heartbeat
        # storage.compression_naming: suffix maps file keys to the suffixed objects here.
        self.storage = storage_for(settings.storage, storage)
        self.catalog = catalog or build_catalog(settings)
        self.active = ActiveUploads(settings.uploads.max_concurrent_per_user)
        self.uploads = UploadServices.from_settings(settings)  # one budget, one sender
        self.authenticator = Authenticator(self.catalog)
        self.sessions = SessionRegistry()
        self.proxy = ProxyGate(  # PROXY protocol: the real client address, before SSH
            settings.server.proxy_protocol,
            settings.server.proxy_trusted_networks,
            max_waiting=settings.server.startups[2],
        )
        sshcompat.install_fast_hmac()
        self.host_keys = usable_host_keys(settings.server)
        self.admission = Admission(
            settings.server,
            BanStore(self.catalog.engine),
            user_exists=lambda name: self.catalog.get_user(name) is not None,
        )
        self.background: list[Worker] = [
            self.admission,
            *(background or []),
            *([PeriodicGc(settings, self.catalog, self.storage)] if host_jobs else []),
            RevocationWatcher(
                self.sessions, self.authenticator, settings.server.revocation_check_interval
            ),
            IdleWatcher(self.sessions, settings.server),
        ]
        self.admin = admin_server(self) if host_jobs else None  # /metrics, /readyz, /uploads
        self.background += [self.admin] if self.admin else []
        self.web = upload_server(self) if host_jobs else None  # web.listen: upload links
        self.background += [self.web] if self.web else []
        self._listener: socket.socket | None = listener
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._drain_cut = threading.Event()  # a second Ctrl-C: stop waiting for uploads
        self._accept_thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind (unless given a listener) and start serving in the background; returns
        the bound (host, port)."""
        listener = self._listener or bind_listener(self.settings.server)
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
        """Serve until SIGTERM or SIGINT, then drain and stop; a second Ctrl-C cuts the
        drain short (the uploads still open are abandoned, never half-completed)."""
        with capture_signals(on_force=self._cut_drain) as stop:
            try:
                address = self.start()
                if on_started:
                    on_started(address)
                sleep_until_stopped(stop)
                log.info("shutting down: draining uploads in progress")
            finally:
                self.stop(self.settings.server.drain_timeout)

    def _cut_drain(self) -> None:
        self._drain_cut.set()

    def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop accepting, wait up to drain_timeout for uploads with bytes in flight (not
        for handles left idle), then close every connection: each session closes out its
        uploads (interrupted, resumable), and the parts sender stays until they have."""
        began = time.monotonic()
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        deadline = time.monotonic() + drain_timeout
        while self.active.in_flight() and time.monotonic() < deadline:
            if self._drain_cut.wait(0.1):
                break
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport.close()
        for transport in transports:
            transport.join(timeout=5)
        closing_deadline = time.monotonic() + CLOSE_OUT_SECONDS
        while self.active.all() and time.monotonic() < closing_deadline:
            time.sleep(0.05)  # the sessions' threads are closing out their uploads
        for worker in reversed(self.background):
            worker.stop()
        self.uploads.close()
        log.info("stopped after %.1f s", time.monotonic() - began)

    # -- connections -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            if self._heartbeat is not None:
                self._heartbeat()
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept failed")
                time.sleep(0.1)
                continue
            peer = canonical_ip(address[0])
            route = self.proxy.route(peer)
            if route == "header":  # the real address comes first: read it in its thread
                if not self._start_thread("proxy", self._proxied, sock, peer):
                    self.proxy.unread()
                    sock.close()
                continue
            ticket = self.admission.admit(peer, sock) if route == "direct" else None
            if ticket is None:  # banned or over a limit: no Transport, no thread
                sock.close()
                continue
            if not self._start_thread(f"ssh-{peer}", self._handshake, sock, peer, ticket):
                ticket.abandon()

    @staticmethod
    def _start_thread(
        name: str, target: Callable[..., None], sock: socket.socket, peer: str, *args: Any
    ) -> bool:
        """Start one connection's thread; False (logged) when the process cannot start
        one more (its thread or memory limit), so the accept loop lives on."""
        try:
            thread = threading.Thread(target=target, args=(sock, peer, *args), name=name)
            thread.daemon = True
            thread.start()
        except RuntimeError as exc:
            extra = logs.fields("refused", addr=peer, reason="no_thread")
            log.error("refused %s: cannot start a thread for it (%s)", peer, exc, extra=extra)
            metrics.refused("no_thread")
            return False
        return True

    def _proxied(self, sock: socket.socket, peer: str) -> None:
        """Behind a balancer: admission (bans, per-source limits) sees the header's
        address, never the balancer's."""
        address = self.proxy.client_address(sock, peer)
        ticket = self.admission.admit(address, sock) if address is not None else None
        if ticket is None:
            sock.close()
            return
        assert address is not None
        self._handshake(sock, address, ticket, via=peer)

    def _track(self, transport: paramiko.Transport) -> None:
        """Remember open transports (closed at stop), forgetting the ended ones."""
        with self._lock:
            self._transports = {t for t in self._transports if t.is_active()}
            self._transports.add(transport)

    def _handshake(
        self, sock: socket.socket, client_ip: str, ticket: Ticket, via: str | None = None
    ) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_log = logs.connection_logger(logs.new_connection_id(), client_ip, log)
        logs.event(conn_log, "connect", "connection from %s", client_ip, via=via)
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
            conn_log=conn_log,
        )
        transport.packetizer.peer = client_ip  # its refusal lines name the real address
        transport.packetizer.conn = conn_log.extra["conn"]  # type: ignore[index]
        ticket.on_end = server.log_session_end
        ticket.on_authenticated = server.on_authenticated
        ticket.attach(transport)
        self._track(transport)
        try:
            transport.start_server(server=server)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            ticket.handshake_failed()
            if not ticket.expired:
                conn_log.info("SSH handshake with %s failed: %s", client_ip, exc)
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
