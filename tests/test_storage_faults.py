"""An S3 failure reaches the client as an SFTP error and leaves nothing half-done."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftp_gateway.errors import StorageError
from sftp_gateway.storage.base import Part
from sftp_gateway.storage.s3 import S3Storage
from tests.helpers import MIB, make_pdf


class FailingParts(S3Storage):
    """S3 that refuses the third part of every upload."""

    def upload_part(self, key: str, upload_id: str, number: int, body, **options) -> Part:  # type: ignore[no-untyped-def]
        if number == 3:
            raise StorageError("storage error during upload part (InternalError)")
        return super().upload_part(key, upload_id, number, body, **options)


class FailingCompletion(S3Storage):
    """S3 that accepts every part but fails CompleteMultipartUpload."""

    def complete_multipart(self, key: str, upload_id: str, parts: list[Part], **options) -> None:  # type: ignore[no-untyped-def]
        raise StorageError("storage error during upload completion (InternalError)")


class FailingPut(S3Storage):
    def put(self, key, body, metadata, content_type, **options) -> None:  # type: ignore[no-untyped-def]
        raise StorageError("storage unavailable during upload")


@pytest.mark.parametrize(
    ("storage_class", "size"),
    [(FailingParts, 30 * MIB), (FailingCompletion, 12 * MIB), (FailingPut, 100_000)],
    ids=["part-fails", "completion-fails", "put-fails"],
)
def test_s3_failure_is_reported_to_the_client_and_leaves_nothing(
    gateway_factory, tmp_path: Path, storage_class: type[S3Storage], size: int
) -> None:
    running = gateway_factory(storage_class=storage_class)
    source = make_pdf(tmp_path / "a.pdf", size)
    result = running.sftp(f"put {source} a.pdf\n", check=False)
    assert result.returncode != 0
    assert "Failure" in result.stderr or "failure" in result.stderr.lower()
    key = running.key_for("a.pdf")
    assert not running.object_exists(key)
    assert running.open_multipart_uploads() == []
    [row] = running.catalog.uploads_for_key(running.bucket, key)
    assert row.status == "failed"
    assert "storage" in (row.error or "")
    with running.catalog.dispatch_batch(100) as (events, _):
        assert [e.event_type for e in events] == ["upload.failed"]
