"""The outbox dispatcher: a thread that moves committed events from the catalog to SQS.

Events are written by the upload's own transaction, so nothing is lost if SQS or this
process dies: a row stays pending until SQS has accepted it. A failed send is retried
with exponential backoff (capped by events.max_backoff). Several gateways may run a
dispatcher on one PostgreSQL: the catalog claims rows with FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Protocol

from sftp_gateway.catalog.repository import Catalog, OutboxEvent
from sftp_gateway.config import EventsConfig
from sftp_gateway.events.publisher import PublishResult, SqsPublisher

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, events: list[OutboxEvent]) -> PublishResult: ...


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next try: base * 2^attempts, capped, with some jitter.

    The jitter spreads retries of many events (and many gateways) after an outage.
    """
    delay = min(cap, base * (2 ** min(attempts, 30)))
    return delay * random.uniform(0.75, 1.0)


class Dispatcher:
    """Claims due outbox events in batches and publishes them; start()/stop() for serve."""

    def __init__(
        self,
        catalog: Catalog,
        config: EventsConfig,
        *,
        publisher: Publisher | None = None,
        name: str = "event-dispatcher",
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.publisher: Publisher = publisher or SqsPublisher(config)
        self.name = name
        self.sent_count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the batch in hand finish (it is settled in the catalog), then return."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.dispatch_pending()
                failures = 0
            except Exception:  # the catalog is unreachable: keep the thread alive
                failures += 1
                log.exception("event dispatch failed; retrying")
            wait = self.config.dispatch_interval
            if failures:
                wait = backoff_delay(failures, wait, self.config.max_backoff)
            self._stop.wait(wait)

    def dispatch_pending(self) -> int:
        """Send every due event, batch after batch; returns how many SQS accepted."""
        total = 0
        while not self._stop.is_set():
            claimed, sent = self.dispatch_batch()
            total += sent
            if claimed < self.config.batch_size or sent < claimed:
                break  # drained, or SQS is failing: wait for the next tick
        return total

    def dispatch_batch(self) -> tuple[int, int]:
        """Claim one batch, publish it and record the outcome in the same transaction."""
        with self.catalog.dispatch_batch(self.config.batch_size) as (events, settle):
            if not events:
                return 0, 0
            result = self.publisher.publish(events)
            accepted = set(result.sent)
            for event in events:
                if event.id in accepted:
                    settle(event.id, sent=True)
                    continue
                error = result.failed.get(event.id, "not acknowledged by SQS")
                delay = backoff_delay(
                    event.attempts, self.config.dispatch_interval, self.config.max_backoff
                )
                settle(event.id, sent=False, error=error, retry_in=delay)
                log.warning(
                    "event %s (%s) not sent, retry in %.1fs: %s",
                    event.event_id,
                    event.event_type,
                    delay,
                    error,
                )
        sent = len(result.sent)
        self.sent_count += sent
        if sent:
            log.info("sent %d event(s) to SQS", sent)
        return len(events), sent
