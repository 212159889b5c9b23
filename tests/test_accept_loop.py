"""The accept loop and the admission watchdog live through what one connection does: a
thread that cannot start, an end-of-session hook that raises."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import pytest

from tests.helpers import RunningGateway, wait_until


def fail_thread_starts(monkeypatch: pytest.MonkeyPatch, prefix: str, times: int) -> list[str]:
    """The next `times` threads named `prefix...` fail to start, as when the process is
    at its thread limit; returns their names as they fail."""
    real_start = threading.Thread.start
    refused: list[str] = []

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(prefix) and len(refused) < times:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    return refused


def test_a_connection_without_a_thread_is_refused_and_the_next_one_is_served(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refused = fail_thread_starts(monkeypatch, "ssh-", times=1)
    with (
        caplog.at_level(logging.ERROR, logger="sftp_gateway.app"),
        socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as doomed,
    ):
        assert doomed.recv(256) == b""  # closed at once, no version line
    assert refused == ["ssh-127.0.0.1"]
    assert "refused 127.0.0.1: cannot start a thread for it" in caplog.text

    admission = gateway.gateway.admission
    assert gateway.sftp("ls /\n").returncode == 0  # the loop still accepts and serves
    wait_until(lambda: admission.counts() == (0, 0), timeout=10)  # every place given back


def test_a_failing_session_end_does_not_stop_the_admission_watchdog(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The watchdog releases every connection's place and enforces the login grace; if
    one connection's end hook raised and ended it, places would never be given back
    and max_startups would in time refuse everyone."""
    from sftp_gateway.ssh import GatewayServer

    def broken_end_line(_server: GatewayServer) -> None:
        raise RuntimeError("session-end line failed")

    monkeypatch.setattr(GatewayServer, "log_session_end", broken_end_line)
    admission = gateway.gateway.admission
    with caplog.at_level(logging.ERROR, logger="sftp_gateway.admission"):
        for _ in range(2):
            assert gateway.sftp("ls /\n").returncode == 0
            wait_until(lambda: admission.counts() == (0, 0), timeout=10)
    assert "admission watchdog: a round failed" in caplog.text
    watchdog = [t for t in threading.enumerate() if t.name == "admission-watchdog"]
    assert watchdog and all(thread.is_alive() for thread in watchdog)


def test_behind_a_balancer_a_connection_without_a_thread_gives_its_header_slot_back(
    gateway_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most max_startups' last number of connections wait for their PROXY header; a
    connection whose thread could not start must not keep its place among them."""
    gateway = gateway_factory(
        {
            "server": {
                "proxy_protocol": "required",
                "proxy_trusted_networks": ["127.0.0.1/32"],
                "max_startups": "2:30:3",  # 3 may wait for their header
            }
        }
    )
    refused = fail_thread_starts(monkeypatch, "proxy", times=4)
    for _ in range(4):  # one more than there are places
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as doomed:
            assert doomed.recv(256) == b""
    assert len(refused) == 4

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as client:
        client.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 22\r\n")
        assert client.recv(256).startswith(b"SSH-2.0-")  # read its header, then answered
