"""storage.full_object_checksum: S3's FULL_OBJECT CRC64NVME on every object the gateway
writes, continued across a resume, and `auto` falling back when a store refuses it.

The unit tests drive the real UploadStream over MemoryStorage, which (like S3) checks
each part's CRC64NVME and the whole object's against the bytes; the expected values are
computed here with awscrt over the whole file, not by the gateway's combining code. The
end-to-end tests use OpenSSH sftp against a gateway on moto (which computes the object's
CRC64NVME itself), on SeaweedFS (which verifies the one sent), and on moto behind a
proxy that refuses the checksum parameters as an older store would.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from awscrt.checksums import crc64nvme

from sftp_gateway.config import StorageConfig
from sftp_gateway.errors import StorageError
from sftp_gateway.gc import recover_after_crash
from sftp_gateway.s3limits import PartSchedule
from sftp_gateway.storage.base import Part
from sftp_gateway.storage.checksums import full_object_crc64nvme
from sftp_gateway.storage.memory import MemoryStorage
from sftp_gateway.upload.checkpoint import Checkpoint
from sftp_gateway.upload.compress import decompress_all
from sftp_gateway.upload.sender import PartSender
from sftp_gateway.upload.stream import StreamOptions
from tests.faultproxy import FaultProxy, HttpFault, HttpRequest
from tests.helpers import MIB, RunningGateway, make_pdf, sha256_file
from tests.test_compression import compressible
from tests.test_s3_any_size import KEY, stream_on
from tests.test_upload_lifecycle import bench, completing_row  # noqa: F401 (fixture)
from tests.test_upload_unit import Bench

PART = 4096
SCHEDULE = PartSchedule.constant(PART)


def expected_crc(data: bytes) -> str:
    """What HeadObject with ChecksumMode shows: the CRC64NVME of all the bytes, base64."""
    return base64.b64encode(crc64nvme(data).to_bytes(8, "big")).decode()


class RestartedStorage(MemoryStorage):
    """The same bucket after the gateway restarted with another full_object_checksum."""

    configured = True

    @property
    def full_object_checksum(self) -> bool:
        return self.configured and super().full_object_checksum


@pytest.fixture
def sender() -> Iterator[PartSender]:
    pool = PartSender(4)
    yield pool
    pool.close()


def test_three_part_upload_is_completed_with_the_crc64nvme_of_the_whole_file(
    sender: PartSender,
) -> None:
    storage = MemoryStorage(min_part_size=PART)
    data = os.urandom(2 * PART + 1000)
    stream = stream_on(storage, sender, StreamOptions(SCHEDULE))
    stream.write(data)
    result = stream.finish()

    assert len(result.parts) == 3
    assert all(p.crc64nvme and p.checksum is None for p in result.parts)
    assert storage.read_bytes(KEY) == data
    assert storage.object_crc64nvme(KEY) == expected_crc(data)  # sent, and it matched


def test_resume_from_the_catalog_continues_the_crc_even_after_the_config_changed(
    sender: PartSender,
) -> None:
    storage = RestartedStorage(min_part_size=PART)
    data = os.urandom(5 * PART + 123)
    first = stream_on(storage, sender, StreamOptions(SCHEDULE))
    first.write(data[: 2 * PART + 700])  # two parts in S3; the rest is lost with the client
    saved = first.interrupt()
    assert saved is not None and saved.full_object_checksum and len(saved.parts) == 2

    # What the catalog keeps is JSON (parts and resume_state); the gateway restarted
    # with full_object_checksum off, which must not change an upload already begun.
    parts = json.loads(json.dumps([dataclasses.asdict(p) for p in saved.parts]))
    state = json.loads(json.dumps(saved.state()))
    assert state["full_object_checksum"] is True
    resumed = Checkpoint.from_state(saved.upload_id, tuple(Part(**p) for p in parts), state)
    storage.configured = False
    second = stream_on(storage, sender, StreamOptions(SCHEDULE), resume=resumed)
    second.write(data[resumed.size :])
    result = second.finish()

    assert storage.read_bytes(KEY) == data
    assert len(result.parts) == 6 and all(p.crc64nvme for p in result.parts)
    assert storage.object_crc64nvme(KEY) == expected_crc(data)


def test_an_upload_begun_without_it_resumes_without_it(sender: PartSender) -> None:
    storage = RestartedStorage(min_part_size=PART)
    storage.configured = False
    data = os.urandom(3 * PART + 10)
    first = stream_on(storage, sender, StreamOptions(SCHEDULE))
    first.write(data[: 2 * PART])
    saved = first.interrupt()
    assert saved is not None and not saved.full_object_checksum
    assert "full_object_checksum" not in saved.state()

    storage.configured = True  # turned on meanwhile: S3 would refuse CRC64NVME parts
    second = stream_on(storage, sender, StreamOptions(SCHEDULE), resume=saved)
    second.write(data[saved.size :])
    second.finish()
    assert storage.read_bytes(KEY) == data
    assert storage.object_crc64nvme(KEY) is None


def test_compressed_parts_are_checksummed_as_stored(sender: PartSender) -> None:
    storage = MemoryStorage(min_part_size=PART)
    data = compressible(200_000)
    stream = stream_on(storage, sender, StreamOptions(SCHEDULE, compression="zstd"))
    for start in range(0, len(data), 16_384):
        stream.write(data[start : start + 16_384])
    result = stream.finish()

    stored = storage.read_bytes(KEY)
    assert len(result.parts) > 1 and decompress_all("zstd", stored) == data
    assert storage.object_crc64nvme(KEY) == expected_crc(stored)


def test_a_small_file_is_one_put_with_its_crc64nvme(sender: PartSender) -> None:
    storage = MemoryStorage()
    stream = stream_on(storage, sender, StreamOptions(PartSchedule.growing(5 * MIB)))
    stream.write(b"%PDF-1.7 small file")
    stream.finish()
    assert storage.calls["put"] == 1
    assert storage.object_crc64nvme(KEY) == expected_crc(b"%PDF-1.7 small file")


def test_off_sends_no_full_object_checksum(sender: PartSender) -> None:
    storage = MemoryStorage(min_part_size=PART, full_object_checksum="off")
    stream = stream_on(storage, sender, StreamOptions(SCHEDULE))
    stream.write(os.urandom(2 * PART + 5))
    result = stream.finish()
    assert all(p.crc64nvme is None for p in result.parts)
    assert storage.object_crc64nvme(KEY) is None


def three_parts(storage: MemoryStorage) -> tuple[str, list[Part], bytes]:
    upload_id = storage.create_multipart(KEY, {}, "application/pdf", full_object_checksum=True)
    bodies = [os.urandom(PART), os.urandom(PART), os.urandom(99)]
    parts = [
        storage.upload_part(KEY, upload_id, n, b, full_object_checksum=True)
        for n, b in enumerate(bodies, 1)
    ]
    return upload_id, parts, b"".join(bodies)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda parts: [parts[0], replace(parts[1], crc64nvme=parts[0].crc64nvme), parts[2]],
        lambda parts: [parts[0], replace(parts[1], size=PART - 1), parts[2]],
        lambda parts: [replace(parts[0], number=2), replace(parts[1], number=1), parts[2]],
    ],
    ids=["a-part-crc", "a-part-size", "the-order"],
)
def test_a_wrong_crc64nvme_is_refused_and_the_right_one_accepted(
    spoil: Callable[[list[Part]], list[Part]],
) -> None:
    storage = MemoryStorage(min_part_size=PART)
    upload_id, parts, data = three_parts(storage)
    wrong = full_object_crc64nvme(spoil(parts))
    assert wrong != expected_crc(data)
    with pytest.raises(StorageError, match="BadDigest"):
        storage.complete_multipart(KEY, upload_id, parts, full_object_crc64nvme=wrong)
    right = full_object_crc64nvme(parts)
    storage.complete_multipart(KEY, upload_id, parts, full_object_crc64nvme=right)
    assert storage.object_crc64nvme(KEY) == expected_crc(data)


def test_parts_with_another_checksum_than_the_upload_are_refused() -> None:
    storage = MemoryStorage(min_part_size=PART)
    with_crc = storage.create_multipart(KEY, {}, "application/pdf", full_object_checksum=True)
    without = storage.create_multipart(KEY, {}, "application/pdf")
    with pytest.raises(StorageError, match="InvalidRequest"):
        storage.upload_part(KEY, with_crc, 1, b"x")
    with pytest.raises(StorageError, match="InvalidRequest"):
        storage.upload_part(KEY, without, 1, b"x", full_object_checksum=True)
    part = storage.upload_part(KEY, without, 1, b"x")
    with pytest.raises(StorageError, match="InvalidRequest"):
        storage.complete_multipart(KEY, without, [part], full_object_crc64nvme=expected_crc(b"x"))


def test_recovery_completes_a_completing_row_with_the_full_object_checksum(
    bench: Bench,  # noqa: F811 (the fixture imported above)
) -> None:
    upload_id = completing_row(bench, "c.pdf", publish=False, keep_multipart=True)
    row = bench.catalog.get_upload(upload_id)
    assert row is not None and row.parts and all(p["crc64nvme"] for p in row.parts)
    recover_after_crash(bench.settings, bench.storage, bench.catalog)
    key = "incoming/alice/c.pdf"
    assert bench.storage.object_crc64nvme(key) == expected_crc(bench.storage.read_bytes(key))


@pytest.mark.parametrize(
    ("value", "mode"), [(True, "on"), (False, "off"), ("auto", "auto"), ("off", "off")]
)
def test_yaml_on_and_off_are_the_modes(value: object, mode: str) -> None:
    config = StorageConfig.model_validate({"bucket": "b-1", "full_object_checksum": value})
    assert config.full_object_checksum == mode
    assert StorageConfig(bucket="b-1").full_object_checksum == "auto"


# -- real S3 protocols ----------------------------------------------------------------


def object_checksum(running: RunningGateway, key: str) -> dict[str, Any]:
    head = running.storage.client.head_object(
        Bucket=running.bucket, Key=key, ChecksumMode="ENABLED"
    )
    return {k: v for k, v in head.items() if k.startswith("Checksum")}


def file_crc(path: Path) -> str:
    return expected_crc(path.read_bytes())


def test_moto_object_has_the_full_object_crc64nvme_of_the_file(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    running = gateway_factory({"uploads": {"max_file_size": "1GiB"}})
    source = make_pdf(tmp_path / "big.pdf", 12 * MIB)  # three 5 MiB parts
    running.sftp(f"put {source} big.pdf\n")
    key = running.key_for("big.pdf")
    assert object_checksum(running, key) == {
        "ChecksumCRC64NVME": file_crc(source),
        "ChecksumType": "FULL_OBJECT",
    }
    assert running.object_sha256(key) == sha256_file(source)


@pytest.mark.seaweedfs
def test_seaweedfs_verifies_and_keeps_the_full_object_crc64nvme(
    gateway_factory: Callable[..., RunningGateway], seaweed_endpoint: str, tmp_path: Path
) -> None:
    running = gateway_factory(
        {"uploads": {"max_file_size": "1GiB"}, "storage": {"full_object_checksum": "on"}},
        endpoint=seaweed_endpoint,
    )
    big = make_pdf(tmp_path / "big.pdf", 12 * MIB)
    small = make_pdf(tmp_path / "small.pdf", 30_000)
    running.sftp(f"put {big} big.pdf\nput {small} small.pdf\n")
    assert object_checksum(running, running.key_for("big.pdf")) == {
        "ChecksumCRC64NVME": file_crc(big),
        "ChecksumType": "FULL_OBJECT",
    }
    assert object_checksum(running, running.key_for("small.pdf"))["ChecksumCRC64NVME"] == (
        file_crc(small)
    )


def refuses_checksum_type(request: HttpRequest) -> bool:
    """A store that does not know S3's full-object checksum refuses the CreateMultipartUpload
    and PutObject that ask for it."""
    asks = "x-amz-checksum-type" in request.headers or "x-amz-checksum-crc64nvme" in (
        request.headers
    )
    return asks and request.method in ("POST", "PUT") and "partNumber=" not in request.target


@pytest.fixture
def refusing_proxy(moto_endpoint: str) -> Iterator[tuple[FaultProxy, HttpFault]]:
    """moto behind a proxy that answers InvalidRequest to the full-object checksum."""
    address = urlsplit(moto_endpoint)
    with FaultProxy((address.hostname or "127.0.0.1", address.port or 0)) as proxy:
        fault = proxy.http_error(400, "InvalidRequest", match=refuses_checksum_type, times=99)
        yield proxy, fault


def test_auto_falls_back_once_when_the_store_refuses_the_checksum(
    gateway_factory: Callable[..., RunningGateway],
    refusing_proxy: tuple[FaultProxy, HttpFault],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, refusals = refusing_proxy
    running = gateway_factory({"uploads": {"max_file_size": "1GiB"}}, endpoint=proxy.url)
    first = make_pdf(tmp_path / "first.pdf", 12 * MIB)
    second = make_pdf(tmp_path / "second.pdf", 12 * MIB)
    small = make_pdf(tmp_path / "small.pdf", 30_000)
    with caplog.at_level(logging.INFO, logger="sftp_gateway.storage.checksums"):
        running.sftp(f"put {first} first.pdf\nput {second} second.pdf\nput {small} small.pdf\n")

    for name, source in (("first.pdf", first), ("second.pdf", second), ("small.pdf", small)):
        key = running.key_for(name)
        assert running.object_sha256(key) == sha256_file(source)
        assert object_checksum(running, key).get("ChecksumType") != "FULL_OBJECT"
    assert refusals.injected == 1  # only the first upload paid for the refusal
    fallbacks = [r for r in caplog.records if "refused the full-object" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.INFO


def test_on_fails_the_upload_when_the_store_refuses_the_checksum(
    gateway_factory: Callable[..., RunningGateway],
    refusing_proxy: tuple[FaultProxy, HttpFault],
    tmp_path: Path,
) -> None:
    proxy, refusals = refusing_proxy
    running = gateway_factory(
        {"uploads": {"max_file_size": "1GiB"}, "storage": {"full_object_checksum": "on"}},
        endpoint=proxy.url,
    )
    source = make_pdf(tmp_path / "big.pdf", 12 * MIB)
    result = running.sftp(f"put {source} big.pdf\n", check=False)
    assert result.returncode != 0 and refusals.injected == 1
    key = running.key_for("big.pdf")
    assert not running.object_exists(key)
    [row] = running.catalog.uploads_for_key(running.bucket, key)
    assert row.status == "failed" and "(InvalidRequest)" in (row.error or "")
