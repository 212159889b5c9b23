"""S3 storage details a user of the bucket would notice."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3

from tests.helpers import MIB, make_pdf, sha256_file


def test_without_part_checksums_a_default_boto3_client_reads_multipart_objects(
    gateway_factory, moto_endpoint: str, tmp_path: Path
) -> None:
    running = gateway_factory({"storage": {"part_checksums": False}})
    source = make_pdf(tmp_path / "a.pdf", 12 * MIB)
    running.sftp(f"put {source} a.pdf\n")
    plain = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    body = plain.get_object(Bucket=running.bucket, Key=running.key_for("a.pdf"))["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha256_file(source)


def test_probe_tells_files_directories_and_nothing_apart(gateway) -> None:
    client, bucket = gateway.storage.client, gateway.bucket
    for key in ("p/a.pdf", "p/a.pdf-1", "p/a.pdf-2", "p/d/x.pdf", "p/both", "p/both/y"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    probe = gateway.storage.probe
    assert probe("p/a.pdf").file is not None and not probe("p/a.pdf").is_dir
    assert probe("p/d").is_dir and probe("p/d").file is None
    assert probe("p/both").is_dir and probe("p/both").file is not None
    assert not probe("p/missing").exists
