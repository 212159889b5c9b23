"""`check-config --live`: prove each permission the config needs, leaving nothing behind.

Every check goes through the gateway's own code paths (S3Storage, the SQS client), so it
exercises the same requests, encryption headers and checksums as a real upload. Objects
and multipart uploads are made under `PREFIX/.sftp-gateway-check/` and removed again.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sftp_gateway.config import Settings
from sftp_gateway.errors import NotFound

CHECK_DIR = ".sftp-gateway-check"
DENIED_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "KMS.AccessDeniedException",
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""

    def line(self, width: int) -> str:
        verdict = ("ok" if self.ok else "FAILED") if not self.detail else self.detail
        return f"{self.name.ljust(width)}  {verdict}"


def error_code(exc: BaseException) -> str:
    """The S3/SQS error code behind an exception, however the gateway wrapped it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return str(seen.response.get("Error", {}).get("Code") or "unknown")
        if isinstance(seen, BotoCoreError):
            return type(seen).__name__
        seen = seen.__cause__
    return type(exc).__name__


def verdict(exc: BaseException) -> str:
    code = error_code(exc)
    return f"DENIED ({code})" if code in DENIED_CODES else f"FAILED ({code})"


@contextmanager
def _quiet_storage_log() -> Iterator[None]:
    """The storage layer logs each refusal; here the check line says it once."""
    logger = logging.getLogger("sftp_gateway.storage.s3")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class LiveCheck:
    """Runs the checks in order; each is a name and a function that raises on failure."""

    def __init__(self, settings: Settings, *, send_test_event: bool = False) -> None:
        from sftp_gateway.storage.s3 import S3Storage

        self.settings = settings
        self.storage = S3Storage(settings.storage)
        prefix = settings.storage.prefix
        self.prefix = f"{prefix}/" if prefix else ""
        self.check_dir = f"{self.prefix}{CHECK_DIR}/{uuid.uuid4().hex}"
        self.send_test_event = send_test_event

    def checks(self) -> list[tuple[str, Callable[[], str | None]]]:
        bucket, prefix = self.settings.storage.bucket, self.prefix or "(bucket root)"
        out: list[tuple[str, Callable[[], str | None]]] = [
            (f"bucket {bucket} (HeadBucket)", self.bucket_exists),
            (f"list under {prefix} (ListObjectsV2)", self.list_prefix),
            (
                "multipart upload (Create, UploadPart, ListParts, Abort)",
                self.multipart_round_trip,
            ),
            ("object (Put, Head, Copy, Get, Delete)", self.object_round_trip),
            ("open uploads for gc (ListMultipartUploads)", self.list_open_uploads),
        ]
        if self.settings.events.queue_url:
            out.append(("queue (GetQueueAttributes)", self.queue_attributes))
            if self.send_test_event:
                out.append(("test event (SendMessage)", self.send_event))
        return out

    def run(self) -> list[CheckResult]:
        results = []
        with _quiet_storage_log():
            for name, check in self.checks():
                try:
                    note = check()
                except Exception as exc:  # each failure is a line, not an abort
                    results.append(CheckResult(name, False, verdict(exc)))
                else:
                    results.append(CheckResult(name, True, note or ""))
        return results

    def bucket_exists(self) -> str | None:
        """HeadBucket needs bucket-wide s3:ListBucket, which a prefix-limited policy does
        not give: a 403 still proves the bucket exists (a missing one answers 404)."""
        try:
            self.storage.client.head_bucket(Bucket=self.settings.storage.bucket)
        except ClientError as exc:
            if error_code(exc) in ("403", "AccessDenied", "Forbidden"):
                return "ok (exists; HeadBucket itself is not granted, and not needed)"
            raise
        return None

    def list_prefix(self) -> None:
        self.storage.has_prefix(self.check_dir + "/")

    def multipart_round_trip(self) -> None:
        key = f"{self.check_dir}/multipart"
        upload_id = self.storage.create_multipart(key, self._metadata(), "application/octet-stream")
        try:
            self.storage.upload_part(key, upload_id, 1, b"sftp-gateway permission check\n")
            self.storage.list_parts(key, upload_id)
        finally:
            self.storage.abort_multipart(key, upload_id)

    def object_round_trip(self) -> None:
        key = f"{self.check_dir}/object"
        body = b"sftp-gateway permission check\n"
        self.storage.put(key, body, self._metadata(), "text/plain")
        try:
            info = self.storage.head(key)
            if info is None:
                raise NotFound("the object just written is not there")
            self.storage.replace_metadata(key, self._metadata(), "text/plain", len(body))
            with self.storage.open_read(key, 0) as stream:
                stream.read()
        finally:
            with suppress(NotFound):
                self.storage.delete(key)

    def list_open_uploads(self) -> None:
        self.storage.list_multipart_uploads(self.prefix)

    def _sqs(self) -> Any:
        from sftp_gateway.events.publisher import sqs_client

        return sqs_client(self.settings.events)

    def queue_attributes(self) -> None:
        self._sqs().get_queue_attributes(
            QueueUrl=self.settings.events.queue_url, AttributeNames=["QueueArn"]
        )

    def send_event(self) -> str:
        """An upload.completed event for a check file: the notifier emails it, as a test."""
        event = check_event(self.settings, self.check_dir)
        kwargs: dict[str, Any] = {
            "QueueUrl": self.settings.events.queue_url,
            "MessageBody": json.dumps(event, separators=(",", ":")),
        }
        if self.settings.events.is_fifo:
            kwargs["MessageGroupId"] = "sftp-gateway-check"
            kwargs["MessageDeduplicationId"] = event["event_id"]
        response = self._sqs().send_message(**kwargs)
        return f"ok (message {response.get('MessageId', '?')})"

    @staticmethod
    def _metadata() -> dict[str, str]:
        return {"uploaded-by": "sftp-gateway-check"}


def check_event(settings: Settings, check_dir: str) -> dict[str, Any]:
    """Shaped like every upload event (docs/interface.md), for a file that is not there."""
    now = datetime.now(UTC).isoformat()
    return {
        "type": "upload.completed",
        "version": 1,
        "event_id": str(uuid.uuid4()),
        "upload_id": str(uuid.uuid4()),
        "user": "sftp-gateway-check",
        "email": None,
        "path": "/check.pdf",
        "file_name": "check.pdf",
        "bucket": settings.storage.bucket,
        "key": f"{check_dir}/check.pdf",
        "size": 0,
        "sha256": None,
        "content_type": "application/pdf",
        "started_at": now,
        "completed_at": now,
        "client_ip": None,
        "client": "sftp-gateway check-config --live",
        "key_fingerprint": None,
    }
