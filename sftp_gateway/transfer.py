"""One upload's whole life: new or resumed, bytes counted, limits checked, published
and recorded, or kept for a resume; nothing else decides any of it.

- `FileWriter` is what a front end holds for a file open for writing. At the first
  WRITE it decides whether this is a new object (offset 0, or TRUNC; a resumable
  upload of the same name is dropped), the resume of an interrupted upload (offset =
  its committed size, or APPEND; taken under a lease in the catalog), or an APPEND to
  a complete object (its bytes are copied in first). Writes ahead of the stream wait
  in a bounded ReorderBuffer. A file opened under a temporary name
  (`x.pdf.filepart`) streams to the final key from the start; CLOSE seals it and the
  rename publishes it, zero-copy; if the session ends first, it is published anyway.
- `Upload` is one object written in order: a catalog row, an UploadStream, the size
  limit, the PDF signature check, the resume lease. Its end is `publish()` (row to
  `completing` with its parts and SHA-256, then S3, then `completed` and its event in
  one transaction), `reject()` (policy), `abandon()` (the channel died: kept as
  `interrupted` when parts are in S3), or `discard()` (the client removed it).
- `SessionUploads` is what one session (an SFTP channel, an SCP run) has open; it
  closes them out when the session ends, whatever the client did.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import mimetypes
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import quote

from sftp_gateway import logs
from sftp_gateway.backoff import Backoff
from sftp_gateway.catalog.repository import Catalog, new_upload_id
from sftp_gateway.config import Settings
from sftp_gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotSupported,
    QuotaExceeded,
    StorageError,
    UploadRejected,
)
from sftp_gateway.records import ClientInfo, Principal, UploadRecord, UploadStatus, iso, utcnow
from sftp_gateway.s3limits import MAX_OBJECT_SIZE, part_size_for
from sftp_gateway.storage.base import Part, Storage
from sftp_gateway.units import human_size
from sftp_gateway.upload.budget import Owner, ServerBusy
from sftp_gateway.upload.compress import decompressing
from sftp_gateway.upload.reorder import ReorderBuffer
from sftp_gateway.upload.services import UploadServices
from sftp_gateway.upload.stream import Checkpoint, StreamOptions, StreamResult, UploadStream

__all__ = [
    "ActiveUploads",
    "CatalogUnavailable",
    "ClientInfo",
    "FileBusy",
    "FileWriter",
    "SessionUploads",
    "Target",
    "Upload",
    "Uploader",
    "check_declared_size",
    "check_name_allowed",
    "drop_partial",
]

log = logging.getLogger(__name__)
PDF_SIGNATURE = b"%PDF-"
FILE_BUSY = "file busy: another session is uploading it"
DRAIN_QUIET_SECONDS = 2.0  # a writer with no byte for this long is idle, not in flight
BACKGROUND_RETRY_CAP = 5.0  # seconds between attempts of a deferred catalog write
CATALOG_BACKOFF = Backoff(base=0.2, cap=BACKGROUND_RETRY_CAP)  # 0.2 s, 0.4 s, ... 5 s
NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}


class FileBusy(InvalidRequest):
    """Another session (here or on another instance) is uploading this file now."""

    def __init__(self) -> None:
        super().__init__(FILE_BUSY)


class CatalogUnavailable(GatewayError):
    """The catalog could not be written at CLOSE: nothing was published."""


def metadata_safe_name(name: str) -> str:
    """S3 metadata is ASCII: non-ASCII names are kept as percent-encoded UTF-8. Spaces
    stay readable inside the name but not at its ends, which HTTP trims off a header."""
    quoted = quote(name, safe=" !#$&'()+,;=@[]^`{}~")
    inner = quoted.strip(" ")
    if not inner:
        return "%20" * len(quoted)
    start = quoted.index(inner)
    return "%20" * start + inner + "%20" * (len(quoted) - start - len(inner))


def content_type_for(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def check_name_allowed(path: str, allowed_extensions: list[str]) -> None:
    """Refuse at OPEN a name whose extension policy forbids, before any byte is sent."""
    if not allowed_extensions:
        return
    lowered = path.lower()
    if not any(lowered.endswith(ext) for ext in allowed_extensions):
        raise UploadRejected(f"only {', '.join(allowed_extensions)} files may be uploaded here")


def check_declared_size(size: int, max_file_size: int) -> None:
    """Refuse a size announced before any byte (SCP's C line) that the file may not
    reach: the limit, and S3's own 5 TiB, decide before anything is created."""
    limit = min(max_file_size, MAX_OBJECT_SIZE)
    if size > limit:
        raise QuotaExceeded(f"file exceeds the maximum size of {human_size(limit)}")


def checkpoint_of(record: UploadRecord) -> Checkpoint:
    """The resume point stored in the catalog for an interrupted upload."""
    state = cast("dict[str, Any]", record.resume_state or {})
    parts = tuple(Part(**part) for part in record.parts or [])
    return Checkpoint.from_state(record.s3_upload_id or "", parts, state)


def checkpoint_fields(checkpoint: Checkpoint) -> dict[str, object]:
    """The catalog columns that record a resume point (the schedule and compression
    too, so a resume makes its next parts the same way)."""
    return {
        "size": checkpoint.size,
        "parts": [dataclasses.asdict(part) for part in checkpoint.parts],
        "resume_state": {**checkpoint.state(), "saved_at": iso(utcnow())},
    }


@dataclass(frozen=True)
class Uploader:
    """Who uploads, from where, into what: everything an upload needs besides its bytes."""

    settings: Settings
    storage: Storage
    catalog: Catalog
    principal: Principal
    client: ClientInfo
    services: UploadServices

    @property
    def owner(self) -> Owner:
        return Owner(self.principal.name, self.client.ip)

    def refused(self, path: str, reason: str) -> None:
        """One WARNING line per refused upload, naming the user and the address."""
        who, source = self.principal.name, self.client.ip or "unknown"
        extra = logs.fields("refused", conn=self.client.conn, user=who, addr=self.client.ip)
        log.warning("upload refused for %s from %s: %s: %s", who, source, path, reason, extra=extra)


@dataclass(frozen=True)
class Target:
    """What an OPEN for writing names, as the filesystem resolved and checked it."""

    path: str  # the name opened, perhaps temporary (a.pdf.filepart)
    visible_key: str  # its key: where STAT looks while the file is open
    final_path: str  # the name it is published under (a.pdf)
    final_key: str
    exists: bool = False  # a complete object is at the name opened
    existing_size: int = 0  # its size as clients see it (opened without TRUNC only)
    existing_compression: str | None = None  # how that object is stored, if compressed
    partial: UploadRecord | None = None  # a resumable upload of the final key
    may_overwrite: bool = True  # the account's permission, for a publish after OPEN

    @property
    def temporary(self) -> bool:
        return self.final_key != self.visible_key


class ResumeLease:
    """A resume's hold on its catalog row: one session at a time, on any instance, may
    continue an upload. Renewed while bytes flow; a dead holder's lease just expires."""

    def __init__(self, catalog: Catalog, upload_id: str, instance_id: str, seconds: float):
        self._catalog = catalog
        self._upload_id = upload_id
        self._seconds = seconds
        self.owner = f"{instance_id[:100]}/{secrets.token_hex(8)}"
        self._renewed_at = 0.0

    def take(self, **changes: Any) -> None:
        """Claim the row (it becomes in_progress), or FileBusy."""
        if not self._catalog.take_lease(self._upload_id, self.owner, self._expiry(), **changes):
            raise FileBusy()
        self._renewed_at = time.monotonic()

    def renewal(self) -> dict[str, Any]:
        """Columns that extend the lease, written with a checkpoint."""
        self._renewed_at = time.monotonic()
        return {"lease_expires_at": self._expiry()}

    def renew_if_due(self) -> None:
        """Extend the lease when a third of it has passed; FileBusy if it was lost."""
        if time.monotonic() - self._renewed_at < self._seconds / 3:
            return
        self._renewed_at = time.monotonic()
        try:
            kept = self._catalog.renew_lease(self._upload_id, self.owner, self._expiry())
        except Exception:  # the catalog is down: keep going, the checkpoint will retry
            log.warning("could not renew the lease of upload %s", self._upload_id, exc_info=True)
            return
        if not kept:
            raise FileBusy()

    def _expiry(self) -> datetime:
        return utcnow() + timedelta(seconds=self._seconds)


def first_line(exc: BaseException) -> str:
    """A database error's first line: the reason, without the SQL and its parameters."""
    lines = str(exc).splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def retry_catalog(action: Callable[[], Any], seconds: float, what: str) -> Any:
    """Run a catalog write, retrying with backoff for `seconds`; CatalogUnavailable after."""
    deadline = time.monotonic() + seconds
    for attempt in itertools.count():
        try:
            return action()
        except Exception as exc:
            delay = CATALOG_BACKOFF.delay(attempt)
            if time.monotonic() + delay > deadline:
                log.warning("catalog unavailable: could not %s: %s", what, first_line(exc))
                raise CatalogUnavailable("the catalog is unavailable") from exc
            log.warning("catalog unavailable, retrying: %s", what)
            time.sleep(delay)
    raise AssertionError("unreachable")


def write_later(action: Callable[[], Any], what: str, give_up_after: float) -> None:
    """A catalog write that must happen once the catalog is back: retried on a daemon
    thread. If the process dies first, recovery at the next start does the same."""

    def run() -> None:
        try:
            retry_catalog(action, give_up_after, what)
            log.info("catalog back: did %s", what)
        except CatalogUnavailable:
            log.error("gave up trying to %s; recovery at start or gc will", what)

    threading.Thread(target=run, name="catalog-retry", daemon=True).start()


def drop_partial(uploader: Uploader, partial: UploadRecord, reason: str) -> None:
    """Abort a resumable upload (replaced or removed) under its lease: one that another
    session is resuming right now is busy, not dropped under its feet."""
    settings = uploader.settings
    lease = ResumeLease(
        uploader.catalog, partial.id, settings.server.instance_id, settings.uploads.resume_lease
    )
    lease.take()
    if partial.s3_upload_id:
        uploader.storage.abort_multipart(partial.object_key, partial.s3_upload_id)
    uploader.catalog.finish_upload(
        partial.id, status=UploadStatus.ABORTED, error=reason, emit=True, **NO_LEASE
    )


class ActiveUploads:
    """Files open for writing in this process, by visible key: STAT shows their size.

    It also caps the files one user has open for writing (`max_per_user`, fairness):
    `for_user()` gives a session a view of the same registry that charges its claims
    to that user, so SFTP and SCP are counted alike without knowing about it.
    """

    def __init__(self, max_per_user: int | None = None) -> None:
        self._by_key: dict[str, FileWriter] = {}
        self._publishing: dict[str, FileWriter] = {}  # final key -> its writer
        self._owner_of: dict[str, str] = {}  # key -> user it is charged to
        self._per_user: dict[str, int] = {}
        self._lock = threading.Lock()
        self.max_per_user = max_per_user
        self.owner: Owner | None = None

    def for_user(self, owner: Owner) -> ActiveUploads:
        """The same registry (shared state), charging claims made through it to owner."""
        view = copy.copy(self)
        view.owner = owner
        return view

    def claim(self, writer: FileWriter) -> None:
        """Register a writer under the name it opened and the name it will publish:
        a second writer of either (a.pdf beside a.pdf.filepart) is told the file is busy."""
        key, final = writer.visible_key, writer.final_key
        with self._lock:
            if key in self._by_key or final in self._publishing:
                if self.owner is not None:
                    log.warning(
                        "upload refused for %s from %s: %s: %s",
                        self.owner.user,
                        self.owner.source,
                        key,
                        FILE_BUSY,
                    )
                raise FileBusy()
            if self.owner is not None:
                self._charge(self.owner, key)
            self._by_key[key] = writer
            self._publishing[final] = writer

    def _charge(self, owner: Owner, key: str) -> None:
        """Count one more open upload for owner.user, or refuse it past the cap."""
        count = self._per_user.get(owner.user, 0)
        if self.max_per_user is not None and count >= self.max_per_user:
            text = f"too many uploads in progress (limit {self.max_per_user}); close one first"
            log.warning("upload refused for %s from %s: %s", owner.user, owner.source, text)
            raise QuotaExceeded(text)
        self._per_user[owner.user] = count + 1
        self._owner_of[key] = owner.user

    def release(self, writer: FileWriter) -> None:
        key = writer.visible_key
        with self._lock:
            if self._publishing.get(writer.final_key) is writer:
                del self._publishing[writer.final_key]
            if self._by_key.get(key) is writer:
                del self._by_key[key]
                user = self._owner_of.pop(key, None)
                if user is not None:
                    remaining = self._per_user[user] - 1
                    if remaining:
                        self._per_user[user] = remaining
                    else:
                        del self._per_user[user]

    def open_by(self, user: str) -> int:
        """Files `user` has open for writing now."""
        with self._lock:
            return self._per_user.get(user, 0)

    def get(self, key: str) -> FileWriter | None:
        with self._lock:
            return self._by_key.get(key)

    def all(self) -> list[FileWriter]:
        with self._lock:
            return list(self._by_key.values())

    def in_flight(self) -> list[FileWriter]:
        """The writers with bytes moving now (what a stopping server waits for)."""
        return [writer for writer in self.all() if writer.in_flight]

    def snapshot(self) -> list[dict[str, object]]:
        """The files being written now, for the admin page (read-only, JSON-ready):
        user, path, bytes so far, when it started, the size announced (SCP's C line)
        and the offset it resumed at, if any."""
        with self._lock:
            owners = dict(self._owner_of)
            entries = [(key, writer, owners.get(key)) for key, writer in self._by_key.items()]
        return [
            {
                "key": key,
                "user": user,
                "path": writer.path,
                "upload_id": writer.upload.id if writer.upload else None,
                "size": writer.size,
                "started_at": writer.started_at,
                "expected_size": writer.expected_size,
                "resumed_from": writer._initial_size or None,
                "sealed": writer.sealed,
            }
            for key, writer, user in entries
        ]


class SessionUploads:
    """The files one session (an SFTP channel, an SCP run) opened for writing and has
    not finished: when the session ends they are closed out, so none stays in the
    process's registry, in_progress in the catalog, or open in S3."""

    def __init__(self) -> None:
        self._writers: set[FileWriter] = set()
        self._lock = threading.Lock()

    def add(self, writer: FileWriter) -> None:
        with self._lock:
            self._writers.add(writer)

    def remove(self, writer: FileWriter) -> None:
        with self._lock:
            self._writers.discard(writer)

    def open(self) -> list[FileWriter]:
        with self._lock:
            return list(self._writers)

    def close_out(self, reason: str = "connection lost before the file was closed") -> None:
        """The session ended: sealed temporary files are published, the rest abandoned."""
        for writer in self.open():
            try:
                writer.abandon(reason)
            except Exception:
                log.exception("closing out the upload of %s failed", writer.path)


class Upload:
    """One object written in order, from its first byte (or its resume point) to its end."""

    def __init__(
        self,
        uploader: Uploader,
        *,
        path: str,
        key: str,
        expected_size: int | None = None,
        resume: UploadRecord | None = None,
        client_ref: str | None = None,
    ) -> None:
        settings = uploader.settings
        self.settings = settings
        self.catalog = uploader.catalog
        self.path = path
        self.key = key
        self.client_ref = client_ref
        self.log = logs.for_connection(  # every line of this upload names it and its session
            uploader.client.conn, log, user=uploader.principal.name, addr=uploader.client.ip
        )
        self._clock_start = time.monotonic()
        self._limits = settings.uploads
        self._head = b""  # the first bytes, held until the PDF signature is checked
        self._signature_checked = resume is not None or not self._limits.require_pdf_signature
        self._ended = False
        self._failure: GatewayError | None = None
        self.content_type = content_type_for(path)
        self._lease: ResumeLease | None = None
        # The catalog row is written when there is something to recover (a multipart
        # upload) or at the end, with its final state: one transaction per small file.
        self._row_written = resume is not None
        if resume is None:
            self.id = new_upload_id()
            self.started_at = utcnow()
            checkpoint = None
        else:
            self.id = resume.id
            self.started_at = resume.started_at
            checkpoint = checkpoint_of(resume)
            self._take_lease(settings)
        self.log.bind(upload_id=self.id, key=key)
        if checkpoint is not None:
            logs.event(
                self.log,
                "upload.resumed",
                "resuming upload %s of %s at byte %d",
                self.id,
                key,
                checkpoint.size,
                bytes=checkpoint.size,
            )
        part_size = checkpoint.part_size if checkpoint else self._part_size(expected_size)
        concurrency = settings.storage.max_concurrency
        principal, client = uploader.principal, uploader.client
        self.stream = UploadStream(
            uploader.storage,
            key,
            part_size=part_size,
            max_concurrency=concurrency,
            metadata=self._metadata(principal, client),
            content_type=self.content_type,
            sender=uploader.services.sender,
            lease=uploader.services.upload_lease(uploader.owner, part_size, concurrency),
            on_multipart_created=self._record_multipart,
            on_checkpoint=self._record_checkpoint,
            resume=checkpoint,
            # part-size schedule, compression, sha256_in_metadata (a resume: its own)
            options=StreamOptions.for_upload(
                settings.storage, expected_size, principal.compression
            ),
        )
        self._start_record = self._initial_record(principal, client, uploader.storage.bucket)
        self._publishing: StreamResult | None = None  # the row says `completing`

    @property
    def size(self) -> int:
        """Bytes received so far (the in-progress size clients see in STAT)."""
        return self.stream.size + len(self._head)

    def write(self, data: bytes) -> None:
        """Append the next bytes of the file."""
        if self._failure is not None:
            raise self._failure
        if self._ended:
            raise InvalidRequest("this upload has already ended")
        self.check_size(self.size + len(data))
        self._keep_lease()
        if not self._signature_checked:
            self._head += data
            if len(self._head) < len(PDF_SIGNATURE):
                return
            if not self._head.startswith(PDF_SIGNATURE):
                self.reject(UploadRejected("file content is not a PDF (it must start with %PDF-)"))
            self._signature_checked = True
            data, self._head = self._head, b""
        self._guard(self.stream.write, data)

    def check_size(self, end: int) -> None:
        """Refuse (and end the upload) as soon as a byte would pass the size limit."""
        limit = min(self._limits.max_file_size, MAX_OBJECT_SIZE)
        if end > limit:
            self.reject(QuotaExceeded(f"file exceeds the maximum size of {human_size(limit)}"))

    def seal(self) -> None:
        """The client closed the file: every byte goes to S3; errors reach the client."""
        if self._failure is not None:
            raise self._failure  # CLOSE after a refused WRITE repeats why
        if self._ended:
            raise InvalidRequest("this upload has already ended")
        if self._head:  # held only while a required signature is still unseen
            self.reject(UploadRejected("file is too short to be a PDF"))
        self._guard(self.stream.seal)

    def publish(self, mtime: int | None = None) -> UploadRecord:
        """Row to `completing` (parts, SHA-256), then the object in S3, then the row
        `completed` with its event in one transaction. If the catalog cannot take the
        first step, nothing is published and the parts stay for a resume."""
        result = self._guard(
            self.stream.complete, lambda ready: self._record_completing(ready, mtime)
        )
        record = self._record_completed(result, mtime)
        self._log_completed(result)
        return record

    def _log_completed(self, result: StreamResult) -> None:
        duration = max(time.monotonic() - self._clock_start, 1e-6)
        self.log.count_upload()
        logs.event(
            self.log,
            "upload.completed",
            "upload %s of %s completed: %d bytes in %.2fs, sha256 %s",
            self.id,
            self.key,
            result.size,
            duration,
            result.sha256,
            bytes=result.size,
            duration=round(duration, 3),
            sha256=result.sha256,
            rate=round(result.size / duration),  # bytes per second, this session's part
        )

    def reject(self, error: GatewayError) -> None:
        """Policy refused the bytes: abort, record, and raise the error for the client."""
        self._fail(UploadStatus.FAILED, str(error))
        self._failure = error
        raise error

    def abandon(self, reason: str) -> None:
        """The client went away mid-file: never complete; keep durable parts to resume."""
        if self._ended:
            return
        self._keep_for_resume(reason, keep_last_part=True)

    def discard(self, reason: str) -> None:
        """Abort on the client's request (it removed the file before it was published)."""
        self._fail(UploadStatus.ABORTED, reason)

    # -- internals -------------------------------------------------------------------

    def _take_lease(self, settings: Settings) -> None:
        lease = ResumeLease(
            self.catalog, self.id, settings.server.instance_id, settings.uploads.resume_lease
        )
        lease.take(error=None, owner=settings.server.instance_id)
        self._lease = lease

    def _keep_lease(self) -> None:
        """While bytes flow, the resume lease is renewed; a lost lease ends this upload
        without touching the parts (another session now owns them)."""
        if self._lease is None:
            return
        try:
            self._lease.renew_if_due()
        except FileBusy as exc:
            log.warning("upload %s of %s lost its resume lease; stopping", self.id, self.key)
            self._ended = True
            self._failure = exc
            try:  # give the buffers back; the parts belong to the new holder now
                self.stream.interrupt()
            except Exception:
                log.warning("could not stop upload %s cleanly", self.id, exc_info=True)
            raise

    def _guard(self, action: Callable[..., object], *args: object):  # type: ignore[no-untyped-def]
        """Run a stream action; any failure ends the upload (aborted) and reaches the client.
        A busy server or an unavailable catalog is temporary: the parts stay resumable."""
        try:
            return action(*args)
        except ServerBusy as exc:
            self.abandon(str(exc))
            self._failure = exc
            raise
        except CatalogUnavailable:
            self._failure = self._unrecorded_close()
            raise self._failure from None
        except GatewayError as exc:
            if isinstance(exc, StorageError) and self._publishing is not None:
                try:  # S3 may hold the object whatever the error said: ask it
                    return self._after_unanswered_publish(exc)
                except GatewayError as final:
                    self._failure = final
                    raise
            self._fail(UploadStatus.FAILED, str(exc))
            self._failure = exc
            raise
        except Exception as exc:
            log.exception("upload %s failed", self.id)
            self._fail(UploadStatus.FAILED, "internal error")
            self._failure = GatewayError("the upload failed on the server")
            raise self._failure from exc

    def _after_unanswered_publish(self, error: StorageError) -> StreamResult:
        """The request that publishes the object failed after the row said `completing`:
        S3 may have stored it and lost only its answer. Ask S3, never guess: this
        upload's object is there -> published; none of ours -> failed; S3 cannot say ->
        the row stays `completing`, and recovery completes or aborts it."""
        result = self._publishing
        assert result is not None
        try:
            info = self.stream.storage.head(self.key)
        except GatewayError:
            self._ended = True
            logs.event(
                self.log,
                "upload.unconfirmed",
                "upload %s of %s: storage did not confirm it (%s); left for recovery",
                self.id,
                self.key,
                error,
                level=logging.WARNING,
            )
            raise StorageError(
                "storage did not confirm that the file was stored; it is recorded once"
                " storage answers (send it again to be sure)"
            ) from error
        if info is None or info.metadata.get("upload-id") != self.id:
            self._fail(UploadStatus.FAILED, str(error))
            raise error
        self.log.warning("upload %s of %s: stored, though S3's answer was lost", self.id, self.key)
        try:
            self.stream.tag_published(result)
        except GatewayError as exc:  # the catalog row has the SHA-256 all the same
            self.log.warning("upload %s: SHA-256 tag not attached (%s)", self.id, exc)
        return result

    def _initial_record(
        self, principal: Principal, client: ClientInfo, bucket: str
    ) -> UploadRecord:
        return UploadRecord(
            id=self.id,
            user_name=principal.name,
            key_fingerprint=principal.key_fingerprint,
            client_ip=client.ip,
            client_version=client.version,
            path=self.path,
            bucket=bucket,
            object_key=self.key,
            status=UploadStatus.IN_PROGRESS,
            started_at=self.started_at,
            content_type=self.content_type,
            owner=self.settings.server.instance_id,
            link_id=client.link_id,
            client_ref=self.client_ref,
        )

    def _part_size(self, expected_size: int | None) -> int:
        """The configured part size, raised when an announced size (SCP's C line)
        would need more than S3's 10,000 parts."""
        return part_size_for(self.settings.storage.part_size, expected_size)

    def _metadata(self, principal: Principal, client: ClientInfo) -> dict[str, str]:
        return {
            "uploaded-by": principal.name,
            "upload-id": self.id,
            "uploaded-at": iso(self.started_at) or "",
            "client-ip": client.ip or "",
            "original-name": metadata_safe_name(self.path.rsplit("/", 1)[-1]),
        }

    def _record_multipart(self, s3_upload_id: str) -> None:
        if self._row_written:
            self.catalog.update_upload(self.id, s3_upload_id=s3_upload_id)
        else:
            self.catalog.start_upload(replace(self._start_record, s3_upload_id=s3_upload_id))
            self._row_written = True

    def _unwritten_row(self) -> UploadRecord | None:
        """The row to insert with the final state, if none was written yet."""
        return None if self._row_written else self._start_record

    def _record_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Progress in the catalog, so a gateway killed now can offer a resume later;
        a resume's lease is renewed with it."""
        renewal = self._lease.renewal() if self._lease is not None else {}
        self.catalog.update_upload(self.id, **checkpoint_fields(checkpoint), **renewal)

    def _record_completing(self, result: StreamResult, mtime: int | None) -> None:
        """Before S3 publishes anything: the row says `completing`, with what recovery
        needs to finish it (parts, size, SHA-256). Retried for uploads.catalog_retry."""
        fields: dict[str, Any] = {
            "status": UploadStatus.COMPLETING,
            "size": result.size,
            "sha256": result.sha256,
            "path": self.path,
            "mtime": mtime,
            "error": None,
            "completed_at": utcnow(),  # when publishing began; gc's grace counts from it
            "stored_size": result.stored_size,  # set when stored compressed
            "compression": result.compression,
        }
        if result.multipart:
            fields["parts"] = [dataclasses.asdict(part) for part in result.parts]

        def write() -> None:
            if self._row_written:
                self.catalog.update_upload(self.id, **fields)
            else:
                self.catalog.start_upload(replace(self._start_record, **fields))
                self._row_written = True

        retry_catalog(write, self._limits.catalog_retry, f"record upload {self.id} as completing")
        self._publishing = result

    def _record_completed(self, result: StreamResult, mtime: int | None) -> UploadRecord:
        """Catalog row and event in one transaction. S3 already has the object and the
        row says `completing`: if the catalog is down now, the write is finished later
        (here in the background, or by recovery), so the client is told it worked."""
        self._ended = True
        final: dict[str, Any] = {
            "status": UploadStatus.COMPLETED,
            "size": result.size,
            "sha256": result.sha256,
            "completed_at": utcnow(),
            "mtime": mtime,
            "path": self.path,
            "parts": None,
            "resume_state": None,
            "error": None,
            **NO_LEASE,
        }

        def write() -> UploadRecord:
            return self.catalog.finish_upload(self.id, only_if=UploadStatus.COMPLETING, **final)

        what = f"record upload {self.id} of {self.key} as completed"
        try:
            return cast(UploadRecord, retry_catalog(write, self._limits.catalog_retry, what))
        except CatalogUnavailable:
            write_later(write, what, self._limits.resume_ttl)
            return replace(self._start_record, **final)

    def _unrecorded_close(self) -> CatalogUnavailable:
        """CLOSE could not write `completing`: publish nothing, keep the parts (resuming
        before the last, possibly short, part) and record that once the catalog is back."""
        kept = self._keep_for_resume(
            "the catalog was unavailable when the file was closed", keep_last_part=False
        )
        log.warning(
            "upload %s of %s not published: the catalog is unavailable (%s)",
            self.id,
            self.key,
            "parts kept for a resume" if kept else "nothing kept",
        )
        again = "resume it later" if kept else "send it again later"
        return CatalogUnavailable(
            f"the file was not stored: the server's catalog is unavailable; {again}"
        )

    def _keep_for_resume(self, reason: str, *, keep_last_part: bool) -> bool:
        """Keep what S3 holds as `interrupted` (or abort when nothing is durable)."""
        try:
            checkpoint = self.stream.interrupt(keep_last_part=keep_last_part)
        except Exception:
            log.exception("could not save upload %s for resume; aborting it", self.id)
            checkpoint = None
        if checkpoint is None:  # nothing durable in S3: nothing to resume
            self._fail(UploadStatus.ABORTED, reason)
            return False
        self._ended = True
        note = f"{reason}; {self.size} bytes received, {checkpoint.size} kept for a resume"
        logs.event(
            self.log,
            "upload.interrupted",
            "upload %s interrupted: %s",
            self.id,
            note,
            bytes=self.size,
            duration=round(time.monotonic() - self._clock_start, 3),
        )
        fields = {
            "status": UploadStatus.INTERRUPTED,
            "error": note,
            **checkpoint_fields(checkpoint),
            **NO_LEASE,
        }
        self._write_or_later(
            lambda: self.catalog.update_upload(self.id, **fields),
            f"record upload {self.id} as interrupted",
        )
        return True

    def _write_or_later(self, action: Callable[[], Any], what: str) -> None:
        """One attempt now; if the catalog is down, keep trying in the background."""
        try:
            action()
        except Exception as exc:
            text = first_line(exc)
            log.warning("catalog unavailable: could not %s now (%s); retrying", what, text)
            write_later(action, what, self._limits.resume_ttl)

    def _log_failed(self, status: str, reason: str, received: int) -> None:
        failed = status == UploadStatus.FAILED
        logs.event(
            self.log,
            "upload.failed" if failed else "upload.aborted",
            "upload %s of %s %s: %s",
            self.id,
            self.key,
            status,
            reason,
            level=logging.WARNING if failed else logging.INFO,
            bytes=received,
            duration=round(time.monotonic() - self._clock_start, 3),
        )

    def _fail(self, status: str, reason: str) -> None:
        """Abort the S3 side and record the end, once, whatever else fails."""
        if self._ended:
            return
        self._ended = True
        try:
            self.stream.abort()
        except Exception:
            log.exception("abort of upload %s failed; gc will clean it up", self.id)
        received = self.size
        self._log_failed(status, reason, received)
        try:
            self.catalog.finish_upload(
                self.id,
                insert=self._unwritten_row(),
                status=status,
                error=reason,
                size=received,
                emit=received > 0,
                **NO_LEASE,
            )
        except Exception:
            log.exception("could not record the end of upload %s (%s)", self.id, reason)


class FileWriter:
    """A file open for writing, as a front end sees it (SFTP handle, SCP file)."""

    def __init__(
        self,
        uploader: Uploader,
        target: Target,
        *,
        registry: ActiveUploads,
        session: SessionUploads | None = None,
        truncate: bool = True,
        append: bool = False,
        expected_size: int | None = None,
        client_ref: str | None = None,
    ) -> None:
        settings, services = uploader.settings, uploader.services
        self._client_ref = client_ref  # a browser upload's id, kept on its row
        self._uploader = uploader
        self._target = target
        self.expected_size = expected_size  # announced (SCP's C line), else None
        self._initial_size = 0 if truncate else self._resumable_or_existing_size()
        self._failure: GatewayError | None = None
        self.path = target.path
        self.visible_key = target.visible_key
        self.final_key = target.final_key
        self.truncate = truncate
        self.append = append
        self.temporary = target.temporary
        self.mtime: int | None = None
        self.upload: Upload | None = None
        self.sealed = False
        self._writes_over_existing = False  # no TRUNC, first write at 0 of an existing file
        self.started_at = utcnow()
        self._finished = False
        self._busy = 0  # WRITE or CLOSE calls running now
        self._last_byte_at = time.monotonic()
        self._registry = registry
        self._session = session
        self._reorder = ReorderBuffer(
            settings.uploads.reorder_memory,
            settings.uploads.reorder_spill,
            memory=services.memory.lease(uploader.owner),
            disk=services.spill.lease(uploader.owner),
        )
        registry.claim(self)
        if session is not None:
            session.add(self)

    @property
    def size(self) -> int:
        """The file's size as the client sees it now: before the first write, what it
        opened (a resumable partial upload, or the file it did not truncate)."""
        written = self.upload.size if self.upload else self._initial_size
        return max(written, self._reorder.highest_end)

    @property
    def in_flight(self) -> bool:
        """Bytes are moving: a WRITE or CLOSE under way, or a byte in the last seconds.
        A handle left open and idle is not in flight (a stopping server does not wait)."""
        if self._finished:
            return False
        if self._busy:
            return True
        started = self.upload is not None and not self.sealed
        return started and time.monotonic() - self._last_byte_at < DRAIN_QUIET_SECONDS

    def write(self, offset: int, data: bytes) -> None:
        """Take a WRITE at any offset: in order, ahead (reordered), or a resume point."""
        if self.sealed:
            raise InvalidRequest("this file is already closed")
        if self._failure is not None:
            raise self._failure
        self._busy += 1
        self._last_byte_at = time.monotonic()
        try:
            self._write(offset, data)
        finally:
            self._busy -= 1

    def truncate_to(self, size: int) -> None:
        """FSETSTAT of the size: the file ends where the client's bytes end (what
        OpenSSH's scp sends after its last write, having opened without TRUNC), or is
        emptied before the first write. Any other size would change stored bytes."""
        if size == self.size:
            self._writes_over_existing = False
        elif size == 0 and self.upload is None:
            self.truncate, self._initial_size = True, 0
        else:
            raise NotSupported("changing a file's size is not supported")

    def commit(self) -> UploadRecord | None:
        """A clean CLOSE: seal, then publish unless a rename will (temporary names)."""
        self._busy += 1
        try:
            return self._commit()
        finally:
            self._busy -= 1

    def seal(self) -> None:
        if self.sealed:
            return
        if self.upload is None:
            self.upload = self._start(0)  # closed without a write: an empty file
        if self._reorder.pending:
            self._release()
            self.upload.reject(
                InvalidRequest("the file has holes: some bytes before its end were never sent")
            )
        if self._writes_over_existing and self.upload.size < self._target.existing_size:
            self._release()
            self.upload.reject(
                InvalidRequest(
                    f"{self.path} is {self._target.existing_size} bytes and was opened without "
                    f"truncating it: writing only its first {self.upload.size} bytes would cut "
                    "it short (changing part of a file is not supported); open it with "
                    "truncation to replace it"
                )
            )
        try:
            self.upload.seal()
        except GatewayError:
            self._release()
            raise
        self.sealed = True

    def publish(self, path: str | None = None) -> UploadRecord:
        """Complete the object (at the final key) and record it; `path` names it after a
        zero-copy rename of a temporary name."""
        assert self.upload is not None and self.sealed
        if path is not None:
            self.upload.path = path
        try:
            return self.upload.publish(self.mtime)
        finally:
            self._release()

    def abandon(self, reason: str = "connection lost before the file was closed") -> None:
        """The session ended. A sealed temporary file was closed cleanly: publish it under
        its final name rather than lose it; anything else is interrupted, never completed."""
        if self._finished:
            return
        try:
            if self.sealed and self.temporary and self.upload is not None:
                self._publish_unrenamed()
            elif self.upload is not None:
                self.upload.abandon(reason)
        finally:
            self._release()

    def _publish_unrenamed(self) -> None:
        """Publish a sealed temporary file at its session's end, unless a file took its
        final name since OPEN and this account may not overwrite: the rename it was
        refused must not happen by disconnecting."""
        assert self.upload is not None
        final_key = self._target.final_key
        if not self._target.may_overwrite and self._uploader.storage.head(final_key) is not None:
            log.info("not publishing %s: %s exists now", self.upload.key, final_key)
            self.upload.discard(f"{self._target.final_path} exists and may not be overwritten")
            return
        log.info("publishing %s: closed but never renamed", self.upload.key)
        self.publish()

    def discard(self, reason: str) -> None:
        """REMOVE of a file still open or awaiting its rename: abort, publish nothing."""
        if self.upload is not None:
            self.upload.discard(reason)
        self._release()

    # -- internals -------------------------------------------------------------------

    def _check_append_offset(self, offset: int) -> None:
        """APPEND writes go to the end, but a client that names an offset (OpenSSH's
        `reput`) believes the file ends there. If it does not (the client read the size
        of an upload still in flight, before its unsent tail was dropped), appending
        would leave a hole: refuse, so the client reads the size again."""
        end = self._resumable_or_existing_size()
        if offset not in (0, end):
            raise InvalidRequest(
                f"{self._target.final_path} ends at byte {end}, not at byte {offset}: "
                "read its size again and resume from there"
            )

    def _resumable_or_existing_size(self) -> int:
        partial = self._target.partial
        return partial.size if partial is not None else self._target.existing_size

    def _write(self, offset: int, data: bytes) -> None:
        if self.upload is None:
            try:
                if self.append:
                    self._check_append_offset(offset)
                self.upload = self._start(None if self.append else offset)
            except GatewayError as exc:
                self._failure = exc  # nothing started; CLOSE repeats this and changes nothing
                raise
        upload = self.upload
        if self.append:
            offset = max(upload.size, self._reorder.highest_end)
        if offset == upload.size:
            upload.write(data)
            for chunk in self._reorder.take_from(upload.size):
                upload.write(chunk)
        elif offset > upload.size:
            upload.check_size(offset + len(data))
            self._reorder.add(offset, data)
        else:
            raise InvalidRequest(
                f"write at offset {offset} rewrites bytes already stored "
                f"(the file is {upload.size} bytes long); rewriting is not supported"
            )

    def _commit(self) -> UploadRecord | None:
        if self._failure is not None:
            self._release()
            raise self._failure
        existed = self._target.exists or self._target.partial is not None
        if self.upload is None and existed and not self.truncate:
            self._release()  # opened without TRUNC, nothing written: the file is unchanged
            return None
        self.seal()
        if self.temporary:
            return None
        return self.publish()

    def _start(self, first_offset: int | None) -> Upload:
        """Offset 0 or TRUNC: a new object (a resumable one is dropped). The committed
        size of a resumable upload (or APPEND): resume it, under its lease. APPEND to a
        complete object: copy it in first. Anything else: a new file whose first bytes
        arrived out of order, unless a resumable upload exists."""
        target, partial = self._target, self._target.partial
        fresh = first_offset == 0 or self.truncate
        try:
            if partial is not None and not fresh:
                if first_offset is None or first_offset == partial.size:
                    return self._new_upload(resume=partial)
                raise InvalidRequest(
                    f"{target.final_path} can be resumed at byte {partial.size}, "
                    f"not at byte {first_offset}"
                )
            if partial is not None:
                drop_partial(self._uploader, partial, "replaced by a new upload of the same file")
        except FileBusy:
            self._uploader.refused(target.final_path, FILE_BUSY)
            raise
        upload = self._new_upload()
        if first_offset is None and target.exists:
            try:
                self._copy_existing_into(upload)
            except BaseException as exc:  # nothing may stay charged nor open in S3
                upload.discard(f"the file to append to could not be read back: {exc}")
                raise
        self._writes_over_existing = target.exists and not self.truncate and first_offset == 0
        return upload

    def _new_upload(self, resume: UploadRecord | None = None) -> Upload:
        return Upload(
            self._uploader,
            path=self._target.final_path,
            key=self._target.final_key,
            expected_size=self.expected_size,
            resume=resume,
            client_ref=self._client_ref,
        )

    def _copy_existing_into(self, upload: Upload) -> None:
        """APPEND to a complete object: S3 cannot append, so the new object starts with
        the old bytes (read back once), then the client's; the SHA-256 covers both."""
        body = self._uploader.storage.open_read(self._target.final_key, 0)
        if self._target.existing_compression is not None:
            body = decompressing(self._target.existing_compression, body)
        try:
            while chunk := body.read(1 << 20):
                upload.write(chunk)
        finally:
            body.close()

    def _release(self) -> None:
        self._finished = True
        self._reorder.close()
        self._registry.release(self)
        if self._session is not None:
            self._session.remove(self)
