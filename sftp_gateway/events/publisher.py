"""Send outbox events to SQS: the JSON body, `type`/`user` attributes, FIFO ids.

The SDK retries little and times out fast on purpose: the dispatcher owns retrying
(with backoff, from the outbox), so a dead endpoint must fail quickly, not hang `stop()`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from sftp_gateway.catalog.repository import OutboxEvent
from sftp_gateway.config import EventsConfig
from sftp_gateway.errors import ConfigError

SQS_BATCH_LIMIT = 10


def sqs_client(config: EventsConfig, *, read_timeout: float = 10) -> Any:
    """An SQS client for the configured region and endpoint (credentials: boto3's chain).

    A long poll holds the connection for up to 20 s: its caller passes a longer timeout.
    """
    boto_config = BotoConfig(
        connect_timeout=3,
        read_timeout=read_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    return boto3.client(
        "sqs",
        endpoint_url=config.endpoint_url,
        region_name=config.region or _region_from_url(config.queue_url),
        config=boto_config,
    )


def _region_from_url(queue_url: str | None) -> str | None:
    """`https://sqs.eu-west-1.amazonaws.com/...` names its region; other URLs do not."""
    if not queue_url:
        return None
    host = queue_url.split("://", 1)[-1].split("/", 1)[0]
    parts = host.split(".")
    if len(parts) > 2 and parts[0] == "sqs":
        return parts[1]
    return None


@dataclass
class PublishResult:
    """Which outbox rows SQS accepted, and why the others failed."""

    sent: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class SqsPublisher:
    """Publishes outbox events to one queue, standard or FIFO."""

    def __init__(self, config: EventsConfig, client: Any | None = None) -> None:
        if not config.queue_url:
            raise ConfigError("events.queue_url: required to publish events")
        self.queue_url = config.queue_url
        self.fifo = config.is_fifo
        self.group_id = config.message_group_id
        self.client = client or sqs_client(config)

    def entry(self, event: OutboxEvent) -> dict[str, Any]:
        """One SendMessageBatch entry; its Id is the outbox row id."""
        user = str(event.payload.get("user") or "unknown")
        entry: dict[str, Any] = {
            "Id": str(event.id),
            "MessageBody": json.dumps(event.payload, separators=(",", ":")),
            "MessageAttributes": {
                "type": {"DataType": "String", "StringValue": event.event_type},
                "user": {"DataType": "String", "StringValue": user},
            },
        }
        if self.fifo:
            entry["MessageDeduplicationId"] = event.event_id
            entry["MessageGroupId"] = self.group_id or user
        return entry

    def publish(self, events: Sequence[OutboxEvent]) -> PublishResult:
        """Send up to 10 events in one call; a transport error fails them all."""
        result = PublishResult()
        for start in range(0, len(events), SQS_BATCH_LIMIT):
            chunk = events[start : start + SQS_BATCH_LIMIT]
            try:
                response = self.client.send_message_batch(
                    QueueUrl=self.queue_url, Entries=[self.entry(e) for e in chunk]
                )
            except Exception as exc:  # endpoint down, throttled, bad credentials...
                reason = f"{type(exc).__name__}: {exc}"
                result.failed.update({e.id: reason for e in chunk})
                continue
            result.sent.extend(int(ok["Id"]) for ok in response.get("Successful", []))
            for bad in response.get("Failed", []):
                reason = f"{bad.get('Code', 'Failed')}: {bad.get('Message', '')}".strip()
                result.failed[int(bad["Id"])] = reason
        return result
