"""What `serve` runs beside the SFTP server: background workers, started and stopped
together (admission sweeps, the gc, watchers, the event dispatcher, the demo notifier)."""

from __future__ import annotations

import logging
import threading
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class Worker(Protocol):
    """A background worker: `start()` returns at once (it runs in its own thread),
    `stop()` returns once it has finished; `name` is what logs and thread names show."""

    @property
    def name(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class PeriodicWorker:
    """A worker that calls `run_once()` every `interval` seconds on one thread until
    stopped; a failing round is logged and the next one tried (a catalog or S3 outage
    must not end the worker)."""

    name = "periodic"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                log.exception("%s failed; will retry in %gs", self.name, self.interval)
