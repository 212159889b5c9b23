"""One message in, one decision out: shared by the long-polling worker and the Lambda.

DONE means the message may be deleted (emailed now, or already emailed before).
RETRY means sending failed (SMTP down or refusing): keep it, SQS redelivers it.
MALFORMED means we cannot read it: keep it, so the redrive policy moves it to a DLQ.
"""

from __future__ import annotations

import enum
import logging

from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import NotifierConfig
from sftp_gateway.notifier.render import MalformedEvent, parse_event, recipients_for, render_email
from sftp_gateway.notifier.senders import Sender

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    MALFORMED = "malformed"


class EventProcessor:
    """Emails each event_id once: checks the catalog, sends, then records it."""

    def __init__(self, catalog: Catalog, sender: Sender, config: NotifierConfig) -> None:
        self.catalog = catalog
        self.sender = sender
        self.config = config

    def handle(self, body: str, message_id: str = "-") -> Outcome:
        try:
            event = parse_event(body)
        except MalformedEvent as exc:
            log.error(
                "message %s is not an upload event (%s), left for the dead-letter queue: %.200r",
                message_id,
                exc,
                body,
            )
            return Outcome.MALFORMED
        event_id = event["event_id"]
        try:
            with self.catalog.email_guard(event_id):
                if self.catalog.email_already_sent(event_id):
                    log.info("event %s was already emailed; dropping the duplicate", event_id)
                    return Outcome.DONE
                return self._send(event)
        except Exception:
            log.exception("cannot check event %s in the catalog; will retry", event_id)
            return Outcome.RETRY

    def _send(self, event: dict) -> Outcome:
        event_id = event["event_id"]
        recipients = recipients_for(event, self.config.recipients, self.config.user_recipients)
        if not recipients:
            log.warning("event %s has no recipients (no uploader email, none configured)", event_id)
        else:
            message = render_email(
                event, from_address=self.config.from_address, recipients=recipients
            )
            try:
                self.sender.send(message, recipients)
            except Exception as exc:
                log.warning("email for event %s not sent, will retry: %s", event_id, exc)
                return Outcome.RETRY
            log.info("emailed event %s (%s) to %s", event_id, event["type"], ", ".join(recipients))
        try:
            self.catalog.record_email_sent(event_id, recipients)
        except Exception:
            # The email went out: deleting the message is right; only dedup is weakened.
            log.exception("event %s emailed but not recorded in the catalog", event_id)
        return Outcome.DONE
