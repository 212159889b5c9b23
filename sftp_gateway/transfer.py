"""One upload's life: bytes counted, limits checked, the object finalised, then the catalog.

Front ends (SFTP, SCP) create an `Upload` when a file is opened for writing, feed it
sequential bytes, and end it one of three ways:
- `commit()` on a clean close: the object is completed in S3, its SHA-256 set in its
  metadata, and the catalog row plus its event written in one transaction;
- `reject(error)` when policy refuses the bytes (size, signature): aborted, recorded;
- `abandon(reason)` when the channel died: aborted, never completed, recorded.
Whatever happens, the first error is kept and no partial object is left behind.
"""

from __future__ import annotations

import logging
import mimetypes
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote

from sftp_gateway.auth import Principal
from sftp_gateway.catalog.repository import (
    ABORTED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    Catalog,
    UploadRecord,
    new_upload_id,
    utcnow,
)
from sftp_gateway.config import Settings
from sftp_gateway.errors import GatewayError, InvalidRequest, QuotaExceeded, UploadRejected
from sftp_gateway.events.schema import iso
from sftp_gateway.storage.base import Storage
from sftp_gateway.upload.stream import StreamResult, UploadStream

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


class ActiveUploads:
    """The uploads open in this process, by key: STAT shows their size as it grows."""

    def __init__(self) -> None:
        self._by_key: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def add(self, upload: Upload) -> None:
        with self._lock:
            self._by_key[upload.key] = upload

    def discard(self, upload: Upload) -> None:
        with self._lock:
            if self._by_key.get(upload.key) is upload:
                del self._by_key[upload.key]

    def get(self, key: str) -> Upload | None:
        with self._lock:
            return self._by_key.get(key)

    def all(self) -> list[Upload]:
        with self._lock:
            return list(self._by_key.values())


class Upload:
    """A file being written by a client, from OPEN to its end."""

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
        registry: ActiveUploads | None = None,
        expected_size: int | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.principal = principal
        self.path = path
        self.key = key
        self.id = new_upload_id()
        self.started_at = utcnow()
        self.mtime: int | None = None
        self._registry = registry
        self._limits = settings.uploads
        self._head = b""  # the first bytes, held until the PDF signature is checked
        self._signature_checked = not self._limits.require_pdf_signature
        self._ended = False
        self._failure: GatewayError | None = None
        self.content_type = content_type_for(path)
        self.stream = UploadStream(
            storage,
            key,
            part_size=_part_size_for(settings, expected_size),
            max_concurrency=settings.storage.max_concurrency,
            metadata=self._metadata(client),
            content_type=self.content_type,
            on_multipart_created=self._record_multipart,
        )
        catalog.start_upload(
            UploadRecord(
                id=self.id,
                user_name=principal.name,
                key_fingerprint=principal.key_fingerprint,
                client_ip=client.ip,
                client_version=client.version,
                path=path,
                bucket=storage.bucket,
                object_key=key,
                status=IN_PROGRESS,
                started_at=self.started_at,
                content_type=self.content_type,
            )
        )
        if registry:
            registry.add(self)

    @property
    def size(self) -> int:
        """Bytes received so far (the in-progress size clients see in STAT)."""
        return self.stream.size + len(self._head)

    @property
    def ended(self) -> bool:
        return self._ended

    def write(self, offset: int, data: bytes) -> None:
        """Accept the next bytes; they must continue the file where it stands."""
        if self._failure is not None:
            raise self._failure
        if self._ended:
            raise InvalidRequest("this upload has already ended")
        if offset != self.size:
            raise InvalidRequest(
                f"write at offset {offset} but the file is {self.size} bytes long; "
                "this server accepts sequential writes only"
            )
        if self.size + len(data) > self._limits.max_file_size:
            self.reject(
                QuotaExceeded(
                    f"file exceeds the maximum size of {_human(self._limits.max_file_size)}"
                )
            )
        if not self._signature_checked:
            self._head += data
            if len(self._head) < len(PDF_SIGNATURE):
                return
            self._check_signature(self._head)
            self._signature_checked = True
            data, self._head = self._head, b""
        self.stream.write(data)

    def commit(self) -> UploadRecord:
        """The client closed the file cleanly: make the object real, then record it."""
        if self._failure is not None:
            raise self._failure  # CLOSE after a refused WRITE repeats why
        if self._ended:
            raise InvalidRequest("this upload has already ended")
        try:
            if self._head:  # held only while a required signature is still unseen
                self.reject(UploadRejected("file is too short to be a PDF"))
            result = self.stream.finish()
        except GatewayError as exc:
            self._fail(FAILED, str(exc))
            raise
        except Exception as exc:
            log.exception("upload %s failed at close", self.id)
            self._fail(FAILED, "internal error")
            raise GatewayError("the upload failed on the server") from exc
        return self._record_completed(result)

    def reject(self, error: GatewayError) -> None:
        """Policy refused the bytes: abort, record, and raise the error for the client."""
        self._fail(FAILED, str(error))
        self._failure = error
        raise error

    def abandon(self, reason: str = "connection lost before the file was closed") -> None:
        """The channel died with the file open: never complete, abort and record."""
        if not self._ended:
            self._fail(ABORTED, reason)

    # -- internals -------------------------------------------------------------------

    def _check_signature(self, head: bytes) -> None:
        if not head.startswith(PDF_SIGNATURE):
            self.reject(UploadRejected("file content is not a PDF (it must start with %PDF-)"))

    def _metadata(self, client: ClientInfo) -> dict[str, str]:
        return {
            "uploaded-by": self.principal.name,
            "upload-id": self.id,
            "uploaded-at": iso(self.started_at) or "",
            "client-ip": client.ip or "",
            "original-name": metadata_safe_name(self.path.rsplit("/", 1)[-1]),
        }

    def _record_multipart(self, s3_upload_id: str) -> None:
        self.catalog.update_upload(self.id, s3_upload_id=s3_upload_id)

    def _record_completed(self, result: StreamResult) -> UploadRecord:
        """Catalog row and event in one transaction; retried, since S3 already has it."""
        self._ended = True
        if self._registry:
            self._registry.discard(self)
        deadline = time.monotonic() + CATALOG_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                return self.catalog.finish_upload(
                    self.id,
                    status=COMPLETED,
                    size=result.size,
                    sha256=result.sha256,
                    completed_at=utcnow(),
                    mtime=self.mtime,
                    parts=[p.__dict__ for p in result.parts] or None,
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
        if self._registry:
            self._registry.discard(self)
        try:
            self.stream.abort()
        except Exception:
            log.exception("abort of upload %s failed; gc will clean it up", self.id)
        received = self.size
        try:
            self.catalog.finish_upload(
                self.id, status=status, error=reason, size=received, emit=received > 0
            )
        except Exception:
            log.exception("could not record the end of upload %s (%s)", self.id, reason)


def _part_size_for(settings: Settings, expected_size: int | None) -> int:
    """The configured part size, raised when a known size would need over 10,000 parts."""
    part_size = settings.storage.part_size
    if expected_size:
        needed = -(-expected_size // 10_000)
        part_size = max(part_size, needed)
    return part_size


def _human(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} bytes"
