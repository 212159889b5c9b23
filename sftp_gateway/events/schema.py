"""The upload event (INTERFACE.md): built once, from the catalog's record of the upload."""

from __future__ import annotations

import posixpath
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sftp_gateway.catalog.repository import UploadRecord

EVENT_VERSION = 1
UPLOAD_COMPLETED = "upload.completed"
UPLOAD_FAILED = "upload.failed"


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, the form the contract promises."""
    if ts is None:
        return None
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts.isoformat(timespec="milliseconds") + "Z"


def build_event(record: UploadRecord, event_type: str, email: str | None) -> dict[str, Any]:
    """The JSON body of the SQS message for this upload."""
    event: dict[str, Any] = {
        "type": event_type,
        "version": EVENT_VERSION,
        "event_id": str(uuid.uuid4()),
        "upload_id": record.id,
        "user": record.user_name,
        "email": email,
        "path": record.path,
        "file_name": posixpath.basename(record.path),
        "bucket": record.bucket,
        "key": record.object_key,
        "size": record.size,
        "sha256": record.sha256,
        "content_type": record.content_type,
        "started_at": iso(record.started_at),
        "completed_at": iso(record.completed_at),
        "client_ip": record.client_ip,
        "client": record.client_version,
        "key_fingerprint": record.key_fingerprint,
    }
    if event_type == UPLOAD_FAILED:
        event["error"] = record.error
    return event
