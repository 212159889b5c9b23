"""One message in, one decision out: shared by the long-polling worker and the Lambda.

DONE means the message may be deleted (emailed now, also when SMTP refused some of the
recipients for good (5xx) but accepted the others; already emailed before; or a failure
email over the per-user limit).
RETRY means sending failed (SMTP down, refusing the message, or refusing every
recipient for now with a 4xx), or some recipients were refused for now while the others
got it: keep it, SQS redelivers it, and only those still owed it get it then.
MALFORMED means we cannot parse or render it, or SMTP refused every recipient for good
(5xx): keep it for now (the queue's redrive policy may move it to a dead-letter queue).
DROPPED means it was MALFORMED on its `notifier.max_receives`-th delivery: delete it,
so no message is retried forever because of its content.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections import defaultdict, deque
from typing import Any

from sftp_gateway import metrics
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import NotifierConfig
from sftp_gateway.events.schema import UPLOAD_FAILED
from sftp_gateway.notifier.render import (
    MalformedEvent,
    header_safe,
    parse_event,
    recipients_for,
    render_email,
)
from sftp_gateway.notifier.senders import Refusals, Sender, Undeliverable, describe_refusals

log = logging.getLogger(__name__)
FAILURE_EMAIL_WINDOW = 3600.0  # seconds: notifier.failure_email_limit is per hour


class Outcome(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    MALFORMED = "malformed"
    DROPPED = "dropped"

    @property
    def deletes(self) -> bool:
        """Whether the message leaves the queue."""
        return self in (Outcome.DONE, Outcome.DROPPED)


class FailureEmailLimiter:
    """At most `limit` upload.failed emails per user per window (0: no limit).

    A user whose uploads keep failing (a script retrying a refused file) must not
    flood the people who get the mail; the events are still recorded in the catalog.
    """

    def __init__(self, limit: int, window: float = FAILURE_EMAIL_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._sent: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def exceeded(self, user: str) -> bool:
        if not self.limit:
            return False
        with self._lock:
            recent = self._recent(user)
            return len(recent) >= self.limit

    def note(self, user: str) -> None:
        with self._lock:
            self._recent(user).append(time.monotonic())

    def _recent(self, user: str) -> deque[float]:
        sent = self._sent[user]
        horizon = time.monotonic() - self.window
        while sent and sent[0] < horizon:
            sent.popleft()
        return sent


def event_id_hint(body: str) -> str | None:
    """The event_id of a message we cannot use, if it has a readable one (for the log)."""
    try:
        value = json.loads(body).get("event_id")
    except (ValueError, AttributeError, TypeError):
        return None
    return header_safe(value, 64) if isinstance(value, str) else None


class _Unrenderable(Exception):
    """The event parsed but its email cannot be built (a poison message)."""


class EventProcessor:
    """Emails each event_id once: checks the catalog, sends, then records it."""

    def __init__(self, catalog: Catalog, sender: Sender, config: NotifierConfig) -> None:
        self.catalog = catalog
        self.sender = sender
        self.config = config
        self.failure_limiter = FailureEmailLimiter(config.failure_email_limit)

    def handle(self, body: str, message_id: str = "-", receive_count: int = 1) -> Outcome:
        """Decide one message; receive_count is SQS's ApproximateReceiveCount."""
        try:
            event = parse_event(body)
        except MalformedEvent as exc:
            hint = event_id_hint(body)
            about = f" (event {hint})" if hint else ""
            return self._poison(
                f"{about} is not an upload event ({exc})".lstrip(),
                message_id,
                receive_count,
                body=body,
            )
        event_id = event["event_id"]
        try:
            with self.catalog.email_guard(event_id):
                record = self.catalog.email_record(event_id)
                if record is not None and record.complete:
                    log.info("event %s was already emailed; dropping the duplicate", event_id)
                    return Outcome.DONE
                return self._send(event, record.recipients if record else frozenset())
        except _Unrenderable as exc:
            return self._poison(
                f"(event {event_id}) cannot be rendered ({exc})", message_id, receive_count
            )
        except Undeliverable as exc:
            return self._poison(
                f"(event {event_id}) cannot be delivered ({exc})", message_id, receive_count
            )
        except Exception:
            log.exception("cannot check event %s in the catalog; will retry", event_id)
            return Outcome.RETRY

    def _poison(
        self, problem: str, message_id: str, receive_count: int, *, body: str | None = None
    ) -> Outcome:
        """MALFORMED while it may still go to a dead-letter queue, DROPPED after that."""
        shown = f": {body!r:.200}" if body is not None else ""
        limit = self.config.max_receives
        if limit and receive_count >= limit:
            log.error(
                "message %s %s; deleted after %d receives%s",
                message_id,
                problem,
                receive_count,
                shown,
            )
            return Outcome.DROPPED
        log.error(
            "message %s %s, left for the dead-letter queue (receive %d)%s",
            message_id,
            problem,
            receive_count,
            shown,
        )
        return Outcome.MALFORMED

    def _send(self, event: dict[str, Any], already: frozenset[str]) -> Outcome:
        """Email those of the event's recipients not `already` emailed (by an earlier
        delivery that left others owed it), and record who got it."""
        event_id = event["event_id"]
        user = str(event["user"])
        if not already and event["type"] == UPLOAD_FAILED and self.failure_limiter.exceeded(user):
            log.warning(
                "event %s (upload.failed by %s) not emailed: over notifier.failure_email_limit"
                " (%d per hour for this user)",
                event_id,
                user,
                self.config.failure_email_limit,
            )
            return Outcome.DONE
        recipients = recipients_for(event, self.config.recipients, self.config.user_recipients)
        owed: list[str] = []
        if already:
            recipients = [address for address in recipients if address not in already]
        if not recipients:
            if not already:
                log.warning(
                    "event %s has no recipients (no uploader email, none configured)", event_id
                )
        else:
            try:
                message = render_email(
                    event, from_address=self.config.from_address, recipients=recipients
                )
            except Exception as exc:
                raise _Unrenderable(f"{type(exc).__name__}: {exc}") from exc
            try:
                refused = self.sender.send(message, recipients) or {}
            except Undeliverable:
                metrics.email_sent(False)
                raise  # a poison message: handle() bounds it by notifier.max_receives
            except Exception as exc:
                log.warning("email for event %s not sent, will retry: %s", event_id, exc)
                metrics.email_sent(False)
                return Outcome.RETRY
            metrics.email_sent(True)
            if event["type"] == UPLOAD_FAILED and not already:
                self.failure_limiter.note(user)
            owed = self._owed_after(event_id, refused)
            recipients = [address for address in recipients if address not in refused]
            log.info("emailed event %s (%s) to %s", event_id, event["type"], ", ".join(recipients))
        try:
            self.catalog.record_email_sent(event_id, recipients, pending=owed)
        except Exception:
            # The email went out: deleting the message is right; only dedup is weakened.
            log.exception("event %s emailed but not recorded in the catalog", event_id)
            return Outcome.DONE
        return Outcome.RETRY if owed else Outcome.DONE

    def _owed_after(self, event_id: str, refused: Refusals) -> list[str]:
        """The recipients to try again on the message's next delivery: those refused for
        now (4xx), as long as the message lasts in the queue, like any temporary failure.
        The others got the email, so they are never sent it twice; one refused for good
        (5xx) is not retried."""
        for_good = {a: r for a, r in refused.items() if r[0] >= 500}
        for_now = {a: r for a, r in refused.items() if r[0] < 500}
        if for_good:
            log.warning(
                "event %s: SMTP refused %s; emailed the other recipients, not retried",
                event_id,
                describe_refusals(for_good),
            )
        if not for_now:
            return []
        log.warning(
            "event %s: SMTP refused %s for now; emailed the other recipients, retrying"
            " those on the next delivery",
            event_id,
            describe_refusals(for_now),
        )
        return list(for_now)
