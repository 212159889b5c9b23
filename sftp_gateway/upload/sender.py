"""The process's part senders and hashers, shared by every upload.

Threads per upload do not bound a process (256 uploads x 5 threads). Like s3transfer's
BoundedExecutor, one pool sends the parts of all uploads; each upload still keeps at
most `storage.max_concurrency` parts queued or in flight (its own slots, upload/stream.py),
so the pool's queue is bounded too. SHA-256 must see an upload's parts in order: each
upload gets an `OrderedLane` on a small shared hashing pool, which runs that upload's
jobs one at a time, in order, and lets other uploads' lanes take turns between parts.
Hashing goes through OpenSSL without the GIL (upload/sha256.py).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from sftp_gateway import metrics


class OrderedLane:
    """One upload's jobs, run one at a time in submission order on a shared pool."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._queue: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._busy = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._queue.append((partial(fn, *args), future))
            start, self._busy = not self._busy, True
        if start:
            self._pool.submit(self._run_next)
        return future

    def _run_next(self) -> None:
        """Run one job, then queue the next behind other lanes' (round robin); once
        the pool is shutting down, run what is left here so no future is lost."""
        while True:
            with self._lock:
                job, future = self._queue.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                if not self._queue:
                    self._busy = False
                    return
            try:
                self._pool.submit(self._run_next)
                return
            except RuntimeError:  # shut down: finish the lane on this thread
                continue


class PartSender:
    """One bounded pool for part uploads and one for hashing, for the whole process."""

    def __init__(self, threads: int, hash_threads: int | None = None) -> None:
        self._send_pool = ThreadPoolExecutor(threads, thread_name_prefix="part")
        self._hash_pool = ThreadPoolExecutor(
            hash_threads or min(4, os.cpu_count() or 1), thread_name_prefix="sha256"
        )

    def send(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return metrics.part_submitted(self._send_pool.submit(fn, *args))  # queue depth

    def lane(self) -> OrderedLane:
        """A new in-order queue on the hashing pool, for one upload."""
        return OrderedLane(self._hash_pool)

    def close(self) -> None:
        """Wait for the parts in flight, then stop the threads."""
        self._send_pool.shutdown(wait=True)
        self._hash_pool.shutdown(wait=True)


class PartJob:
    """A part's two jobs, its SHA-256 (in order) and its upload (in parallel). The last
    to finish settles the part once, then lets go of the stream: no reference cycle
    through the futures keeps a finished upload's buffers in memory."""

    def __init__(self, on_settled: Callable[[BaseException | None], None]) -> None:
        self._on_settled: Callable[[BaseException | None], None] | None = on_settled
        self._pending = 2
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.settled = threading.Event()

    def one_done(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1
            error = future.exception()
            if error is not None and self._error is None:
                self._error = error
            if self._pending:
                return
            on_settled, self._on_settled = self._on_settled, None
        assert on_settled is not None
        try:
            on_settled(self._error)
        finally:
            self.settled.set()
