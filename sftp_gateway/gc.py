"""Crash recovery and garbage collection of multipart uploads.

- At start, `recover_after_crash` turns the uploads this instance was running when it
  died (status in_progress, owner = this instance) into resumable `interrupted` ones,
  after checking with ListParts that their recorded parts are really in S3; the rest
  are aborted. Nothing is completed that the client did not finish.
- `collect_garbage` (the `gc` command, and a periodic task in `serve`) aborts uploads
  interrupted for longer than uploads.resume_ttl, and multipart uploads under the prefix
  that the catalog does not know (orphans), older than a grace period.
S3's lifecycle rule AbortIncompleteMultipartUpload is the safety net behind both.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

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
from sftp_gateway.storage.base import Storage

log = logging.getLogger(__name__)
ORPHAN_GRACE = timedelta(hours=1)


@dataclass
class GcReport:
    expired: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"aborted {len(self.expired)} expired interrupted upload(s) and "
            f"{len(self.orphans)} orphan multipart upload(s)"
        )


def recover_after_crash(settings: Settings, storage: Storage, catalog: Catalog) -> GcReport:
    """Uploads left in_progress by this instance's previous life become resumable."""
    report = GcReport()
    owner = settings.server.instance_id
    for record in catalog.uploads_with_status(IN_PROGRESS):
        if record.owner != owner:
            continue  # another instance may be running it right now
        if _parts_verified(storage, record):
            catalog.update_upload(
                record.id, status=INTERRUPTED, error="gateway restarted during the upload"
            )
            report.recovered.append(record.id)
            log.info(
                "upload %s of %s is resumable at byte %d", record.id, record.object_key, record.size
            )
        else:
            _abort(storage, catalog, record, "gateway restarted before any part was stored")
            report.aborted.append(record.id)
    return report


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
        from sftp_gateway.storage.s3 import S3Storage

        storage = S3Storage(settings.storage)
    now = now or utcnow()
    report = GcReport()
    cutoff = now - timedelta(seconds=settings.uploads.resume_ttl)
    for record in catalog.uploads_with_status(INTERRUPTED):
        if _last_progress(record) < cutoff:
            _abort(storage, catalog, record, "not resumed within the resume time limit")
            report.expired.append(record.id)
    for record in catalog.uploads_with_status(IN_PROGRESS):
        # No progress for resume_ttl: its instance died and never came back as itself
        # (a new host name) to recover it.
        if _last_progress(record) < cutoff:
            _abort(storage, catalog, record, "no progress within the resume time limit")
            report.expired.append(record.id)
    known = {
        r.s3_upload_id
        for status in (IN_PROGRESS, INTERRUPTED)
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
    saved = (record.resume_state or {}).get("saved_at")
    if saved:
        return datetime.fromisoformat(saved.replace("Z", "+00:00"))
    return record.started_at


def _abort(storage: Storage, catalog: Catalog, record: UploadRecord, reason: str) -> None:
    if record.s3_upload_id:
        try:
            storage.abort_multipart(record.object_key, record.s3_upload_id)
        except GatewayError:
            log.warning("could not abort %s; will retry at the next gc", record.s3_upload_id)
            return
    catalog.finish_upload(record.id, status=ABORTED, error=reason, emit=True)


class PeriodicGc:
    """Runs collect_garbage in `serve` every uploads.gc_interval seconds."""

    def __init__(self, settings: Settings, catalog: Catalog, storage: Storage) -> None:
        self._settings = settings
        self._catalog = catalog
        self._storage = storage
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gc", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._settings.uploads.gc_interval):
            try:
                report = collect_garbage(self._settings, self._catalog, self._storage)
                if report.expired or report.orphans:
                    log.info("gc: %s", report.summary())
            except Exception:
                log.exception("gc failed; will retry")
