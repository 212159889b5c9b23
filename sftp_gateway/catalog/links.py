"""Upload links: the only SQL of the `upload_links` table; frozen records out.

A link's token is shown once (by `links create`) and stored as its SHA-256 only, so a
copy of the catalog does not let anyone upload.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import or_, select, update
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.orm import sessionmaker

from sftp_gateway.catalog.models import UploadLinkRow
from sftp_gateway.records import as_utc, iso, utcnow

TOKEN_BYTES = 32


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class UploadLink:
    id: str
    user_name: str
    folder: str | None
    note: str | None
    max_uploads: int | None
    max_size: int | None
    uploads_used: int
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None

    def refusal(self, now: datetime | None = None) -> str | None:
        """Why this link cannot take an upload now, or None."""
        now = now or utcnow()
        if self.revoked_at is not None:
            return "this upload link was revoked"
        if self.expires_at <= now:
            return "this upload link has expired"
        if self.max_uploads is not None and self.uploads_used >= self.max_uploads:
            return f"this upload link has been used for its {self.max_uploads} uploads"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user_name,
            "folder": self.folder,
            "note": self.note,
            "max_uploads": self.max_uploads,
            "max_size": self.max_size,
            "uploads_used": self.uploads_used,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked": self.revoked_at is not None,
            "revoked_at": iso(self.revoked_at),
        }


def _record(row: UploadLinkRow) -> UploadLink:
    return UploadLink(
        id=row.id,
        user_name=row.user_name,
        folder=row.folder,
        note=row.note,
        max_uploads=row.max_uploads,
        max_size=row.max_size,
        uploads_used=row.uploads_used or 0,
        created_at=as_utc(row.created_at),  # type: ignore[arg-type]
        expires_at=as_utc(row.expires_at),  # type: ignore[arg-type]
        revoked_at=as_utc(row.revoked_at),
    )


class LinkStore:
    """Create, find (by token), list, revoke and count the uses of upload links."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def create(
        self,
        user_name: str,
        *,
        expires_in: timedelta,
        max_uploads: int | None = None,
        max_size: int | None = None,
        folder: str | None = None,
        note: str | None = None,
    ) -> tuple[UploadLink, str]:
        """A new link and its token (returned once, never stored)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = utcnow()
        row = UploadLinkRow(
            id=str(uuid.uuid4()),
            token_sha256=token_digest(token),
            user_name=user_name,
            folder=folder,
            note=note,
            max_uploads=max_uploads,
            max_size=max_size,
            uploads_used=0,
            created_at=now,
            expires_at=now + expires_in,
            revoked_at=None,
        )
        with self._sessions.begin() as session:
            session.add(row)
        return _record(row), token

    def by_token(self, token: str) -> UploadLink | None:
        with self._sessions() as session:
            stmt = select(UploadLinkRow).where(UploadLinkRow.token_sha256 == token_digest(token))
            row = session.scalars(stmt).first()
            return _record(row) if row else None

    def get(self, link_id: str) -> UploadLink | None:
        with self._sessions() as session:
            row = session.get(UploadLinkRow, link_id)
            return _record(row) if row else None

    def list(self, user_name: str | None = None) -> list[UploadLink]:
        with self._sessions() as session:
            stmt = select(UploadLinkRow).order_by(UploadLinkRow.created_at)
            if user_name:
                stmt = stmt.where(UploadLinkRow.user_name == user_name)
            return [_record(row) for row in session.scalars(stmt)]

    def revoke(self, link_id: str) -> bool:
        """True when the link exists (revoking twice keeps the first time)."""
        with self._sessions.begin() as session:
            row = session.get(UploadLinkRow, link_id)
            if row is None:
                return False
            row.revoked_at = row.revoked_at or utcnow()
            return True

    def count_upload(self, link_id: str) -> None:
        """One more completed upload through this link (atomic in SQL)."""
        with self._sessions.begin() as session:
            session.execute(
                update(UploadLinkRow)
                .where(UploadLinkRow.id == link_id)
                .values(uploads_used=UploadLinkRow.uploads_used + 1)
            )

    def reserve_use(self, link_id: str, now: datetime | None = None) -> bool:
        """Take one use of the link for an upload about to be published, in one
        conditional UPDATE (atomic on every database): only while the link is neither
        revoked nor expired and has a use left. False: publish nothing."""
        now = now or utcnow()
        room = or_(
            UploadLinkRow.max_uploads.is_(None),
            UploadLinkRow.uploads_used < UploadLinkRow.max_uploads,
        )
        with self._sessions.begin() as session:
            result = session.execute(
                update(UploadLinkRow)
                .where(
                    UploadLinkRow.id == link_id,
                    UploadLinkRow.revoked_at.is_(None),
                    UploadLinkRow.expires_at > now,
                    room,
                )
                .values(uploads_used=UploadLinkRow.uploads_used + 1)
                .execution_options(synchronize_session=False)
            )
            return cast("CursorResult[Any]", result).rowcount == 1

    def release_use(self, link_id: str) -> None:
        """Give back a use taken by reserve_use() for an upload that was not published."""
        with self._sessions.begin() as session:
            session.execute(
                update(UploadLinkRow)
                .where(UploadLinkRow.id == link_id, UploadLinkRow.uploads_used > 0)
                .values(uploads_used=UploadLinkRow.uploads_used - 1)
                .execution_options(synchronize_session=False)
            )
