"""`iam-policy` prints a policy that is enough and no more; `check-config --live` proves it.

A moto server of our own (a subprocess: its IAM switch is process-wide) first serves the
set-up unauthenticated: bucket, queue, IAM users with the printed policy, access keys.
Then `/moto-api/reset-auth 0` (what INITIAL_NO_AUTH_ACTION_COUNT sets at start) turns
on enforcement: every later request is signed by the IAM user and checked against its
policy. moto's IAM is basic: it checks actions and resources but ignores conditions (so
the s3:prefix condition on ListBucket is printed, not proved here), and it names
HeadBucket `s3:HeadBucket`, which no real policy grants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError

from tests.helpers import free_port, make_pdf, sha256_file, start_gateway, wait_port

CLI = [sys.executable, "-m", "sftp_gateway"]
REGION = "us-east-1"
# moto 5.2 re-signs a query value holding '/' (ListObjectsV2 Prefix=incoming/...)
# differently from botocore and answers SignatureDoesNotMatch; its signature check is
# turned off. Authorization is untouched: each request is still judged against the
# policy of the IAM user whose access key signed it.
MOTO_WITH_IAM = (
    "import sys\n"
    "from moto.iam.access_control import IAMRequestBase\n"
    "IAMRequestBase.check_signature = lambda self: None\n"
    "from moto.server import main\n"
    "main(sys.argv[1:])\n"
)


@pytest.fixture
def iam_moto(tmp_path: Path) -> Iterator[str]:
    """moto's server in its own process, IAM not yet enforced; stopped after the test."""
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", MOTO_WITH_IAM, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "inf"},
    )
    try:
        wait_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def enforce_iam(endpoint: str) -> None:
    """From now on moto authenticates and authorizes every request."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},  # a form body would not reach moto
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def admin(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION)


def user_env(key: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


def user_client(service: str, endpoint: str, key: dict[str, str]) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=env or {**os.environ}
    )


def iam_user_with_policy(endpoint: str, name: str, policy: dict[str, Any]) -> dict[str, str]:
    iam = admin("iam", endpoint)
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="sftp-gateway", PolicyDocument=json.dumps(policy))
    return iam.create_access_key(UserName=name)["AccessKey"]


def gateway_config(tmp: Path, endpoint: str, bucket: str, queue_url: str) -> dict[str, Any]:
    return {
        "storage": {"part_checksums": False},  # moto mishandles composite checksums
        "events": {"queue_url": queue_url, "endpoint_url": endpoint, "region": REGION},
    }


def write_config(
    tmp: Path, endpoint: str, bucket: str, queue_url: str, name: str = "gateway.yaml"
) -> Path:
    from tests.helpers import base_config, deep_merge

    config = deep_merge(
        base_config(tmp, endpoint, bucket), gateway_config(tmp, endpoint, bucket, queue_url)
    )
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_iam_policy_prints_only_what_the_code_calls_narrowed_to_the_prefix(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "storage: {bucket: acme-inbound, prefix: incoming}\n"
        "events: {queue_url: 'https://sqs.eu-west-1.amazonaws.com/111122223333/uploads'}\n"
    )
    result = cli("iam-policy", "--config", str(config))
    assert result.returncode == 0, result.stderr
    statements = {s["Sid"]: s for s in json.loads(result.stdout)["Statement"]}
    objects = statements["ObjectsUnderPrefix"]
    assert objects["Resource"] == "arn:aws:s3:::acme-inbound/incoming/*"
    assert "s3:*" not in objects["Action"] and "s3:PutObject" in objects["Action"]
    listing = statements["ListUnderPrefix"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["incoming/*"]}}
    assert statements["SendUploadEvents"] == {
        "Sid": "SendUploadEvents",
        "Effect": "Allow",
        "Action": ["sqs:GetQueueAttributes", "sqs:SendMessage"],
        "Resource": "arn:aws:sqs:eu-west-1:111122223333:uploads",
    }
    every_action = [
        a
        for s in statements.values()
        for a in [s["Action"]]
        for a in ([a] if isinstance(a, str) else a)
    ]
    assert not any(a.endswith("*") for a in every_action)
    notifier = json.loads(cli("iam-policy", "--role", "notifier", "--config", str(config)).stdout)
    [receive] = notifier["Statement"]
    assert "sqs:SendMessage" not in receive["Action"] and "sqs:ReceiveMessage" in receive["Action"]


def test_bucket_policy_denies_plain_http_and_other_encryption(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", "acme-inbound", "https://q/1/q")
    data = yaml.safe_load(config.read_text())
    data["storage"]["sse"] = "aws:kms"
    data["storage"]["kms_key_id"] = "arn:aws:kms:us-east-1:111122223333:key/abc"
    config.write_text(yaml.safe_dump(data))
    result = cli("iam-policy", "--bucket-policy", "--config", str(config))
    assert result.returncode == 0, result.stderr
    statements = {s["Sid"]: s for s in json.loads(result.stdout)["Statement"]}
    tls = statements["DenyInsecureTransport"]
    assert tls["Effect"] == "Deny"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statements["DenyOtherEncryption"]["Condition"] == {
        "StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"}
    }
    assert "DenyOtherKmsKey" in statements
    assert "Block Public Access" in result.stderr


def test_a_user_holding_exactly_the_printed_policy_passes_the_live_check_and_uploads(
    tmp_path: Path, iam_moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = "iam-checked"
    queue_url = admin("sqs", iam_moto).create_queue(QueueName="uploads")["QueueUrl"]
    config = write_config(tmp_path, iam_moto, bucket, queue_url)
    printed = cli("iam-policy", "--config", str(config))
    assert printed.returncode == 0, printed.stderr
    policy = json.loads(printed.stdout)
    key = iam_user_with_policy(iam_moto, "sftp-gateway", policy)
    # A user whose policy lacks one action the gateway needs (aborting uploads).
    crippled = json.loads(printed.stdout)
    crippled["Statement"][0]["Action"].remove("s3:AbortMultipartUpload")
    weak_key = iam_user_with_policy(iam_moto, "weak", crippled)
    # The in-process gateway's S3 client takes its credentials from the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    running = start_gateway(  # creates the bucket: still before enforcement
        tmp_path / "gw",
        iam_moto,
        bucket,
        config=gateway_config(tmp_path, iam_moto, bucket, queue_url),
    )
    try:
        enforce_iam(iam_moto)

        check = cli(
            "check-config",
            "--live",
            "--send-test-event",
            "--config",
            str(config),
            env=user_env(key),
        )
        assert check.returncode == 0, check.stdout + check.stderr
        lines = check.stdout.splitlines()
        live = [
            line
            for line in lines
            if "(" in line
            and line.split()[0]
            in {"bucket", "list", "multipart", "object", "open", "queue", "test"}
        ]
        assert len(live) == 7, check.stdout
        assert all(line.rstrip().split("  ")[-1].strip().startswith("ok") for line in live), (
            check.stdout
        )

        pdf = make_pdf(tmp_path / "scan.pdf", 7 * 1024 * 1024)
        running.sftp(f"put {pdf} /scan.pdf\n")
        assert running.object_sha256("incoming/alice/scan.pdf") == sha256_file(pdf)
        # Nothing of the live check is left behind.
        s3 = user_client("s3", iam_moto, key)
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="incoming/")
        assert [o["Key"] for o in listed.get("Contents", [])] == ["incoming/alice/scan.pdf"]
        assert s3.list_multipart_uploads(Bucket=bucket, Prefix="incoming/").get("Uploads") is None

        for outside in ("elsewhere/x.pdf", "x.pdf"):
            with pytest.raises(ClientError) as denied:
                s3.put_object(Bucket=bucket, Key=outside, Body=b"%PDF-1.4\n")
            assert denied.value.response["Error"]["Code"] == "AccessDenied"

        weak = cli("check-config", "--live", "--config", str(config), env=user_env(weak_key))
        assert weak.returncode == 1
        [multipart] = [line for line in weak.stdout.splitlines() if line.startswith("multipart")]
        assert multipart.endswith("DENIED (AccessDenied)")
        assert "1 of 6 live checks failed" in weak.stderr
    finally:
        running.stop()
