"""No message is retried forever because of its content: hostile names render, an
unusable address is skipped, poison messages (unreadable, or every recipient refused
for good) are dropped after notifier.max_receives, failure emails are rate-limited."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from sftp_gateway.config import NotifierConfig
from sftp_gateway.notifier import EventProcessor, make_lambda_handler
from sftp_gateway.notifier.senders import FolderSender
from sftp_gateway.notifier.worker import WorkerStats, run_worker
from tests.notify_support import (
    NO_QUEUE,
    PickySmtp,
    SmtpCapture,
    create_queue,
    event_body,
    events_settings,
    new_catalog,
    queue_depth,
    smtp_server,
    smtp_settings,
    sqs,
    text_of,
    warnings_of,
)


def send(endpoint: str, queue: str, body: str) -> str:
    return sqs(endpoint).send_message(QueueUrl=queue, MessageBody=body)["MessageId"]


def run_until_empty(settings: Any, catalog: Any, endpoint: str, queue: str) -> WorkerStats:
    """Run the notifier (--once) until the queue is empty; bounded to 30 s."""
    total = WorkerStats()
    deadline = time.monotonic() + 30
    while sum(queue_depth(endpoint, queue)) and time.monotonic() < deadline:
        stats = run_worker(settings, catalog, once=True)
        for name in ("done", "retried", "malformed", "dropped"):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        time.sleep(0.2)
    return total


def test_file_name_with_line_separator_and_rtl_override_is_emailed_once(
    tmp_path: Path, moto_endpoint: str
) -> None:
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture()
    hostile = "q3\u2028Bcc: x@evil.example\u202efdp.pdf"
    with smtp_server(handler) as port:
        settings = events_settings(
            tmp_path, moto_endpoint, queue, notifier={"smtp_host": "127.0.0.1", "smtp_port": port}
        )
        catalog = new_catalog(settings)
        send(moto_endpoint, queue, event_body(file_name=hostile, path="/" + hostile))
        stats = run_until_empty(settings, catalog, moto_endpoint, queue)
    assert stats.done == 1 and stats.retried == 0
    (received,) = handler.messages
    subject = received.message["Subject"]
    assert "\u2028" not in subject and "\u202e" not in subject
    assert subject.startswith("New upload: q3\ufffdBcc: x@evil.example\ufffdfdp.pdf")
    assert received.message["Bcc"] is None
    assert sorted(received.rcpt_tos) == ["alice@example.com", "ops@example.com"]
    assert "q3" in text_of(received.message)


def test_poison_message_is_deleted_after_max_receives_with_one_error_line(
    tmp_path: Path, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = create_queue(moto_endpoint)
    settings = events_settings(
        tmp_path,
        moto_endpoint,
        queue,
        notifier={"max_receives": 3, "visibility_timeout": 1, "smtp_port": 1},
    )
    catalog = new_catalog(settings)
    poison = json.loads(event_body(type="upload.exploded"))
    message_id = send(moto_endpoint, queue, json.dumps(poison))
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    stats = run_until_empty(settings, catalog, moto_endpoint, queue)
    assert (stats.malformed, stats.dropped) == (2, 1)
    assert queue_depth(moto_endpoint, queue) == (0, 0)
    dropped = dropped_messages(caplog)
    assert dropped == [
        f"message {message_id} (event {poison['event_id']}) is not an upload event"
        f" (unknown event type 'upload.exploded'); deleted after 3 receives: "
        f"{json.dumps(poison)!r:.200}"
    ]


def test_uploader_email_with_a_line_break_is_skipped_and_ops_get_the_email_once(
    tmp_path: Path, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture()
    hostile = "alice@example.com\r\nBcc: x@evil.example"
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port, visibility_timeout=1)
        catalog = new_catalog(settings)
        body = event_body(email=hostile)
        send(moto_endpoint, queue, body)
        run_until_empty(settings, catalog, moto_endpoint, queue)
    (received,) = handler.messages
    assert received.rcpt_tos == ["ops@example.com"]
    assert received.message["To"] == "ops@example.com" and received.message["Bcc"] is None
    assert queue_depth(moto_endpoint, queue) == (0, 0)
    assert warnings_of(caplog) == [
        f"event {json.loads(body)['event_id']}: not emailing the uploader's email {hostile!a}:"
        " not one valid email address"
    ]


def test_recipients_refused_for_now_are_retried_and_refused_for_good_dropped_after_max_receives(
    tmp_path: Path, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = create_queue(moto_endpoint)
    handler = PickySmtp(
        refuse={"alice@example.com": "450 4.2.1 mailbox busy", "ops@example.com": "451 4.3.0 later"}
    )
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    with smtp_server(handler) as port:
        settings = smtp_settings(
            tmp_path, moto_endpoint, queue, port, max_receives=3, visibility_timeout=1
        )
        catalog = new_catalog(settings)
        body = event_body()
        message_id = send(moto_endpoint, queue, body)
        first = run_worker(settings, catalog, once=True)
        assert first.retried == 1 and sum(queue_depth(moto_endpoint, queue)) == 1

        handler.refuse = dict.fromkeys(handler.refuse, "550 5.1.1 no such user")
        stats = run_until_empty(settings, catalog, moto_endpoint, queue)
    assert handler.messages == []
    assert (stats.retried, stats.malformed, stats.dropped) == (0, 1, 1)
    assert queue_depth(moto_endpoint, queue) == (0, 0)
    dropped = dropped_messages(caplog)
    assert dropped == [
        f"message {message_id} (event {json.loads(body)['event_id']}) cannot be delivered"
        " (SMTP refused every recipient: alice@example.com (550 5.1.1 no such user),"
        " ops@example.com (550 5.1.1 no such user)); deleted after 3 receives"
    ]


def test_failure_emails_are_limited_per_user_and_the_rest_deleted(
    tmp_path: Path, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture()
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    with smtp_server(handler) as port:
        settings = events_settings(
            tmp_path,
            moto_endpoint,
            queue,
            notifier={"smtp_host": "127.0.0.1", "smtp_port": port, "failure_email_limit": 2},
        )
        catalog = new_catalog(settings)
        for n in range(4):
            send(moto_endpoint, queue, event_body(type="upload.failed", file_name=f"f{n}.pdf"))
        send(moto_endpoint, queue, event_body(user="bob", email=None))
        send(moto_endpoint, queue, event_body(type="upload.failed", user="bob", email=None))
        stats = run_until_empty(settings, catalog, moto_endpoint, queue)
    assert stats.done == 6 and queue_depth(moto_endpoint, queue) == (0, 0)
    subjects = sorted(r.message["Subject"] for r in handler.messages)
    assert len([s for s in subjects if "from alice" in s]) == 2
    assert len([s for s in subjects if "from bob" in s]) == 2  # bob has his own budget
    limited = [r for r in caplog.records if "failure_email_limit" in r.getMessage()]
    assert len(limited) == 2 and all(r.levelno == logging.WARNING for r in limited)


def sqs_record(body: str, message_id: str, receive_count: int) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count)},
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:uploads",
    }


def test_lambda_reports_poison_as_failure_until_its_max_receives_th_delivery(
    tmp_path: Path,
) -> None:
    catalog = new_catalog(events_settings(tmp_path, "http://127.0.0.1:1", NO_QUEUE))
    config = NotifierConfig(recipients=["ops@example.com"], max_receives=5)
    handler = make_lambda_handler(EventProcessor(catalog, FolderSender(tmp_path / "mail"), config))
    early = handler({"Records": [sqs_record("garbage", "m1", 4)]}, None)
    assert early == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    last = handler({"Records": [sqs_record("garbage", "m1", 5)]}, None)
    assert last == {"batchItemFailures": []}
    hostile = event_body(file_name="a\u2028b\u0085c.pdf")
    assert handler({"Records": [sqs_record(hostile, "m2", 1)]}, None) == {"batchItemFailures": []}
    assert len(list((tmp_path / "mail").glob("*.eml"))) == 1


def dropped_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ERROR lines saying a message was deleted unprocessed."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "deleted after" in r.getMessage()
    ]
