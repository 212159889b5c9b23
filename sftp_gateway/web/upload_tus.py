"""tus 1.0.0 (core + creation + termination) for upload links, on the SFTP pipeline.

Each PATCH body streams, piece by piece, into `UserFilesystem.open_upload(...)` ->
`FileWriter.write(offset, data)`: the same row, multipart upload, SHA-256 state, memory
budget, event and email as SFTP. Between PATCH requests the upload is an `interrupted`
upload at its durable size (the parts S3 holds), exactly what SFTP leaves after a cut
connection, so HEAD answers that offset from the catalog, on any instance. The PATCH
that reaches Upload-Length seals and publishes the file (SFTP's CLOSE).

An upload's URL (`/u/TOKEN/files/REF`) names the file, its length and the POST that
created it (a random id with its time, signed with the link's token): nothing is kept in
memory between requests. The upload's row carries that id (`client_ref`) and its link,
and only a partial upload with both is resumed: another file of the same name (a later
POST, an SFTP upload, another link) never continues it, and a new POST never inherits
an earlier upload's "done".

Limits the stateless design needs: a PATCH body idle for BODY_IDLE_TIMEOUT seconds, or
averaging under MIN_BODY_RATE after SLOW_BODY_GRACE seconds, is ended (408) and kept
resumable like a dropped SFTP connection; a non-final PATCH must carry at least one S3
part (less would keep nothing, so the client could never advance).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import posixpath
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
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
from sftp_gateway.records import UploadRecord
from sftp_gateway.s3limits import part_size_for
from sftp_gateway.transfer import FileBusy, FileWriter, check_name_allowed, drop_partial

log = logging.getLogger(__name__)
TUS_VERSION = "1.0.0"
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION}
HAND_OFF_BYTES = 1 << 20  # request pieces (~64 KiB) are handed to the writer 1 MiB at a time
BODY_IDLE_TIMEOUT = 60.0  # seconds a PATCH body may send nothing before it is ended (408)
SLOW_BODY_GRACE = 120.0  # seconds after which a PATCH must average MIN_BODY_RATE ...
MIN_BODY_RATE = 1024  # ... bytes per second, or it is ended (408): slowloris bodies
MAX_DIGITS = 19  # Upload-Length / Upload-Offset: ASCII digits, at most this many
DIGITS = re.compile(f"[0-9]{{1,{MAX_DIGITS}}}")
UPLOAD_ID = re.compile(r"[0-9]{1,16}-[0-9a-f]{12}")
MAC_HEX = 16


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
    """What an upload URL names: the file (its name in the link's folder), its length,
    and the POST that created it (`upload`: its time in ms, then random hex)."""

    name: str
    length: int
    upload: str

    @classmethod
    def new(cls, name: str, length: int) -> FileRef:
        return cls(name, length, f"{time.time_ns() // 1_000_000}-{secrets.token_hex(6)}")

    def _mac(self, key: str) -> str:
        message = f"{self.name}\n{self.length}\n{self.upload}".encode()
        return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:MAC_HEX]

    def encode(self, key: str) -> str:
        raw = base64.urlsafe_b64encode(self.name.encode()).decode().rstrip("=")
        return f"{raw}.{self.length}.{self.upload}.{self._mac(key)}"

    @classmethod
    def decode(cls, ref: str, key: str) -> FileRef:
        """The upload a URL names, if a POST with this `key` (the link's token) made it;
        anything else is 404, never a 500."""
        pieces = ref.split(".")
        if len(pieces) != 4:
            raise TusError(404, "no such upload")
        raw, length, upload, mac = pieces
        if not DIGITS.fullmatch(length) or not UPLOAD_ID.fullmatch(upload):
            raise TusError(404, "no such upload")
        try:
            name = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise TusError(404, "no such upload") from None
        try:
            decoded = cls(file_name(name), int(length), upload)
        except TusError:
            raise TusError(404, "no such upload") from None
        if not hmac.compare_digest(decoded._mac(key), mac):
            raise TusError(404, "no such upload")
        return decoded


@dataclass(frozen=True)
class Position:
    """Where an upload stands: the offset S3 durably holds, the partial upload it
    continues (None: a new one starts at 0), and the SHA-256 once it is published."""

    offset: int
    partial_id: str | None = None
    sha256: str | None = None


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
    """A non-negative integer header: ASCII digits only (str.isdigit takes "²", which
    int() refuses), at most MAX_DIGITS of them; else 400."""
    value = request.headers.get(name, "").strip()
    if not DIGITS.fullmatch(value):
        raise TusError(
            400, f"{name}: a non-negative integer of at most {MAX_DIGITS} digits is required"
        )
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
        path = self.path_of(name)
        if self.fs.final_name(path) != path:
            raise TusError(
                400,
                f"{name}: names like this are reserved for temporary files of SFTP clients"
                " (uploads.temp_name_patterns); rename the file and choose it again",
            )
        check_name_allowed(path, self.fs.settings.uploads.allowed_extensions)
        if length > self.max_size:
            raise QuotaExceeded(f"file exceeds the maximum size of {_size(self.max_size)}")

    def part_size(self, ref: FileRef) -> int:
        """The part size of this upload's S3 parts (a known size: one constant size)."""
        configured: int = self.fs.settings.storage.part_size
        return part_size_for(configured, ref.length)

    def position(self, ref: FileRef) -> Position:
        """What S3 durably holds of this upload. Only the partial upload this very URL
        started (its row's client_ref, through this link) is resumed, and the upload is
        done once this URL published its file (even if a later one replaced it: a lost
        answer must not send it again); anything else is a new upload at 0, never
        another file's bytes."""
        key = self.fs.jail.key(self.path_of(ref.name))
        bucket = self.fs.storage.bucket
        partial = self.fs.catalog.interrupted_upload(bucket, key)
        if partial is not None and self._owns(partial, ref):
            return Position(partial.size, partial.id)
        done = self.fs.catalog.published_by(bucket, key, ref.upload)
        if done is not None and done.sha256 and self._owns(done, ref):
            return Position(ref.length, sha256=done.sha256)
        return Position(0)

    def _owns(self, record: UploadRecord, ref: FileRef) -> bool:
        """The row is this URL's upload (a POST of this link, at this length)."""
        return (
            record.client_ref == ref.upload
            and record.link_id is not None
            and record.link_id == self.fs.client.link_id
        )

    def open(self, ref: FileRef, position: Position) -> FileWriter:
        """A writer that starts a new file at 0, or resumes this upload's partial one
        (checked again once the name is held: it must still be the same upload)."""
        writer = self.fs.open_upload(
            self.path_of(ref.name),
            truncate=position.offset == 0,
            expected_size=ref.length,
            client_ref=ref.upload,
        )
        if position.offset > 0 and self.position(ref).partial_id != position.partial_id:
            writer.discard("the upload changed under the request")
            raise TusError(409, "the upload changed meanwhile: ask for its offset again")
        return writer

    def terminate(self, ref: FileRef) -> None:
        key = self.fs.jail.key(self.path_of(ref.name))
        partial = self.fs.catalog.interrupted_upload(self.fs.storage.bucket, key)
        if partial is None or not self._owns(partial, ref):
            raise NotFound("no such upload in progress")
        drop_partial(self.fs.uploader, partial, "cancelled in the browser")


def _size(value: int) -> str:
    from sftp_gateway.units import human_size

    return human_size(value)


async def stream_patch(request: Request, writer: FileWriter, offset: int, length: int) -> int:
    """Hand the body to the writer as it arrives (never buffered whole); returns the
    offset after it. A body past Upload-Length is refused; a cut one ends the loop; a
    stalled or crawling one is ended with 408 (TusError) after what it sent is handed on."""
    pending: list[bytes] = []
    held = 0
    position = offset
    started = time.monotonic()
    received = 0
    pieces = request.stream().__aiter__()
    while True:
        piece = await _next_piece(pieces)
        if piece is None:
            break
        if not piece:
            continue
        if position + held + len(piece) > length:
            raise TusError(413, "the request goes past Upload-Length")
        received += len(piece)
        elapsed = time.monotonic() - started
        if elapsed > SLOW_BODY_GRACE and received < MIN_BODY_RATE * elapsed:
            raise TusError(408, f"the request is too slow (under {MIN_BODY_RATE} bytes/s)")
        pending.append(piece)
        held += len(piece)
        if held >= HAND_OFF_BYTES:
            position = await _hand_off(writer, position, b"".join(pending))
            pending, held = [], 0
    if pending:
        position = await _hand_off(writer, position, b"".join(pending))
    return position


async def _next_piece(pieces: AsyncIterator[bytes]) -> bytes | None:
    """The next piece of the body, None at its end; TusError 408 when nothing came for
    BODY_IDLE_TIMEOUT seconds."""
    try:
        with anyio.fail_after(BODY_IDLE_TIMEOUT):
            return await pieces.__anext__()
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise TusError(
            408, f"the request sent nothing for {BODY_IDLE_TIMEOUT:.0f} seconds"
        ) from None


async def _hand_off(writer: FileWriter, position: int, data: bytes) -> int:
    await to_thread.run_sync(writer.write, position, data)
    return position + len(data)


__all__ = [
    "ClientDisconnect",
    "FileBusy",
    "FileRef",
    "Position",
    "TusError",
    "TusUploads",
    "header_int",
    "parse_metadata",
    "status_for",
    "stream_patch",
    "tus_response",
]
