"""The botocore internal that storage/botocompat.py leans on still takes effect: S3
endpoints resolve once per bucket, not once per key, and requests still arrive."""

from __future__ import annotations

import uuid

import boto3
from botocore.config import Config

from sftp_gateway.storage.botocompat import cache_endpoints_per_bucket


def resolver_cache_hits(client: object) -> int:
    provider = client._ruleset_resolver._provider  # type: ignore[attr-defined]
    return int(provider._provider.resolve_endpoint.cache_info().hits)


def test_endpoints_resolve_once_per_bucket_and_requests_still_work(
    moto_endpoint: str,
) -> None:
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    assert cache_endpoints_per_bucket(client)
    bucket = f"botocompat-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    hits_before = resolver_cache_hits(client)

    for i in range(20):
        client.put_object(Bucket=bucket, Key=f"dir/file-{i}.pdf", Body=b"%PDF-1.4")
    listed = client.list_objects_v2(Bucket=bucket, Prefix="dir/")

    assert resolver_cache_hits(client) - hits_before >= 19  # every new key: a hit
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(
        f"dir/file-{i}.pdf" for i in range(20)
    )
