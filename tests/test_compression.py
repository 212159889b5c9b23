"""storage.compression: objects stored as gzip members / zstd frames, one per part,
while users see and get back exactly the bytes they sent.

Unit tests drive the real UploadStream over MemoryStorage with tiny parts (several
members, an interrupt and a resume); the end-to-end ones use OpenSSH sftp against a
gateway on moto over HTTP: a compressible 12 MB PDF-like file, and a 30 MB random one
whose client is killed halfway and resumed with `reput`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sftp_gateway.s3limits import PartSchedule
from sftp_gateway.storage.memory import MemoryStorage
from sftp_gateway.upload.compress import decompress_all
from sftp_gateway.upload.sender import PartSender
from sftp_gateway.upload.stream import StreamOptions
from tests.helpers import MIB, RunningGateway, make_pdf, sha256_file, tagged_sha256
from tests.test_resume import interrupt_with_killed_client, reput
from tests.test_s3_any_size import KEY, stream_on

ALGORITHMS = ["gzip", "zstd"]


def compressible(size: int) -> bytes:
    """PDF-like bytes: text streams that compress, with random 'image' runs between."""
    text = b"BT /F1 12 Tf 72 712 Td (Quarterly report, page %d) Tj ET\n"
    out = bytearray(b"%PDF-1.7\n")
    page = 0
    while len(out) < size:
        page += 1
        out += b"".join(text.replace(b"%d", str(page + i).encode()) for i in range(200))
        out += os.urandom(2048)
    return bytes(out[:size])


@pytest.fixture
def sender() -> Iterator[PartSender]:
    pool = PartSender(4)
    yield pool
    pool.close()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_interrupted_compressed_stream_resumes_and_decompresses_to_the_source(
    sender: PartSender, algorithm: str
) -> None:
    schedule = PartSchedule(4096, flat_parts=4, double_every=2, largest=16384)
    storage = MemoryStorage(min_part_size=4096)
    options = StreamOptions(schedule, compression=algorithm)
    data = compressible(400_000)
    first = stream_on(storage, sender, options)
    for start in range(0, 200_000, 32_768):
        first.write(data[start : min(start + 32_768, 200_000)])
    saved = first.interrupt()
    assert saved is not None and saved.compression == algorithm
    assert 0 < saved.size <= 200_000 and saved.stored_size < saved.size

    plain = StreamOptions(PartSchedule.constant(5 * MIB))  # config changed: ignored
    second = stream_on(storage, sender, plain, resume=saved)
    second.write(data[saved.size :])
    result = second.finish()

    stored = storage.read_bytes(KEY)
    assert decompress_all(algorithm, stored) == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data) and result.stored_size == len(stored)
    assert result.compression == algorithm
    assert sum(p.source_size or 0 for p in result.parts) == len(data)
    tags = storage.get_tags(KEY)
    assert tags["sha256"] == result.sha256 and tags["size"] == str(len(data))
    head = storage.head(KEY)
    assert head is not None and head.metadata["compression"] == algorithm
    assert head.content_encoding == algorithm


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_small_compressed_file_is_one_put_of_one_member(sender: PartSender, algorithm: str) -> None:
    storage = MemoryStorage()
    options = StreamOptions(PartSchedule.growing(5 * MIB), compression=algorithm)
    data = compressible(300_000)
    stream = stream_on(storage, sender, options)
    stream.write(data)
    result = stream.finish()
    stored = storage.read_bytes(KEY)
    assert decompress_all(algorithm, stored) == data
    assert len(stored) < len(data) // 2
    head = storage.head(KEY)
    assert head is not None and head.metadata["sha256"] == result.sha256
    assert storage.calls["put"] == 1 and storage.calls["create_multipart"] == 0


def compressed_gateway(
    gateway_factory: Callable[..., RunningGateway], algorithm: str
) -> RunningGateway:
    return gateway_factory(
        {
            "storage": {"compression": algorithm},
            "uploads": {"max_file_size": "1GiB"},
        }
    )


def stored_bytes(running: RunningGateway, key: str) -> bytes:
    got = running.storage.client.get_object(Bucket=running.bucket, Key=key)
    return got["Body"].read()  # type: ignore[no-any-return]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sftp_upload_is_stored_compressed_and_downloads_identical(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path, algorithm: str
) -> None:
    running = compressed_gateway(gateway_factory, algorithm)
    source = tmp_path / "report.pdf"
    source.write_bytes(compressible(12 * 1000 * 1000))
    back = tmp_path / "back.pdf"
    running.sftp(f"put {source} report.pdf\nget report.pdf {back}\n")

    key = running.key_for("report.pdf")
    digest = sha256_file(source)
    assert back.read_bytes() == source.read_bytes()
    stored = stored_bytes(running, key)
    assert len(stored) < source.stat().st_size // 2
    assert hashlib.sha256(decompress_all(algorithm, stored)).hexdigest() == digest
    head = running.storage.client.head_object(Bucket=running.bucket, Key=key)
    assert head["ContentEncoding"] == algorithm
    assert tagged_sha256(running.storage.client, running.bucket, key) == digest
    [row] = running.catalog.uploads_for_key(running.bucket, key)
    assert (row.size, row.sha256) == (source.stat().st_size, digest)
    assert (row.stored_size, row.compression) == (len(stored), algorithm)
    listing = running.sftp("ls -l report.pdf\n").stdout
    assert f" {source.stat().st_size} " in listing  # the file's size, not the stored one
    with running.catalog.dispatch_batch(10) as (events, _):
        [event] = [e.payload for e in events if e.payload["key"] == key]
    assert event["stored_size"] == len(stored) and event["compression"] == algorithm
    assert event["size"] == source.stat().st_size and event["sha256"] == digest


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_killed_compressed_upload_resumes_with_reput_and_decompresses_to_the_source(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path, algorithm: str
) -> None:
    running = compressed_gateway(gateway_factory, algorithm)
    source = make_pdf(tmp_path / "big.pdf", 30 * 1000 * 1000)
    partial = interrupt_with_killed_client(running, source, "big.pdf", after=15 * MIB)
    assert partial.resume_state["compression"] == algorithm
    assert 0 < partial.size < source.stat().st_size

    reput(running, source, "big.pdf")
    back = tmp_path / "back.pdf"
    running.sftp(f"get big.pdf {back}\n")

    key = running.key_for("big.pdf")
    digest = sha256_file(source)
    assert sha256_file(back) == digest
    stored = stored_bytes(running, key)
    assert hashlib.sha256(decompress_all(algorithm, stored)).hexdigest() == digest
    [row] = running.catalog.uploads_for_key(running.bucket, key)
    assert row.id == partial.id and row.status == "completed" and row.sha256 == digest
    assert running.open_multipart_uploads() == []
