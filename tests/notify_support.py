"""Helpers for the event and notifier tests: SQS queues on moto, aiosmtpd, catalogs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiosmtpd.controller import Controller

from sftp_gateway.catalog import build_catalog
from sftp_gateway.catalog.repository import (
    COMPLETED,
    Catalog,
    UploadRecord,
    new_upload_id,
    utcnow,
)
from sftp_gateway.config import Settings, settings_from_dict
from tests.helpers import free_port

REGION = "us-east-1"
NO_QUEUE = "http://127.0.0.1:1/000000000000/q"  # for tests that never reach SQS


def smtp_settings(
    tmp_path: Path, endpoint: str, queue: str, port: int, **notifier: Any
) -> Settings:
    """events_settings whose notifier mails through the local SMTP server on `port`."""
    return events_settings(
        tmp_path,
        endpoint,
        queue,
        notifier={"smtp_host": "127.0.0.1", "smtp_port": port, **notifier},
    )


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The gateway's WARNING-or-worse lines a test captured, as text."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("sftp_gateway")
    ]


def sqs(endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)


def create_queue(endpoint: str, *, fifo: bool = False, dlq_max_receives: int = 0) -> str:
    """A fresh queue per test (FIFO if asked), optionally with a dead-letter queue."""
    client = sqs(endpoint)
    name = f"q-{uuid.uuid4().hex[:12]}"
    attributes: dict[str, str] = {}
    if fifo:
        name += ".fifo"
        attributes["FifoQueue"] = "true"
    if dlq_max_receives:
        dlq_url = create_queue(endpoint)
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(dlq_max_receives)}
        )
    return client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]


def drain_queue(endpoint: str, queue_url: str, *, hide: int = 300) -> list[dict[str, Any]]:
    """Every message now visible in the queue, hidden afterwards (not deleted)."""
    client = sqs(endpoint)
    out: list[dict[str, Any]] = []
    while True:
        batch = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=hide,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return out
        out.extend(batch)


def queue_depth(endpoint: str, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages."""
    attrs = sqs(endpoint).get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, step: float = 0.1) -> Any:
    """Poll until predicate() is truthy; fail with the deadline, never sleep blindly."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


def events_settings(
    tmp: Path,
    endpoint: str,
    queue_url: str,
    *,
    catalog_url: str | None = None,
    events: dict[str, Any] | None = None,
    notifier: dict[str, Any] | None = None,
) -> Settings:
    """Settings for the dispatcher and the notifier; the catalog is SQLite unless given."""
    return settings_from_dict(
        {
            "storage": {"bucket": "unused-bucket", "endpoint_url": endpoint},
            "catalog": {"url": catalog_url or f"sqlite:///{tmp / 'catalog.db'}"},
            "events": {
                "queue_url": queue_url,
                "endpoint_url": endpoint,
                "region": REGION,
                "dispatch_interval": 0.2,
                "max_backoff": 1.0,
                **(events or {}),
            },
            "notifier": {
                "from": "SFTP Gateway <gateway@example.com>",
                "recipients": ["ops@example.com"],
                "wait_seconds": 0,
                "visibility_timeout": 30,
                "starttls": False,
                **(notifier or {}),
            },
        },
        environ={},
    )


def new_catalog(settings: Settings) -> Catalog:
    return build_catalog(settings)


def record_upload(
    catalog: Catalog,
    *,
    user: str = "alice",
    path: str = "/reports/q3.pdf",
    size: int = 123456,
    status: str = COMPLETED,
    error: str | None = None,
) -> UploadRecord:
    """An upload that went through the catalog as the gateway does it: outbox included."""
    record = UploadRecord(
        id=new_upload_id(),
        user_name=user,
        path=path,
        bucket="test-bucket",
        object_key=f"incoming/{user}{path}",
        status="in_progress",
        started_at=utcnow(),
        client_ip="127.0.0.1",
        client_version="SSH-2.0-OpenSSH_9.2p1",
        key_fingerprint="SHA256:abc",
    )
    catalog.start_upload(record)
    return catalog.finish_upload(record.id, status=status, size=size, sha256="ab" * 32, error=error)


def event_body(**overrides: Any) -> str:
    """A well-formed upload.completed event, as the gateway would send it."""
    event = {
        "type": "upload.completed",
        "version": 1,
        "event_id": str(uuid.uuid4()),
        "upload_id": str(uuid.uuid4()),
        "user": "alice",
        "email": "alice@example.com",
        "path": "/reports/q3.pdf",
        "file_name": "q3.pdf",
        "bucket": "test-bucket",
        "key": "incoming/alice/reports/q3.pdf",
        "size": 1536,
        "sha256": "cd" * 32,
        "content_type": "application/pdf",
        "started_at": "2026-01-02T03:04:05.000Z",
        "completed_at": "2026-01-02T03:04:06.000Z",
        "client_ip": "127.0.0.1",
        "client": "SSH-2.0-OpenSSH_9.2p1",
        "key_fingerprint": "SHA256:abc",
    }
    event.update(overrides)
    return json.dumps(event)


# -- SMTP ------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class SmtpCapture:
    """An aiosmtpd handler that keeps each message; it can refuse the next N."""

    messages: list[Received] = field(default_factory=list)
    refuse_next: int = 0
    refused: int = 0
    delay: float = 0.0
    in_data: bool = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_data = True
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        if self.refuse_next > 0:
            self.refuse_next -= 1
            self.refused += 1
            return "554 5.7.1 message refused by the test"
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


@dataclass
class PickySmtp(SmtpCapture):
    """Also refuses RCPT TO for the addresses in `refuse` (lower case -> the reply; only
    the first time with `refuse_once`, as a greylisting server does), and answers QUIT
    with `quit_reply`."""

    refuse: dict[str, str] = field(default_factory=dict)
    quit_reply: str = "221 Bye"
    refuse_once: bool = False
    recipients_refused: int = 0  # RCPT TOs refused so far

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.refuse.get(address.lower())
        if reply:
            self.recipients_refused += 1
            if self.refuse_once:
                del self.refuse[address.lower()]
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        return self.quit_reply


@contextmanager
def smtp_server(handler: SmtpCapture, **controller_kwargs: Any) -> Iterator[int]:
    """A real SMTP server on a loopback port; yields the port."""
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **controller_kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return body.get_content()


def html_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return body.get_content()
