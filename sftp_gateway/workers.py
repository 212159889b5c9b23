"""What `serve` runs beside the SFTP server: background workers, started and stopped
together (admission sweeps, the gc, watchers, the event dispatcher, the demo notifier)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Worker(Protocol):
    """A background worker: `start()` returns at once (it runs in its own thread),
    `stop()` returns once it has finished; `name` is what logs and thread names show."""

    @property
    def name(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...
