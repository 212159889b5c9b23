"""The accept loop lives through what one connection costs: a process that cannot
start one more thread refuses that connection and goes on serving."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from tests.helpers import RunningGateway, wait_until


def test_a_connection_without_a_thread_is_refused_and_the_next_one_is_served(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_start = threading.Thread.start
    refused: list[str] = []

    def start_failing_once(thread: threading.Thread) -> None:
        if thread.name.startswith("ssh-") and not refused:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_failing_once)
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
