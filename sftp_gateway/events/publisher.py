"""Send outbox events to SQS: the JSON body, `type`/`user` attributes, FIFO ids.

The SDK retries little and times out fast on purpose: the dispatcher owns retrying
(with backoff, from the outbox), so a dead endpoint must fail quickly, not hang `stop()`.
Each failure is classified: a refusal that no retry changes (no such queue, access
denied, a message SQS will never take) is reported apart, for the dispatcher to park.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from sftp_gateway.config import EventsConfig
from sftp_gateway.errors import ConfigError
from sftp_gateway.records import OutboxEvent

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
        region_name=config.sqs_region,
        config=boto_config,
    )


# SQS error codes that no retry will change. The queue's: every event sent to it fails
# alike until an operator fixes the queue or the permissions.
QUEUE_REFUSALS = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "AccessDenied",
        "AccessDeniedException",
        "KmsAccessDenied",
        "KmsDisabled",
        "KmsNotFound",
        "KmsInvalidKeyUsage",
        "KmsInvalidState",
    }
)
# One message's: too large, or a parameter SQS will never take. In a batch call they
# fail the whole call, so each event of the batch is tried alone to find the culprit.
MESSAGE_REFUSALS = frozenset(
    {
        "InvalidParameterValue",
        "InvalidMessageContents",
        "MessageTooLong",
        "AWS.SimpleQueueService.MessageTooLong",
        "BatchRequestTooLong",
        "AWS.SimpleQueueService.BatchRequestTooLong",
        "MissingParameter",
        "InvalidAttributeName",
        "InvalidAttributeValue",
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
    }
)


def error_code(exc: Exception) -> str | None:
    """The AWS error code of a botocore ClientError; None for a transport error."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def is_permanent(code: str | None) -> bool:
    """True when SQS refused for a reason that will not change by retrying."""
    return code in QUEUE_REFUSALS or code in MESSAGE_REFUSALS


@dataclass
class PublishResult:
    """Which outbox rows SQS accepted, which it refused for good (`rejected`: to park),
    and which failed for a reason that may pass (`failed`: to retry), each with why."""

    sent: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)

    def record_failure(self, event_id: int, code: str | None, reason: str) -> None:
        if is_permanent(code):
            self.rejected[event_id] = reason
        else:
            self.failed[event_id] = reason


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
        """Send up to 10 events per call; a transport error fails the call's events (to
        retry), a refusal of one message is narrowed down to that message (to park)."""
        result = PublishResult()
        for start in range(0, len(events), SQS_BATCH_LIMIT):
            self._send_chunk(events[start : start + SQS_BATCH_LIMIT], result)
        return result

    def _send_chunk(self, chunk: Sequence[OutboxEvent], result: PublishResult) -> None:
        try:
            response = self.client.send_message_batch(
                QueueUrl=self.queue_url, Entries=[self.entry(e) for e in chunk]
            )
        except Exception as exc:  # endpoint down, throttled, refused...
            code = error_code(exc)
            if code in MESSAGE_REFUSALS and len(chunk) > 1:
                for event in chunk:  # one bad message fails the batch: find it
                    self._send_chunk([event], result)
                return
            reason = f"{code or type(exc).__name__}: {exc}"
            for event in chunk:
                result.record_failure(event.id, code, reason)
            return
        result.sent.extend(int(ok["Id"]) for ok in response.get("Successful", []))
        for bad in response.get("Failed", []):
            code = bad.get("Code")
            reason = f"{code or 'Failed'}: {bad.get('Message', '')}".strip()
            result.record_failure(int(bad["Id"]), code, reason)
