"""S3 storage over boto3: one shared client, connection pooling, errors translated once."""

from __future__ import annotations

import base64
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from functools import cached_property, partial
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
from sftp_gateway.storage.checksums import ChecksumRefused, FullObjectChecksum, crc64nvme_b64
from sftp_gateway.storage.crt import CrtRequests, uses_crt

log = logging.getLogger(__name__)
T = TypeVar("T")
SINGLE_COPY_LIMIT = MAX_SINGLE_COPY
PROBE_KEYS = 50
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


def crc32_b64(data: bytes | bytearray | memoryview) -> str:
    """S3's x-amz-checksum-crc32: big-endian CRC32, base64."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def completed_part(part: Part) -> dict[str, Any]:
    """A Parts entry of CompleteMultipartUpload, with the checksum the part was sent with."""
    entry: dict[str, Any] = {"PartNumber": part.number, "ETag": part.etag}
    if part.crc64nvme:
        entry["ChecksumCRC64NVME"] = part.crc64nvme
    elif part.checksum:
        entry["ChecksumCRC32"] = part.checksum
    return entry


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


def sends_checksums(config: StorageConfig) -> bool:
    """Every body carries a checksum S3 verifies (an `auto` full-object checksum may fall
    back to none when part_checksums is off)."""
    return config.part_checksums or config.full_object_checksum == "on"


def client_config(config: StorageConfig) -> BotoConfig:
    """The upload client: every S3 call gets these timeouts and retry budget."""
    return BotoConfig(
        max_pool_connections=max(32, config.max_concurrency * 16),
        # Every parameter is built by this module, never taken from a client: botocore's
        # per-call validation of them is ~0.2 ms of CPU per request (a small file makes
        # two), for nothing.
        parameter_validation=False,
        retries={"max_attempts": config.max_attempts, "mode": "standard"},
        # We send our own checksum per part (CRC32 or CRC64NVME); no second pass for a
        # default checksum.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Each part carries our checksum, which S3 verifies; hashing every body
        # again with SHA-256 for the signature would be a second full pass.
        s3={"payload_signing_enabled": not sends_checksums(config), **endpoint_options(config)},
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


class TranslatedBody:
    """A GET's streaming body whose read errors are mapped like the request's."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        with translated("read"):
            data: bytes = self._body.read(size if size >= 0 else None)
            return data

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> TranslatedBody:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
        self._full_object = FullObjectChecksum(
            config.full_object_checksum, config.endpoint_url or "S3"
        )
        self._uses_crt = uses_crt(config.put_client, os.environ)

    @cached_property
    def _crt(self) -> CrtRequests | None:
        """awscrt's client for small PUTs and listings (storage.put_client), built at the
        first such request, so a storage that never sends one starts no CRT thread."""
        if self._uses_crt:
            return CrtRequests(self.client, self.bucket, self._config)
        return None

    @property
    def _put_object(self) -> Callable[..., Any]:
        """PutObject, by awscrt or botocore (crt.py decides per request)."""
        crt = self._crt
        return crt.put_object if crt else cast("Callable[..., Any]", self.client.put_object)

    @property
    def _list_objects(self) -> Callable[..., Any]:
        """ListObjectsV2, by awscrt or botocore: a session's listing costs a third of
        the CPU through awscrt."""
        crt = self._crt
        return (
            crt.list_objects_v2 if crt else cast("Callable[..., Any]", self.client.list_objects_v2)
        )

    @property
    def full_object_checksum(self) -> bool:
        return self._full_object.active

    def _call(self, action: str, fn: Callable[..., T], **kwargs: Any) -> T:
        with translated(action):
            return fn(Bucket=self.bucket, **kwargs)

    def _call_with_checksum(self, action: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """A request carrying the full-object checksum: with `auto`, the store's refusal
        of it is ChecksumRefused (make the request again without), not a failure."""
        with translated(action):
            try:
                return fn(Bucket=self.bucket, **kwargs)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if self._full_object.falls_back(code):
                    raise ChecksumRefused(f"storage refused the checksum ({code})") from exc
                raise

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
        resp = self._call("list", self._list_objects, Prefix=prefix, MaxKeys=1)
        return cast(bool, resp.get("KeyCount", 0) > 0)

    def probe(self, key: str) -> Probe:
        """File, directory or nothing, in one ListObjectsV2 instead of HEAD + LIST.

        Keys starting with `key` come back sorted, so `key` itself and the `key/`
        prefix are among the first few unless many siblings like `key-1` sort before
        them; then it falls back to HEAD and a prefix check.
        """
        resp = self._call("stat", self._list_objects, Prefix=key, Delimiter="/", MaxKeys=PROBE_KEYS)
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

    def probe_variants(
        self, key: str, suffixes: Sequence[str]
    ) -> tuple[Probe, dict[str, ObjectInfo]]:
        """probe(key), and the objects at key + each suffix, from the same LIST (they
        share its prefix); beyond its first page, HEAD and a prefix check instead."""
        resp = self._call("stat", self._list_objects, Prefix=key, Delimiter="/", MaxKeys=PROBE_KEYS)
        found = {
            obj["Key"]: ObjectInfo(obj["Key"], obj["Size"], obj.get("LastModified"))
            for obj in resp.get("Contents", [])
        }
        is_dir = any(p["Prefix"] == key + "/" for p in resp.get("CommonPrefixes", []))
        wanted = [key, *(key + suffix for suffix in suffixes)]
        if resp.get("IsTruncated"):
            for name in wanted:
                info = found.get(name) or self.head(name)
                if info is not None:
                    found[name] = ObjectInfo(name, info.size, info.modified)
            is_dir = is_dir or self.has_prefix(key + "/")
        variants = {suffix: found[key + suffix] for suffix in suffixes if key + suffix in found}
        return Probe(found.get(key), is_dir), variants

    def list_dir(self, prefix: str) -> Iterator[Entry]:
        """Files and sub-directories directly under `prefix`, every page of them."""
        with translated("list"):
            for page in self._list_pages(Prefix=prefix, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(prefix) :].rstrip("/")
                    if name:
                        yield Entry(name=name, is_dir=True)
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix) :]
                    if name and "/" not in name:  # 'dir/' markers are not files
                        yield Entry(name, False, obj["Size"], obj.get("LastModified"))

    def _list_pages(self, **params: str) -> Iterator[dict[str, Any]]:
        """ListObjectsV2, page after page. Not botocore's paginator: each of its pages
        deep-copies botocore's client context, an eighth of the CPU of a session that
        connects, lists one directory and leaves."""
        while True:
            page = self._list_objects(Bucket=self.bucket, **params)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

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
        """One PutObject; tags ride on it (x-amz-tagging), no second request. With the
        full-object checksum it carries a CRC64NVME (a refusal in `auto`: sent again
        with the CRC32 of storage.part_checksums)."""
        put = partial(
            self._put_object,
            Key=key,
            Body=body,
            Metadata=metadata,
            ContentType=content_type,
            **({"Tagging": urlencode(tags)} if tags else {}),
            **({"ContentEncoding": content_encoding} if content_encoding else {}),
            **self._sse,
        )
        if self.full_object_checksum:
            with suppress(ChecksumRefused):
                self._call_with_checksum("upload", put, ChecksumCRC64NVME=crc64nvme_b64(body))
                return
        self._call("upload", put, **self._checksum(body))

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
        full_object_checksum: bool = False,
    ) -> str:
        """CreateMultipartUpload; with `full_object_checksum`, for a FULL_OBJECT
        CRC64NVME (in `auto`, a store refusing it raises ChecksumRefused)."""
        create = partial(
            self.client.create_multipart_upload,
            Key=key,
            Metadata=metadata,
            ContentType=content_type,
            **({"ContentEncoding": content_encoding} if content_encoding else {}),
            **self._sse,
        )
        if full_object_checksum:
            resp = self._call_with_checksum(
                "upload start", create, ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT"
            )
        else:
            crc32 = {"ChecksumAlgorithm": "CRC32"} if self._config.part_checksums else {}
            resp = self._call("upload start", create, **crc32)
        return str(resp["UploadId"])

    def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | bytearray,
        *,
        full_object_checksum: bool = False,
    ) -> Part:
        """One part with its CRC64NVME (an upload with the full-object checksum) or the
        CRC32 of storage.part_checksums; S3 verifies either."""
        if full_object_checksum:
            checksum = {"ChecksumCRC64NVME": crc64nvme_b64(body)}
        else:
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
        return Part(
            number=number,
            etag=resp["ETag"],
            size=len(body),
            checksum=checksum.get("ChecksumCRC32"),
            crc64nvme=checksum.get("ChecksumCRC64NVME"),
        )

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[Part],
        *,
        full_object_crc64nvme: str | None = None,
    ) -> None:
        """CompleteMultipartUpload with each part's checksum and, for an upload with the
        full-object checksum, the object's CRC64NVME, which S3 checks."""
        ordered = sorted(parts, key=lambda p: p.number)
        whole = (
            {"ChecksumCRC64NVME": full_object_crc64nvme, "ChecksumType": "FULL_OBJECT"}
            if full_object_crc64nvme
            else {}
        )
        try:
            self._call(
                "upload completion",
                self.client.complete_multipart_upload,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [completed_part(p) for p in ordered]},
                **whole,
            )
        except NotFound as exc:
            # NoSuchUpload: completed already (a retry after a lost answer: MinIO and
            # Ceph answer so) or aborted. Not "no such file": only the object can tell.
            raise StorageError(
                "storage no longer knows the multipart upload (completed or aborted)"
            ) from exc

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
                        Part(
                            p["PartNumber"],
                            p["ETag"],
                            p["Size"],
                            p.get("ChecksumCRC32"),
                            crc64nvme=p.get("ChecksumCRC64NVME"),
                        )
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
            # With awscrt installed, "auto" picks the CRT transfer client on some EC2
            # types, which ignores this client's timeouts and retries: always ours.
            preferred_transfer_client="classic",
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
        """A stream of the object from `offset` (a ranged GET); a failure while its
        body is read (S3 reset or stalled mid-stream) is a StorageError too."""
        resp = self._call("read", self.client.get_object, Key=key, Range=f"bytes={offset}-")
        return cast(BinaryIO, TranslatedBody(resp["Body"]))

    def delete(self, key: str) -> None:
        self._call("delete", self.client.delete_object, Key=key)

    def make_dir(self, prefix: str) -> None:
        self._call("mkdir", self.client.put_object, Key=prefix, Body=b"", **self._sse)
