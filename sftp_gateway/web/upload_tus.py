"""tus 1.0.0 (core + creation + termination) for upload links, on the SFTP pipeline.

Each PATCH body streams, piece by piece, into `UserFilesystem.open_upload(...)` ->
`FileWriter.write(offset, data)`: the same row, multipart upload, SHA-256 state, memory
budget, event and email as SFTP. Between PATCH requests the upload is an `interrupted`
upload at its durable size (the parts S3 holds), exactly what SFTP leaves after a cut
connection, so HEAD answers that offset from the catalog, on any instance. The PATCH
that reaches Upload-Length seals and publishes the file (SFTP's CLOSE).

An upload's URL names the file and its length (`/u/TOKEN/files/REF`): nothing is kept
in memory between requests, and choosing the same file again finds the same upload.
"""

from __future__ import annotations

import base64
import binascii
import logging
import posixpath
from dataclasses import dataclass

from anyio import to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

from sftp_gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    UploadRejected,
)
from sftp_gateway.filesystem import UserFilesystem
from sftp_gateway.paths import normalize
from sftp_gateway.transfer import FileBusy, FileWriter, check_name_allowed, drop_partial

log = logging.getLogger(__name__)
TUS_VERSION = "1.0.0"
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION}
HAND_OFF_BYTES = 1 << 20  # request pieces (~64 KiB) are handed to the writer 1 MiB at a time


class TusError(Exception):
    """A refusal with its HTTP status and a sentence for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def tus_response(status: int, headers: dict[str, str] | None = None, text: str = "") -> Response:
    return PlainTextResponse(
        text,
        status_code=status,
        headers={**TUS_HEADERS, "Cache-Control": "no-store", **(headers or {})},
    )


def status_for(error: GatewayError) -> int:
    """The HTTP status of a pipeline refusal (the SFTP status text is the body)."""
    if isinstance(error, FileBusy):
        return 423
    for kind, status in (
        (UploadRejected, 415),
        (QuotaExceeded, 413),
        (PermissionDenied, 403),
        (NotFound, 404),
        (InvalidRequest, 400),
    ):
        if isinstance(error, kind):
            return status
    return 502


# -- the upload resource -----------------------------------------------------------------


@dataclass(frozen=True)
class FileRef:
    """What an upload URL names: the file (its name in the link's folder) and its length."""

    name: str
    length: int

    def encode(self) -> str:
        raw = base64.urlsafe_b64encode(self.name.encode()).decode().rstrip("=")
        return f"{raw}.{self.length}"

    @classmethod
    def decode(cls, ref: str) -> FileRef:
        raw, _, length = ref.rpartition(".")
        try:
            name = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise TusError(404, "no such upload") from None
        if not length.isdigit():
            raise TusError(404, "no such upload")
        return cls(file_name(name), int(length))


def file_name(raw: str) -> str:
    """The base name a browser gave (never a path), checked like an SFTP name."""
    name = posixpath.basename(raw.replace("\\", "/")).strip()
    if not name or name in (".", ".."):
        raise TusError(400, "the file has no name")
    try:
        normalize(name)
    except GatewayError as exc:
        raise TusError(400, str(exc)) from None
    return name


def parse_metadata(header: str) -> dict[str, str]:
    """`Upload-Metadata: filename d29ybGQ=,filetype ...` (values base64)."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        try:
            out[key] = base64.b64decode(value.strip()).decode() if value else ""
        except (binascii.Error, UnicodeDecodeError):
            raise TusError(400, f"Upload-Metadata: {key} is not base64") from None
    return out


def header_int(request: Request, name: str) -> int:
    value = request.headers.get(name, "")
    if not value.isdigit():
        raise TusError(400, f"{name}: a non-negative integer is required")
    return int(value)


# -- the operations ------------------------------------------------------------------------


class TusUploads:
    """tus operations on one user's filesystem, for one link (`folder` fixed by it)."""

    def __init__(self, fs: UserFilesystem, folder: str | None, max_size: int) -> None:
        self.fs = fs
        self.folder = folder or "/"
        self.max_size = max_size

    def path_of(self, name: str) -> str:
        return posixpath.join(self.folder, name)

    def check_new(self, name: str, length: int) -> None:
        """POST: refuse what the pipeline would refuse, before a byte is sent."""
        self.fs.require("write")
        check_name_allowed(self.path_of(name), self.fs.settings.uploads.allowed_extensions)
        if length > self.max_size:
            raise QuotaExceeded(f"file exceeds the maximum size of {_size(self.max_size)}")

    def offset(self, ref: FileRef) -> int:
        """What S3 durably holds of this file: the resumable size, else 0 (or the
        length, once it was published)."""
        key = self.fs.jail.key(self.path_of(ref.name))
        partial = self.fs.catalog.interrupted_upload(self.fs.storage.bucket, key)
        if partial is not None:
            return partial.size
        done = self.fs.catalog.latest_completed(self.fs.storage.bucket, [key]).get(key)
        link_id = self.fs.client.link_id
        if done is not None and done.link_id == link_id and done.size == ref.length:
            return ref.length
        return 0

    def open(self, ref: FileRef, offset: int) -> FileWriter:
        """A writer that starts a new file at 0, or resumes the interrupted one."""
        return self.fs.open_upload(
            self.path_of(ref.name), truncate=offset == 0, expected_size=ref.length
        )

    def terminate(self, ref: FileRef) -> None:
        key = self.fs.jail.key(self.path_of(ref.name))
        partial = self.fs.catalog.interrupted_upload(self.fs.storage.bucket, key)
        if partial is None:
            raise NotFound("no such upload in progress")
        drop_partial(self.fs.uploader, partial, "cancelled in the browser")


def _size(value: int) -> str:
    from sftp_gateway.units import human_size

    return human_size(value)


async def stream_patch(request: Request, writer: FileWriter, offset: int, length: int) -> int:
    """Hand the body to the writer as it arrives (never buffered whole); returns the
    offset after it. A body past Upload-Length is refused; a cut one ends the loop."""
    pending: list[bytes] = []
    held = 0
    position = offset
    async for piece in request.stream():
        if not piece:
            continue
        if position + held + len(piece) > length:
            raise TusError(413, "the request goes past Upload-Length")
        pending.append(piece)
        held += len(piece)
        if held >= HAND_OFF_BYTES:
            position = await _hand_off(writer, position, b"".join(pending))
            pending, held = [], 0
    if pending:
        position = await _hand_off(writer, position, b"".join(pending))
    return position


async def _hand_off(writer: FileWriter, position: int, data: bytes) -> int:
    await to_thread.run_sync(writer.write, position, data)
    return position + len(data)


__all__ = [
    "ClientDisconnect",
    "FileBusy",
    "FileRef",
    "TusError",
    "TusUploads",
    "header_int",
    "parse_metadata",
    "status_for",
    "stream_patch",
    "tus_response",
]
