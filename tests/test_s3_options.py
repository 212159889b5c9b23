"""S3 options a production bucket needs: SSE-KMS with a customer key, buckets that
refuse ACLs (Object Ownership "BucketOwnerEnforced"), and the S3 client's own options
(addressing style, dual-stack, Transfer Acceleration, timeouts, retries).

The end-to-end tests drive OpenSSH sftp against a real gateway on moto over HTTP, with
a KMS key created on the same moto server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from sftp_gateway.config import StorageConfig
from sftp_gateway.storage.s3 import S3Storage
from tests.helpers import RunningGateway, free_port, make_pdf

# Every request parameter that carries an ACL; a BucketOwnerEnforced bucket refuses them.
ACL_PARAMETERS = {
    "ACL",
    "GrantFullControl",
    "GrantRead",
    "GrantReadACP",
    "GrantWrite",
    "GrantWriteACP",
    "AccessControlPolicy",
}


def create_kms_key(endpoint: str) -> str:
    kms = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1")
    return str(kms.create_key(Description="sftp-gateway test")["KeyMetadata"]["KeyId"])


def record_s3_calls(running: RunningGateway) -> list[tuple[str, dict[str, Any]]]:
    """(operation, parameters) of every call the gateway's S3 client makes."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def note(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append((model.name, dict(params)))

    running.storage.client.meta.events.register("before-parameter-build.s3", note)
    return seen


def encryption_of(running: RunningGateway, key: str) -> tuple[str | None, str | None]:
    head = running.storage.client.head_object(Bucket=running.bucket, Key=key)
    return head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")


def test_sse_kms_key_reaches_small_multipart_and_renamed_objects_without_any_acl(
    gateway_factory: Callable[..., RunningGateway], moto_endpoint: str, tmp_path: Path
) -> None:
    kms_key = create_kms_key(moto_endpoint)
    running = gateway_factory(
        {
            "uploads": {"allowed_extensions": []},
            # 5 MiB copy parts: renaming the 30 MB file is a multipart copy. botocore
            # sends every request here, so all of them are recorded (the CRT path's own
            # SSE test is in test_crt_put.py).
            "storage": {
                "sse": "aws:kms",
                "kms_key_id": kms_key,
                "copy_part_size": "5MiB",
                "put_client": "botocore",
            },
        }
    )
    running.storage.client.put_bucket_ownership_controls(
        Bucket=running.bucket,
        OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
    )
    calls = record_s3_calls(running)
    small = make_pdf(tmp_path / "small.pdf", 20_000)
    big = make_pdf(tmp_path / "big.pdf", 30 * 1000 * 1000)

    running.sftp(
        f"put {small} small.pdf\nput {big} big.pdf\n"
        "rename small.pdf small-renamed.pdf\nrename big.pdf big-renamed.pdf\n"
    )

    for name in ("small-renamed.pdf", "big-renamed.pdf"):
        assert encryption_of(running, running.key_for(name)) == ("aws:kms", kms_key), name
    operations = {name for name, _ in calls}
    assert {"PutObject", "CreateMultipartUpload", "CompleteMultipartUpload"} <= operations
    assert {"CopyObject", "UploadPartCopy"} & operations  # the renames copied
    for name, params in calls:
        assert not ACL_PARAMETERS & params.keys(), f"{name} sent an ACL"
        if name in {"PutObject", "CreateMultipartUpload", "CopyObject"}:
            assert params.get("SSEKMSKeyId") == kms_key, name


# -- the S3 client's options ------------------------------------------------------------


def built_client(**storage: Any) -> Any:
    """The boto3 client S3Storage builds for this storage config (no request is sent)."""
    return S3Storage(StorageConfig(bucket="acme-inbound", **storage)).client


class RequestStopped(Exception):
    """Raised before sending: the test only needs the URL the client would use."""


def request_url(client: Any) -> str:
    """The URL of a HeadObject on acme-inbound as this client would send it."""
    urls: list[str] = []

    def stop(request: Any, **_: Any) -> None:
        urls.append(request.url)
        raise RequestStopped

    client.meta.events.register("before-send.s3.HeadObject", stop)
    with pytest.raises(RequestStopped):
        client.head_object(Bucket="acme-inbound", Key="k")
    return urls[0]


def test_client_gets_the_configured_timeouts_and_standard_retry_budget() -> None:
    config = built_client(connect_timeout=3.5, read_timeout=42, max_attempts=7).meta.config
    assert (config.connect_timeout, config.read_timeout) == (3.5, 42)
    # storage.max_attempts counts retries, as botocore's max_attempts: 7 -> 8 tries.
    assert config.retries == {"total_max_attempts": 8, "mode": "standard"}


def test_readiness_probe_sends_one_request_when_s3_is_unreachable() -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    storage = S3Storage(StorageConfig(bucket="acme-inbound", endpoint_url=closed))
    with pytest.raises(EndpointConnectionError):
        storage.ping(2.0)  # builds the probe client
    sends: list[str] = []
    storage._probe_client.meta.events.register(
        "before-send.s3", lambda request, **_: sends.append(request.url)
    )
    with pytest.raises(EndpointConnectionError):
        storage.ping(2.0)
    assert len(sends) == 1  # a retryable error, still no retry


def test_client_gets_addressing_dualstack_and_accelerate_options() -> None:
    client = built_client(
        region="eu-west-1",
        addressing_style="virtual",
        use_dualstack_endpoint=True,
        use_accelerate_endpoint=True,
    )
    options = client.meta.config.s3
    assert options["addressing_style"] == "virtual"
    assert options["use_dualstack_endpoint"] is True
    assert options["use_accelerate_endpoint"] is True
    assert request_url(client).startswith(
        "https://acme-inbound.s3-accelerate.dualstack.amazonaws.com/"
    )


@pytest.mark.parametrize(
    ("storage", "style", "url_start"),
    [
        ({}, "auto", "https://acme-inbound.s3.eu-west-1.amazonaws.com/"),
        ({"addressing_style": "path"}, "path", "https://s3.eu-west-1.amazonaws.com/acme-"),
        ({"endpoint_url": "http://127.0.0.1:9"}, "path", "http://127.0.0.1:9/acme-inbound/"),
        (
            {"endpoint_url": "http://s3.local:9", "addressing_style": "virtual"},
            "virtual",
            "http://acme-inbound.s3.local:9/",
        ),
    ],
)
def test_addressing_style_auto_means_path_only_with_an_endpoint_url(
    storage: dict[str, Any], style: str, url_start: str
) -> None:
    client = built_client(region="eu-west-1", **storage)
    assert client.meta.config.s3["addressing_style"] == style
    assert request_url(client).startswith(url_start)


@pytest.mark.parametrize(
    "storage",
    [
        {"use_accelerate_endpoint": True, "endpoint_url": "http://127.0.0.1:9"},
        {"use_accelerate_endpoint": True, "addressing_style": "path"},
        {"addressing_style": "sideways"},
    ],
)
def test_impossible_endpoint_options_are_refused_at_start_naming_the_field(
    storage: dict[str, Any],
) -> None:
    from sftp_gateway.config import settings_from_dict
    from sftp_gateway.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        settings_from_dict({"storage": {"bucket": "acme-inbound", **storage}}, environ={})
    message = str(refused.value)
    assert "storage" in message
    assert ("use_accelerate_endpoint" in message) or ("addressing_style" in message)
