"""The compose stack's init step: wait for S3 and SQS, create the bucket, migrate the catalog.

Idempotent: run at every `docker compose up`, it changes nothing the second time.
Reads the same config as the gateway ($SFTP_GATEWAY_CONFIG).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from sftp_gateway.config import load_settings

T = TypeVar("T")
WAIT_SECONDS = 120


def retry(what: str, action: Callable[[], T]) -> T:
    """Call until the service answers (it may still be starting), for WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            return action()
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                sys.exit(f"init: {what}: {exc}")
            time.sleep(2)


def main() -> None:
    settings = load_settings(None)
    storage, events = settings.storage, settings.events
    s3 = boto3.client("s3", endpoint_url=storage.endpoint_url, region_name=storage.region)
    buckets = retry("S3", lambda: {b["Name"] for b in s3.list_buckets().get("Buckets", [])})
    if storage.bucket not in buckets:
        retry("create bucket", lambda: s3.create_bucket(Bucket=storage.bucket))
    print(f"init: bucket {storage.bucket} ready", flush=True)
    if events.queue_url:
        sqs = boto3.client("sqs", endpoint_url=events.endpoint_url, region_name=events.region)
        retry("SQS", lambda: sqs.get_queue_attributes(QueueUrl=events.queue_url))
        print(f"init: queue {events.queue_url} ready", flush=True)
    subprocess.run(["sftp-gateway", "db", "upgrade"], check=True)


if __name__ == "__main__":
    main()
