"""Live authenticated connections, and a watcher that ends those no longer allowed.

sshd only checks authorized_keys at login; an operator who removes a user or a key
expects its open sessions to end too. `SessionRegistry` knows every authenticated
transport with its principal and address; `RevocationWatcher` re-checks each one
against the catalog every `server.revocation_check_interval` seconds (user still
there, key still there, from=/expiry-time= still pass) and closes those that fail.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import paramiko

from sftp_gateway import logs
from sftp_gateway.auth import Authenticator, Principal
from sftp_gateway.workers import PeriodicWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveSession:
    transport: paramiko.Transport
    principal: Principal
    client_ip: str | None


class SessionRegistry:
    """Authenticated connections; ended transports drop out on the next look."""

    def __init__(self) -> None:
        self._sessions: dict[int, LiveSession] = {}
        self._lock = threading.Lock()

    def register(
        self, transport: paramiko.Transport, principal: Principal, client_ip: str | None
    ) -> None:
        with self._lock:
            self._sessions[id(transport)] = LiveSession(transport, principal, client_ip)

    def unregister(self, transport: paramiko.Transport) -> None:
        with self._lock:
            self._sessions.pop(id(transport), None)

    def live(self) -> list[LiveSession]:
        """The sessions whose transport is still active (the others are forgotten)."""
        with self._lock:
            ended = [key for key, s in self._sessions.items() if not s.transport.is_active()]
            for key in ended:
                del self._sessions[key]
            return list(self._sessions.values())


class RevocationWatcher(PeriodicWorker):
    """One thread: every `interval` seconds, close sessions whose access was revoked
    (a catalog outage keeps the sessions and tries again next time)."""

    name = "revocation"

    def __init__(
        self, registry: SessionRegistry, authenticator: Authenticator, interval: float
    ) -> None:
        super().__init__(interval)
        self.registry = registry
        self.authenticator = authenticator

    def run_once(self) -> int:
        return self.check_once()

    def check_once(self) -> int:
        """Close every live session that is no longer allowed; returns how many."""
        closed = 0
        for session in self.registry.live():
            reason = self.authenticator.revocation_reason(session.principal, session.client_ip)
            if reason is None:
                continue
            log.warning(
                "session of %s from %s closed: %s",
                session.principal.name,
                session.client_ip,
                reason,
                extra=logs.fields(
                    "session.closed",
                    user=session.principal.name,
                    addr=session.client_ip,
                    reason="revoked",
                ),
            )
            session.transport.close()
            self.registry.unregister(session.transport)
            closed += 1
        return closed
