"""Removing a user or a key ends its open sessions within seconds (real serve process)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko

from sftp_gateway.auth import parse_public_key
from tests.helpers import make_user_key, wait_until
from tests.serving import ServeProcess

FAST_RECHECK = {"server": {"revocation_check_interval": 1}}


@contextmanager
def sftp_session(served: ServeProcess, key: Path) -> Iterator[paramiko.SFTPClient]:
    """A paramiko SFTP session held open by alice with this key."""
    client = served.ssh_client(key)
    try:
        sftp = client.open_sftp()
        sftp.listdir("/")
        yield sftp
    finally:
        client.close()


def closed_within(sftp: paramiko.SFTPClient, seconds: float) -> float:
    """Seconds until the server closed this session's transport (fails after `seconds`)."""
    transport = sftp.get_channel().get_transport()
    start = time.monotonic()
    wait_until(lambda: not transport.is_active(), timeout=seconds)
    return time.monotonic() - start


def test_removing_the_user_closes_its_open_sftp_session_within_seconds(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory(FAST_RECHECK)
    with sftp_session(served, served.key_path) as sftp:
        time.sleep(1.5)  # a check passes while alice still exists: the session stays
        assert sftp.get_channel().get_transport().is_active()
        served.cli("users", "remove", "alice")
        assert closed_within(sftp, 10) < 10
    assert "session of alice from 127.0.0.1 closed: user removed" in served.log_text()
    assert served.alive()


def test_removing_a_key_closes_only_the_sessions_that_used_it(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory(FAST_RECHECK)
    second = make_user_key(served.tmp / "second", "id_second")
    served.cli("users", "add-key", "alice", "--key", f"{second}.pub")
    fingerprint = parse_public_key(Path(f"{second}.pub").read_text()).fingerprint
    with sftp_session(served, served.key_path) as kept, sftp_session(served, second) as revoked:
        served.cli("users", "remove-key", "alice", fingerprint)
        closed_within(revoked, 10)
        assert kept.listdir("/") is not None  # the other key's session still works
        assert kept.get_channel().get_transport().is_active()
    assert f"session of alice from 127.0.0.1 closed: key {fingerprint} removed" in (
        served.log_text()
    )
