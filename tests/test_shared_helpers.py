"""The one-per-concern helpers: sizes, backoff, signal capture, background workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sftp_gateway.backoff import Backoff, backoff_delay
from sftp_gateway.units import human_size, parse_size
from sftp_gateway.workers import Worker


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (1024**2 - 1, "1.0 MiB"),
        (1024**3, "1 GiB"),
        (5 * 1024**4, "5 TiB"),
    ],
)
def test_sizes_read_the_same_everywhere(size: int, text: str) -> None:
    assert human_size(size) == text


def test_a_configured_size_prints_back_as_written() -> None:
    for text in ("8 MiB", "1 GiB", "512 KiB"):
        assert human_size(parse_size(text.replace(" ", ""))) == text


def test_a_bad_size_names_what_is_expected() -> None:
    with pytest.raises(ValueError, match="'8 parsecs' is not a size such as 8MiB"):
        parse_size("8 parsecs")


def test_backoff_doubles_up_to_its_cap_and_jitters_below_it() -> None:
    backoff = Backoff(base=1.0, cap=60.0, jitter=0.25)
    for attempt, exact in [(0, 1.0), (1, 2.0), (3, 8.0), (6, 60.0), (1000, 60.0)]:
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(0.75 * exact <= d <= exact for d in delays), (attempt, delays)
        assert len(delays) > 1  # spread, so many retries do not land at once
    assert backoff_delay(2, 0.5, 1.0) <= 1.0


def test_backoff_refuses_a_nonsense_setting() -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(base=0, cap=1)


def test_every_background_worker_is_a_worker() -> None:
    from sftp_gateway.admission import Admission
    from sftp_gateway.events.dispatcher import Dispatcher
    from sftp_gateway.gc import PeriodicGc
    from sftp_gateway.idle import IdleWatcher
    from sftp_gateway.notifier.worker import NotifierThread
    from sftp_gateway.sessions import RevocationWatcher

    for cls in (Admission, Dispatcher, PeriodicGc, IdleWatcher, NotifierThread, RevocationWatcher):
        assert hasattr(cls, "start") and hasattr(cls, "stop"), cls
    for cls in (Admission, PeriodicGc, IdleWatcher, NotifierThread, RevocationWatcher):
        assert isinstance(cls.name, str) and cls.name, cls
    dispatcher = Dispatcher(catalog=None, config=None, publisher=object())  # type: ignore[arg-type]
    assert isinstance(dispatcher, Worker)


SIGNAL_SCRIPT = """
import signal, sys, time
from sftp_gateway.signals import capture_signals

before = signal.getsignal(signal.SIGTERM)
forced = []
with capture_signals(on_force=lambda: forced.append(True)) as stop:
    print("ready", flush=True)
    assert stop.wait(20), "no signal"
    print("stopping", flush=True)
    deadline = time.monotonic() + 20
    while not forced and time.monotonic() < deadline:
        time.sleep(0.05)
    print("forced" if forced else "not forced", flush=True)
print("restored" if signal.getsignal(signal.SIGTERM) is before else "not restored", flush=True)
"""


def _expect_line(process: subprocess.Popen[str], wanted: str) -> None:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line == wanted, (line, process.stderr.read() if process.stderr else "")


def test_sigterm_asks_to_stop_a_second_ctrl_c_forces_and_handlers_come_back(
    tmp_path: Path,
) -> None:
    script = tmp_path / "signals.py"
    script.write_text(textwrap.dedent(SIGNAL_SCRIPT))
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _expect_line(process, "ready")
        process.send_signal(signal.SIGTERM)
        _expect_line(process, "stopping")
        time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _expect_line(process, "forced")
        _expect_line(process, "restored")
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_off_the_main_thread_nothing_is_installed() -> None:
    import threading

    from sftp_gateway.signals import capture_signals

    seen: list[object] = []

    def body() -> None:
        with capture_signals() as stop:
            seen.append(signal.getsignal(signal.SIGTERM))
            seen.append(stop.is_set())

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join(5)
    assert seen == [before, False]


OTHER_THREAD_SCRIPT = """
import signal, threading, time
from sftp_gateway.signals import capture_signals, sleep_until_stopped

def take_the_signal():  # as the kernel may: a thread other than the main one gets it
    time.sleep(0.5)  # the main thread is asleep by then
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

with capture_signals() as stop:
    threading.Thread(target=take_the_signal).start()
    sleep_until_stopped(stop)
print("stopped", flush=True)
"""


def test_a_sigterm_another_thread_takes_still_stops_the_main_thread(tmp_path: Path) -> None:
    """A worker whose SIGTERM landed on one of its other threads never drained while
    its main thread sat in Event.wait(); sleep_until_stopped notices within a poll."""
    script = tmp_path / "other_thread.py"
    script.write_text(textwrap.dedent(OTHER_THREAD_SCRIPT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=20)
    assert (done.returncode, done.stdout.strip()) == (0, "stopped"), done.stderr
