"""The SSH side of a connection: public-key authentication and what a session may open.

Only the `sftp` subsystem (and, for `scp -O`, the exec of `scp -t`/`scp -f`) is allowed:
no shell, no other commands, no port or agent forwarding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import paramiko

from sftp_gateway.auth import Authenticator, Principal
from sftp_gateway.filesystem import UserFilesystem
from sftp_gateway.transfer import ClientInfo

log = logging.getLogger(__name__)
MAX_AUTH_FAILURES = 6


class GatewayServer(paramiko.ServerInterface):
    """One connection's SSH policy; after auth it knows the Principal."""

    def __init__(
        self,
        authenticator: Authenticator,
        client_ip: str | None,
        make_filesystem: Callable[[Principal, ClientInfo], UserFilesystem],
        transport: paramiko.Transport,
        exec_handler: Callable[[GatewayServer, paramiko.Channel, bytes], bool] | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._make_filesystem = make_filesystem
        self._transport = transport
        self._exec_handler = exec_handler
        self.client_ip = client_ip
        self.principal: Principal | None = None
        self._failures = 0
        self._fs: UserFilesystem | None = None

    @property
    def client_info(self) -> ClientInfo:
        return ClientInfo(ip=self.client_ip, version=self._transport.remote_version)

    def filesystem(self) -> UserFilesystem:
        """The user's filesystem, shared by every channel of this connection."""
        if self.principal is None:
            raise RuntimeError("not authenticated")
        if self._fs is None:
            self._fs = self._make_filesystem(self.principal, self.client_info)
        return self._fs

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        try:
            principal = self._authenticator.authenticate(username, key)
        except Exception:
            log.exception("authentication lookup failed for %s", username)
            return paramiko.AUTH_FAILED
        if principal is None:
            self._failures += 1
            if self._failures >= MAX_AUTH_FAILURES:
                self._transport.close()
            return paramiko.AUTH_FAILED
        self.principal = principal
        return paramiko.AUTH_SUCCESSFUL

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if name != "sftp" or self.principal is None:
            return False
        return bool(super().check_channel_subsystem_request(channel, name))

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.principal is None or self._exec_handler is None:
            return False
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
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
