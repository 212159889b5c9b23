"""Real S3 at any size: the SHA-256 reaches the object without rewriting it, and files
of unknown size reach S3's 5 TiB in 10,000 parts.

The schedule is checked at full scale as arithmetic, and driven through the real
UploadStream at 1/2^20 scale (same part counts, bytes for MiB) so 10,000 parts take
seconds. The end-to-end tests upload 30 MB with OpenSSH sftp (6 parts of 5 MiB): enough
for a multipart object, small enough to stay fast; on moto over HTTP with a versioned
bucket, and on SeaweedFS.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sftp_gateway.s3limits import (
    FLAT_PARTS,
    GIB,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    PartSchedule,
    schedule_for,
)
from sftp_gateway.storage.memory import MemoryStorage
from sftp_gateway.upload.budget import ByteBudget, Owner
from sftp_gateway.upload.checkpoint import Checkpoint
from sftp_gateway.upload.sender import PartSender
from sftp_gateway.upload.stream import StreamOptions, StreamResult, UploadStream
from tests.helpers import RunningGateway, make_pdf, sha256_file, tagged_sha256

KEY = "incoming/alice/big.pdf"


# -- the schedule, at full scale --------------------------------------------------------


@pytest.mark.parametrize("configured", [MIN_PART_SIZE, 8 * MIB, 64 * MIB, 512 * MIB])
def test_growing_schedule_reaches_5_tib_in_10000_parts_within_s3_part_limits(
    configured: int,
) -> None:
    schedule = PartSchedule.growing(configured)
    sizes = [schedule.size_of(n) for n in range(1, MAX_PARTS + 1)]
    assert sum(sizes) >= MAX_OBJECT_SIZE
    assert all(MIN_PART_SIZE <= size <= MAX_PART_SIZE for size in sizes)
    assert sizes[:FLAT_PARTS] == [configured] * FLAT_PARTS  # small files: as configured
    assert sizes == sorted(sizes)  # never shrinks


def test_default_part_size_keeps_8_mib_parts_up_to_10_gib_and_1_gib_at_most() -> None:
    schedule = PartSchedule.growing(8 * MIB)
    assert schedule.capacity(FLAT_PARTS) == 10 * GIB
    assert schedule.size_of(FLAT_PARTS + 1) == 16 * MIB
    assert max(schedule.size_of(n) for n in range(1, MAX_PARTS + 1)) == GIB


def test_a_known_size_gets_one_constant_part_size_that_fits_it() -> None:
    for size in (0, 10 * GIB, 100 * GIB, MAX_OBJECT_SIZE):
        schedule = schedule_for(8 * MIB, size)
        assert schedule.size_of(1) == schedule.size_of(MAX_PARTS)
        assert MIN_PART_SIZE <= schedule.base <= MAX_PART_SIZE
        assert schedule.capacity() >= size


def test_a_checkpoint_of_an_older_gateway_resumes_with_constant_parts() -> None:
    state = {"part_size": 8 * MIB, "sha256_state": "00" * 112, "saved_at": None}
    checkpoint = Checkpoint.from_state("u", (), state)
    assert checkpoint.part_schedule == PartSchedule.constant(8 * MIB)


# -- the schedule, through the real stream ----------------------------------------------


@pytest.fixture
def sender() -> Iterator[PartSender]:
    pool = PartSender(8)
    yield pool
    pool.close()


def stream_on(
    storage: MemoryStorage,
    sender: PartSender,
    options: StreamOptions,
    resume: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
) -> UploadStream:
    budget = ByteBudget(1 << 30, what="upload memory")
    base = options.schedule.base
    return UploadStream(
        storage,
        KEY,
        part_size=base,
        max_concurrency=4,
        metadata={"uploaded-by": "alice", "upload-id": "u-1"},
        content_type="application/pdf",
        sender=sender,
        lease=budget.lease(Owner("alice", "127.0.0.2"), ceiling=5 * base),
        on_checkpoint=on_checkpoint,
        checkpoint_interval=0,
        resume=resume,
        options=options,
    )


def write_in_slices(stream: UploadStream, data: memoryview, step: int) -> None:
    """Zero-copy slices of one preallocated buffer, as SFTP WRITEs would arrive."""
    for start in range(0, len(data), step):
        stream.write(data[start : start + step])


def test_stream_fills_10000_scheduled_parts_to_the_5_tib_equivalent(
    sender: PartSender,
) -> None:
    # 1/2^20 of the real thing: 8-byte parts for 8 MiB, 1 KiB for 1 GiB, 5 MiB for 5 TiB.
    schedule = PartSchedule.growing(8, largest=1024, target=MAX_OBJECT_SIZE >> 20)
    storage = MemoryStorage(min_part_size=5)
    data = memoryview(os.urandom(MAX_OBJECT_SIZE >> 20))
    stream = stream_on(storage, sender, StreamOptions(schedule))
    write_in_slices(stream, data, 64 * 1024)
    result = stream.finish()

    assert len(result.parts) <= MAX_PARTS
    assert [p.size for p in result.parts[:-1]] == [
        schedule.size_of(p.number) for p in result.parts[:-1]
    ]
    assert storage.read_bytes(KEY) == data
    assert storage.get_tags(KEY)["sha256"] == hashlib.sha256(data).hexdigest()
    assert storage.calls["replace_metadata"] == 0


def test_resume_across_the_schedule_step_continues_the_same_schedule(
    sender: PartSender,
) -> None:
    schedule = PartSchedule(1024, flat_parts=3, double_every=2, largest=8192)
    storage = MemoryStorage(min_part_size=1024)
    data = os.urandom(60_000)
    first = stream_on(storage, sender, StreamOptions(schedule))
    first.write(data[: 3 * 1024 + 2 * 2048 + 500])  # parts 1-5 full, across the step
    saved = first.interrupt()
    assert saved is not None and len(saved.parts) == 5 and saved.size == 7168

    # What the catalog stores is JSON; the gateway's config changed meanwhile.
    state = json.loads(json.dumps(saved.state()))
    resumed = Checkpoint.from_state(saved.upload_id, saved.parts, state)
    second = stream_on(
        storage, sender, StreamOptions(PartSchedule.constant(5 * MIB)), resume=resumed
    )
    second.write(data[saved.size :])
    result = second.finish()

    assert storage.read_bytes(KEY) == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    sizes = [p.size for p in result.parts]
    assert sizes[:-1] == [schedule.size_of(n) for n in range(1, len(sizes))]
    assert sizes[5:8] == [4096, 4096, 8192]  # beyond the resume, still the schedule


def test_result_of_a_small_file_is_one_put_with_sha256_in_metadata_and_tag(
    sender: PartSender,
) -> None:
    storage = MemoryStorage()
    stream = stream_on(storage, sender, StreamOptions(PartSchedule.growing(5 * MIB)))
    stream.write(b"%PDF-1.7 small")
    result: StreamResult = stream.finish()
    head = storage.head(KEY)
    assert head is not None and head.metadata["sha256"] == result.sha256
    assert storage.get_tags(KEY) == {
        "sha256": result.sha256,
        "size": "14",
        "upload-id": "u-1",
        "uploaded-by": "alice",
    }
    assert storage.calls["put"] == 1 and storage.calls["set_tags"] == 0


# -- real S3 protocols ------------------------------------------------------------------


def count_copies(running: RunningGateway) -> list[str]:
    """Every CopyObject / UploadPartCopy the gateway's own S3 client sends."""
    seen: list[str] = []

    def note(model: Any, **_: Any) -> None:
        seen.append(model.name)

    events = running.storage.client.meta.events
    events.register("before-call.s3.CopyObject", note)
    events.register("before-call.s3.UploadPartCopy", note)
    return seen


def upload_30_mb(running: RunningGateway, tmp_path: Path) -> tuple[str, str]:
    source = make_pdf(tmp_path / "big.pdf", 30 * 1000 * 1000)
    running.sftp(f"put {source} big.pdf\n")
    return running.key_for("big.pdf"), sha256_file(source)


def test_moto_versioned_bucket_gets_one_version_tagged_with_sha256_and_no_copy(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    running = gateway_factory({"uploads": {"allowed_extensions": []}})
    client = running.storage.client
    client.put_bucket_versioning(
        Bucket=running.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    copies = count_copies(running)
    key, digest = upload_30_mb(running, tmp_path)

    assert running.object_sha256(key) == digest
    assert tagged_sha256(client, running.bucket, key) == digest
    versions = client.list_object_versions(Bucket=running.bucket, Prefix=key)
    assert len(versions.get("Versions", [])) == 1
    assert copies == []
    [row] = running.catalog.uploads_for_key(running.bucket, key)
    assert row.sha256 == digest and row.status == "completed"
    listing = running.sftp("ls -l big.pdf\n").stdout
    assert " 30000000 " in listing


def test_sha256_in_metadata_option_keeps_the_in_place_copy(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    running = gateway_factory(
        {"uploads": {"allowed_extensions": []}, "storage": {"sha256_in_metadata": True}}
    )
    copies = count_copies(running)
    key, digest = upload_30_mb(running, tmp_path)
    head = running.storage.client.head_object(Bucket=running.bucket, Key=key)
    assert head["Metadata"]["sha256"] == digest
    assert tagged_sha256(running.storage.client, running.bucket, key) == digest
    assert copies == ["CopyObject"]


@pytest.mark.seaweedfs
def test_seaweedfs_object_is_tagged_with_sha256_without_a_copy(
    gateway_factory: Callable[..., RunningGateway], seaweed_endpoint: str, tmp_path: Path
) -> None:
    running = gateway_factory({"uploads": {"allowed_extensions": []}}, endpoint=seaweed_endpoint)
    copies = count_copies(running)
    key, digest = upload_30_mb(running, tmp_path)
    assert running.object_sha256(key) == digest
    assert tagged_sha256(running.storage.client, running.bucket, key) == digest
    assert copies == []
