"""The SSH side of a connection: public-key authentication and what a session may open.

Only the `sftp` subsystem (and, for `scp -O`, the exec of `scp -t`/`scp -f`) is allowed:
no shell, no other commands, no port or agent forwarding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

import paramiko

from sftp_gateway import logs, metrics, sshcompat
from sftp_gateway.auth import Authenticator, Principal, fingerprint_of
from sftp_gateway.filesystem import UserFilesystem
from sftp_gateway.idle import ConnectionActivity
from sftp_gateway.sessions import SessionRegistry
from sftp_gateway.transfer import ClientInfo

if TYPE_CHECKING:
    from sftp_gateway.admission import Ticket

log = logging.getLogger(__name__)
MAX_CLIENT_VERSION = 255  # the catalog's client_version column


def safe_client_version(transport: paramiko.Transport) -> str | None:
    """The client's banner as stored and shown: printable ASCII, at most 255 chars."""
    raw = transport.remote_version
    if raw is None:
        return None
    printable = "".join(ch if " " <= ch <= "~" else "?" for ch in str(raw))
    return printable[:MAX_CLIENT_VERSION]


class GatewayServer(paramiko.ServerInterface):  # type: ignore[misc]
    """One connection's SSH policy; after auth it knows the Principal."""

    def __init__(
        self,
        authenticator: Authenticator,
        client_ip: str | None,
        make_filesystem: Callable[[Principal, ClientInfo], UserFilesystem],
        transport: paramiko.Transport,
        exec_handler: Callable[[GatewayServer, paramiko.Channel, bytes], bool] | None = None,
        sessions: SessionRegistry | None = None,
        ticket: Ticket | None = None,
        max_auth_tries: int = 6,
        conn_log: logs.ConnectionLog | None = None,
    ) -> None:
        # every line about this connection carries its id, address and (once known) user
        connection = conn_log or logs.connection_logger(logs.new_connection_id(), client_ip)
        self.log = connection.on(log)
        self._authenticator = authenticator
        self._make_filesystem = make_filesystem
        self._transport = transport
        self._exec_handler = exec_handler
        self._sessions = sessions
        self._ticket = ticket  # admission: scores failures for the brute-force ban
        self._max_auth_tries = max_auth_tries
        self.client_ip = client_ip
        self.principal: Principal | None = None
        self._candidate: tuple[str, bytes] | None = None  # (user, key) that principal is for
        self._signature_due: paramiko.PKey | None = None  # accepted; paramiko verifies next
        self._failures = 0
        self._fs: UserFilesystem | None = None
        self.activity = ConnectionActivity()  # channel traffic, for the idle timeout

    @property
    def client_info(self) -> ClientInfo:
        return ClientInfo(
            ip=self.client_ip,
            version=self.client_version,
            conn=self.log.context.get("conn"),
        )

    @cached_property
    def client_version(self) -> str | None:
        """Asked for only once logged in, when the banner is long known."""
        return safe_client_version(self._transport)

    def filesystem(self) -> UserFilesystem:
        """The user's filesystem, shared by every channel of this connection."""
        if self.principal is None:
            raise RuntimeError("not authenticated")
        if self._fs is None:
            self._fs = self._make_filesystem(self.principal, self.client_info)
        return self._fs

    def get_allowed_auths(self, username: str) -> str:
        """paramiko asks this when it answers a failure. Right after this server accepted
        the key, the failure is paramiko's own: the client's signature did not verify.
        Counted, scored and logged like a refused key, so fail2ban and bans see it."""
        key, self._signature_due = self._signature_due, None
        if key is not None:
            self.principal = self._candidate = None
            self._auth_failed(username, key, detail="invalid signature")
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        offered = (username, key.asbytes())
        self._signature_due = None
        if self.principal is not None and offered == self._candidate:
            # The signed request for the key the client just probed (OpenSSH asks first
            # without a signature): the lookup of a moment ago stands. A key removed
            # since is caught by the revocation watcher, which ends the session.
            self._signature_due = key
            return paramiko.AUTH_SUCCESSFUL  # type: ignore[no-any-return]
        try:
            principal = self._authenticator.authenticate(username, key, self.client_ip)
        except Exception:
            log.exception("authentication lookup failed for %s", username)
            metrics.auth_result("publickey", "error")
            return paramiko.AUTH_FAILED  # type: ignore[no-any-return]
        if principal is None:
            return self._auth_failed(username, key)
        # paramiko asks before the signature is checked (and for unsigned key queries):
        # this is only a candidate; the login is counted in on_authenticated().
        self.principal, self._candidate = principal, offered
        self._signature_due = key  # paramiko verifies the signature next (if any)
        return paramiko.AUTH_SUCCESSFUL  # type: ignore[no-any-return]

    def on_authenticated(self) -> None:
        """The transport is authenticated: log it, count it, and register the session so
        that removing its user or key ends it."""
        principal = self.principal
        if principal is None:
            return
        metrics.auth_result("publickey", "success")
        self._log_auth_ok(principal)
        if self._sessions is not None:
            self._sessions.register(self._transport, principal, self.client_ip)

    def _auth_failed(self, username: str, key: paramiko.PKey, detail: str | None = None) -> int:
        """Count a refused key as sshd does (an offered key counts even unsigned);
        at server.max_auth_tries the connection is closed."""
        self._failures += 1
        what = self._ticket.auth_failed(username) if self._ticket else "key refused"
        metrics.auth_result("publickey", what)
        self.log.warning(
            "auth failed for %s from %s: %s, key %s (attempt %d of %d)",
            username,
            self.client_ip,
            f"{what} ({detail})" if detail else what,
            fingerprint_of(key),
            self._failures,
            self._max_auth_tries,
            extra=logs.fields("auth.failed", user=username, reason=what.replace(" ", "_")),
        )
        if self._failures >= self._max_auth_tries:
            self.log.warning(
                "refused %s: too many authentication failures (%d)",
                self.client_ip,
                self._failures,
                extra=logs.fields("refused", reason="max_auth_tries"),
            )
            metrics.refused("max_auth_tries")
            self._transport.close()
        return paramiko.AUTH_FAILED  # type: ignore[no-any-return]

    def _log_auth_ok(self, principal: Principal) -> None:
        self.log.bind(user=principal.name)
        logs.event(
            self.log,
            "auth.ok",
            "auth ok for %s from %s: key %s",
            principal.name,
            self.client_ip,
            principal.key_fingerprint,
            fingerprint=principal.key_fingerprint,
            client=self.client_version,
        )

    def log_session_end(self) -> None:
        """The session-end line of a logged-in connection: how long, bytes, uploads."""
        if self.principal is None:
            return
        packetizer = self._transport.packetizer
        logs.event(
            self.log,
            "session.end",
            "session of %s from %s ended",
            self.principal.name,
            self.client_ip,
            duration=round(time.monotonic() - self.log.root.started, 3),
            bytes_in=getattr(packetizer, "bytes_in", None),
            bytes_out=getattr(packetizer, "bytes_out", None),
            uploads=self.log.root.uploads,
        )

    def check_auth_none(self, username: str) -> int:
        self._signature_due = None
        return paramiko.AUTH_FAILED  # type: ignore[no-any-return]

    def check_auth_password(self, username: str, password: str) -> int:
        self._signature_due = None
        metrics.auth_result("password", "not_allowed")
        return paramiko.AUTH_FAILED  # type: ignore[no-any-return]

    def check_auth_interactive(self, username: str, submethods: str) -> int:
        self._signature_due = None
        return paramiko.AUTH_FAILED  # type: ignore[no-any-return]

    def check_channel_request(self, kind: str, chanid: int) -> int:
        """Session channels only, at most `server.max_sessions` open at once (sshd
        MaxSessions): each one can hold an SFTP thread and its buffers."""
        if kind != "session" or self.principal is None:
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED  # type: ignore[no-any-return]
        limit = self.filesystem().settings.server.max_sessions
        if open_channels(self._transport) >= limit:
            who, text = self.principal.name, f"too many sessions on one connection (limit {limit})"
            self.log.warning(
                "channel refused for %s from %s: %s",
                who,
                self.client_ip,
                text,
                extra=logs.fields("refused", reason="max_sessions"),
            )
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED  # type: ignore[no-any-return]
        return paramiko.OPEN_SUCCEEDED  # type: ignore[no-any-return]

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if name != "sftp" or self.principal is None:
            return False
        self.activity.watch(channel)
        return bool(super().check_channel_subsystem_request(channel, name))

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.principal is None or self._exec_handler is None:
            return False
        self.activity.watch(channel)
        return self._exec_handler(self, channel, command)

    def check_channel_env_request(
        self, channel: paramiko.Channel, name: bytes, value: bytes
    ) -> bool:
        return False

    def check_channel_pty_request(self, *args: object) -> bool:
        return False

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return False

    def check_channel_forward_agent_request(self, channel: paramiko.Channel) -> bool:
        return False

    def check_port_forward_request(self, address: str, port: int) -> int | bool:
        return False

    def check_channel_direct_tcpip_request(self, chanid: int, origin, destination) -> int:  # type: ignore[no-untyped-def]
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED  # type: ignore[no-any-return]


def open_channels(transport: paramiko.Transport) -> int:
    """Channels open on this connection now (through sshcompat: a private attribute)."""
    return sshcompat.open_channel_count(transport)
