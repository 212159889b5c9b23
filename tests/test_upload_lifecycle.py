"""An upload's life without a network (MemoryStorage, a SQLite file catalog): what a
session leaves behind when it ends, what a CLOSE does when the catalog is down, the
resume lease between two instances, and recovery of rows left `completing`."""

from __future__ import annotations

import copy
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event

from sftp_gateway.auth import DEFAULT_PERMISSIONS
from sftp_gateway.errors import AlreadyExists, PermissionDenied
from sftp_gateway.gc import GcReport, collect_garbage, recover_after_crash
from sftp_gateway.records import UploadRecord, utcnow
from sftp_gateway.transfer import (
    FILE_BUSY,
    ActiveUploads,
    CatalogUnavailable,
    FileBusy,
    SessionUploads,
    Upload,
)
from sftp_gateway.upload.stream import StreamResult
from tests.helpers import wait_until
from tests.test_upload_unit import MIB, PART, Bench, body, sha, write_all

LEASE_SECONDS = 1.5
LOCK_WAIT_MS = 200  # how long the gateway's catalog waits on a lock in these tests


def catalog_db(bench: Bench) -> str:
    database = bench.catalog.engine.url.database
    assert database
    return database


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = Bench(tmp_path, uploads={"catalog_retry": 0, "resume_lease": LEASE_SECONDS})
    # A locked catalog answers after LOCK_WAIT_MS, not after the default 10 s.
    event.listen(
        made.catalog.engine,
        "connect",
        lambda conn, _: conn.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}"),
    )
    made.catalog.engine.dispose()
    yield made
    made.services.close()


def other_instance(bench: Bench) -> Bench:
    """A second gateway process on the same catalog and bucket (its own registry)."""
    other = copy.copy(bench)
    other.active = ActiveUploads()
    return other


def events_for(bench: Bench, upload_id: str) -> list[str]:
    with sqlite3.connect(catalog_db(bench)) as conn:
        rows = conn.execute("SELECT event_type FROM outbox WHERE upload_id = ?", (upload_id,))
        return [row[0] for row in rows]


def interrupted_at(bench: Bench, name: str, data: bytes) -> UploadRecord:
    """An upload of `data` as `name`, cut before its end: parts in S3, row interrupted."""
    writer = bench.fs().open_upload(f"/{name}")
    write_all(writer, data)
    writer.abandon("connection lost")
    [row] = bench.rows(name)
    assert row.status == "interrupted"
    return row


# -- a session owns its writers ------------------------------------------------------


@pytest.mark.parametrize("size", [3 * MIB, PART + 3 * MIB], ids=["single-put", "multipart"])
def test_a_temporary_file_closed_but_never_renamed_is_published_when_its_session_ends(
    bench: Bench, size: int
) -> None:
    data = body(size)
    session = SessionUploads()
    writer = bench.fs().open_upload("/x.pdf.filepart", session=session)
    write_all(writer, data)
    assert writer.commit() is None  # sealed; the rename would publish it
    session.close_out()  # the client disconnected before the rename
    assert bench.storage.read_bytes("incoming/alice/x.pdf") == data
    [row] = bench.rows("x.pdf")
    assert row.status == "completed" and row.sha256 == sha(data) and row.path == "/x.pdf"
    assert events_for(bench, row.id) == ["upload.completed"]
    assert bench.storage.list_multipart_uploads("") == []
    assert bench.active.all() == [] and session.open() == []
    assert bench.in_use() == 0
    again = bench.fs().open_upload("/x.pdf")  # not "being uploaded by another session"
    write_all(again, body(1000))
    again.commit()


def test_a_temporary_file_is_not_published_over_a_file_its_account_may_not_overwrite(
    bench: Bench,
) -> None:
    """The rename this account is refused (no `overwrite`) must not happen by
    disconnecting: a file that took the final name after OPEN stays as it is."""
    no_overwrite = DEFAULT_PERMISSIONS - {"overwrite"}
    session = SessionUploads()
    temporary = bench.fs(permissions=no_overwrite).open_upload("/r.pdf.filepart", session=session)
    write_all(temporary, body(2000))
    assert temporary.commit() is None
    original = body(3000)
    bench.storage.put("incoming/alice/r.pdf", original, {}, "application/pdf")  # meanwhile
    with pytest.raises(PermissionDenied):
        bench.fs(permissions=no_overwrite).rename("/r.pdf.filepart", "/r.pdf", overwrite=True)

    session.close_out()

    assert bench.storage.read_bytes("incoming/alice/r.pdf") == original
    [row] = bench.rows("r.pdf")
    assert row.status == "aborted" and "may not be overwritten" in (row.error or "")
    assert bench.storage.list_multipart_uploads("") == []
    assert bench.active.all() == [] and bench.in_use() == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [("/f.pdf.filepart", "/f.pdf"), ("/f.pdf", "/f.pdf.part"), ("/f.pdf.part", "/f.pdf.filepart")],
)
def test_two_names_of_one_file_cannot_be_written_at_once(
    bench: Bench, first: str, second: str
) -> None:
    """A temporary name and its final name (or two temporary names of one file) would
    stream to one object, the last CLOSE winning: the second is told the file is busy."""
    writer = bench.fs().open_upload(first)
    with pytest.raises(FileBusy):
        bench.fs().open_upload(second)
    write_all(writer, body(1000))
    writer.commit()
    if writer.temporary:
        bench.fs().rename(first, "/f.pdf", overwrite=False)
    later = bench.fs().open_upload(second)  # free again once the first is published
    later.discard("test")
    assert bench.active.all() == []


def test_an_exclusive_create_is_refused_over_a_resumable_upload(bench: Bench) -> None:
    """STAT shows a resumable upload as a file of its committed size, so O_EXCL must
    see one too, not throw its parts away."""
    session = SessionUploads()
    write_all(bench.fs().open_upload("/r.pdf", session=session), body(PART + MIB))
    session.close_out()
    [row] = bench.rows("r.pdf")
    assert row.status == "interrupted"

    with pytest.raises(AlreadyExists, match=r"/r\.pdf already exists"):
        bench.fs().open_upload("/r.pdf", exclusive=True)

    [row] = bench.rows("r.pdf")
    assert row.status == "interrupted" and row.size == PART


def test_an_open_file_is_kept_resumable_when_its_session_ends(bench: Bench) -> None:
    session = SessionUploads()
    writer = bench.fs().open_upload("/open.pdf", session=session)
    write_all(writer, body(2 * PART + MIB))
    session.close_out()
    [row] = bench.rows("open.pdf")
    assert row.status == "interrupted" and row.size == 2 * PART
    assert bench.active.all() == [] and bench.in_use() == 0


def test_an_idle_open_handle_is_not_in_flight(bench: Bench, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    writer = bench.fs().open_upload("/idle.pdf")
    writer.write(0, body(1000))
    assert bench.active.in_flight() == [writer]  # a byte just arrived
    monkeypatch.setattr("sftp_gateway.transfer.DRAIN_QUIET_SECONDS", 0.0)
    assert bench.active.in_flight() == []  # nothing moving: a stopping server does not wait
    writer.abandon()


# -- the catalog is down at CLOSE ------------------------------------------------------


def test_a_close_with_the_catalog_locked_publishes_nothing_and_keeps_the_parts(
    bench: Bench,
) -> None:
    data = body(2 * PART + 2 * MIB)
    writer = bench.fs().open_upload("/big.pdf")
    write_all(writer, data)
    lock = sqlite3.connect(catalog_db(bench), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CatalogUnavailable, match="catalog is unavailable; resume it later"):
            writer.commit()
        assert bench.storage.head("incoming/alice/big.pdf") is None  # nothing published
        assert len(bench.storage.list_multipart_uploads("")) == 1  # the parts stay
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_until(lambda: bench.rows("big.pdf")[0].status == "interrupted", timeout=15)
    [row] = bench.rows("big.pdf")
    assert row.size == 2 * PART  # before the last, short, part: more bytes may follow it
    resumed = bench.fs().open_upload("/big.pdf", truncate=False)
    write_all(resumed, data, start=row.size)
    record = resumed.commit()
    assert record is not None and record.status == "completed" and record.sha256 == sha(data)
    assert bench.storage.read_bytes("incoming/alice/big.pdf") == data
    assert events_for(bench, record.id) == ["upload.completed"]
    assert bench.in_use() == 0


# -- the resume lease ------------------------------------------------------------------


def test_a_second_resume_from_another_instance_is_told_the_file_is_busy(bench: Bench) -> None:
    data = body(2 * PART + MIB)
    cut = interrupted_at(bench, "shared.pdf", data)
    first = bench.fs().open_upload("/shared.pdf", truncate=False)
    first.write(cut.size, data[cut.size : cut.size + MIB])  # takes the lease
    second = other_instance(bench).fs().open_upload("/shared.pdf", truncate=False)
    with pytest.raises(FileBusy, match=FILE_BUSY):
        second.write(cut.size, data[cut.size : cut.size + MIB])
    with pytest.raises(FileBusy):  # CLOSE repeats it and changes nothing
        second.commit()
    record = first.commit()
    assert record is not None and record.status == "completed"
    [row] = bench.rows("shared.pdf")
    assert row.id == cut.id and row.status == "completed"


def test_a_dead_instances_lease_expires_and_the_upload_is_resumable_again(
    bench: Bench,
) -> None:
    data = body(2 * PART + MIB)
    cut = interrupted_at(bench, "orphaned.pdf", data)
    dead = bench.fs().open_upload("/orphaned.pdf", truncate=False)
    dead.write(cut.size, data[cut.size : cut.size + 1000])  # then its instance "dies"
    time.sleep(LEASE_SECONDS + 0.3)
    alive = other_instance(bench).fs().open_upload("/orphaned.pdf", truncate=False)
    write_all(alive, data, start=cut.size)
    record = alive.commit()
    assert record is not None and record.sha256 == sha(data)
    with pytest.raises(FileBusy):  # the dead one's lease is gone: it may not go on
        dead.write(cut.size + 1000, data[cut.size + 1000 : cut.size + 2000])
    dead.abandon()
    assert bench.storage.read_bytes("incoming/alice/orphaned.pdf") == data


def test_gc_leaves_alone_an_expired_upload_that_a_client_is_resuming_now(
    bench: Bench,
) -> None:
    """The row says `no progress since its checkpoint`, but a session holds its lease
    (it resumed just before the time limit, and its next part is not durable yet)."""
    data = body(2 * PART + MIB)
    cut = interrupted_at(bench, "late.pdf", data)
    resuming = bench.fs().open_upload("/late.pdf", truncate=False)
    resuming.write(cut.size, data[cut.size : cut.size + 1000])  # takes the lease
    after_the_limit = utcnow() + timedelta(seconds=bench.settings.uploads.resume_ttl + 60)

    report = collect_garbage(bench.settings, bench.catalog, bench.storage, now=after_the_limit)

    assert report.expired == []
    write_all(resuming, data, start=cut.size + 1000)
    record = resuming.commit()
    assert record is not None and record.sha256 == sha(data)
    assert bench.storage.read_bytes("incoming/alice/late.pdf") == data

    # Once no session holds it, the same upload would have been aborted.
    again = interrupted_at(bench, "idle.pdf", data)
    report = collect_garbage(bench.settings, bench.catalog, bench.storage, now=after_the_limit)
    assert report.expired == [again.id]
    assert bench.storage.list_multipart_uploads("") == []


# -- recovery of rows left completing ----------------------------------------------------


def completing_row(bench: Bench, name: str, *, publish: bool, keep_multipart: bool) -> str:
    """A CLOSE cut after the `completing` row: S3 has the object, the open multipart
    upload, or nothing; returns the upload id."""
    data = body(PART + MIB)
    writer = bench.fs().open_upload(f"/{name}")
    write_all(writer, data)
    writer.seal()
    upload = writer.upload
    assert upload is not None
    upload._record_completing(_result(upload, data), None)  # the cut point
    key = f"incoming/alice/{name}"
    [row] = bench.rows(name)
    assert row.status == "completing" and row.sha256 == sha(data)
    parts = [p for p in bench.storage.list_parts(key, row.s3_upload_id or "")]
    if publish:
        bench.storage.complete_multipart(key, row.s3_upload_id or "", parts)
    elif not keep_multipart:
        bench.storage.abort_multipart(key, row.s3_upload_id or "")
    bench.active.release(writer)
    return row.id


def _result(upload: Upload, data: bytes) -> StreamResult:
    parts = upload.stream._durable.parts  # what complete() would send
    return StreamResult(len(data), sha(data), True, parts)


@pytest.mark.parametrize(
    ("publish", "keep_multipart", "status", "event_type"),
    [
        (True, False, "completed", "upload.completed"),
        (False, True, "completed", "upload.completed"),
        (False, False, "aborted", "upload.failed"),
    ],
    ids=["object-published", "multipart-still-open", "nothing-in-s3"],
)
def test_recovery_finishes_a_completing_row_from_what_s3_holds(
    bench: Bench, publish: bool, keep_multipart: bool, status: str, event_type: str
) -> None:
    upload_id = completing_row(bench, "c.pdf", publish=publish, keep_multipart=keep_multipart)
    report = recover_after_crash(bench.settings, bench.storage, bench.catalog)
    row = bench.catalog.get_upload(upload_id)
    assert row is not None and row.status == status
    assert events_for(bench, upload_id) == [event_type]
    exists = bench.storage.head("incoming/alice/c.pdf") is not None
    assert exists == (status == "completed")  # no object without a completed row, and back
    if exists:
        head = bench.storage.head("incoming/alice/c.pdf")
        assert head is not None and head.metadata["upload-id"] == upload_id
        assert upload_id in report.completed
    assert bench.storage.list_multipart_uploads("") == []
    again = recover_after_crash(bench.settings, bench.storage, bench.catalog)
    assert again == GcReport() and len(events_for(bench, upload_id)) == 1  # once only


def test_gc_leaves_a_fresh_completing_row_to_its_close(bench: Bench) -> None:
    upload_id = completing_row(bench, "fresh.pdf", publish=False, keep_multipart=True)
    report = collect_garbage(bench.settings, bench.catalog, bench.storage)
    assert report.completed == [] and report.orphans == []
    row = bench.catalog.get_upload(upload_id)
    assert row is not None and row.status == "completing"
