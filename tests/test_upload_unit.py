"""The upload state machine without a network: UserFilesystem -> FileWriter -> Upload ->
UploadStream on MemoryStorage and a SQLite catalog, with the process's real budget and
sender. Every test also checks that the memory budget is back at zero at the end."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sftp_gateway.auth import DEFAULT_PERMISSIONS, Principal
from sftp_gateway.catalog.db import make_engine, upgrade
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import Settings, settings_from_dict
from sftp_gateway.errors import GatewayError, StorageError, UploadRejected
from sftp_gateway.filesystem import UserFilesystem
from sftp_gateway.gc import GcReport, finish_completing
from sftp_gateway.storage.memory import MemoryStorage
from sftp_gateway.transfer import ActiveUploads, ClientInfo, FileWriter
from sftp_gateway.upload.budget import ServerBusy
from sftp_gateway.upload.services import UploadServices
from tests.helpers import wait_until

MIB = 1024 * 1024
PART = 5 * MIB
PDF = b"%PDF-1.7\n"


class Bench:
    """A user's filesystem on memory storage, with the process-wide upload services."""

    def __init__(self, tmp: Path, uploads: dict[str, object] | None = None) -> None:
        self.settings: Settings = settings_from_dict(
            {
                "storage": {"bucket": "memory", "prefix": "incoming", "part_size": "5MiB"},
                "uploads": {"allowed_extensions": [], **(uploads or {})},
            },
            environ={},
        )
        engine = make_engine(f"sqlite:///{tmp / 'catalog.db'}")
        upgrade(engine)
        self.catalog = Catalog(engine)
        self.storage = MemoryStorage("memory")
        self.services = UploadServices.from_settings(self.settings)
        self.active = ActiveUploads()

    def fs(
        self,
        user: str = "alice",
        ip: str = "127.0.0.2",
        permissions: frozenset[str] = DEFAULT_PERMISSIONS,
    ) -> UserFilesystem:
        return UserFilesystem(
            principal=Principal(user, user, permissions),
            settings=self.settings,
            storage=self.storage,
            catalog=self.catalog,
            client=ClientInfo(ip, "SSH-2.0-test"),
            active=self.active,
            services=self.services,
        )

    def rows(self, name: str, user: str = "alice"):  # type: ignore[no-untyped-def]
        return self.catalog.uploads_for_key("memory", f"incoming/{user}/{name}")

    def in_use(self) -> int:
        return self.services.memory.in_use


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = Bench(tmp_path)
    yield made
    made.services.close()


def body(size: int) -> bytes:
    return PDF + os.urandom(size - len(PDF))


def write_all(writer: FileWriter, data: bytes, start: int = 0, step: int = MIB) -> None:
    for offset in range(start, len(data), step):
        writer.write(offset, data[offset : offset + step])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_small_file_is_one_put_with_its_sha256(bench: Bench) -> None:
    data = body(300_000)
    writer = bench.fs().open_upload("/a.pdf")
    write_all(writer, data, step=32 * 1024)
    assert bench.in_use() > 0  # the small-file bytes count against the budget
    record = writer.commit()
    assert record is not None and record.status == "completed" and record.sha256 == sha(data)
    assert bench.storage.read_bytes("incoming/alice/a.pdf") == data
    assert bench.storage.list_multipart_uploads("") == []
    assert bench.in_use() == 0


def test_multipart_file_streams_in_parts_and_gives_its_buffers_back(bench: Bench) -> None:
    data = body(3 * PART + 12345)
    writer = bench.fs().open_upload("/big.pdf")
    write_all(writer, data)
    record = writer.commit()
    assert record is not None and record.sha256 == sha(data) and record.size == len(data)
    assert bench.storage.read_bytes("incoming/alice/big.pdf") == data
    # The SHA-256 goes on as a tag: the object is never copied onto itself.
    assert bench.storage.get_tags("incoming/alice/big.pdf")["sha256"] == sha(data)
    assert bench.storage.calls["replace_metadata"] == 0
    assert bench.in_use() == 0


def test_out_of_order_writes_are_reordered_and_budgeted(bench: Bench) -> None:
    data = body(PART + 3 * MIB)
    block = 512 * 1024
    offsets = list(range(0, len(data), block))
    writer = bench.fs().open_upload("/ooo.pdf")
    for group in range(0, len(offsets), 4):  # each group of 4 blocks arrives reversed
        for offset in reversed(offsets[group : group + 4]):
            writer.write(offset, data[offset : offset + block])
    record = writer.commit()
    assert record is not None and record.sha256 == sha(data)
    assert bench.storage.read_bytes("incoming/alice/ooo.pdf") == data
    assert bench.in_use() == 0 and bench.services.spill.in_use == 0


def test_out_of_order_writes_spill_to_disk_when_memory_is_spent(tmp_path: Path) -> None:
    bench = Bench(tmp_path, {"reorder_memory": "1MiB", "spill_budget": "8MiB"})  # 2 per user
    try:
        data = body(6 * MIB)
        writer = bench.fs().open_upload("/far.pdf")
        writer.write(MIB, data[MIB : 2 * MIB])  # in memory (1 MiB)
        writer.write(2 * MIB, data[2 * MIB : 3 * MIB])  # spilled (1 MiB of 2)
        writer.write(3 * MIB, data[3 * MIB : 4 * MIB])  # spilled (2 MiB of 2)
        assert bench.services.spill.in_use == 2 * MIB
        with pytest.raises(ServerBusy, match="disk for out-of-order writes exhausted"):
            writer.write(4 * MIB, data[4 * MIB : 5 * MIB])
        writer.write(0, data[:MIB])
        writer.write(4 * MIB, data[4 * MIB :])
        record = writer.commit()
        assert record is not None and record.sha256 == sha(data)
        assert bench.services.spill.in_use == 0 and bench.in_use() == 0
    finally:
        bench.services.close()


def test_append_to_a_complete_object_keeps_its_bytes(bench: Bench) -> None:
    first, more = body(200_000), os.urandom(100_000)
    fs = bench.fs()
    write_all(fs.open_upload("/log.pdf"), first)
    fs.active.get("incoming/alice/log.pdf").commit()  # type: ignore[union-attr]
    writer = fs.open_upload("/log.pdf", truncate=False, append=True)
    writer.write(0, more)  # APPEND: the offset is ignored, bytes go at the end
    record = writer.commit()
    assert record is not None and record.sha256 == sha(first + more)
    assert bench.in_use() == 0


def test_temporary_name_is_published_by_the_rename(bench: Bench) -> None:
    data = body(PART + MIB)
    fs = bench.fs()
    writer = fs.open_upload("/doc.pdf.filepart")
    write_all(writer, data)
    assert writer.commit() is None  # sealed, waiting for the rename
    assert bench.storage.head("incoming/alice/doc.pdf") is None
    fs.rename("/doc.pdf.filepart", "/doc.pdf", overwrite=False)
    assert bench.storage.read_bytes("incoming/alice/doc.pdf") == data
    assert bench.in_use() == 0


def test_rejected_content_leaves_nothing_and_no_budget(tmp_path: Path) -> None:
    bench = Bench(tmp_path, {"require_pdf_signature": True})
    try:
        writer = bench.fs().open_upload("/fake.pdf")
        with pytest.raises(UploadRejected, match="not a PDF"):
            writer.write(0, b"MZ" + os.urandom(PART))
        with pytest.raises(UploadRejected):
            writer.commit()
        assert bench.storage.keys() == [] and bench.storage.list_multipart_uploads("") == []
        assert bench.rows("fake.pdf")[0].status == "failed"
        assert bench.in_use() == 0
    finally:
        bench.services.close()


def test_abandoned_upload_resumes_with_the_hash_of_the_whole_file(bench: Bench) -> None:
    data = body(3 * PART + 777)
    writer = bench.fs().open_upload("/resume.pdf")
    write_all(writer, data[: 2 * PART + MIB])
    writer.abandon("connection lost")
    row = bench.rows("resume.pdf")[0]
    assert row.status == "interrupted" and row.size == 2 * PART
    assert bench.in_use() == 0
    again = bench.fs().open_upload("/resume.pdf", truncate=False)
    assert again.size == 2 * PART
    write_all(again, data, start=2 * PART)
    record = again.commit()
    assert record is not None and record.sha256 == sha(data)
    assert bench.storage.read_bytes("incoming/alice/resume.pdf") == data
    assert bench.in_use() == 0


def test_append_resume_at_a_stale_size_is_refused_not_stored_with_a_hole(bench: Bench) -> None:
    """OpenSSH's reput reads the size, then APPENDs at it. If it read the size of an
    upload still in flight (more than S3 keeps), its bytes must not land at the end."""
    data = body(3 * PART + 777)
    writer = bench.fs().open_upload("/reput.pdf")
    write_all(writer, data[: 2 * PART + MIB])
    stale_size = writer.size  # what a STAT showed before the connection was noticed dead
    writer.abandon("connection lost")
    assert bench.rows("reput.pdf")[0].size == 2 * PART < stale_size
    stale = bench.fs().open_upload("/reput.pdf", truncate=False, append=True)
    with pytest.raises(GatewayError, match=f"ends at byte {2 * PART}, not at byte {stale_size}"):
        stale.write(stale_size, data[stale_size : stale_size + MIB])
    stale.abandon("client gave up")
    again = bench.fs().open_upload("/reput.pdf", truncate=False, append=True)
    write_all(again, data, start=2 * PART)
    record = again.commit()
    assert record is not None and record.sha256 == sha(data)
    assert bench.storage.read_bytes("incoming/alice/reput.pdf") == data
    assert bench.in_use() == 0


def test_a_failed_part_fails_the_upload_and_releases_its_memory(bench: Bench) -> None:
    data = body(3 * PART)
    bench.storage.fail_next("upload_part")
    writer = bench.fs().open_upload("/broken.pdf")
    with pytest.raises(StorageError):
        write_all(writer, data)
        writer.commit()
    assert bench.storage.list_multipart_uploads("") == []
    assert bench.rows("broken.pdf")[0].status == "failed"
    assert bench.in_use() == 0


def test_budget_returns_to_zero_after_many_uploads_some_failing(bench: Bench) -> None:
    fs = bench.fs()
    for number in range(12):
        data = body(PART + MIB if number % 2 else 100_000)
        writer = fs.open_upload(f"/many{number}.pdf")
        if number % 3 == 0:
            bench.storage.fail_next("upload_part" if number % 2 else "put")
        try:
            write_all(writer, data)
            if number % 4 == 1:
                writer.abandon("connection lost")
            else:
                writer.commit()
        except GatewayError:
            pass
    assert bench.in_use() == 0
    assert bench.services.memory.in_use_by("alice") == 0


def test_one_user_spending_the_share_waits_then_fails_others_still_upload(
    tmp_path: Path,
) -> None:
    bench = Bench(
        tmp_path,
        {"memory_budget": "16MiB", "memory_per_user": "8MiB", "memory_wait_timeout": 0.3},
    )
    try:
        alice = bench.fs("alice")
        held = alice.open_upload("/held.pdf")
        write_all(held, body(PART + MIB))  # one part sent, a second buffer filling
        wait_until(lambda: bench.services.memory.in_use_by("alice") == PART, timeout=10)
        second = alice.open_upload("/second.pdf")
        with pytest.raises(ServerBusy, match="server is busy: upload memory exhausted"):
            write_all(second, body(4 * MIB))
        assert bench.rows("second.pdf")[0].status == "aborted"  # nothing in S3 to keep
        bob = bench.fs("bob", "127.0.0.3")
        data = body(PART + 2 * MIB)
        writer = bob.open_upload("/bob.pdf")
        write_all(writer, data)
        record = writer.commit()
        assert record is not None and record.sha256 == sha(data)
        held.abandon("connection lost")
        assert bench.in_use() == 0
    finally:
        bench.services.close()


def test_an_upload_refused_for_memory_keeps_its_parts_for_a_resume(tmp_path: Path) -> None:
    bench = Bench(
        tmp_path,
        {"memory_budget": "16MiB", "memory_per_user": "10MiB", "memory_wait_timeout": 0.3},
    )
    try:
        alice = bench.fs("alice")
        held = alice.open_upload("/held.pdf")
        write_all(held, body(PART + MIB))  # holds one 5 MiB buffer
        data = body(2 * PART + 3 * MIB)
        writer = alice.open_upload("/resumable.pdf")
        write_all(writer, data[:PART])  # part 1 sent; no buffer held after its ack
        wait_until(lambda: bench.services.memory.in_use_by("alice") == PART, timeout=10)
        small = alice.open_upload("/small.pdf")
        write_all(small, body(4 * MIB))  # 4 MiB of small-file bytes: 9 of 10 MiB held
        with pytest.raises(ServerBusy):
            write_all(writer, data, start=PART)
        with pytest.raises(ServerBusy):  # the client's CLOSE repeats why
            writer.commit()
        row = bench.rows("resumable.pdf")[0]
        assert row.status == "interrupted" and row.size == PART
        held.abandon("connection lost")
        small.abandon("connection lost")
        again = alice.open_upload("/resumable.pdf", truncate=False)
        write_all(again, data, start=PART)
        record = again.commit()
        assert record is not None and record.sha256 == sha(data)
        assert bench.in_use() == 0
    finally:
        bench.services.close()


class LostAnswers(MemoryStorage):
    """S3 that does what it is asked and then loses its answer (a timeout, a reset):
    `lose` names the operations whose next call stores and then fails; `head_fails`
    makes S3 unable to say what it holds."""

    def __init__(self, lose: set[str], head_fails: bool = False) -> None:
        super().__init__("memory")
        self.lose = set(lose)
        self.head_fails = head_fails

    def _answer_lost(self, operation: str) -> None:
        if operation in self.lose:
            self.lose.discard(operation)
            raise StorageError(f"storage unavailable during {operation}")

    def put(self, key, body, metadata, content_type, **options):  # type: ignore[no-untyped-def]
        super().put(key, body, metadata, content_type, **options)
        self._answer_lost("put")

    def complete_multipart(self, key, upload_id, parts, **options):  # type: ignore[no-untyped-def]
        super().complete_multipart(key, upload_id, parts, **options)
        self._answer_lost("complete_multipart")

    def head(self, key: str):  # type: ignore[no-untyped-def]
        if self.head_fails:
            raise StorageError("storage unavailable during head")
        return super().head(key)


@pytest.mark.parametrize("size", [100_000, 2 * PART + 123], ids=["put", "multipart"])
def test_an_object_s3_stored_but_whose_answer_was_lost_is_a_completed_upload(
    bench: Bench, size: int
) -> None:
    bench.storage = LostAnswers({"put", "complete_multipart"})
    data = body(size)
    writer = bench.fs().open_upload("/lost-answer.pdf")
    write_all(writer, data)
    record = writer.commit()
    assert record is not None and record.status == "completed" and record.sha256 == sha(data)
    assert bench.storage.read_bytes("incoming/alice/lost-answer.pdf") == data
    assert bench.storage.get_tags("incoming/alice/lost-answer.pdf")["sha256"] == sha(data)
    assert [row.status for row in bench.rows("lost-answer.pdf")] == ["completed"]
    assert bench.catalog.outbox_backlog()[0] == 1  # its upload.completed event, once
    assert bench.in_use() == 0


def test_when_s3_cannot_say_the_row_stays_completing_and_recovery_completes_it(
    bench: Bench,
) -> None:
    storage = LostAnswers({"put"}, head_fails=True)
    bench.storage = storage
    data = body(100_000)
    writer = bench.fs().open_upload("/unsure.pdf")
    write_all(writer, data)
    with pytest.raises(StorageError, match="did not confirm that the file was stored"):
        writer.commit()
    [row] = bench.rows("unsure.pdf")
    assert row.status == "completing"  # neither failed (S3 has it) nor completed (unsaid)
    storage.head_fails = False
    report = GcReport()
    finish_completing(storage, bench.catalog, row, report)
    assert report.completed == [row.id]
    [row] = bench.rows("unsure.pdf")
    assert row.status == "completed" and row.sha256 == sha(data)
    assert bench.in_use() == 0


def test_spilled_writes_give_their_disk_back_as_the_gap_before_them_fills(
    tmp_path: Path,
) -> None:
    """A client always a little ahead, on a long file: the limits count the bytes that
    wait now, not every byte ever spilled (it failed at 4 MiB of spill in all)."""
    bench = Bench(tmp_path, {"reorder_memory": "64KiB", "reorder_spill": "4MiB"})
    try:
        data = body(5 * PART)
        block = 512 * 1024
        writer = bench.fs().open_upload("/ahead.pdf")
        for group in range(0, len(data), 4 * block):  # 2 MiB ahead, then the gap fills
            for offset in reversed(range(group, min(group + 4 * block, len(data)), block)):
                writer.write(offset, data[offset : offset + block])
            assert bench.services.spill.in_use == 0
        record = writer.commit()
        assert record is not None and record.sha256 == sha(data)
    finally:
        bench.services.close()


def test_one_users_spilled_writes_leave_disk_for_the_others(tmp_path: Path) -> None:
    bench = Bench(tmp_path, {"reorder_memory": "64KiB", "spill_budget": "8MiB"})
    try:
        data = body(4 * MIB)
        alice = bench.fs("alice").open_upload("/a.pdf")
        alice.write(MIB, data[MIB : 3 * MIB])  # spilled: 2 MiB, alice's quarter
        with pytest.raises(ServerBusy):
            alice.write(3 * MIB, data[3 * MIB :])
        bob = bench.fs("bob").open_upload("/b.pdf")
        bob.write(MIB, data[MIB : 3 * MIB])  # bob still finds room
        assert bench.services.spill.in_use == 4 * MIB
        for writer in (alice, bob):
            writer.discard("test")
        assert bench.services.spill.in_use == 0
    finally:
        bench.services.close()
