"""One way to turn SIGTERM/SIGINT into a clean shutdown, for `serve`, `demo` and
`notifier` alike (in the style of uvicorn's signal capture).

The first SIGTERM or SIGINT sets the event the caller waits on, so it can drain; a
second Ctrl-C (SIGINT) while it drains forces the exit (`on_force`, by default a
KeyboardInterrupt). The previous handlers are restored when the block ends. Python
only delivers signals to the main thread: elsewhere (tests, embedded use) nothing is
installed and the event is only set by whoever else holds it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)
# SIGHUP too: a closed terminal or a `kill -HUP` must drain like SIGTERM, not kill the
# process outright (it left workers, host jobs and the metrics directory behind); an
# ignored SIGHUP (`nohup`) stays ignored.
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
POLL_SECONDS = 0.2  # how soon the main thread notices a signal another thread took


def _force_by_interrupt() -> None:
    raise KeyboardInterrupt("second interrupt")


def _nothing() -> None:
    return None


@contextmanager
def capture_signals(
    stop: threading.Event | None = None,
    *,
    on_stop: Callable[[], None] = _nothing,
    on_force: Callable[[], None] = _force_by_interrupt,
) -> Iterator[threading.Event]:
    """Yield `stop` (or a new event), set by the first SIGTERM/SIGINT, which then calls
    `on_stop` (e.g. to end a blocking call); a second SIGINT calls `on_force`."""
    stop = stop or threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set() and signum == signal.SIGINT:
            log.warning("%s again: forcing the exit", name)
            on_force()
            return
        if not stop.is_set():
            log.info("%s: shutting down (Ctrl-C again to force)", name)
        stop.set()
        on_stop()

    previous = {
        sig: signal.signal(sig, handle)
        for sig in SHUTDOWN_SIGNALS
        if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def sleep_until_stopped(stop: threading.Event, poll: float = POLL_SECONDS) -> None:
    """Block the main thread until `stop` is set, by short sleeps.

    Not `stop.wait()`: Linux may hand a process's SIGTERM to any of its threads, and
    when another thread takes it, CPython's C handler only flags it; a main thread
    blocked on a lock never wakes to run the Python handler (seen: a worker that
    never began its drain and was killed). A sleep ends, and the handler runs then.
    Sleeping, the main thread also never holds the event's own lock, which the
    handler's `stop.set()` takes."""
    while not stop.is_set():
        time.sleep(poll)
