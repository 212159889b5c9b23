"""The notifier: SQS upload events in, one email per event out.

`lambda_handler` is the same logic for an AWS Lambda SQS event source: it reports the
messages to keep as `batchItemFailures` (enable ReportBatchItemFailures on the
mapping), so only emailed messages are deleted; an unreadable message, or one whose
every recipient SMTP refused for good, is reported as a failure until its
`notifier.max_receives`-th delivery (the record's ApproximateReceiveCount), then
dropped with one ERROR line. Its config comes from
$SFTP_GATEWAY_CONFIG (or config/gateway.yaml) when that file exists, else from the
`SFTP_GATEWAY__*` environment variables alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sftp_gateway.notifier.processor import EventProcessor, Outcome

__all__ = ["EventProcessor", "Outcome", "lambda_handler", "make_lambda_handler"]

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]
_handler: LambdaHandler | None = None
_NOTIFIER_ONLY_DEFAULTS = {"storage": {"bucket": "unused-by-the-notifier"}}


def _receive_count(record: dict[str, Any]) -> int:
    """ApproximateReceiveCount from an SQS event record's attributes (1 if absent)."""
    try:
        return max(1, int(record.get("attributes", {}).get("ApproximateReceiveCount", 1)))
    except (TypeError, ValueError):
        return 1


def make_lambda_handler(processor: EventProcessor) -> LambdaHandler:
    """A Lambda handler over a ready processor (tests build one with their own sender)."""

    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        failures: list[dict[str, str]] = []
        for record in event.get("Records", []):
            message_id = str(record.get("messageId", ""))
            fifo = str(record.get("eventSourceARN", "")).endswith(".fifo")
            if failures and fifo:
                # FIFO order: after one failure, the rest of the group must wait too.
                failures.append({"itemIdentifier": message_id})
                continue
            outcome = processor.handle(record.get("body", ""), message_id, _receive_count(record))
            if not outcome.deletes:
                failures.append({"itemIdentifier": message_id})
        return {"batchItemFailures": failures}

    return handle


def _build_default_handler() -> LambdaHandler:
    """Settings, catalog and sender from the environment, once per Lambda container."""
    from sftp_gateway.catalog import build_catalog
    from sftp_gateway.config import load_settings, resolve_config_path, settings_from_dict
    from sftp_gateway.notifier.senders import make_sender

    path = resolve_config_path(None)
    settings = load_settings(path) if path.exists() else settings_from_dict(_NOTIFIER_ONLY_DEFAULTS)
    catalog = build_catalog(settings)
    processor = EventProcessor(catalog, make_sender(settings.notifier), settings.notifier)
    return make_lambda_handler(processor)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """AWS Lambda entry point for an SQS event source."""
    global _handler
    if _handler is None:
        _handler = _build_default_handler()
    return _handler(event, context)
