"""Readiness: can this gateway serve uploads now? The catalog answers SELECT 1, S3 answers
HeadBucket on our bucket, SQS answers GetQueueAttributes on the queue (when configured).

Each check runs on a small pool with a short timeout, all at once, so /readyz answers
within about CHECK_TIMEOUT seconds whatever is down; a check still hanging after that is
reported as a timeout (the pool is bounded, so a dead dependency costs no more threads).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

log = logging.getLogger(__name__)
CHECK_TIMEOUT = 2.0
OK = "ok"


class Readiness:
    """The dependency checks of one gateway; `check()` -> (ready, {name: "ok" | error})."""

    def __init__(self, gateway: Any, timeout: float = CHECK_TIMEOUT) -> None:
        self.timeout = timeout
        self.checks: dict[str, Callable[[], None]] = {"catalog": gateway.catalog.ping}
        storage_ping = getattr(gateway.storage, "ping", None)
        if storage_ping is not None:
            self.checks["s3"] = lambda: storage_ping(timeout)
        events = gateway.settings.events
        if events.queue_url:
            self.checks["sqs"] = _sqs_check(events, timeout)
        self._pool = ThreadPoolExecutor(2 * len(self.checks), thread_name_prefix="readyz")
        self._was_ready: bool | None = None
        self._lock = threading.Lock()

    def check(self) -> tuple[bool, dict[str, str]]:
        futures = {name: self._pool.submit(fn) for name, fn in self.checks.items()}
        results = {name: self._outcome(future) for name, future in futures.items()}
        ready = all(value == OK for value in results.values())
        self._note(ready, results)
        return ready, results

    def _outcome(self, future: Future[None]) -> str:
        try:
            future.result(timeout=self.timeout + 1)
        except FutureTimeout:
            return f"no answer within {self.timeout:g}s"
        except Exception as exc:
            return _describe(exc)
        return OK

    def _note(self, ready: bool, results: dict[str, str]) -> None:
        """One log line when readiness changes, not one per probe."""
        with self._lock:
            changed, self._was_ready = ready != self._was_ready, ready
        if not changed:
            return
        if ready:
            log.info("ready: %s", ", ".join(results))
        else:
            failing = "; ".join(f"{k}: {v}" for k, v in results.items() if v != OK)
            log.warning("not ready: %s", failing)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _sqs_check(events: Any, timeout: float) -> Callable[[], None]:
    from sftp_gateway.events.publisher import sqs_client

    client = sqs_client(events, read_timeout=timeout)

    def check() -> None:
        client.get_queue_attributes(QueueUrl=events.queue_url, AttributeNames=["QueueArn"])

    return check


def _describe(exc: BaseException) -> str:
    """The error as an operator reads it: its type and first line, bounded."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'failed'}"[:300]
