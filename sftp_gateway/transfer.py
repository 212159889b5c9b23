"""One upload's life: bytes counted, limits checked, the object finalised, then the catalog.

Two layers:
- `Upload` is one object being written in order: a catalog row, an UploadStream, the
  size limit and the PDF signature check. It ends by `seal()` + `publish()` (the
  client closed the file), `reject()` (policy refused it), `abandon()` (the channel
  died: never completed; kept as `interrupted` for a resume when parts are in S3).
- `FileWriter` is what a front end holds for a file open for writing. It decides at
  the first WRITE whether this is a new object (offset 0, or TRUNC) or the resume of
  an interrupted upload (offset = its committed size), turns APPEND into "at the end",
  and passes writes that arrive ahead of the stream through a bounded ReorderBuffer.
  A file opened under a temporary name (`x.pdf.filepart`) streams to the final key
  from the start; CLOSE seals it and the rename to `x.pdf` publishes it, zero-copy.
"""

from __future__ import annotations

import copy
import logging
import mimetypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import quote

from sftp_gateway.auth import Principal
from sftp_gateway.catalog.repository import (
    ABORTED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    INTERRUPTED,
    Catalog,
    UploadRecord,
    new_upload_id,
    utcnow,
)
from sftp_gateway.config import Settings
from sftp_gateway.errors import GatewayError, InvalidRequest, QuotaExceeded, UploadRejected
from sftp_gateway.events.schema import iso
from sftp_gateway.s3limits import MAX_OBJECT_SIZE, part_size_for
from sftp_gateway.storage.base import Part, Storage
from sftp_gateway.upload.budget import Owner, ServerBusy
from sftp_gateway.upload.reorder import ReorderBuffer
from sftp_gateway.upload.services import UploadServices
from sftp_gateway.upload.stream import Checkpoint, StreamResult, UploadStream

log = logging.getLogger(__name__)
PDF_SIGNATURE = b"%PDF-"
CATALOG_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class ClientInfo:
    """Where a session comes from, recorded with every upload it makes."""

    ip: str | None
    version: str | None


def metadata_safe_name(name: str) -> str:
    """S3 metadata is ASCII: non-ASCII names are kept as percent-encoded UTF-8."""
    return quote(name, safe=" !#$&'()+,;=@[]^`{}~")


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
        raise QuotaExceeded(f"file exceeds the maximum size of {_human(limit)}")


def checkpoint_of(record: UploadRecord) -> Checkpoint:
    """The resume point stored in the catalog for an interrupted upload."""
    state = record.resume_state or {}
    parts = tuple(Part(**part) for part in record.parts or [])
    return Checkpoint(
        upload_id=record.s3_upload_id or "",
        part_size=int(state["part_size"]),
        parts=parts,
        hash_state=bytes.fromhex(state["sha256_state"]),
    )


def checkpoint_fields(checkpoint: Checkpoint) -> dict[str, object]:
    """The catalog columns that record a resume point."""
    return {
        "size": checkpoint.size,
        "parts": [part.__dict__ for part in checkpoint.parts],
        "resume_state": {
            "part_size": checkpoint.part_size,
            "sha256_state": checkpoint.hash_state.hex(),
            "saved_at": iso(utcnow()),
        },
    }


class ActiveUploads:
    """Files open for writing in this process, by visible key: STAT shows their size.

    It also caps the files one user has open for writing (`max_per_user`, fairness):
    `for_user()` gives a session a view of the same registry that charges its claims
    to that user, so SFTP and SCP are counted alike without knowing about it.
    """

    def __init__(self, max_per_user: int | None = None) -> None:
        self._by_key: dict[str, FileWriter] = {}
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

    def claim(self, key: str, writer: FileWriter) -> None:
        with self._lock:
            if key in self._by_key:
                raise InvalidRequest("this file is being uploaded by another session")
            if self.owner is not None:
                self._charge(self.owner, key)
            self._by_key[key] = writer

    def _charge(self, owner: Owner, key: str) -> None:
        """Count one more open upload for owner.user, or refuse it past the cap."""
        count = self._per_user.get(owner.user, 0)
        if self.max_per_user is not None and count >= self.max_per_user:
            text = f"too many uploads in progress (limit {self.max_per_user}); close one first"
            log.warning("upload refused for %s from %s: %s", owner.user, owner.source, text)
            raise QuotaExceeded(text)
        self._per_user[owner.user] = count + 1
        self._owner_of[key] = owner.user

    def release(self, key: str, writer: FileWriter) -> None:
        with self._lock:
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


class Upload:
    """One object written in order, from its first byte (or its resume point) to its end."""

    def __init__(
        self,
        *,
        settings: Settings,
        storage: Storage,
        catalog: Catalog,
        principal: Principal,
        client: ClientInfo,
        path: str,
        key: str,
        services: UploadServices,
        expected_size: int | None = None,
        resume: UploadRecord | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.path = path
        self.key = key
        self._limits = settings.uploads
        self._head = b""  # the first bytes, held until the PDF signature is checked
        self._signature_checked = resume is not None or not self._limits.require_pdf_signature
        self._ended = False
        self._failure: GatewayError | None = None
        self.content_type = content_type_for(path)
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
            catalog.update_upload(self.id, status=IN_PROGRESS, error=None)
            log.info("resuming upload %s of %s at byte %d", self.id, key, checkpoint.size)
        part_size = checkpoint.part_size if checkpoint else self._part_size(expected_size)
        concurrency = settings.storage.max_concurrency
        self.stream = UploadStream(
            storage,
            key,
            part_size=part_size,
            max_concurrency=concurrency,
            metadata=self._metadata(principal, client),
            content_type=self.content_type,
            sender=services.sender,
            lease=services.upload_lease(Owner(principal.name, client.ip), part_size, concurrency),
            on_multipart_created=self._record_multipart,
            on_checkpoint=self._record_checkpoint,
            resume=checkpoint,
        )
        self._start_record = self._initial_record(principal, client, storage.bucket)

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
            self.reject(QuotaExceeded(f"file exceeds the maximum size of {_human(limit)}"))

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
        """Make the object visible in S3, then record it and queue its event."""
        result = self._guard(self.stream.complete)
        return self._record_completed(result, mtime)

    def reject(self, error: GatewayError) -> None:
        """Policy refused the bytes: abort, record, and raise the error for the client."""
        self._fail(FAILED, str(error))
        self._failure = error
        raise error

    def abandon(self, reason: str) -> None:
        """The client went away mid-file: never complete; keep durable parts to resume."""
        if self._ended:
            return
        try:
            checkpoint = self.stream.interrupt()
        except Exception:
            log.exception("could not save upload %s for resume; aborting it", self.id)
            checkpoint = None
        if checkpoint is None:  # nothing durable in S3: nothing to resume
            self._fail(ABORTED, reason)
            return
        self._ended = True
        note = f"{reason}; {self.size} bytes received, {checkpoint.size} kept for a resume"
        log.info("upload %s interrupted: %s", self.id, note)
        self.catalog.update_upload(
            self.id, status=INTERRUPTED, error=note, **checkpoint_fields(checkpoint)
        )

    def discard(self, reason: str) -> None:
        """Abort on the client's request (it removed the file before it was published)."""
        self._fail(ABORTED, reason)

    # -- internals -------------------------------------------------------------------

    def _guard(self, action: Callable[..., object], *args: object):  # type: ignore[no-untyped-def]
        """Run a stream action; any failure ends the upload (aborted) and reaches the client.
        A busy server is temporary: the parts already in S3 stay resumable."""
        try:
            return action(*args)
        except ServerBusy as exc:
            self.abandon(str(exc))
            self._failure = exc
            raise
        except GatewayError as exc:
            self._fail(FAILED, str(exc))
            self._failure = exc
            raise
        except Exception as exc:
            log.exception("upload %s failed", self.id)
            self._fail(FAILED, "internal error")
            self._failure = GatewayError("the upload failed on the server")
            raise self._failure from exc

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
            status=IN_PROGRESS,
            started_at=self.started_at,
            content_type=self.content_type,
            owner=self.settings.server.instance_id,
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
        """Progress in the catalog, so a gateway killed now can offer a resume later."""
        self.catalog.update_upload(self.id, **checkpoint_fields(checkpoint))

    def _record_completed(self, result: StreamResult, mtime: int | None) -> UploadRecord:
        """Catalog row and event in one transaction; retried, since S3 already has it."""
        self._ended = True
        deadline = time.monotonic() + CATALOG_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                return self.catalog.finish_upload(
                    self.id,
                    insert=self._unwritten_row(),
                    status=COMPLETED,
                    size=result.size,
                    sha256=result.sha256,
                    completed_at=utcnow(),
                    mtime=mtime,
                    path=self.path,
                    parts=None,
                    resume_state=None,
                    error=None,
                )
            except Exception:
                if time.monotonic() > deadline:
                    log.exception("catalog write for completed upload %s failed", self.id)
                    raise GatewayError(
                        "the file was stored but could not be recorded; contact the operator"
                    ) from None
                log.warning("catalog unavailable, retrying upload %s record", self.id)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

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
        try:
            self.catalog.finish_upload(
                self.id,
                insert=self._unwritten_row(),
                status=status,
                error=reason,
                size=received,
                emit=received > 0,
            )
        except Exception:
            log.exception("could not record the end of upload %s (%s)", self.id, reason)


Opener = Callable[[int | None], Upload]


class FileWriter:
    """A file open for writing, as a front end sees it (SFTP handle, SCP file)."""

    def __init__(
        self,
        opener: Opener,
        *,
        path: str,
        visible_key: str,
        registry: ActiveUploads,
        settings: Settings,
        services: UploadServices,
        owner: Owner,
        truncate: bool = True,
        append: bool = False,
        temporary: bool = False,
        existed: bool = False,
        initial_size: int = 0,
    ) -> None:
        self._opener = opener
        self._existed = existed
        self._initial_size = 0 if truncate else initial_size
        self._failure: GatewayError | None = None
        self.path = path
        self.visible_key = visible_key
        self.truncate = truncate
        self.append = append
        self.temporary = temporary
        self.mtime: int | None = None
        self.upload: Upload | None = None
        self.sealed = False
        self.started_at = utcnow()
        self._registry = registry
        self._reorder = ReorderBuffer(
            settings.uploads.reorder_memory,
            settings.uploads.reorder_spill,
            memory=services.memory.lease(owner),
            disk=services.spill.lease(owner),
        )
        registry.claim(visible_key, self)

    @property
    def size(self) -> int:
        """The file's size as the client sees it now: before the first write, what it
        opened (a resumable partial upload, or the file it did not truncate)."""
        written = self.upload.size if self.upload else self._initial_size
        return max(written, self._reorder.highest_end)

    def write(self, offset: int, data: bytes) -> None:
        """Take a WRITE at any offset: in order, ahead (reordered), or a resume point."""
        if self.sealed:
            raise InvalidRequest("this file is already closed")
        if self._failure is not None:
            raise self._failure
        if self.upload is None:
            try:
                self.upload = self._opener(None if self.append else offset)
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

    def commit(self) -> UploadRecord | None:
        """A clean CLOSE: seal, then publish unless a rename will (temporary names)."""
        if self._failure is not None:
            self._release()
            raise self._failure
        if self.upload is None and self._existed and not self.truncate:
            self._release()  # opened without TRUNC, nothing written: the file is unchanged
            return None
        self.seal()
        if self.temporary:
            return None
        return self.publish()

    def seal(self) -> None:
        if self.sealed:
            return
        if self.upload is None:
            self.upload = self._opener(0)  # closed without a write: an empty file
        if self._reorder.pending:
            self._release()
            self.upload.reject(
                InvalidRequest("the file has holes: some bytes before its end were never sent")
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
        """The channel died. A sealed temporary file was closed cleanly: publish it under
        its final name rather than lose it; anything else is interrupted, never completed."""
        try:
            if self.sealed and self.temporary and self.upload is not None:
                log.info("publishing %s: closed but never renamed", self.upload.key)
                self.publish()
            elif self.upload is not None:
                self.upload.abandon(reason)
        finally:
            self._release()

    def discard(self, reason: str) -> None:
        """REMOVE of a file still open or awaiting its rename: abort, publish nothing."""
        if self.upload is not None:
            self.upload.discard(reason)
        self._release()

    def _release(self) -> None:
        self._reorder.close()
        self._registry.release(self.visible_key, self)


def _human(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} bytes"
