"""Admission control before login, against a real `sftp-gateway serve` process.

Login grace (sshd LoginGraceTime), MaxStartups / PerSourceMaxStartups kept apart from
authenticated connections, and MaxAuthTries: each attack is held while a real user
logs in and uploads beside it.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import paramiko
import pytest

from sftp_gateway.admission import should_drop
from sftp_gateway.config import settings_from_dict
from sftp_gateway.errors import ConfigError
from tests.helpers import make_user_key, wait_until
from tests.serving import ServeProcess

GRACE = {"server": {"auth_timeout": 2}}


def connect(served: ServeProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", served.port), timeout=10, source_address=(source, 0)
    )


def seconds_until_closed(sock: socket.socket, limit: float) -> float | None:
    """Read (and drop) whatever the server sends until it closes; None if it did not."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        sock.settimeout(max(0.05, limit - (time.monotonic() - start)))
        try:
            if not sock.recv(4096):
                return time.monotonic() - start
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def closed_at_once(sock: socket.socket) -> bool:
    """True when the server closed the connection right after accept (no banner)."""
    sock.settimeout(2)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@contextmanager
def held(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def client_transport(served: ServeProcess, source: str = "127.0.0.1") -> paramiko.Transport:
    """A paramiko client that has finished the key exchange and not authenticated."""
    transport = paramiko.Transport(connect(served, source))
    transport.start_client(timeout=10)
    return transport


def stall_silent(served: ServeProcess) -> socket.socket:
    return connect(served)


def stall_in_version_line(served: ServeProcess) -> socket.socket:
    sock = connect(served)
    sock.sendall(b"SSH-2.0-stalled")  # no end of line, ever
    return sock


STAGES: dict[str, Callable[[ServeProcess], socket.socket]] = {
    "silent_tcp": stall_silent,
    "version_line": stall_in_version_line,
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_connection_is_closed_after_login_grace(serve_factory, stage: str) -> None:
    served = serve_factory(GRACE)
    with held([STAGES[stage](served)]) as (sock,):
        waited = seconds_until_closed(sock, limit=8)
    assert waited is not None, "the server kept the connection open"
    assert 1.0 < waited < 6.0
    assert "refused 127.0.0.1: not authenticated within 2s" in served.log_text()
    assert served.user_can_upload()


@pytest.mark.parametrize("after_auth_attempt", [False, True], ids=["kex_idle", "auth_idle"])
def test_key_exchange_then_idle_is_closed_after_login_grace(
    serve_factory, after_auth_attempt: bool
) -> None:
    served = serve_factory(GRACE)
    transport = client_transport(served)
    try:
        if after_auth_attempt:
            with pytest.raises(paramiko.BadAuthenticationType):
                transport.auth_none("alice")
        start = time.monotonic()
        wait_until(lambda: not transport.is_active(), timeout=8)
        assert time.monotonic() - start < 6.0
    finally:
        transport.close()
    assert "refused 127.0.0.1: not authenticated within 2s" in served.log_text()
    assert served.user_can_upload()


def test_flood_of_unauthenticated_connections_from_one_address_leaves_users_in(
    serve_factory,
) -> None:
    served = serve_factory(
        {"server": {"auth_timeout": 30, "per_source_max_startups": 5, "max_startups": "20:30:100"}}
    )
    assert served.user_can_upload("warm.pdf")  # every pool and client thread started
    threads_before = served.settled_threads()
    rss_before = served.rss_mib()
    sockets: list[socket.socket] = []
    deadline = time.monotonic() + 30
    with held(sockets):
        for _ in range(300):
            if time.monotonic() > deadline:
                break
            try:
                sockets.append(connect(served, "127.0.0.2"))
            except OSError:
                break  # refused outright: fine, the cap did its work
        assert len(sockets) >= 250, "the flood itself did not run"
        still_open = [s for s in sockets if not closed_at_once(s)]
        assert len(still_open) <= 5
        assert served.threads() <= threads_before + 2 * 5 + 4
        assert served.user_can_upload()
        assert served.rss_mib() < rss_before + 64
    log = served.log_text()
    assert "refused 127.0.0.2: per_source_max_startups (5) reached" in log
    assert served.alive()


def test_max_startups_refuses_new_logins_but_not_authenticated_sessions(
    serve_factory, tmp_path
) -> None:
    served = serve_factory({"server": {"auth_timeout": 30, "max_startups": "3"}})
    client = served.ssh_client()
    try:
        time.sleep(0.6)  # the watchdog moves the session to the authenticated count
        sources = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
        with held([connect(served, source) for source in sources]) as holders:
            for sock in holders:
                assert not closed_at_once(sock)
            with held([connect(served, "127.0.0.6")]) as (extra,):
                assert closed_at_once(extra)
            sftp = client.open_sftp()
            local = tmp_path / "while-full.pdf"
            local.write_bytes(b"%PDF-1.7\n" + b"x" * 1000)
            sftp.put(str(local), "/while-full.pdf")
            sftp.close()
        assert "refused 127.0.0.6: max_startups (3) at 3 unauthenticated" in served.log_text()
    finally:
        client.close()
    assert served.object_sha256("incoming/alice/while-full.pdf")
    wait_until(served.user_can_upload, timeout=10)


def test_connection_is_closed_after_max_auth_tries(serve_factory, tmp_path) -> None:
    served = serve_factory({"server": {"max_auth_tries": 3}})
    wrong_keys = [
        paramiko.Ed25519Key.from_private_key_file(str(make_user_key(tmp_path / "wrong", f"k{i}")))
        for i in range(7)
    ]
    transport = client_transport(served)
    refused = 0
    try:
        for key in wrong_keys:
            try:
                transport.auth_publickey("alice", key)
            except paramiko.AuthenticationException:
                refused += 1
            except (paramiko.SSHException, EOFError, OSError):
                break
        wait_until(lambda: not transport.is_active(), timeout=5)
    finally:
        transport.close()
    assert refused <= 3
    log = served.log_text()
    assert "auth failed for alice from 127.0.0.1: failed key" in log
    assert "refused 127.0.0.1: too many authentication failures (3)" in log
    assert "attempt 4 of 3" not in log
    assert served.user_can_upload()


def test_random_early_drop_follows_sshd_max_startups() -> None:
    startups = (10, 30, 100)
    assert not should_drop(9, startups, draw=0.0)
    assert should_drop(100, startups, draw=0.999)
    assert should_drop(10, startups, draw=0.29) and not should_drop(10, startups, draw=0.31)
    assert should_drop(55, startups, draw=0.64) and not should_drop(55, startups, draw=0.66)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"max_startups": "10:0:100"}, "server.max_startups"),
        ({"max_startups": "lots"}, "server.max_startups"),
        ({"max_auth_tries": 0}, "server.max_auth_tries"),
        ({"ban": {"allow_list": ["10.0.0.0/40"]}}, "server.ban.allow_list"),
    ],
)
def test_bad_admission_settings_name_the_field(override: dict, named: str, tmp_path) -> None:
    config = {"server": override, "storage": {"bucket": "acme-inbound"}}
    with pytest.raises(ConfigError, match=re.escape(named)):
        settings_from_dict(config, environ={})
