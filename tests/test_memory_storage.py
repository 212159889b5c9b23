"""MemoryStorage keeps S3's rules, so unit tests on it mean what they would on S3."""

from __future__ import annotations

import threading

import pytest

from sftp_gateway.errors import NotFound, StorageError
from sftp_gateway.storage.base import Entry, Storage
from sftp_gateway.storage.memory import MemoryStorage

SMALL_PART = 16


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage("bucket", min_part_size=SMALL_PART)


def test_memory_storage_satisfies_the_storage_protocol(storage: MemoryStorage) -> None:
    typed: Storage = storage  # a type checker rejects this if a method is missing
    attributes = {"bucket", "full_object_checksum"}
    protocol_methods = {n for n in vars(Storage) if not n.startswith("_")} - attributes
    assert all(callable(getattr(typed, name)) for name in protocol_methods)
    assert isinstance(typed.full_object_checksum, bool)


def test_head_returns_size_metadata_and_content_type(storage: MemoryStorage) -> None:
    storage.put("home/a.pdf", b"%PDF-1", {"sha256": "x"}, "application/pdf")
    info = storage.head("home/a.pdf")
    assert info is not None
    assert (info.size, info.metadata, info.content_type) == (6, {"sha256": "x"}, "application/pdf")
    assert info.modified is not None
    assert storage.head("home/missing") is None


def test_probe_tells_files_directories_both_and_nothing_apart(storage: MemoryStorage) -> None:
    for key in ("p/a.pdf", "p/a.pdf-1", "p/d/x.pdf", "p/both", "p/both/y"):
        storage.put(key, b"x", {}, "application/octet-stream")
    storage.make_dir("p/empty/")
    assert storage.probe("p/a.pdf").file is not None and not storage.probe("p/a.pdf").is_dir
    assert storage.probe("p/d").is_dir and storage.probe("p/d").file is None
    assert storage.probe("p/both").is_dir and storage.probe("p/both").file is not None
    assert storage.probe("p/empty").is_dir
    assert not storage.probe("p/missing").exists
    assert storage.has_prefix("p/d/") and not storage.has_prefix("p/zz")


def test_list_dir_shows_subdirectories_and_files_but_not_the_marker(
    storage: MemoryStorage,
) -> None:
    storage.make_dir("h/")
    storage.make_dir("h/sub/")
    storage.put("h/sub/deep.pdf", b"12", {}, "application/pdf")
    storage.put("h/b.pdf", b"123", {}, "application/pdf")
    storage.put("other/c.pdf", b"1", {}, "application/pdf")
    listing = [(e.name, e.is_dir, e.size) for e in storage.list_dir("h/")]
    assert listing == [("sub", True, 0), ("b.pdf", False, 3)]
    assert list(storage.list_dir("nothing/")) == []


def test_multipart_upload_completes_into_the_concatenated_object(storage: MemoryStorage) -> None:
    upload_id = storage.create_multipart("h/big.pdf", {"who": "alice"}, "application/pdf")
    first = storage.upload_part("h/big.pdf", upload_id, 1, b"a" * SMALL_PART)
    second = storage.upload_part("h/big.pdf", upload_id, 2, bytearray(b"tail"))
    assert first.etag.startswith('"') and first.size == SMALL_PART
    assert storage.list_parts("h/big.pdf", upload_id) == [first, second]
    assert storage.head("h/big.pdf") is None  # invisible until complete
    storage.complete_multipart("h/big.pdf", upload_id, [second, first])
    assert storage.read_bytes("h/big.pdf") == b"a" * SMALL_PART + b"tail"
    assert storage.list_multipart_uploads("") == []
    assert storage.head("h/big.pdf").metadata == {"who": "alice"}  # type: ignore[union-attr]


def test_completion_refuses_a_small_part_before_the_last(storage: MemoryStorage) -> None:
    upload_id = storage.create_multipart("k", {}, "application/pdf")
    parts = [storage.upload_part("k", upload_id, n, b"tiny") for n in (1, 2)]
    with pytest.raises(StorageError, match="EntityTooSmall"):
        storage.complete_multipart("k", upload_id, parts)
    assert [row[1] for row in storage.list_multipart_uploads("")] == [upload_id]


def test_completion_refuses_unknown_parts_and_unknown_uploads(storage: MemoryStorage) -> None:
    upload_id = storage.create_multipart("k", {}, "application/pdf")
    part = storage.upload_part("k", upload_id, 1, b"x")
    with pytest.raises(StorageError, match="InvalidPart"):
        storage.complete_multipart("k", upload_id, [part, part.__class__(2, '"0"', 1)])
    with pytest.raises(StorageError, match="MalformedXML"):
        storage.complete_multipart("k", upload_id, [])
    with pytest.raises(NotFound):
        storage.complete_multipart("k", "no-such-upload", [part])
    with pytest.raises(NotFound):
        storage.upload_part("other-key", upload_id, 1, b"x")
    with pytest.raises(StorageError, match="InvalidArgument"):
        storage.upload_part("k", upload_id, 10_001, b"x")


def test_abort_is_idempotent_and_lists_no_upload_after(storage: MemoryStorage) -> None:
    upload_id = storage.create_multipart("h/x", {}, "application/pdf")
    storage.create_multipart("elsewhere/y", {}, "application/pdf")
    assert [row[0] for row in storage.list_multipart_uploads("h/")] == ["h/x"]
    storage.abort_multipart("h/x", upload_id)
    storage.abort_multipart("h/x", upload_id)
    assert storage.list_multipart_uploads("h/") == []
    with pytest.raises(NotFound):
        storage.list_parts("h/x", upload_id)


def test_copy_merges_metadata_and_replace_metadata_updates_in_place(
    storage: MemoryStorage,
) -> None:
    storage.put("a", b"body", {"sha256": "s"}, "application/pdf")
    storage.copy("a", "b", {"original-name": "b.pdf"})
    assert storage.head("b").metadata == {"sha256": "s", "original-name": "b.pdf"}  # type: ignore[union-attr]
    storage.replace_metadata("b", {"sha256": "t"}, "text/plain", 4)
    info = storage.head("b")
    assert info is not None
    assert (info.metadata, info.content_type) == ({"sha256": "t"}, "text/plain")
    with pytest.raises(NotFound):
        storage.copy("missing", "c")
    with pytest.raises(NotFound):
        storage.replace_metadata("missing", {}, "text/plain", 0)


def test_open_read_streams_from_an_offset_and_refuses_a_range_past_the_end(
    storage: MemoryStorage,
) -> None:
    storage.put("a", b"0123456789", {}, "application/pdf")
    storage.put("empty", b"", {}, "application/pdf")
    assert storage.open_read("a", 4).read() == b"456789"
    assert storage.open_read("empty", 0).read() == b""
    with pytest.raises(StorageError, match="InvalidRange"):
        storage.open_read("a", 10)
    with pytest.raises(NotFound):
        storage.open_read("missing", 0)


def test_delete_of_a_missing_key_succeeds_as_in_s3(storage: MemoryStorage) -> None:
    storage.put("a", b"x", {}, "application/pdf")
    storage.delete("a")
    storage.delete("a")
    assert storage.keys() == []


def test_fail_next_makes_one_call_fail_then_recovers(storage: MemoryStorage) -> None:
    storage.fail_next("put")
    with pytest.raises(StorageError, match="put"):
        storage.put("a", b"x", {}, "application/pdf")
    storage.put("a", b"x", {}, "application/pdf")
    assert storage.keys() == ["a"]
    with pytest.raises(ValueError, match="no operation"):
        storage.fail_next("teleport")


def test_parts_uploaded_from_many_threads_all_arrive(storage: MemoryStorage) -> None:
    upload_id = storage.create_multipart("k", {}, "application/pdf")
    bodies = {n: bytes([n]) * SMALL_PART for n in range(1, 41)}
    threads = [
        threading.Thread(target=storage.upload_part, args=("k", upload_id, n, body))
        for n, body in bodies.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    parts = storage.list_parts("k", upload_id)
    storage.complete_multipart("k", upload_id, parts)
    assert storage.read_bytes("k") == b"".join(bodies[n] for n in sorted(bodies))
    assert isinstance(next(iter(storage.list_dir("")), None), Entry)
