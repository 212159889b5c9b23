"""The catalog repository: the only place that speaks SQL.

Callers get plain frozen records back, never ORM objects, so no session leaks out
and the rest of the code does not care which database is behind it.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Engine,
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import insert as insert_into
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from sftp_gateway import metrics
from sftp_gateway.catalog.models import OutboxRow, SentEmailRow, UploadRow, UserKeyRow, UserRow
from sftp_gateway.events.schema import build_upload_event
from sftp_gateway.records import (
    EmailRecord,
    OutboxEvent,
    Principal,
    PublicKey,
    UploadRecord,
    UploadStatus,
    UserRecord,
    utcnow,
)
from sftp_gateway.records import as_utc as _aware

# The records and statuses live in sftp_gateway.records (shared by every layer); these
# names stay importable from here for the callers that still use them.
__all__ = ["Catalog", "CatalogError", "OutboxEvent", "UploadRecord", "UserRecord", "utcnow"]
IN_PROGRESS = UploadStatus.IN_PROGRESS
COMPLETED = UploadStatus.COMPLETED
FAILED = UploadStatus.FAILED
ABORTED = UploadStatus.ABORTED
INTERRUPTED = UploadStatus.INTERRUPTED
COMPLETING = UploadStatus.COMPLETING
STATUSES = tuple(status.value for status in UploadStatus)
EMAIL_LOCK_NAMESPACE = 0x5F7E  # advisory-lock class for email_guard


def _no_live_lease() -> ColumnElement[bool]:
    """No session holds the row now: no lease, or one that expired (its holder died)."""
    return or_(UploadRow.lease_expires_at.is_(None), UploadRow.lease_expires_at < utcnow())


class CatalogError(Exception):
    """A catalog operation the caller asked for cannot be done (message for the CLI)."""


@dataclass(frozen=True)
class EventRecord:
    """An outbox event as `sftp-gateway events list` shows it."""

    id: int
    event_id: str
    upload_id: str
    event_type: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_error: str | None
    parked_at: datetime | None
    key: str | None

    @property
    def state(self) -> str:
        """parked (waits for `events retry`), retrying (failed before), or pending."""
        if self.parked_at is not None:
            return "parked"
        return "retrying" if self.last_error else "pending"

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or utcnow()) - self.created_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("created_at", "next_attempt_at", "parked_at"):
            out[name] = out[name].isoformat() if out[name] else None
        out["state"] = self.state
        out["age_seconds"] = round(self.age_seconds(), 1)
        return out


def _event_record(row: OutboxRow) -> EventRecord:
    return EventRecord(
        id=row.id,
        event_id=row.event_id,
        upload_id=row.upload_id,
        event_type=row.event_type,
        attempts=row.attempts,
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
        next_attempt_at=_aware(row.next_attempt_at),  # type: ignore[arg-type]
        last_error=row.last_error,
        parked_at=_aware(row.parked_at),
        key=(row.payload or {}).get("key"),
    )


# The uploads table for the per-file hot path (STAT, OPEN, CLOSE of every small file):
# Core statements cost about a third of the ORM's CPU for the same SQL.
UPLOADS = cast(Table, UploadRow.__table__)
OUTBOX = cast(Table, OutboxRow.__table__)
USERS = cast(Table, UserRow.__table__)
RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(UploadRecord))
RECORD_COLUMNS = tuple(UPLOADS.c[name] for name in RECORD_FIELDS)
# Built once: constructing a statement costs more CPU than running a cached one.
UPLOAD_BY_ID = select(*RECORD_COLUMNS).where(UPLOADS.c.id == bindparam("match_id"))
RESUMABLE = or_(  # interrupted, or being resumed under a lease
    UPLOADS.c.status == INTERRUPTED,
    and_(UPLOADS.c.status == IN_PROGRESS, UPLOADS.c.lease_owner.isnot(None)),
)
RESUMABLE_UPLOAD = (
    select(*RECORD_COLUMNS)
    .where(
        UPLOADS.c.bucket == bindparam("match_bucket"),
        UPLOADS.c.object_key == bindparam("match_key"),
        RESUMABLE,
    )
    .order_by(UPLOADS.c.started_at.desc())
    .limit(1)
)
RESUMABLE_UNDER = (
    select(*RECORD_COLUMNS)
    .where(
        UPLOADS.c.bucket == bindparam("match_bucket"),
        UPLOADS.c.object_key.like(bindparam("match_pattern"), escape="\\"),
        RESUMABLE,
    )
    .order_by(UPLOADS.c.started_at)
)
COMPLETED_UPLOADS = (
    select(*RECORD_COLUMNS)
    .where(
        UPLOADS.c.bucket == bindparam("match_bucket"),
        UPLOADS.c.object_key.in_(bindparam("match_keys", expanding=True)),
        UPLOADS.c.status == COMPLETED,
    )
    .order_by(UPLOADS.c.completed_at)
)
INTERRUPTED_UNDER = select(*RECORD_COLUMNS).where(
    UPLOADS.c.bucket == bindparam("match_bucket"),
    UPLOADS.c.status == INTERRUPTED,
    UPLOADS.c.object_key.like(bindparam("match_pattern"), escape="\\"),
)
KEYS = cast(Table, UserKeyRow.__table__)
PRINCIPAL_BY_KEY = (
    select(
        USERS.c.name,
        USERS.c.home,
        USERS.c.permissions,
        USERS.c.email,
        USERS.c.compression,
        KEYS.c.options,
    )
    .join_from(USERS, KEYS, KEYS.c.user_id == USERS.c.id)
    .where(
        USERS.c.name == bindparam("match_name"),
        KEYS.c.fingerprint == bindparam("match_fingerprint"),
    )
)
# What a finished upload's UPDATE returns: its row and whom its event is for, in the
# same statement (two round trips fewer per file than a SELECT of each).
UPLOADER_EMAIL = "uploader_email"
FINISHED_ROW = (
    *RECORD_COLUMNS,
    select(USERS.c.email)
    .where(USERS.c.name == UPLOADS.c.user_name)
    .correlate(UPLOADS)
    .scalar_subquery()
    .label(UPLOADER_EMAIL),
)
# The SET clause comes from the parameters' names (any upload columns).
FINISH_IF_STATUS = (
    update(UPLOADS)
    .where(UPLOADS.c.id == bindparam("match_id"), UPLOADS.c.status == bindparam("match_status"))
    .returning(*FINISHED_ROW)
)


def _row_values(record: UploadRecord) -> dict[str, Any]:
    """The record's columns for an INSERT, shallow (dataclasses.asdict deep-copies)."""
    return {name: getattr(record, name) for name in RECORD_FIELDS}


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern for keys starting with `prefix` (its wildcards escaped)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _record_of(row: Mapping[Any, Any]) -> UploadRecord:
    """An UploadRecord from a row's columns (a Core row of RECORD_COLUMNS, or an ORM
    row's attributes): the one place that knows which of them are times."""
    values = dict(row)
    values["started_at"] = _aware(values["started_at"])
    values["completed_at"] = _aware(values["completed_at"])
    return UploadRecord(**values)


def _upload_record(row: UploadRow) -> UploadRecord:
    return _record_of({name: getattr(row, name) for name in RECORD_FIELDS})


def _user_record(row: UserRow) -> UserRecord:
    keys = tuple(
        PublicKey(key.key_type, _key_blob(key.public_key), key.comment, key.options)
        for key in row.keys
    )
    return UserRecord(
        name=row.name,
        email=row.email,
        home=row.home,
        permissions=frozenset(p for p in row.permissions.split(",") if p),
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
        keys=keys,
        compression=row.compression,
    )


def _key_blob(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


class Catalog:
    """Users, uploads, the outbox and sent emails, over one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # One statement is atomic on its own: without BEGIN and COMMIT (or ROLLBACK)
        # around it, PostgreSQL saves two round trips per lookup or insert. SQLite has
        # no round trips to save, and its driver spends more CPU switching a connection
        # to autocommit and back (~150 us) than the transaction costs.
        postgres = engine.dialect.name == "postgresql"
        self._single = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if postgres else engine
        )

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def _one_statement(self) -> AbstractContextManager[Connection]:
        """A connection for a single statement, committed (if it writes) when it ends."""
        return self._single.begin()

    # -- users ---------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        key: PublicKey,
        *,
        home: str,
        permissions: frozenset[str],
        email: str | None = None,
        compression: str | None = None,
    ) -> UserRecord:
        now = utcnow()
        try:
            with self._tx() as session:
                row = UserRow(
                    name=name,
                    email=email,
                    home=home,
                    permissions=",".join(sorted(permissions)),
                    created_at=now,
                    compression=compression,
                )
                row.keys.append(_key_row(key, now))
                session.add(row)
                session.flush()
                return _user_record(row)
        except IntegrityError:
            raise CatalogError(f"user {name} already exists") from None

    def add_key(self, name: str, key: PublicKey) -> None:
        with self._tx() as session:
            user = self._user_row(session, name)
            if any(k.fingerprint == key.fingerprint for k in user.keys):
                raise CatalogError(f"user {name} already has key {key.fingerprint}")
            user.keys.append(_key_row(key, utcnow()))

    def remove_key(self, name: str, fingerprint: str) -> None:
        with self._tx() as session:
            user = self._user_row(session, name)
            match = [k for k in user.keys if k.fingerprint == fingerprint]
            if not match:
                raise CatalogError(f"user {name} has no key {fingerprint}")
            user.keys.remove(match[0])

    def remove_user(self, name: str) -> None:
        with self._tx() as session:
            session.delete(self._user_row(session, name))

    def set_user_compression(self, name: str, compression: str | None) -> None:
        """The user's uploads from now on: none, gzip or zstd; None: the deployment's."""
        with self._tx() as session:
            self._user_row(session, name).compression = compression

    def list_users(self) -> list[UserRecord]:
        with self._tx() as session:
            rows = session.scalars(select(UserRow).order_by(UserRow.name)).all()
            return [_user_record(row) for row in rows]

    def get_user(self, name: str) -> UserRecord | None:
        with self._tx() as session:
            row = session.scalar(select(UserRow).where(UserRow.name == name))
            return _user_record(row) if row else None

    def principal_for_key(self, name: str, fingerprint: str) -> Principal | None:
        """The user `name` if it holds the key with this fingerprint, else None; the key's
        options ride along for the caller to check (from=, expiry-time=)."""
        params = {"match_name": name, "match_fingerprint": fingerprint}
        with self._one_statement() as conn:
            row = conn.execute(PRINCIPAL_BY_KEY, params).mappings().one_or_none()
        if row is None:
            return None
        return Principal(
            name=row["name"],
            home=row["home"],
            permissions=frozenset(p for p in row["permissions"].split(",") if p),
            email=row["email"],
            key_fingerprint=fingerprint,
            key_options=row["options"],
            compression=row["compression"],
        )

    @staticmethod
    def _user_row(session: Session, name: str) -> UserRow:
        row = session.scalar(select(UserRow).where(UserRow.name == name))
        if row is None:
            raise CatalogError(f"no user named {name}")
        return row

    # -- uploads -------------------------------------------------------------------

    def start_upload(self, record: UploadRecord) -> None:
        with self._one_statement() as conn:
            conn.execute(insert_into(UPLOADS), _row_values(record))

    def update_upload(self, upload_id: str, **changes: Any) -> None:
        """Record progress (S3 upload id, parts, resume state) without emitting events."""
        with self._tx() as session:
            session.execute(update(UploadRow).where(UploadRow.id == upload_id).values(**changes))
        metrics.upload_ended(changes.get("status"))  # counts `interrupted`, not progress

    def take_lease(
        self, upload_id: str, lease_owner: str, expires_at: datetime, **changes: Any
    ) -> bool:
        """Claim a resumable upload for one session, atomically on any database: it must be
        interrupted (no live lease), or a resume whose lease expired (its instance died).
        The row becomes in_progress under this lease; False when someone else holds it."""
        free = _no_live_lease()
        claimable = or_(
            UploadRow.status == INTERRUPTED,
            and_(UploadRow.status == IN_PROGRESS, UploadRow.lease_owner.isnot(None)),
        )
        with self._tx() as session:
            result = session.execute(
                update(UploadRow)
                .where(UploadRow.id == upload_id, claimable, free)
                .values(
                    status=IN_PROGRESS,
                    lease_owner=lease_owner,
                    lease_expires_at=expires_at,
                    **changes,
                )
                .execution_options(synchronize_session=False)
            )
            return cast("CursorResult[Any]", result).rowcount == 1

    def claim_for_cleanup(
        self, upload_id: str, status: str, holder: str, expires_at: datetime
    ) -> bool:
        """gc's hold on a row it is about to abort: only if it still has `status` and
        no live lease (no session is resuming it now); no session can take it after.
        False: leave it, someone is working on it or already finished it."""
        free = _no_live_lease()
        with self._tx() as session:
            result = session.execute(
                update(UploadRow)
                .where(UploadRow.id == upload_id, UploadRow.status == status, free)
                .values(lease_owner=holder, lease_expires_at=expires_at)
                .execution_options(synchronize_session=False)
            )
            return cast("CursorResult[Any]", result).rowcount == 1

    def renew_lease(self, upload_id: str, lease_owner: str, expires_at: datetime) -> bool:
        """Extend a lease this session holds; False when it was lost (expired and taken)."""
        with self._tx() as session:
            result = session.execute(
                update(UploadRow)
                .where(UploadRow.id == upload_id, UploadRow.lease_owner == lease_owner)
                .values(lease_expires_at=expires_at)
                .execution_options(synchronize_session=False)
            )
            return cast("CursorResult[Any]", result).rowcount == 1

    def finish_upload(
        self,
        upload_id: str,
        *,
        status: str,
        emit: bool = True,
        insert: UploadRecord | None = None,
        only_if: str | None = None,
        **changes: Any,
    ) -> UploadRecord:
        """Set the final state and, in the same transaction, queue its event. `insert`
        writes the upload's row first, for uploads that had none yet (small files).
        `only_if`: change nothing (and queue no event) unless the row has that status,
        so an upload finished twice (its CLOSE and recovery) announces itself once."""
        with self.engine.begin() as conn:
            if insert is not None:
                conn.execute(insert_into(UPLOADS), _row_values(insert))
            finished = self._set_final_state(conn, upload_id, status, only_if, changes)
            if finished is None:  # `only_if` did not hold: someone else finished it
                record = self._upload_in(conn, upload_id)
                if record is None:
                    raise CatalogError(f"no upload {upload_id}")
                return record
            email = finished[UPLOADER_EMAIL]
            record = _record_of({name: finished[name] for name in RECORD_FIELDS})
            if emit:
                self._queue_event_in(conn, build_upload_event(record, email))
        metrics.upload_ended(status)
        return record

    @staticmethod
    def _set_final_state(
        conn: Connection,
        upload_id: str,
        status: str,
        only_if: str | None,
        changes: dict[str, Any],
    ) -> RowMapping | None:
        """One UPDATE, guarded by `only_if` in its WHERE: atomic on every database, so
        two finishers (CLOSE and recovery) cannot both win. completed_at keeps an
        earlier value unless one is given. The row as updated (FINISHED_ROW), or None
        when it was not."""
        values = {**changes, "status": status}
        if only_if is not None and values.get("completed_at") is not None:  # CLOSE's path
            params = {**values, "match_id": upload_id, "match_status": only_if}
            return conn.execute(FINISH_IF_STATUS, params).mappings().first()
        if values.get("completed_at") is None:
            values["completed_at"] = func.coalesce(UPLOADS.c.completed_at, utcnow())
        where = [UPLOADS.c.id == upload_id]
        if only_if is not None:
            where.append(UPLOADS.c.status == only_if)
        statement = update(UPLOADS).where(*where).values(**values).returning(*FINISHED_ROW)
        return conn.execute(statement).mappings().first()

    @staticmethod
    def _upload_in(conn: Connection, upload_id: str) -> UploadRecord | None:
        found = conn.execute(UPLOAD_BY_ID, {"match_id": upload_id}).mappings().first()
        return _record_of(found) if found is not None else None

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        with self._tx() as session:
            row = session.get(UploadRow, upload_id)
            return _upload_record(row) if row else None

    def published_by(self, bucket: str, key: str, client_ref: str) -> UploadRecord | None:
        """The file a browser upload (its tus URL's id) published at `key`, even if
        another has replaced it since: that upload is done, not to be sent again."""
        with self._tx() as session:
            row = session.scalars(
                select(UploadRow).where(
                    UploadRow.bucket == bucket,
                    UploadRow.object_key == key,
                    UploadRow.client_ref == client_ref,
                    UploadRow.status.in_((COMPLETED, UploadStatus.REPLACED)),
                )
            ).first()
            return _upload_record(row) if row is not None else None

    def uploads_for_key(self, bucket: str, key: str) -> list[UploadRecord]:
        """Every upload to this key, newest first: who uploaded this object, when."""
        with self._tx() as session:
            rows = session.scalars(
                select(UploadRow)
                .where(UploadRow.bucket == bucket, UploadRow.object_key == key)
                .order_by(UploadRow.started_at.desc())
            ).all()
            return [_upload_record(row) for row in rows]

    def list_uploads(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        status: str | None = None,
        limit: int = 1000,
        text: str | None = None,
    ) -> list[UploadRecord]:
        """Newest first; `text` matches part of the object key or of the user name."""
        query = select(UploadRow).order_by(UploadRow.started_at.desc()).limit(limit)
        if text:
            query = query.where(
                UploadRow.object_key.contains(text, autoescape=True)
                | UploadRow.user_name.contains(text, autoescape=True)
            )
        if user:
            query = query.where(UploadRow.user_name == user)
        if since:
            query = query.where(UploadRow.started_at >= since)
        if status:
            query = query.where(UploadRow.status == status)
        with self._tx() as session:
            return [_upload_record(row) for row in session.scalars(query).all()]

    def uploads_with_status(
        self, status: str, older_than: datetime | None = None
    ) -> list[UploadRecord]:
        query = select(UploadRow).where(UploadRow.status == status)
        if older_than is not None:
            query = query.where(UploadRow.started_at < older_than)
        with self._tx() as session:
            return [_upload_record(row) for row in session.scalars(query).all()]

    def interrupted_upload(self, bucket: str, key: str) -> UploadRecord | None:
        """The newest resumable upload of this key, if any: interrupted, or being resumed
        under a lease (a second resume must be told the file is busy, not start over)."""
        with self._one_statement() as conn:
            params = {"match_bucket": bucket, "match_key": key}
            row = conn.execute(RESUMABLE_UPLOAD, params).mappings().first()
        return _record_of(row) if row is not None else None

    def interrupted_under(self, bucket: str, prefix: str) -> list[UploadRecord]:
        """Resumable uploads whose key lies under `prefix` (listed as partial files)."""
        params = {"match_bucket": bucket, "match_pattern": _like_prefix(prefix)}
        with self._one_statement() as conn:
            rows = conn.execute(INTERRUPTED_UNDER, params).mappings().all()
        return [_record_of(row) for row in rows]

    def resumable_under(self, bucket: str, prefix: str) -> dict[str, UploadRecord]:
        """`interrupted_upload` of every key under `prefix` at once: key -> the newest."""
        params = {"match_bucket": bucket, "match_pattern": _like_prefix(prefix)}
        with self._one_statement() as conn:
            rows = conn.execute(RESUMABLE_UNDER, params).mappings().all()
        return {row["object_key"]: _record_of(row) for row in rows}  # oldest first: newest wins

    def latest_completed(self, bucket: str, keys: Sequence[str]) -> dict[str, UploadRecord]:
        """The newest completed upload of each key, for mtimes set by SETSTAT."""
        if not keys:
            return {}
        params = {"match_bucket": bucket, "match_keys": list(keys)}
        with self._one_statement() as conn:
            rows = conn.execute(COMPLETED_UPLOADS, params).mappings().all()
        return {row["object_key"]: _record_of(row) for row in rows}  # the newest wins

    def rename_object(self, bucket: str, old_key: str, new_key: str, new_path: str) -> None:
        """After a server-side rename, the completed uploads of the old key follow it,
        and those of the file it replaced (posix-rename) no longer describe that key."""
        with self._tx() as session:
            session.execute(
                update(UploadRow)
                .where(
                    UploadRow.bucket == bucket,
                    UploadRow.object_key == new_key,
                    UploadRow.status == COMPLETED,
                )
                .values(status=UploadStatus.REPLACED)
            )
            session.execute(
                update(UploadRow)
                .where(
                    UploadRow.bucket == bucket,
                    UploadRow.object_key == old_key,
                    UploadRow.status == COMPLETED,
                )
                .values(object_key=new_key, path=new_path)
            )

    # -- outbox --------------------------------------------------------------------

    @staticmethod
    def _queue_event_in(conn: Connection, payload: dict[str, Any]) -> None:
        now = utcnow()
        row = {
            "event_id": payload["event_id"],
            "upload_id": payload["upload_id"],
            "event_type": payload["type"],
            "payload": payload,
            "created_at": now,
            "next_attempt_at": now,
            "attempts": 0,
        }
        conn.execute(insert_into(OUTBOX), row)  # values as parameters: a cached statement

    @contextmanager
    def dispatch_batch(self, limit: int = 10) -> Iterator[tuple[list[OutboxEvent], Any]]:
        """Lock a batch of due events for one dispatcher; yield them and a settle function.

        PostgreSQL: FOR UPDATE SKIP LOCKED lets several gateways dispatch at once without
        sending the same event twice. SQLite has one writer at a time, which is enough.
        """
        with self._tx() as session:
            now = utcnow()
            query = (
                select(OutboxRow)
                .where(
                    OutboxRow.sent_at.is_(None),
                    OutboxRow.parked_at.is_(None),
                    OutboxRow.next_attempt_at <= now,
                )
                .order_by(OutboxRow.id)
                .limit(limit)
            )
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = {row.id: row for row in session.scalars(query).all()}
            events = [
                OutboxEvent(row.id, row.event_id, row.event_type, row.payload, row.attempts)
                for row in rows.values()
            ]

            def settle(
                event_id: int,
                *,
                sent: bool,
                error: str | None = None,
                retry_in: float = 0,
                park: bool = False,
            ) -> None:
                """Record one attempt: sent, due again in retry_in s, or parked."""
                row = rows[event_id]
                row.attempts += 1
                if sent:
                    row.sent_at = utcnow()
                    row.last_error = None
                    return
                row.last_error = (error or "")[:2000]
                if park:
                    row.parked_at = utcnow()
                else:
                    row.next_attempt_at = utcnow() + timedelta(seconds=retry_in)

            yield events, settle

    def pending_event_count(self) -> int:
        """Events the dispatcher will still send (parked ones wait for an operator)."""
        with self._tx() as session:
            return cast(
                int,
                session.scalar(
                    select(func.count())
                    .select_from(OutboxRow)
                    .where(OutboxRow.sent_at.is_(None), OutboxRow.parked_at.is_(None))
                ),
            )

    def outbox_backlog(self) -> tuple[int, datetime | None]:
        """(events not yet sent nor parked, when the oldest of them was queued): one
        indexed query, cheap enough for every metrics scrape."""
        with self._tx() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(OutboxRow.created_at)).where(
                    OutboxRow.sent_at.is_(None), OutboxRow.parked_at.is_(None)
                )
            ).one()
            return int(count), _aware(oldest)

    def ping(self) -> None:
        """SELECT 1: the catalog answers (readiness checks)."""
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def parked_event_count(self) -> int:
        with self._tx() as session:
            return cast(
                int,
                session.scalar(
                    select(func.count())
                    .select_from(OutboxRow)
                    .where(OutboxRow.parked_at.isnot(None))
                ),
            )

    def unsent_events(self, *, failed_only: bool = False, limit: int = 1000) -> list[EventRecord]:
        """Events not yet accepted by SQS, oldest first; failed_only: those that failed at
        least once (retrying or parked)."""
        query = (
            select(OutboxRow).where(OutboxRow.sent_at.is_(None)).order_by(OutboxRow.id).limit(limit)
        )
        if failed_only:
            query = query.where(OutboxRow.last_error.isnot(None))
        with self._tx() as session:
            return [_event_record(row) for row in session.scalars(query).all()]

    def retry_events(self, refs: Sequence[str] = (), *, every_parked: bool = False) -> int:
        """Un-park events (by outbox id or event_id, or every parked one): due now, with
        a fresh attempt budget. Unknown or already sent events raise CatalogError."""
        with self._tx() as session:
            if every_parked:
                parked = select(OutboxRow).where(OutboxRow.parked_at.isnot(None))
                rows = list(session.scalars(parked))
            else:
                rows = [self._unsent_event_row(session, ref) for ref in refs]
            now = utcnow()
            for row in rows:
                row.parked_at = None
                row.attempts = 0
                row.next_attempt_at = now
            return len(rows)

    @staticmethod
    def _unsent_event_row(session: Session, ref: str) -> OutboxRow:
        ref = ref.strip()
        match = OutboxRow.id == int(ref) if ref.isdigit() else OutboxRow.event_id == ref
        row = session.scalar(select(OutboxRow).where(match))
        if row is None:
            raise CatalogError(f"no event {ref}")
        if row.sent_at is not None:
            raise CatalogError(f"event {ref} was already sent to SQS")
        return row

    # -- notifier ------------------------------------------------------------------

    def email_already_sent(self, event_id: str) -> bool:
        """Whether the event was emailed and no recipient is still owed it."""
        record = self.email_record(event_id)
        return record is not None and record.complete

    def email_record(self, event_id: str) -> EmailRecord | None:
        """Who already got the event's email and whether anyone is still owed it; None
        before its first delivery."""
        with self._tx() as session:
            row = session.get(SentEmailRow, event_id)
            if row is None:
                return None
            return EmailRecord(frozenset(_addresses(row.recipients)), not row.pending)

    def record_email_sent(
        self, event_id: str, recipients: Sequence[str], pending: Sequence[str] = ()
    ) -> None:
        """`recipients` got the email now, `pending` are still owed it (SMTP refused
        them for now); added to what an earlier delivery of the event recorded. Call
        under email_guard(event_id)."""
        owed = ",".join(pending) or None
        try:
            with self._tx() as session:
                row = session.get(SentEmailRow, event_id)
                if row is None:
                    got = ",".join(recipients)
                    session.add(
                        SentEmailRow(
                            event_id=event_id, sent_at=utcnow(), recipients=got, pending=owed
                        )
                    )
                    return
                earlier = _addresses(row.recipients)
                row.recipients = ",".join([*earlier, *(r for r in recipients if r not in earlier)])
                row.pending, row.sent_at = owed, utcnow()
        except IntegrityError:
            pass  # already recorded by a concurrent worker: the email went out once

    @contextmanager
    def email_guard(self, event_id: str) -> Iterator[None]:
        """Serialise notifiers handling the same event_id, so that two copies of one
        message delivered at the same moment still send one email.

        PostgreSQL: a transaction-scoped advisory lock, released however the block ends.
        SQLite serves a single notifier, which needs no lock.
        """
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.begin() as conn:
            conn.execute(
                select(func.pg_advisory_xact_lock(EMAIL_LOCK_NAMESPACE, func.hashtext(event_id)))
            )
            yield


def _key_row(key: PublicKey, now: datetime) -> UserKeyRow:
    return UserKeyRow(
        fingerprint=key.fingerprint,
        key_type=key.key_type,
        public_key=key.line,
        comment=key.comment,
        options=key.options,
        created_at=now,
    )


def new_upload_id() -> str:
    return str(uuid.uuid4())


def _addresses(joined: str | None) -> list[str]:
    """A comma-joined address column as a list (addresses never hold a comma: the
    notifier skips any that is not one plain address)."""
    return [address for address in (joined or "").split(",") if address]
