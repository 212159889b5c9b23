"""The outbox dispatcher: a thread that moves committed events from the catalog to SQS.

Events are written by the upload's own transaction, so nothing is lost if SQS or this
process dies: a row stays pending until SQS has accepted it. A failed send is retried
with exponential backoff (capped by events.max_backoff), up to events.max_attempts; then,
or at once when SQS refused it for a reason no retry changes, the event is parked: kept
with its error, not retried until an operator runs `sftp-gateway events retry`. Several
gateways may run a dispatcher on one PostgreSQL: the catalog claims rows with FOR UPDATE
SKIP LOCKED.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sftp_gateway.backoff import backoff_delay
from sftp_gateway.config import EventsConfig
from sftp_gateway.events.publisher import PublishResult, SqsPublisher
from sftp_gateway.records import OutboxEvent

__all__ = ["Dispatcher", "Outbox", "Publisher", "backoff_delay"]
log = logging.getLogger(__name__)
NOT_ACKNOWLEDGED = "not acknowledged by SQS"


class Publisher(Protocol):
    def publish(self, events: list[OutboxEvent]) -> PublishResult: ...


class Outbox(Protocol):
    """What the dispatcher needs of the catalog (catalog.repository.Catalog is one):
    a locked batch of due events and a function that settles each of them."""

    def dispatch_batch(
        self, limit: int = 10
    ) -> AbstractContextManager[tuple[list[OutboxEvent], Any]]: ...


@dataclass
class BatchOutcome:
    """What became of one claimed batch."""

    claimed: int = 0
    sent: int = 0
    parked: int = 0
    retrying: int = 0


class Dispatcher:
    """Claims due outbox events in batches and publishes them; start()/stop() for serve."""

    def __init__(
        self,
        catalog: Outbox,
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
        self.parked_count = 0
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
            outcome = self.dispatch_batch()
            total += outcome.sent
            if outcome.claimed < self.config.batch_size or outcome.retrying:
                break  # drained, or SQS is failing: wait for the next tick
        return total

    def dispatch_batch(self) -> BatchOutcome:
        """Claim one batch, publish it and record the outcome in the same transaction."""
        with self.catalog.dispatch_batch(self.config.batch_size) as (events, settle):
            if not events:
                return BatchOutcome()
            result = self.publisher.publish(events)
            outcome = BatchOutcome(claimed=len(events))
            accepted = set(result.sent)
            for event in events:
                if event.id in accepted:
                    settle(event.id, sent=True)
                    outcome.sent += 1
                elif self._park_if_hopeless(event, result, settle):
                    outcome.parked += 1
                else:
                    self._retry_later(event, result, settle)
                    outcome.retrying += 1
        self.sent_count += outcome.sent
        self.parked_count += outcome.parked
        if outcome.sent:
            log.info("sent %d event(s) to SQS", outcome.sent)
        return outcome

    def _park_if_hopeless(self, event: OutboxEvent, result: PublishResult, settle: Any) -> bool:
        """Park an event SQS refused for good, or one that used up events.max_attempts."""
        if event.id in result.rejected:
            why = f"refused by SQS: {result.rejected[event.id]}"
            error = result.rejected[event.id]
        elif event.attempts + 1 >= self.config.max_attempts:
            error = result.failed.get(event.id, NOT_ACKNOWLEDGED)
            why = f"{event.attempts + 1} attempts failed, last: {error}"
        else:
            return False
        settle(event.id, sent=False, error=error, park=True)
        log.error(
            "event %s (%s, upload %s) parked, %s; `sftp-gateway events retry %s` sends it again",
            event.event_id,
            event.event_type,
            event.payload.get("upload_id"),
            why,
            event.id,
        )
        return True

    def _retry_later(self, event: OutboxEvent, result: PublishResult, settle: Any) -> None:
        error = result.failed.get(event.id, NOT_ACKNOWLEDGED)
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
