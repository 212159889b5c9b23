"""The upload event (docs/interface.md): built once, from the catalog's record of the upload.

It depends on the shared records only: the catalog calls `build_upload_event` inside the
transaction that ends an upload (the outbox), and nothing here knows the catalog.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

from sftp_gateway.records import UploadRecord, UploadStatus, iso

__all__ = ["UPLOAD_COMPLETED", "UPLOAD_FAILED", "build_event", "build_upload_event", "iso"]
EVENT_VERSION = 1
UPLOAD_COMPLETED = "upload.completed"
UPLOAD_FAILED = "upload.failed"


def event_type_for(status: str) -> str:
    """A completed upload announces itself as completed; every other end as failed."""
    return UPLOAD_COMPLETED if status == UploadStatus.COMPLETED else UPLOAD_FAILED


def build_upload_event(record: UploadRecord, email: str | None) -> dict[str, Any]:
    """The event for an upload that just ended, its type following its status."""
    return build_event(record, event_type_for(record.status), email)


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
        # storage.compression: bytes in S3 and how (null: stored as sent, `size` bytes).
        "stored_size": record.stored_size,
        "compression": record.compression,
        "content_type": record.content_type,
        "started_at": iso(record.started_at),
        "completed_at": iso(record.completed_at),
        "client_ip": record.client_ip,
        "client": record.client_version,
        "key_fingerprint": record.key_fingerprint,
        "link_id": record.link_id,  # set when uploaded from a browser via an upload link
    }
    if event_type == UPLOAD_FAILED:
        event["error"] = record.error
    return event
