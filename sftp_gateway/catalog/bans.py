"""The SQL of brute-force bans: scores per address and the bans they lead to.

Kept in the catalog so every gateway instance on the same database enforces the same
bans. Callers get frozen records back, never ORM objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from sftp_gateway.catalog.models import AuthScoreRow, BanRow
from sftp_gateway.records import as_utc as _aware
from sftp_gateway.records import utcnow


@dataclass(frozen=True)
class BanRecord:
    address: str
    banned_until: datetime
    score: int
    reason: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "until": self.banned_until.isoformat(timespec="seconds"),
            "score": self.score,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(timespec="seconds"),
        }


def _record(row: BanRow) -> BanRecord:
    return BanRecord(
        address=row.address,
        banned_until=_aware(row.banned_until),  # type: ignore[arg-type]
        score=row.score,
        reason=row.reason,
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
    )


class BanStore:
    """Scores and bans over one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add_score(
        self,
        address: str,
        points: int,
        reason: str,
        *,
        window: float,
        threshold: int,
        duration: float,
    ) -> BanRecord | None:
        """Record points for an address; returns the new ban when the window's total
        reaches the threshold (the address's scores are then cleared)."""
        now = utcnow()
        since = now - timedelta(seconds=window)
        with self._sessions.begin() as session:
            session.execute(
                delete(AuthScoreRow).where(AuthScoreRow.address == address, AuthScoreRow.at < since)
            )
            session.add(AuthScoreRow(address=address, points=points, reason=reason, at=now))
            session.flush()
            total = session.scalar(
                select(func.coalesce(func.sum(AuthScoreRow.points), 0)).where(
                    AuthScoreRow.address == address, AuthScoreRow.at >= since
                )
            )
            if int(total or 0) < threshold:
                return None
            session.execute(delete(AuthScoreRow).where(AuthScoreRow.address == address))
            until = now + timedelta(seconds=duration)
            row = session.get(BanRow, address)
            if row is None:
                row = BanRow(address=address, created_at=now, banned_until=until, score=0)
                session.add(row)
            row.banned_until, row.score, row.reason = until, int(total or 0), reason
            session.flush()
            return _record(row)

    def active_bans(self) -> list[BanRecord]:
        """Bans not yet expired, soonest to end first."""
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(BanRow).where(BanRow.banned_until > utcnow()).order_by(BanRow.banned_until)
            ).all()
            return [_record(row) for row in rows]

    def remove_ban(self, address: str) -> bool:
        """Lift a ban and forget the address's scores; False if it was not banned."""
        with self._sessions.begin() as session:
            row = session.get(BanRow, address)
            active = row is not None and _aware(row.banned_until) > utcnow()  # type: ignore[operator]
            if row is not None:
                session.delete(row)
            session.execute(delete(AuthScoreRow).where(AuthScoreRow.address == address))
            return active

    def purge_expired(self, window: float) -> int:
        """Delete ended bans and scores older than the window; returns rows deleted."""
        now = utcnow()
        try:
            with self._sessions.begin() as session:
                bans = session.execute(delete(BanRow).where(BanRow.banned_until <= now))
                scores = session.execute(
                    delete(AuthScoreRow).where(AuthScoreRow.at < now - timedelta(seconds=window))
                )
                return int(bans.rowcount or 0) + int(scores.rowcount or 0)  # type: ignore[attr-defined]
        except IntegrityError:  # pragma: no cover - a concurrent instance purged first
            return 0
