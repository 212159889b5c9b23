"""The records every layer passes around, and the time helpers they are stamped with.

A leaf module: it imports nothing from the package, so the catalog, the events, the
upload pipeline, the SSH layer and the notifier can all share these types without
importing each other (tests/test_import_graph.py keeps it that way). Nothing here
needs paramiko, SQLAlchemy or boto3.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NotRequired, TypedDict


class UploadStatus(StrEnum):
    """An upload row's status; the values are the strings stored in the catalog."""

    IN_PROGRESS = "in_progress"
    INTERRUPTED = "interrupted"
    # Recorded (with its parts and SHA-256) just before S3 publishes the object; recovery
    # finishes it from what S3 holds, so no object exists without a row and an event.
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"
    # Was completed; a rename put another file's object under its key. (A new upload of
    # the same name leaves the older row `completed`: the newest completed row wins.)
    REPLACED = "replaced"


UPLOAD_STATUSES: tuple[str, ...] = tuple(status.value for status in UploadStatus)


# -- time ------------------------------------------------------------------------------


def utcnow() -> datetime:
    """Now, timezone-aware UTC: every timestamp the gateway stores or sends."""
    return datetime.now(UTC)


def as_utc(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, the form the contract (events, metadata) promises."""
    if ts is None:
        return None
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts.isoformat(timespec="milliseconds") + "Z"


# -- who -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """One key from an authorized_keys line."""

    key_type: str
    blob: bytes
    comment: str | None
    options: str | None = None  # authorized_keys options, validated (keyoptions.py)

    @property
    def fingerprint(self) -> str:
        """OpenSSH's `SHA256:...` form, as `ssh-keygen -lf` prints it."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"


@dataclass(frozen=True)
class Principal:
    """An authenticated user: what the rest of the gateway knows about who is there."""

    name: str
    home: str
    permissions: frozenset[str]
    email: str | None = None
    key_fingerprint: str | None = None
    key_options: str | None = None  # checked at login and by the revocation watcher
    # none | gzip | zstd for this user's uploads; None: storage.compression.
    compression: str | None = None

    def may(self, permission: str) -> bool:
        return permission in self.permissions


@dataclass(frozen=True)
class ClientInfo:
    """Where a session comes from, recorded with every upload it makes."""

    ip: str | None
    version: str | None
    conn: str | None = None  # the connection's id in the logs (logs.for_connection)
    link_id: str | None = None  # a browser upload through this upload link (web/)


@dataclass(frozen=True)
class UserRecord:
    name: str
    email: str | None
    home: str
    permissions: frozenset[str]
    created_at: datetime
    keys: tuple[PublicKey, ...]
    compression: str | None = None  # none | gzip | zstd; None: storage.compression


# -- uploads ---------------------------------------------------------------------------


class ResumeState(TypedDict):
    """How to continue an interrupted upload, beside its parts (a JSON column)."""

    part_size: int
    sha256_state: str  # hex of the saved SHA-256 state after the committed parts
    saved_at: str | None  # iso() of when it was saved
    # The part-size schedule (s3limits.PartSchedule); absent: constant part_size.
    flat_parts: NotRequired[int]
    double_every: NotRequired[int]
    largest_part: NotRequired[int]
    compression: NotRequired[str]  # gzip | zstd: the parts are members/frames of it
    # true: the multipart upload was made for S3's full-object CRC64NVME; the parts
    # carry theirs (`crc64nvme`), the object's is their combination.
    full_object_checksum: NotRequired[bool]


@dataclass(frozen=True)
class UploadRecord:
    id: str
    user_name: str
    path: str
    bucket: str
    object_key: str
    status: str  # an UploadStatus value
    started_at: datetime
    size: int = 0
    sha256: str | None = None
    content_type: str | None = None
    key_fingerprint: str | None = None
    client_ip: str | None = None
    client_version: str | None = None
    completed_at: datetime | None = None
    s3_upload_id: str | None = None
    error: str | None = None
    mtime: int | None = None
    owner: str | None = None
    parts: list[dict[str, Any]] | None = None
    resume_state: ResumeState | None = None
    # With storage.compression: bytes stored in S3 and how (size is the file's own).
    stored_size: int | None = None
    compression: str | None = None
    link_id: str | None = None  # uploaded from a browser through this upload link
    client_ref: str | None = None  # ... by this browser upload (its tus URL's id)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form `uploads show --json` prints (no resume internals)."""
        out = dataclasses.asdict(self)
        for name in ("started_at", "completed_at"):
            out[name] = out[name].isoformat() if out[name] else None
        out.pop("parts", None)
        out.pop("resume_state", None)
        return out


@dataclass(frozen=True)
class OutboxEvent:
    """One committed event waiting in the outbox to be sent."""

    id: int
    event_id: str
    event_type: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class EmailRecord:
    """What the catalog knows of one event's email: who got it, and whether anyone is
    still owed it (an SMTP server refused them for now)."""

    recipients: frozenset[str]
    complete: bool
