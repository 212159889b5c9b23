"""storage.compression_naming: suffix. A compressed object is stored as `name.gz` /
`name.zst` without Content-Encoding (S3 tools download the compressed file), while
SFTP users list, stat, read, rename and remove `name` and get back exactly their bytes.

The unit tests drive SuffixNamedStorage over MemoryStorage; the end-to-end test uses
OpenSSH sftp against a gateway on moto over HTTP.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from sftp_gateway.config import StorageConfig
from sftp_gateway.errors import NotFound, UploadRejected
from sftp_gateway.storage.memory import MemoryStorage
from sftp_gateway.storage.naming import SuffixNamedStorage, storage_for
from tests.helpers import RunningGateway, make_pdf, sha256_file
from tests.test_compression import compressible

SMALL = 5 * 1024 * 1024  # MemoryStorage's default minimum part


def named() -> tuple[SuffixNamedStorage, MemoryStorage]:
    raw = MemoryStorage()
    storage = storage_for(
        StorageConfig(bucket="b-1", compression="gzip", compression_naming="suffix"), raw
    )
    assert isinstance(storage, SuffixNamedStorage)
    return storage, raw


def test_content_encoding_naming_uses_the_store_as_it_is() -> None:
    raw = MemoryStorage()
    assert storage_for(StorageConfig(bucket="b-1", compression="gzip"), raw) is raw


def test_a_compressed_file_is_stored_under_its_suffix_and_seen_under_its_name() -> None:
    storage, raw = named()
    metadata = {"compression": "gzip"}
    storage.put("h/a.pdf", b"zipped", metadata, "application/pdf", content_encoding="gzip")
    assert raw.keys() == ["h/a.pdf.gz"]
    stored = raw.head("h/a.pdf.gz")
    assert stored is not None and stored.content_encoding is None

    assert [e.name for e in storage.list_dir("h/")] == ["a.pdf"]
    probe = storage.probe("h/a.pdf")
    assert probe.file is not None and probe.file.size == len(b"zipped")
    head = storage.head("h/a.pdf")
    assert head is not None and head.key == "h/a.pdf" and head.metadata["compression"] == "gzip"
    assert storage.open_read("h/a.pdf", 0).read() == b"zipped"
    assert storage.head("h/a.pdf.gz") is None  # the suffixed key is not a file name


def test_writing_a_name_replaces_its_other_form() -> None:
    storage, raw = named()
    raw.put("h/a.pdf", b"plain, from before compression", {}, "application/pdf")
    storage.put("h/a.pdf", b"zipped", {}, "application/pdf", content_encoding="gzip")
    assert raw.keys() == ["h/a.pdf.gz"]


def test_rename_keeps_the_form_and_remove_takes_every_form() -> None:
    storage, raw = named()
    storage.put("h/a.pdf", b"zipped", {}, "application/pdf", content_encoding="gzip")
    storage.copy("h/a.pdf", "h/b.pdf", {"original-name": "b.pdf"})
    storage.delete("h/a.pdf")
    assert raw.keys() == ["h/b.pdf.gz"]
    head = raw.head("h/b.pdf.gz")
    assert head is not None and head.metadata["original-name"] == "b.pdf"
    storage.delete("h/b.pdf")
    assert raw.keys() == []
    with pytest.raises(NotFound):
        storage.copy("h/missing.pdf", "h/c.pdf")


def test_a_name_ending_in_a_suffix_gets_a_second_one_or_is_refused_uncompressed() -> None:
    storage, raw = named()
    storage.put("h/x.gz", b"zipped twice", {}, "application/gzip", content_encoding="gzip")
    assert raw.keys() == ["h/x.gz.gz"]
    assert [e.name for e in storage.list_dir("h/")] == ["x.gz"]
    with pytest.raises(UploadRejected, match=r"names ending in \.gz or \.zst"):
        storage.put("h/y.zst", b"as sent", {}, "application/zstd")
    with pytest.raises(UploadRejected):
        storage.create_multipart("h/y.gz", {}, "application/gzip")


def test_a_multipart_upload_is_found_again_by_its_id_after_a_restart() -> None:
    storage, raw = named()
    upload_id = storage.create_multipart(
        "h/big.pdf", {}, "application/pdf", content_encoding="gzip"
    )
    first = storage.upload_part("h/big.pdf", upload_id, 1, b"a" * SMALL)
    assert storage.list_multipart_uploads("h/") == [
        ("h/big.pdf", upload_id, raw.list_multipart_uploads("h/")[0][2])
    ]

    restarted = SuffixNamedStorage(raw)  # a new process: nothing remembered
    second = restarted.upload_part("h/big.pdf", upload_id, 2, b"tail")
    restarted.complete_multipart("h/big.pdf", upload_id, [first, second])
    assert raw.keys() == ["h/big.pdf.gz"]
    assert raw.read_bytes("h/big.pdf.gz") == b"a" * SMALL + b"tail"


def test_sftp_upload_is_stored_suffixed_and_used_under_its_own_name(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    running = gateway_factory(
        {
            "storage": {"compression": "gzip", "compression_naming": "suffix"},
            "uploads": {"max_file_size": "1GiB"},
        }
    )
    small = make_pdf(tmp_path / "x.pdf", 40_000)
    big = tmp_path / "y.pdf"
    big.write_bytes(compressible(12 * 1000 * 1000))  # three parts
    back_small, back_big = tmp_path / "back-x.pdf", tmp_path / "back-y.pdf"
    listing = running.sftp(
        f"put {small} x.pdf\nput {big} y.pdf\nls -l\nget x.pdf {back_small}\nget y.pdf {back_big}\n"
    ).stdout

    client, bucket = running.storage.client, running.bucket
    for name, source in (("x.pdf", small), ("y.pdf", big)):
        stored = client.get_object(Bucket=bucket, Key=running.key_for(name) + ".gz")
        assert "ContentEncoding" not in stored
        assert stored["Metadata"]["compression"] == "gzip"
        body = stored["Body"].read()
        assert hashlib.sha256(gzip.decompress(body)).hexdigest() == sha256_file(source)
        assert not running.object_exists(running.key_for(name))  # only the suffixed key
        assert f" {source.stat().st_size} " in listing and f" {name}" in listing
        [row] = running.catalog.uploads_for_key(bucket, running.key_for(name))
        assert row.status == "completed" and row.compression == "gzip"
    assert ".gz" not in listing
    assert back_small.read_bytes() == small.read_bytes()
    assert back_big.read_bytes() == big.read_bytes()

    running.sftp("rename y.pdf z.pdf\nrm x.pdf\n")
    listed = client.list_objects_v2(Bucket=bucket, Prefix=running.key_for(""))
    assert sorted(obj["Key"] for obj in listed["Contents"]) == [running.key_for("z.pdf.gz")]
    back = tmp_path / "back-z.pdf"
    running.sftp(f"get z.pdf {back}\n")
    assert back.read_bytes() == big.read_bytes()


def test_without_compression_the_key_is_the_name(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    running = gateway_factory({"storage": {"compression_naming": "suffix"}})
    source = make_pdf(tmp_path / "plain.pdf", 30_000)
    back = tmp_path / "back.pdf"
    running.sftp(f"put {source} plain.pdf\nget plain.pdf {back}\n")
    head = running.storage.client.head_object(
        Bucket=running.bucket, Key=running.key_for("plain.pdf")
    )
    assert head["ContentLength"] == 30_000 and "compression" not in head["Metadata"]
    assert back.read_bytes() == source.read_bytes()
