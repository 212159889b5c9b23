"""S3 storage over boto3: one shared client, connection pooling, errors translated once."""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import urlencode

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from sftp_gateway import metrics
from sftp_gateway.config import StorageConfig
from sftp_gateway.errors import NotFound, StorageError
from sftp_gateway.s3limits import MAX_SINGLE_COPY
from sftp_gateway.storage.base import Entry, ObjectInfo, Part, Probe
from sftp_gateway.storage.botocompat import cache_endpoints_per_bucket

log = logging.getLogger(__name__)
T = TypeVar("T")
SINGLE_COPY_LIMIT = MAX_SINGLE_COPY
PROBE_KEYS = 50
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


def crc32_b64(data: bytes | bytearray | memoryview) -> str:
    """S3's x-amz-checksum-crc32: big-endian CRC32, base64."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def endpoint_options(config: StorageConfig) -> dict[str, Any]:
    """botocore's `s3` options that choose the host and path of every request."""
    style = config.addressing_style
    if style == "auto" and config.endpoint_url:
        style = "path"  # S3-compatible stores rarely have a DNS name per bucket
    return {
        "addressing_style": style,
        "use_dualstack_endpoint": config.use_dualstack_endpoint,
        "use_accelerate_endpoint": config.use_accelerate_endpoint,
    }


def client_config(config: StorageConfig) -> BotoConfig:
    """The upload client: every S3 call gets these timeouts and retry budget."""
    return BotoConfig(
        max_pool_connections=max(32, config.max_concurrency * 16),
        # Every parameter is built by this module, never taken from a client: botocore's
        # per-call validation of them is ~0.2 ms of CPU per request (a small file makes
        # two), for nothing.
        parameter_validation=False,
        retries={"max_attempts": config.max_attempts, "mode": "standard"},
        # We send our own CRC32 per part; no second pass for a default checksum.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Each part carries our CRC32, which S3 verifies; hashing every body
        # again with SHA-256 for the signature would be a second full pass.
        s3={"payload_signing_enabled": not config.part_checksums, **endpoint_options(config)},
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
    )


@contextmanager
def translated(action: str) -> Iterator[None]:
    """The one place S3 errors become gateway errors; details go to the log."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            raise NotFound(f"{action}: not found") from exc
        log.warning("S3 %s failed: %s", action, exc)
        raise StorageError(f"storage error during {action} ({code or 'unknown'})") from exc
    except BotoCoreError as exc:
        log.warning("S3 %s failed: %s", action, exc)
        raise StorageError(f"storage unavailable during {action}") from exc


class S3Storage:
    """The Storage protocol on one bucket of S3 or an S3-compatible server."""

    def __init__(self, config: StorageConfig, client: Any | None = None) -> None:
        self.bucket = config.bucket
        self._config = config
        self.client = client or boto3.session.Session().client(
            "s3",
            region_name=config.region,
            endpoint_url=config.endpoint_url,
            config=client_config(config),
        )
        metrics.instrument_s3(self.client)  # latency and errors per operation
        cache_endpoints_per_bucket(self.client)  # not per key: ~0.3 ms CPU per request
        self._probe_client: Any | None = None
        self._sse: dict[str, str] = {}
        if config.sse:
            self._sse["ServerSideEncryption"] = config.sse
        if config.kms_key_id:
            self._sse["SSEKMSKeyId"] = config.kms_key_id

    def _call(self, action: str, fn: Callable[..., T], **kwargs: Any) -> T:
        with translated(action):
            return fn(Bucket=self.bucket, **kwargs)

    def ping(self, timeout: float) -> None:
        """HeadBucket within about `timeout` seconds, one attempt (readiness checks):
        the upload client retries for minutes, which a health check must not wait for."""
        if self._probe_client is None:
            self._probe_client = boto3.session.Session().client(
                "s3",
                region_name=self._config.region,
                endpoint_url=self._config.endpoint_url,
                config=BotoConfig(
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    # total_max_attempts counts the first try; max_attempts 1 made two.
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    s3=endpoint_options(self._config),
                ),
            )
        self._probe_client.head_bucket(Bucket=self.bucket)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self._call("stat", self.client.head_object, Key=key)
        except NotFound:
            return None
        return ObjectInfo(
            key=key,
            size=resp["ContentLength"],
            modified=resp.get("LastModified"),
            metadata=resp.get("Metadata", {}),
            content_type=resp.get("ContentType"),
            content_encoding=resp.get("ContentEncoding"),
        )

    def has_prefix(self, prefix: str) -> bool:
        resp = self._call("list", self.client.list_objects_v2, Prefix=prefix, MaxKeys=1)
        return cast(bool, resp.get("KeyCount", 0) > 0)

    def probe(self, key: str) -> Probe:
        """File, directory or nothing, in one ListObjectsV2 instead of HEAD + LIST.

        Keys starting with `key` come back sorted, so `key` itself and the `key/`
        prefix are among the first few unless many siblings like `key-1` sort before
        them; then it falls back to HEAD and a prefix check.
        """
        resp = self._call(
            "stat", self.client.list_objects_v2, Prefix=key, Delimiter="/", MaxKeys=PROBE_KEYS
        )
        file = next(
            (
                ObjectInfo(key, obj["Size"], obj.get("LastModified"))
                for obj in resp.get("Contents", [])
                if obj["Key"] == key
            ),
            None,
        )
        is_dir = any(p["Prefix"] == key + "/" for p in resp.get("CommonPrefixes", []))
        if resp.get("IsTruncated") and not (file and is_dir):
            return Probe(self.head(key), self.has_prefix(key + "/"))
        return Probe(file, is_dir)

    def list_dir(self, prefix: str) -> Iterator[Entry]:
        """Files and sub-directories directly under `prefix`, every page of them."""
        paginator = self.client.get_paginator("list_objects_v2")
        with translated("list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(prefix) :].rstrip("/")
                    if name:
                        yield Entry(name=name, is_dir=True)
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix) :]
                    if name and "/" not in name:  # 'dir/' markers are not files
                        yield Entry(name, False, obj["Size"], obj.get("LastModified"))

    def put(
        self,
        key: str,
        body: bytes | bytearray,
        metadata: dict[str, str],
        content_type: str,
        *,
        tags: dict[str, str] | None = None,
        content_encoding: str | None = None,
    ) -> None:
        """One PutObject; tags ride on it (x-amz-tagging), no second request."""
        self._call(
            "upload",
            self.client.put_object,
            Key=key,
            Body=body,
            Metadata=metadata,
            ContentType=content_type,
            **({"Tagging": urlencode(tags)} if tags else {}),
            **({"ContentEncoding": content_encoding} if content_encoding else {}),
            **self._checksum(body),
            **self._sse,
        )

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        """Replace the object's tag set: the way to attach what is known only after
        completion (the SHA-256) without rewriting the object (no copy, no new version,
        no second ObjectCreated event)."""
        self._call(
            "tagging",
            self.client.put_object_tagging,
            Key=key,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )

    def get_tags(self, key: str) -> dict[str, str]:
        resp = self._call("tagging", self.client.get_object_tagging, Key=key)
        return {tag["Key"]: tag["Value"] for tag in resp.get("TagSet", [])}

    def _checksum(self, body: bytes | bytearray) -> dict[str, str]:
        return {"ChecksumCRC32": crc32_b64(body)} if self._config.part_checksums else {}

    def create_multipart(
        self,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        *,
        content_encoding: str | None = None,
    ) -> str:
        resp = self._call(
            "upload start",
            self.client.create_multipart_upload,
            Key=key,
            Metadata=metadata,
            ContentType=content_type,
            **({"ContentEncoding": content_encoding} if content_encoding else {}),
            **({"ChecksumAlgorithm": "CRC32"} if self._config.part_checksums else {}),
            **self._sse,
        )
        return str(resp["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes | bytearray) -> Part:
        checksum = self._checksum(body)
        resp = self._call(
            "upload part",
            self.client.upload_part,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            **checksum,
        )
        crc = checksum.get("ChecksumCRC32")
        return Part(number=number, etag=resp["ETag"], size=len(body), checksum=crc)

    def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> None:
        ordered = sorted(parts, key=lambda p: p.number)
        self._call(
            "upload completion",
            self.client.complete_multipart_upload,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": p.number, "ETag": p.etag, "ChecksumCRC32": p.checksum}
                    if p.checksum
                    else {"PartNumber": p.number, "ETag": p.etag}
                    for p in ordered
                ]
            },
        )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with suppress(NotFound):  # already gone: aborting is idempotent
            self._call(
                "upload abort", self.client.abort_multipart_upload, Key=key, UploadId=upload_id
            )

    def list_parts(self, key: str, upload_id: str) -> list[Part]:
        parts: list[Part] = []
        paginator = self.client.get_paginator("list_parts")
        with translated("list parts"):
            for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                for p in page.get("Parts", []):
                    parts.append(
                        Part(p["PartNumber"], p["ETag"], p["Size"], p.get("ChecksumCRC32"))
                    )
        return parts

    def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str, datetime]]:
        """(key, upload id, initiated) of every multipart upload still open under prefix."""
        out = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        with translated("list uploads"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for up in page.get("Uploads", []):
                    out.append((up["Key"], up["UploadId"], up["Initiated"]))
        return out

    def replace_metadata(
        self,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        size: int,
        *,
        content_encoding: str | None = None,
    ) -> None:
        """Set metadata known only at the end (the SHA-256) with an in-place copy.

        Only with storage.sha256_in_metadata: the copy rewrites the whole object (time
        and a request billed by size, a second ObjectCreated event, and on a versioned
        bucket a full-size noncurrent version)."""
        if size <= SINGLE_COPY_LIMIT:
            self._call(
                "metadata update",
                self.client.copy_object,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                Metadata=metadata,
                ContentType=content_type,
                MetadataDirective="REPLACE",
                **({"ContentEncoding": content_encoding} if content_encoding else {}),
                **self._sse,
            )
        else:
            self._managed_copy(key, key, metadata, content_type, content_encoding)

    def copy(self, source: str, target: str, metadata: dict[str, str] | None = None) -> None:
        """Server-side copy; parallel UploadPartCopy for big objects (s3transfer)."""
        info = self.head(source)
        if info is None:
            raise NotFound("copy: source not found")
        merged = {**info.metadata, **(metadata or {})}
        # A multipart copy (UploadPartCopy) starts a new object: it carries no tags.
        tags = self.get_tags(source) if info.size > self._config.copy_part_size else {}
        self._managed_copy(
            source,
            target,
            merged,
            info.content_type or "application/octet-stream",
            info.content_encoding,
        )
        if tags:
            self.set_tags(target, tags)

    def _managed_copy(
        self,
        source: str,
        target: str,
        metadata: dict[str, str],
        content_type: str,
        content_encoding: str | None = None,
    ) -> None:
        transfer = TransferConfig(
            multipart_threshold=self._config.copy_part_size,
            multipart_chunksize=self._config.copy_part_size,
            max_concurrency=self._config.max_concurrency * 2,
        )
        extra = {"Metadata": metadata, "ContentType": content_type, **self._sse}
        if content_encoding:
            extra["ContentEncoding"] = content_encoding
        if source == target:
            extra["MetadataDirective"] = "REPLACE"
        with translated("copy"):
            self.client.copy(
                {"Bucket": self.bucket, "Key": source},
                self.bucket,
                target,
                ExtraArgs=extra,
                Config=transfer,
            )

    def open_read(self, key: str, offset: int) -> BinaryIO:
        """A stream of the object from `offset` (a ranged GET)."""
        resp = self._call("read", self.client.get_object, Key=key, Range=f"bytes={offset}-")
        return resp["Body"]  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        self._call("delete", self.client.delete_object, Key=key)

    def make_dir(self, prefix: str) -> None:
        self._call("mkdir", self.client.put_object, Key=prefix, Body=b"", **self._sse)
