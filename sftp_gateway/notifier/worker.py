"""`sftp-gateway notifier`: long-poll SQS, email each event, delete only what was sent.

A message is deleted only after the email was accepted for every recipient, or
refused for good for some (or was already sent before, per the catalog); recipients
refused for now (4xx) are owed it, and only they get it at the next delivery. Failed
sends and poison messages (unreadable, or every recipient refused for good by SMTP)
stay in the queue: SQS redelivers them after the visibility timeout, and its redrive
policy may move poison messages to a dead-letter queue; without one, a poison message
is deleted on its `notifier.max_receives`-th delivery (one ERROR line), so none is
retried forever.
SIGTERM lets the message in hand finish.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from sftp_gateway.backoff import Backoff
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import Settings
from sftp_gateway.errors import ConfigError
from sftp_gateway.events.publisher import sqs_client
from sftp_gateway.notifier.processor import EventProcessor, Outcome
from sftp_gateway.notifier.senders import Sender, make_sender
from sftp_gateway.signals import capture_signals

log = logging.getLogger(__name__)
ONCE_WAIT_SECONDS = 1  # --once: a short long-poll finds what is queued, then exits
RECEIVE_BACKOFF = Backoff(base=1.0, cap=60.0)  # SQS unreachable: 2 s, 4 s, ... 60 s


@dataclass
class WorkerStats:
    """What one run did; tests and the log read it."""

    done: int = 0  # emailed, or already emailed before: deleted from the queue
    retried: int = 0
    malformed: int = 0  # poison (unreadable, undeliverable): kept for a later receive/DLQ
    dropped: int = 0  # poison on its notifier.max_receives-th receive: deleted


def receive_count_of(message: dict[str, Any]) -> int:
    """SQS's ApproximateReceiveCount of a received message (1 when SQS did not say)."""
    try:
        return max(1, int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)))
    except (TypeError, ValueError):
        return 1


class _StopPolling(BaseException):
    """Raised by the signal handler to cut short an idle long poll (never mid-message)."""


class NotifierWorker:
    """Polls one queue and hands each message to the EventProcessor."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        *,
        sender: Sender | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if not settings.events.queue_url:
            raise ConfigError("events.queue_url: required by the notifier")
        self.queue_url = settings.events.queue_url
        self.config = settings.notifier
        self.processor = EventProcessor(
            catalog, sender or make_sender(settings.notifier), settings.notifier
        )
        wait = self.config.wait_seconds
        self.client = sqs_client(settings.events, read_timeout=wait + 10)
        self.stop_event = stop or threading.Event()
        self.stats = WorkerStats()
        self.polling = False  # True only while blocked in an idle long poll

    def request_stop(self, *, from_signal: bool = False) -> None:
        """Stop after the message in hand; a signal also ends an idle long poll at once."""
        self.stop_event.set()
        if from_signal and self.polling:
            raise _StopPolling

    def _poll(self, wait: int) -> list[dict[str, Any]]:
        try:
            self.polling = True
            if self.stop_event.is_set():
                return []
            return self.receive(wait)
        finally:
            self.polling = False

    def receive(self, wait: int) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": self.config.batch_size,
            "WaitTimeSeconds": wait,
            "MessageAttributeNames": ["All"],
            "AttributeNames": ["ApproximateReceiveCount"],  # for notifier.max_receives
        }
        if self.config.visibility_timeout > 0:
            kwargs["VisibilityTimeout"] = self.config.visibility_timeout
        return list(self.client.receive_message(**kwargs).get("Messages", []))

    def handle_batch(self, messages: list[dict[str, Any]]) -> None:
        """Process messages in order; once stopping, hand the untouched ones back."""
        for index, message in enumerate(messages):
            if self.stop_event.is_set():
                self._release(messages[index:])
                return
            self.handle_message(message)

    def handle_message(self, message: dict[str, Any]) -> Outcome:
        outcome = self.processor.handle(
            message.get("Body", ""), message.get("MessageId", "-"), receive_count_of(message)
        )
        if outcome is Outcome.DONE:
            self.stats.done += 1
        elif outcome is Outcome.RETRY:
            self.stats.retried += 1
        elif outcome is Outcome.DROPPED:
            self.stats.dropped += 1
        else:
            self.stats.malformed += 1
        if outcome.deletes:
            self._delete(message)
        return outcome

    def _delete(self, message: dict[str, Any]) -> None:
        try:
            self.client.delete_message(
                QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
        except Exception as exc:  # redelivered later; the catalog stops a second email
            log.warning("could not delete message %s: %s", message.get("MessageId"), exc)

    def _release(self, messages: list[dict[str, Any]]) -> None:
        """Make messages we will not handle visible again now, for another worker."""
        for message in messages:
            try:
                self.client.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=0,
                )
            except Exception as exc:  # they reappear after the visibility timeout anyway
                log.debug("could not release message %s: %s", message.get("MessageId"), exc)

    def run(self, *, once: bool = False) -> WorkerStats:
        """Poll until stopped; with once, until a poll brings nothing new."""
        seen: set[str] = set()
        failures = 0
        wait = min(self.config.wait_seconds, ONCE_WAIT_SECONDS) if once else None
        while not self.stop_event.is_set():
            try:
                messages = self._poll(self.config.wait_seconds if wait is None else wait)
                failures = 0
            except _StopPolling:
                break  # anything SQS handed over meanwhile reappears after its timeout
            except Exception as exc:
                if once:
                    raise
                failures += 1
                delay = RECEIVE_BACKOFF.delay(failures)
                log.warning("cannot receive from SQS (retry in %.0fs): %s", delay, exc)
                self.stop_event.wait(delay)
                continue
            ids = {m.get("MessageId", "") for m in messages}
            if once and ids <= seen:
                self._release(messages)
                break
            seen |= ids
            self.handle_batch(messages)
        return self.stats


def run_worker(
    settings: Settings,
    catalog: Catalog,
    *,
    once: bool = False,
    sender: Sender | None = None,
    stop: threading.Event | None = None,
) -> WorkerStats:
    """The notifier command: poll, email, delete; returns what it did."""
    worker = NotifierWorker(settings, catalog, sender=sender, stop=stop)
    log.info("notifier polling %s", worker.queue_url)

    def stop_on_signal() -> None:
        """SIGTERM/SIGINT: finish the message in hand (an idle long poll ends at once)."""
        log.info("signal: finishing the message in hand, then exiting")
        worker.request_stop(from_signal=True)

    with capture_signals(worker.stop_event, on_stop=stop_on_signal):
        stats = worker.run(once=once)
    log.info(
        "notifier stopped: %d done, %d to retry, %d malformed, %d dropped",
        stats.done,
        stats.retried,
        stats.malformed,
        stats.dropped,
    )
    return stats


class NotifierThread:
    """The notifier inside the gateway process (the demo): start()/stop() like a worker."""

    name = "notifier"

    def __init__(self, settings: Settings, catalog: Catalog, sender: Sender | None = None) -> None:
        self.worker = NotifierWorker(settings, catalog, sender=sender)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.worker.stop_event.clear()
        self._thread = threading.Thread(target=self.worker.run, name="notifier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
