"""The catalog's tables: users and keys, uploads, the event outbox, emails sent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254))
    home: Mapped[str] = mapped_column(String(512))
    permissions: Mapped[str] = mapped_column(String(200))  # comma-separated
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # none | gzip | zstd for this user's uploads; NULL: storage.compression (0006).
    compression: Mapped[str | None] = mapped_column(String(8))
    keys: Mapped[list[UserKeyRow]] = relationship(
        back_populates="user", cascade="all, delete-orphan", order_by="UserKeyRow.id"
    )


class UserKeyRow(Base):
    __tablename__ = "user_keys"
    __table_args__ = (UniqueConstraint("user_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(100))
    key_type: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(Text)  # the authorized_keys line, options dropped
    comment: Mapped[str | None] = mapped_column(String(200))
    # authorized_keys options (from=, expiry-time=, restrict, no-*), as validated text.
    options: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user: Mapped[UserRow] = relationship(back_populates="keys")


class UploadRow(Base):
    __tablename__ = "uploads"
    __table_args__ = (
        Index("ix_uploads_key", "bucket", "object_key"),
        Index("ix_uploads_user_started", "user_name", "started_at"),
        Index("ix_uploads_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64))
    key_fingerprint: Mapped[str | None] = mapped_column(String(100))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    client_version: Mapped[str | None] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    bucket: Mapped[str] = mapped_column(String(63))
    object_key: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64))
    content_type: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    s3_upload_id: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    mtime: Mapped[int | None] = mapped_column(BigInteger)
    owner: Mapped[str | None] = mapped_column(String(128))  # instance that runs it
    # Resume state: committed parts [{"n","etag","size","checksum"}] and hash state.
    parts: Mapped[list[Any] | None] = mapped_column(JSON)
    resume_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A resume in progress holds a lease, so two instances never continue one upload.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # With storage.compression: the bytes stored in S3 (size is what the client sent).
    stored_size: Mapped[int | None] = mapped_column(BigInteger)
    compression: Mapped[str | None] = mapped_column(String(16))
    # Uploaded from a browser through this upload link (upload_links.id), else None.
    link_id: Mapped[str | None] = mapped_column(String(36))
    # ... and by this browser upload (its tus URL's id): what the page resumes.
    client_ref: Mapped[str | None] = mapped_column(String(64))


class UploadLinkRow(Base):
    """A browser upload link: its token (SHA-256 only) lets anyone holding the URL
    upload as `user_name` into its home (or `folder` in it) until it expires."""

    __tablename__ = "upload_links"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    folder: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    max_uploads: Mapped[int | None] = mapped_column(Integer)
    max_size: Mapped[int | None] = mapped_column(BigInteger)
    uploads_used: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OutboxRow(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "sent_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    upload_id: Mapped[str] = mapped_column(String(36), index=True)
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    # Set when SQS refused the event for a reason that will not change: not retried
    # until an operator runs `sftp-gateway events retry`.
    parked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SentEmailRow(Base):
    """One row per event_id emailed, so a redelivered message sends nothing more; while
    `pending` names recipients SMTP refused for now (4xx), only they get it next time."""

    __tablename__ = "sent_emails"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recipients: Mapped[str] = mapped_column(Text)  # who got it, comma-separated
    pending: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuthScoreRow(Base):
    """One scored event (failed key, unknown user, protocol error) from an address."""

    __tablename__ = "auth_scores"
    __table_args__ = (Index("ix_auth_scores_address_at", "address", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(64))
    points: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BanRow(Base):
    """An address refused before the key exchange until banned_until, on every instance."""

    __tablename__ = "bans"

    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    banned_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    score: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
