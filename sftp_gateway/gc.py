"""Crash recovery and garbage collection of multipart uploads.

- At start, `recover_after_crash` turns the uploads this instance was running when it
  died (status in_progress, owner = this instance) into resumable `interrupted` ones,
  after checking with ListParts that their recorded parts are really in S3; the rest
  are aborted. Nothing is completed that the client did not finish.
- Both also finish rows left `completing` (a CLOSE cut between the catalog and S3) from
  what S3 holds: `finish_completing`. No object exists without a row and an event.
- `collect_garbage` (the `gc` command, and a periodic task in `serve`) aborts uploads
  interrupted for longer than uploads.resume_ttl, and multipart uploads under the prefix
  that the catalog does not know (orphans), older than a grace period.
S3's lifecycle rule AbortIncompleteMultipartUpload is the safety net behind both.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sftp_gateway.catalog.repository import (
    ABORTED,
    IN_PROGRESS,
    INTERRUPTED,
    Catalog,
    UploadRecord,
    utcnow,
)
from sftp_gateway.config import Settings
from sftp_gateway.errors import GatewayError, NotFound
from sftp_gateway.records import UploadStatus
from sftp_gateway.storage.base import Part, Storage
from sftp_gateway.storage.checksums import full_object_crc64nvme
from sftp_gateway.storage.naming import storage_for
from sftp_gateway.upload.stream import attach_sha256
from sftp_gateway.workers import PeriodicWorker

log = logging.getLogger(__name__)
ORPHAN_GRACE = timedelta(hours=1)
# A `completing` row younger than this may be a CLOSE still under way on a live
# instance; gc leaves it alone (recovery at start does not wait for its own rows).
COMPLETING_GRACE = timedelta(minutes=15)
NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
CLEANUP_HOLD = timedelta(minutes=5)  # gc's hold on a row while it aborts its upload


@dataclass
class GcReport:
    expired: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)  # `completing` rows finished

    def summary(self) -> str:
        text = (
            f"aborted {len(self.expired)} expired interrupted upload(s) and "
            f"{len(self.orphans)} orphan multipart upload(s)"
        )
        if self.completed:
            text += f"; completed {len(self.completed)} upload(s) left completing"
        return text


def recover_after_crash(settings: Settings, storage: Storage, catalog: Catalog) -> GcReport:
    """Uploads left in_progress by this instance's previous life become resumable."""
    report = GcReport()
    owner = settings.server.instance_id
    for record in catalog.uploads_with_status(IN_PROGRESS):
        if record.owner != owner:
            continue  # another instance may be running it right now
        if _parts_verified(storage, record):
            catalog.update_upload(
                record.id,
                status=INTERRUPTED,
                error="gateway restarted during the upload",
                **NO_LEASE,
            )
            report.recovered.append(record.id)
            log.info(
                "upload %s of %s is resumable at byte %d", record.id, record.object_key, record.size
            )
        elif _abort(
            storage, catalog, record, "gateway restarted before any part was stored", utcnow()
        ):
            report.aborted.append(record.id)
    for record in catalog.uploads_with_status(UploadStatus.COMPLETING):
        if record.owner == owner:  # its CLOSE died with the previous life of this instance
            finish_completing(storage, catalog, record, report)
    return report


def finish_completing(
    storage: Storage, catalog: Catalog, record: UploadRecord, report: GcReport
) -> None:
    """A row left `completing` (the gateway or its catalog failed during a CLOSE): make
    the catalog agree with S3, so no object exists without a row and an event, and no
    row says completed without an object.

    - the object is there with this upload's id: completed, with its event;
    - else its multipart upload is still open: complete it from the recorded parts
      (the client had closed the file), then the same;
    - else nothing was published: aborted, with an upload.failed event.
    """
    try:
        if _object_is(storage, record) or _complete_from_parts(storage, record):
            catalog.finish_upload(
                record.id,
                status=UploadStatus.COMPLETED,
                only_if=UploadStatus.COMPLETING,
                parts=None,
                resume_state=None,
                error=None,
                **NO_LEASE,
            )
            report.completed.append(record.id)
            log.info("upload %s of %s: completed by recovery", record.id, record.object_key)
            return
    except GatewayError as exc:
        log.warning("could not finish upload %s (%s); will retry at the next gc", record.id, exc)
        return
    catalog.finish_upload(
        record.id,
        status=UploadStatus.ABORTED,
        only_if=UploadStatus.COMPLETING,
        error="the gateway stopped while the file was being published; it was not stored",
        **NO_LEASE,
    )
    report.aborted.append(record.id)
    log.warning("upload %s of %s: never published; aborted", record.id, record.object_key)


def _object_is(storage: Storage, record: UploadRecord) -> bool:
    """The key holds the object this upload published (its upload-id metadata)."""
    info = storage.head(record.object_key)
    return info is not None and info.metadata.get("upload-id") == record.id


def _complete_from_parts(storage: Storage, record: UploadRecord) -> bool:
    """Complete a still-open multipart upload with the parts recorded at `completing`,
    and give the object its SHA-256; False when that upload no longer exists."""
    if not record.s3_upload_id or not record.parts:
        return False
    try:
        storage.list_parts(record.object_key, record.s3_upload_id)
    except NotFound:
        return False
    parts = [Part(**part) for part in record.parts]
    # Parts with CRC64NVMEs: an upload made for the full-object checksum, whose value
    # is theirs combined, as the upload itself would have sent it.
    whole = full_object_crc64nvme(parts) if all(p.crc64nvme for p in parts) else None
    storage.complete_multipart(
        record.object_key, record.s3_upload_id, parts, full_object_crc64nvme=whole
    )
    info = storage.head(record.object_key)
    if info is not None and record.sha256:
        attach_sha256(  # a tag, as the upload itself would have (no copy)
            storage,
            record.object_key,
            metadata=info.metadata,
            sha256=record.sha256,
            size=record.size,
            content_type=record.content_type or "application/octet-stream",
            stored_size=info.size,
        )
    return True


def _parts_verified(storage: Storage, record: UploadRecord) -> bool:
    """The checkpoint's parts are all in S3 with the same ETags (ListParts)."""
    if not record.s3_upload_id or not record.parts or not record.resume_state:
        return False
    try:
        stored = {
            p.number: p.etag for p in storage.list_parts(record.object_key, record.s3_upload_id)
        }
    except (NotFound, GatewayError):
        return False
    return all(stored.get(part["number"]) == part["etag"] for part in record.parts)


def collect_garbage(
    settings: Settings,
    catalog: Catalog,
    storage: Storage | None = None,
    now: datetime | None = None,
) -> GcReport:
    """Abort expired interrupted uploads and orphan multipart uploads under the prefix."""
    if storage is None:
        storage = storage_for(settings.storage)
    now = now or utcnow()
    report = GcReport()
    cutoff = now - timedelta(seconds=settings.uploads.resume_ttl)
    for record in catalog.uploads_with_status(INTERRUPTED):
        if _last_progress(record) < cutoff and _abort(
            storage, catalog, record, "not resumed within the resume time limit", now
        ):
            report.expired.append(record.id)
    for record in catalog.uploads_with_status(IN_PROGRESS):
        # No progress for resume_ttl: its instance died and never came back as itself
        # (a new host name) to recover it. A resume under a live lease is progress.
        if _last_progress(record) < cutoff and _abort(
            storage, catalog, record, "no progress within the resume time limit", now
        ):
            report.expired.append(record.id)
    for record in catalog.uploads_with_status(UploadStatus.COMPLETING):
        began = record.completed_at or record.started_at  # set when `completing` was written
        if began < now - COMPLETING_GRACE:
            finish_completing(storage, catalog, record, report)
    known = {
        r.s3_upload_id
        for status in (IN_PROGRESS, INTERRUPTED, UploadStatus.COMPLETING)
        for r in catalog.uploads_with_status(status)
        if r.s3_upload_id
    }
    prefix = settings.storage.prefix + "/" if settings.storage.prefix else ""
    for key, upload_id, initiated in storage.list_multipart_uploads(prefix):
        if upload_id in known or initiated > now - ORPHAN_GRACE:
            continue
        storage.abort_multipart(key, upload_id)
        report.orphans.append(upload_id)
        log.info("aborted orphan multipart upload %s of %s", upload_id, key)
    return report


def _last_progress(record: UploadRecord) -> datetime:
    """When the upload last recorded a checkpoint (or started, if it never did)."""
    saved = cast("dict[str, Any]", record.resume_state or {}).get("saved_at")
    if saved:
        return datetime.fromisoformat(saved.replace("Z", "+00:00"))
    return record.started_at


def _abort(
    storage: Storage, catalog: Catalog, record: UploadRecord, reason: str, now: datetime
) -> bool:
    """Abort an expired upload, holding its row first: a client that resumed it since
    it was read (its session holds a live lease) keeps it. False when left alone."""
    holder = f"gc/{secrets.token_hex(8)}"
    if not catalog.claim_for_cleanup(record.id, record.status, holder, now + CLEANUP_HOLD):
        log.info("gc: upload %s is being resumed; left alone", record.id)
        return False
    if record.s3_upload_id:
        try:
            storage.abort_multipart(record.object_key, record.s3_upload_id)
        except GatewayError:
            log.warning("could not abort %s; will retry at the next gc", record.s3_upload_id)
            return False
    catalog.finish_upload(
        record.id, status=ABORTED, error=reason, emit=True, only_if=record.status, **NO_LEASE
    )
    return True


class PeriodicGc(PeriodicWorker):
    """Runs collect_garbage in `serve` every uploads.gc_interval seconds."""

    name = "gc"

    def __init__(self, settings: Settings, catalog: Catalog, storage: Storage) -> None:
        super().__init__(settings.uploads.gc_interval)
        self._settings = settings
        self._catalog = catalog
        self._storage = storage

    def run_once(self) -> None:
        report = collect_garbage(self._settings, self._catalog, self._storage)
        if report.expired or report.orphans or report.completed:
            log.info("gc: %s", report.summary())
