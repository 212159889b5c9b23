"""The notifier: SQS over real HTTP (moto), a real SMTP server (aiosmtpd), real uploads."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.smtp import AuthResult, LoginPassword

import sftp_gateway.notifier as notifier_pkg
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import NotifierConfig, Settings
from sftp_gateway.events.dispatcher import Dispatcher
from sftp_gateway.notifier import EventProcessor, make_lambda_handler
from sftp_gateway.notifier.render import human_size, recipients_for, render_email
from sftp_gateway.notifier.senders import FolderSender, SmtpSender
from sftp_gateway.notifier.worker import run_worker
from sftp_gateway.runtime import background_workers
from tests.helpers import RunningGateway, make_pdf, sha256_file
from tests.notify_support import (
    NO_QUEUE,
    PickySmtp,
    SmtpCapture,
    create_queue,
    event_body,
    events_settings,
    html_of,
    new_catalog,
    queue_depth,
    self_signed_cert,
    smtp_server,
    smtp_settings,
    sqs,
    text_of,
    wait_until,
    warnings_of,
)

# -- rendering -------------------------------------------------------------------------


def test_email_names_who_what_size_sha_when_and_where_in_text_and_html() -> None:
    event = json.loads(event_body(size=3 * 1024 * 1024 + 5))
    message = render_email(event, from_address="gw@example.com", recipients=["a@example.com"])
    assert message["Subject"] == "New upload: q3.pdf from alice"
    assert message["Message-ID"] == f"<{event['event_id']}@sftp-gateway>"
    text, html = text_of(message), html_of(message)
    for part in (text, html):
        assert "alice" in part and "q3.pdf" in part and "/reports/q3.pdf" in part
        assert "3.0 MiB" in part and "3,145,733 bytes" in part
        assert "cd" * 32 in part
        assert "2026-01-02T03:04:06.000Z" in part
        assert "127.0.0.1" in part and "SSH-2.0-OpenSSH_9.2p1" in part


def test_email_tells_a_browser_upload_from_an_sftp_one() -> None:
    sftp = json.loads(event_body(key_fingerprint="SHA256:abc"))
    browser = json.loads(event_body(link_id="3f2a", key_fingerprint=None))
    sftp_text = text_of(render_email(sftp, from_address="g@x.org", recipients=["a@x.org"]))
    web_text = text_of(render_email(browser, from_address="g@x.org", recipients=["a@x.org"]))
    assert re.search(r"Sent with: +SFTP/SCP, key SHA256:abc", sftp_text)
    assert re.search(r"Sent with: +a browser, via upload link 3f2a", web_text)


def test_failed_upload_email_says_why_and_escapes_html() -> None:
    event = json.loads(
        event_body(type="upload.failed", error="not a PDF <script>", file_name="x<y>.pdf")
    )
    message = render_email(event, from_address="gw@example.com", recipients=["a@example.com"])
    assert message["Subject"].startswith("Upload failed: x<y>.pdf")
    assert "Why it failed: not a PDF <script>" in text_of(message)
    assert "not a PDF &lt;script&gt;" in html_of(message) and "<script>" not in html_of(message)


def test_human_sizes() -> None:
    assert human_size(0) == "0 bytes"
    assert human_size(1023) == "1023 bytes"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(5 * 1024**3) == "5 GiB"  # whole units read as configured
    assert human_size(1024**2 - 1) == "1.0 MiB"


def test_recipients_are_uploader_configured_and_per_user_without_duplicates() -> None:
    event = {"user": "alice", "email": "alice@example.com"}
    per_user = {"alice": ["team@example.com", "OPS@example.com"], "bob": ["b@example.com"]}
    assert recipients_for(event, ["ops@example.com"], per_user) == [
        "alice@example.com",
        "ops@example.com",
        "team@example.com",
    ]
    assert recipients_for({"user": "carol", "email": None}, [], per_user) == []


def test_recipients_skip_a_value_that_is_not_one_address_with_a_warning_and_keep_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    event = {"event_id": "e1", "user": "bob", "email": "bob@example.com\r\nBcc: x@evil.example"}
    per_user = {"bob": ["team@example.com, boss@example.com", "jos\u00e9@example.com"]}
    caplog.set_level(logging.WARNING, logger="sftp_gateway")
    assert recipients_for(event, ["ops@example.com", "not an address"], per_user) == [
        "ops@example.com",
        "jos\u00e9@example.com",  # UTF-8 addresses are addresses (RFC 6532)
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "event e1: not emailing the uploader's email 'bob@example.com\\r\\nBcc: x@evil.example':"
        " not one valid email address",
        "event e1: not emailing notifier.recipients 'not an address': not one valid email address",
        "event e1: not emailing notifier.user_recipients[bob]"
        " 'team@example.com, boss@example.com': not one valid email address",
    ]


# -- worker against moto SQS and aiosmtpd ----------------------------------------------


def send_raw(endpoint: str, queue: str, body: str) -> None:
    sqs(endpoint).send_message(QueueUrl=queue, MessageBody=body)


@dataclass
class MailingGateway:
    """A gateway whose dispatcher feeds a fresh queue, beside a capturing SMTP server."""

    running: RunningGateway
    settings: Settings
    catalog: Catalog
    queue: str
    handler: SmtpCapture


@contextmanager
def mailing_gateway(
    tmp_path: Path, moto_endpoint: str, gateway_factory: Callable[..., RunningGateway]
) -> Iterator[MailingGateway]:
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture()
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port)
        catalog = new_catalog(settings)
        dispatcher = Dispatcher(catalog, settings.events)
        running = gateway_factory(catalog_url=settings.catalog.url, background=[dispatcher])
        yield MailingGateway(running, settings, catalog, queue, handler)


def test_upload_with_real_sftp_client_is_emailed_with_uploader_file_size_and_sha(
    tmp_path: Path, moto_endpoint: str, gateway_factory: Callable[..., RunningGateway]
) -> None:
    with mailing_gateway(tmp_path, moto_endpoint, gateway_factory) as mg:
        settings, catalog, queue, handler = mg.settings, mg.catalog, mg.queue, mg.handler
        pdf = make_pdf(tmp_path / "invoice-2026.pdf", 300_000)
        mg.running.sftp(f"put {pdf}\n")
        wait_until(
            lambda: catalog.pending_event_count() == 0 and queue_depth(moto_endpoint, queue)[0]
        )

        stats = run_worker(settings, catalog, once=True)

    assert stats.done == 1
    (received,) = handler.messages
    assert set(received.rcpt_tos) == {"alice@example.com", "ops@example.com"}
    assert received.mail_from == "gateway@example.com"
    text = text_of(received.message)
    assert "alice" in text and "invoice-2026.pdf" in text
    assert "300,000 bytes" in text and "293.0 KiB" in text
    assert sha256_file(pdf) in text and sha256_file(pdf) in html_of(received.message)
    assert queue_depth(moto_endpoint, queue) == (0, 0)  # deleted after SMTP accepted it


def test_starttls_with_login_password_from_env(
    tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed_cert(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert session.ssl is not None  # credentials only ever travel inside TLS
        logins.append((data.login, data.password))
        ok = isinstance(data, LoginPassword) and data.password == b"s3cret"
        return AuthResult(success=ok)

    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret")
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture()
    with smtp_server(
        handler,
        tls_context=tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    ) as port:
        settings = smtp_settings(
            tmp_path,
            moto_endpoint,
            queue,
            port,
            starttls=True,
            ca_file=str(cert),
            username="gateway",
            password_env="TEST_SMTP_PASSWORD",
        )
        send_raw(moto_endpoint, queue, event_body())
        stats = run_worker(settings, new_catalog(settings), once=True)
    assert stats.done == 1 and len(handler.messages) == 1
    assert logins == [(b"gateway", b"s3cret")]


def test_implicit_tls_refuses_an_untrusted_certificate_then_sends_with_its_ca(
    tmp_path: Path, moto_endpoint: str
) -> None:
    cert, key = self_signed_cert(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture()
    with smtp_server(handler, ssl_context=tls) as port:
        untrusted = smtp_settings(
            tmp_path, moto_endpoint, queue, port, ssl=True, visibility_timeout=1
        )
        send_raw(moto_endpoint, queue, event_body())
        first = run_worker(untrusted, new_catalog(untrusted), once=True)
        assert first.retried == 1 and handler.messages == []

        trusted = smtp_settings(tmp_path, moto_endpoint, queue, port, ssl=True, ca_file=str(cert))
        catalog = new_catalog(trusted)
        wait_until(lambda: run_worker(trusted, catalog, once=True).done == 1, timeout=20)
    assert len(handler.messages) == 1


def test_smtp_refusal_keeps_the_message_and_it_is_retried(
    tmp_path: Path, moto_endpoint: str
) -> None:
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture(refuse_next=1)
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port, visibility_timeout=1)
        catalog = new_catalog(settings)
        body = event_body()
        send_raw(moto_endpoint, queue, body)

        first = run_worker(settings, catalog, once=True)
        assert first.retried == 1 and first.done == 0
        assert handler.refused == 1 and handler.messages == []
        assert sum(queue_depth(moto_endpoint, queue)) == 1  # not deleted
        assert not catalog.email_already_sent(json.loads(body)["event_id"])

        # After the visibility timeout SQS redelivers it, and this time SMTP accepts.
        wait_until(lambda: run_worker(settings, catalog, once=True).done == 1, timeout=20)
    assert len(handler.messages) == 1
    assert catalog.email_already_sent(json.loads(body)["event_id"])
    assert queue_depth(moto_endpoint, queue) == (0, 0)


def test_a_recipient_smtp_refuses_is_logged_and_the_others_get_the_email_once(
    tmp_path: Path, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = create_queue(moto_endpoint)
    handler = PickySmtp(refuse={"gone@example.com": "550 5.1.1 no such user"})
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port, visibility_timeout=1)
        catalog = new_catalog(settings)
        body = event_body(email="gone@example.com")  # the uploader's mailbox was removed
        send_raw(moto_endpoint, queue, body)
        run_worker(settings, catalog, once=True)
        time.sleep(1.5)  # past the visibility timeout: a message still there comes back
        run_worker(settings, catalog, once=True)
    (received,) = handler.messages
    assert received.rcpt_tos == ["ops@example.com"]
    assert queue_depth(moto_endpoint, queue) == (0, 0)
    event_id = json.loads(body)["event_id"]
    assert catalog.email_already_sent(event_id)
    assert warnings_of(caplog) == [
        f"event {event_id}: SMTP refused gone@example.com (550 5.1.1 no such user);"
        " emailed the other recipients, not retried"
    ]


def test_a_recipient_refused_for_now_gets_the_email_on_the_next_delivery_and_only_they(
    tmp_path: Path, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = create_queue(moto_endpoint)
    greylisted = "450 4.2.0 greylisted, try again later"
    handler = PickySmtp(refuse={"late@example.com": greylisted}, refuse_once=True)
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port, visibility_timeout=1)
        catalog = new_catalog(settings)
        body = event_body(email="late@example.com")
        event_id = json.loads(body)["event_id"]
        send_raw(moto_endpoint, queue, body)

        first = run_worker(settings, catalog, once=True)
        assert first.retried == 1 and first.done == 0
        assert sum(queue_depth(moto_endpoint, queue)) == 1  # kept for late@example.com
        assert not catalog.email_already_sent(event_id)
        wait_until(lambda: run_worker(settings, catalog, once=True).done == 1, timeout=20)
    first_copy, second_copy = handler.messages
    assert first_copy.rcpt_tos == ["ops@example.com"]
    assert second_copy.rcpt_tos == ["late@example.com"]
    assert second_copy.message["Subject"] == first_copy.message["Subject"]
    assert queue_depth(moto_endpoint, queue) == (0, 0)
    assert catalog.email_already_sent(event_id)
    record = catalog.email_record(event_id)
    assert record is not None
    assert record.recipients == {"ops@example.com", "late@example.com"}
    assert warnings_of(caplog) == [
        f"event {event_id}: SMTP refused late@example.com (450 4.2.0 greylisted, try again"
        " later) for now; emailed the other recipients, retrying those on the next delivery"
    ]


def test_a_recipient_refused_for_now_is_owed_the_email_until_their_server_takes_it(
    tmp_path: Path, moto_endpoint: str
) -> None:
    """A full mailbox (452) at every delivery: the message stays, only the owed recipient
    is tried again, and gets it once the mailbox takes it; the others got it once."""
    queue = create_queue(moto_endpoint)
    handler = PickySmtp(refuse={"full@example.com": "452 4.2.2 mailbox full"})
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port, visibility_timeout=1)
        catalog = new_catalog(settings)
        body = event_body(email="full@example.com")
        event_id = json.loads(body)["event_id"]
        send_raw(moto_endpoint, queue, body)
        for _ in range(3):
            assert run_worker(settings, catalog, once=True).done == 0
            time.sleep(1.2)  # past the visibility timeout: SQS delivers it again
        assert [m.rcpt_tos for m in handler.messages] == [["ops@example.com"]]
        assert handler.recipients_refused >= 2  # tried again, alone, and refused again
        assert sum(queue_depth(moto_endpoint, queue)) == 1
        assert not catalog.email_already_sent(event_id)
        handler.refuse.clear()  # the mailbox was emptied
        wait_until(lambda: run_worker(settings, catalog, once=True).done == 1, timeout=20)
    assert [m.rcpt_tos for m in handler.messages] == [["ops@example.com"], ["full@example.com"]]
    assert queue_depth(moto_endpoint, queue) == (0, 0)
    assert catalog.email_already_sent(event_id)


def test_email_accepted_before_a_421_reply_to_quit_is_sent_once_and_deleted(
    tmp_path: Path, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = create_queue(moto_endpoint)
    handler = PickySmtp(quit_reply="421 4.3.2 shutting down")
    caplog.set_level(logging.DEBUG, logger="sftp_gateway")
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port, visibility_timeout=1)
        catalog = new_catalog(settings)
        body = event_body()
        send_raw(moto_endpoint, queue, body)
        run_worker(settings, catalog, once=True)
        time.sleep(1.5)  # past the visibility timeout: a message still there comes back
        run_worker(settings, catalog, once=True)
    (received,) = handler.messages
    assert sorted(received.rcpt_tos) == ["alice@example.com", "ops@example.com"]
    assert queue_depth(moto_endpoint, queue) == (0, 0)
    assert catalog.email_already_sent(json.loads(body)["event_id"])
    assert warnings_of(caplog) == []
    assert "SMTP server answered QUIT with 421 4.3.2 shutting down (ignored)" in caplog.messages


def test_same_message_delivered_twice_sends_one_email(tmp_path: Path, moto_endpoint: str) -> None:
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture()
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port)
        catalog = new_catalog(settings)
        body = event_body()
        send_raw(moto_endpoint, queue, body)
        send_raw(moto_endpoint, queue, body)
        first = run_worker(settings, catalog, once=True)
        # A third copy, after the first run (e.g. a redelivery much later).
        send_raw(moto_endpoint, queue, body)
        second = run_worker(settings, catalog, once=True)
    assert first.done + second.done == 3  # all three deleted
    assert len(handler.messages) == 1
    assert queue_depth(moto_endpoint, queue) == (0, 0)


def test_malformed_message_is_logged_left_in_queue_and_worker_keeps_running(
    tmp_path: Path, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture()
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port, visibility_timeout=30)
        catalog = new_catalog(settings)
        stop = threading.Event()
        result: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: result.update(
                stats=run_worker(settings, catalog, stop=stop)  # not --once: long-running
            )
        )
        thread.start()
        try:
            send_raw(moto_endpoint, queue, "this is {not json")
            send_raw(moto_endpoint, queue, json.dumps({"type": "upload.completed"}))
            send_raw(moto_endpoint, queue, event_body())
            wait_until(lambda: len(handler.messages) == 1, timeout=30)
            assert thread.is_alive()
        finally:
            stop.set()
            thread.join(30)
    stats = result["stats"]
    assert stats.malformed == 2 and stats.done == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("not JSON" in e for e in errors)
    assert any("missing event_id, user" in e for e in errors)
    assert sum(queue_depth(moto_endpoint, queue)) == 2  # left for the redrive policy


def test_malformed_message_reaches_the_dead_letter_queue_by_redrive(
    tmp_path: Path, moto_endpoint: str
) -> None:
    queue = create_queue(moto_endpoint, dlq_max_receives=1)
    client = sqs(moto_endpoint)
    policy_attr = client.get_queue_attributes(QueueUrl=queue, AttributeNames=["RedrivePolicy"])
    dlq_arn = json.loads(policy_attr["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"]
    dlq_url = client.get_queue_url(QueueName=dlq_arn.rsplit(":", 1)[1])["QueueUrl"]
    settings = smtp_settings(tmp_path, moto_endpoint, queue, 1, visibility_timeout=1)
    catalog = new_catalog(settings)
    send_raw(moto_endpoint, queue, "garbage")
    assert run_worker(settings, catalog, once=True).malformed == 1
    # Received again after the visibility timeout: SQS moves it to the DLQ instead.
    wait_until(
        lambda: run_worker(settings, catalog, once=True) and queue_depth(moto_endpoint, dlq_url)[0],
        timeout=20,
    )
    assert queue_depth(moto_endpoint, queue) == (0, 0)


def test_sigterm_finishes_the_message_in_hand_then_exits(
    tmp_path: Path, moto_endpoint: str
) -> None:
    queue = create_queue(moto_endpoint)
    handler = SmtpCapture(delay=2.0)
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, moto_endpoint, queue, port, wait_seconds=1)
        new_catalog(settings)  # migrate before the worker starts
        config_path = tmp_path / "notifier.yaml"
        config_path.write_text(yaml.safe_dump(settings.model_dump(mode="json", by_alias=True)))
        send_raw(moto_endpoint, queue, event_body())
        proc = subprocess.Popen(
            [sys.executable, "-m", "sftp_gateway", "notifier", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            # The SMTP server is in the middle of the DATA (2 s delay): the email is in hand.
            wait_until(lambda: handler.in_data or proc.poll() is not None, timeout=60)
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, output
    assert len(handler.messages) == 1
    assert queue_depth(moto_endpoint, queue) == (0, 0)
    assert "finishing the message in hand" in output


def test_sigterm_ends_an_idle_20_second_long_poll_at_once(
    tmp_path: Path, moto_endpoint: str
) -> None:
    queue = create_queue(moto_endpoint)
    settings = events_settings(
        tmp_path,
        moto_endpoint,
        queue,
        notifier={"maildir": str(tmp_path / "mail"), "wait_seconds": 20},
    )
    new_catalog(settings)
    config_path = tmp_path / "notifier.yaml"
    config_path.write_text(yaml.safe_dump(settings.model_dump(mode="json", by_alias=True)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sftp_gateway", "notifier", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "notifier polling" in line:
                break
        time.sleep(1.0)  # now blocked in the long poll
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert elapsed < 10  # not the rest of the 20 s poll


def test_notifier_cli_once_writes_eml_files_when_maildir_is_set(
    tmp_path: Path, moto_endpoint: str
) -> None:
    queue = create_queue(moto_endpoint)
    settings = events_settings(
        tmp_path, moto_endpoint, queue, notifier={"maildir": str(tmp_path / "mail")}
    )
    new_catalog(settings)
    config_path = tmp_path / "notifier.yaml"
    config_path.write_text(yaml.safe_dump(settings.model_dump(mode="json", by_alias=True)))
    for _ in range(3):
        send_raw(moto_endpoint, queue, event_body())
    result = subprocess.run(
        [sys.executable, "-m", "sftp_gateway", "notifier", "--once", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "mail").glob("*.eml"))) == 3
    assert queue_depth(moto_endpoint, queue) == (0, 0)


# -- Lambda ----------------------------------------------------------------------------


class RefusingSender:
    def send(self, message: Any, recipients: list[str]) -> None:
        raise OSError("SMTP down")


def sqs_event(*bodies: str, fifo: bool = False) -> dict[str, Any]:
    arn = "arn:aws:sqs:us-east-1:123456789012:uploads" + (".fifo" if fifo else "")
    return {
        "Records": [
            {"messageId": f"m{n}", "receiptHandle": f"r{n}", "body": body, "eventSourceARN": arn}
            for n, body in enumerate(bodies)
        ]
    }


def test_lambda_reports_only_unsent_messages_as_batch_item_failures(tmp_path: Path) -> None:
    catalog = new_catalog(events_settings(tmp_path, "http://127.0.0.1:1", NO_QUEUE))
    outbox = tmp_path / "mail"
    config = NotifierConfig(recipients=["ops@example.com"])
    handler = make_lambda_handler(EventProcessor(catalog, FolderSender(outbox), config))
    good = event_body()
    result = handler(sqs_event(good, "not json", good, event_body(email=None)), None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert len(list(outbox.glob("*.eml"))) == 2  # the duplicate was not emailed again

    down = make_lambda_handler(EventProcessor(catalog, RefusingSender(), config))
    result = down(sqs_event(event_body(), good), None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "m0"}]}
    fifo = down(sqs_event(event_body(), good, fifo=True), None)  # FIFO: keep order
    assert fifo == {"batchItemFailures": [{"itemIdentifier": "m0"}, {"itemIdentifier": "m1"}]}


def test_lambda_handler_entry_point_reads_config_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = events_settings(
        tmp_path, "http://127.0.0.1:1", NO_QUEUE, notifier={"maildir": str(tmp_path / "mail")}
    )
    config_path = tmp_path / "lambda.yaml"
    config_path.write_text(yaml.safe_dump(settings.model_dump(mode="json", by_alias=True)))
    monkeypatch.setenv("SFTP_GATEWAY_CONFIG", str(config_path))
    monkeypatch.setattr(notifier_pkg, "_handler", None)
    result = notifier_pkg.lambda_handler(sqs_event(event_body()), None)
    assert result == {"batchItemFailures": []}
    (eml,) = (tmp_path / "mail").glob("*.eml")
    parsed = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert parsed["To"] == "alice@example.com, ops@example.com"


# -- demo --------------------------------------------------------------------------------


def test_demo_mode_notifier_writes_each_email_as_an_eml_file(
    tmp_path: Path, moto_endpoint: str, gateway_factory: Callable[..., RunningGateway]
) -> None:
    queue = create_queue(moto_endpoint)
    maildir = tmp_path / "data" / "mail"
    settings = events_settings(
        tmp_path, moto_endpoint, queue, notifier={"maildir": str(maildir), "wait_seconds": 1}
    )
    catalog: Catalog = new_catalog(settings)
    workers = background_workers(settings, catalog, demo=True)
    running = gateway_factory(catalog_url=settings.catalog.url, background=workers)
    pdf = make_pdf(tmp_path / "demo.pdf", 50_000)
    running.sftp(f"put {pdf}\n")
    (eml,) = wait_until(lambda: list(maildir.glob("*.eml")), timeout=60)
    running.stop()
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["Subject"] == "New upload: demo.pdf from alice"
    assert "alice@example.com" in message["To"]
    assert sha256_file(pdf) in text_of(message)
    assert not list(maildir.glob(".*.tmp"))


def test_smtp_sender_requires_the_password_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    from sftp_gateway.errors import ConfigError

    monkeypatch.delenv("NO_SUCH_SMTP_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_SMTP_PASSWORD"):
        SmtpSender(NotifierConfig(username="u", password_env="NO_SUCH_SMTP_PASSWORD"))


def test_refused_upload_is_emailed_as_failed_with_the_reason(
    tmp_path: Path, moto_endpoint: str, gateway_factory: Callable[..., RunningGateway]
) -> None:
    with mailing_gateway(tmp_path, moto_endpoint, gateway_factory) as mg:
        fake = tmp_path / "fake.pdf"
        fake.write_bytes(b"this is not a PDF at all\n" * 100)
        mg.running.sftp(f"put {fake}\n", check=False)
        wait_until(lambda: queue_depth(moto_endpoint, mg.queue)[0], timeout=30)
        run_worker(mg.settings, mg.catalog, once=True)
    (received,) = mg.handler.messages
    assert received.message["Subject"] == "Upload failed: fake.pdf from alice"
    text = text_of(received.message)
    assert "Why it failed:" in text and "unknown reason" not in text


class SlowCountingSender:
    """Holds each email a moment, so two workers overlap on the same event."""

    def __init__(self, sent: list[Any]) -> None:
        self.sent = sent

    def send(self, message: Any, recipients: list[str]) -> None:
        time.sleep(0.5)
        self.sent.append(message)


@pytest.mark.postgres
def test_two_workers_given_one_event_at_once_send_one_email(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = events_settings(tmp_path, "http://127.0.0.1:1", NO_QUEUE, catalog_url=postgres_url)
    new_catalog(settings)
    sent: list[Any] = []
    body = event_body()
    outcomes: list[Any] = []
    processors = [  # two notifiers: their own engines, one database
        EventProcessor(new_catalog(settings), SlowCountingSender(sent), settings.notifier)
        for _ in range(2)
    ]
    threads = [
        threading.Thread(target=lambda p=p: outcomes.append(p.handle(body))) for p in processors
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [o.value for o in outcomes] == ["done", "done"]  # both copies may be deleted
    assert len(sent) == 1


def test_notifier_cli_without_a_queue_exits_2_naming_the_key(tmp_path: Path) -> None:
    config_path = tmp_path / "noqueue.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "storage": {"bucket": "abc"},
                "catalog": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "sftp_gateway", "notifier", "--once", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "events.queue_url" in result.stderr
