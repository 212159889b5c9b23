"""The Storage protocol in memory, with S3's rules, for fast tests and the fuzz harness.

It follows S3Storage's semantics (and S3's checks) closely enough that the gateway
cannot tell the difference: directories are key prefixes and `dir/` markers, a
multipart upload completes only with known parts, each but the last at least
`min_part_size`, and errors are the gateway's (NotFound, StorageError) as
`storage/s3.py` translates them. One lock makes it safe for the gateway's threads.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from sftp_gateway.errors import GatewayError, NotFound, StorageError
from sftp_gateway.storage.base import Entry, ObjectInfo, Part, Probe
from sftp_gateway.storage.checksums import FullObjectChecksum, FullObjectMode, crc64nvme_b64

S3_MIN_PART = 5 * 1024 * 1024
S3_MAX_PARTS = 10_000


@dataclass
class StoredObject:
    data: bytes
    metadata: dict[str, str]
    content_type: str
    modified: datetime
    etag: str
    tags: dict[str, str] = field(default_factory=dict)
    content_encoding: str | None = None
    crc64nvme: str | None = None  # the full-object checksum it was written with, verified


@dataclass
class MultipartUpload:
    key: str
    metadata: dict[str, str]
    content_type: str
    initiated: datetime
    parts: dict[int, tuple[Part, bytes]] = field(default_factory=dict)
    content_encoding: str | None = None
    full_object_checksum: bool = False  # created for a FULL_OBJECT CRC64NVME


def _now() -> datetime:
    return datetime.now(UTC)


def _etag(data: bytes | bytearray) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _multipart_etag(parts: list[Part]) -> str:
    """S3's ETag of a multipart object: MD5 of the parts' MD5s, then '-<count>'."""
    digests = b"".join(bytes.fromhex(p.etag.strip('"')) for p in parts)
    return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"'


class MemoryStorage:
    """One bucket in a dict. `fail_next` makes an operation raise once, for fault tests.
    Like S3, it verifies every full-object CRC64NVME it is given against the bytes."""

    def __init__(
        self,
        bucket: str = "memory",
        *,
        min_part_size: int = S3_MIN_PART,
        full_object_checksum: FullObjectMode = "auto",
    ) -> None:
        self.bucket = bucket
        self.min_part_size = min_part_size
        self._full_object = FullObjectChecksum(full_object_checksum, "memory")
        self._lock = threading.RLock()
        self._objects: dict[str, StoredObject] = {}
        self._uploads: dict[str, MultipartUpload] = {}
        self._failures: dict[str, list[GatewayError]] = {}
        self.calls: Counter[str] = Counter()  # operation name -> times called

    # -- test hooks ------------------------------------------------------------------

    def fail_next(self, operation: str, error: GatewayError | None = None) -> None:
        """The next call of `operation` (a method name, e.g. 'upload_part') raises."""
        if not hasattr(self, operation):
            raise ValueError(f"MemoryStorage has no operation {operation!r}")
        failure = error or StorageError(f"storage error during {operation} (InternalError)")
        with self._lock:
            self._failures.setdefault(operation, []).append(failure)

    def _check_failure(self, operation: str) -> None:
        self.calls[operation] += 1
        pending = self._failures.get(operation)
        if pending:
            raise pending.pop(0)

    def keys(self) -> list[str]:
        """Every object key, sorted (directory markers included)."""
        with self._lock:
            return sorted(self._objects)

    def read_bytes(self, key: str) -> bytes:
        with self._lock:
            return self._object(key, "read").data

    def object_crc64nvme(self, key: str) -> str | None:
        """The full-object CRC64NVME the object was written with (and that matched its
        bytes), as HeadObject with ChecksumMode shows it; None: written without."""
        with self._lock:
            return self._object(key, "read").crc64nvme

    @property
    def full_object_checksum(self) -> bool:
        return self._full_object.active

    # -- looking ---------------------------------------------------------------------

    def _object(self, key: str, action: str) -> StoredObject:
        found = self._objects.get(key)
        if found is None:
            raise NotFound(f"{action}: not found")
        return found

    def _info(self, key: str, obj: StoredObject) -> ObjectInfo:
        return ObjectInfo(
            key,
            len(obj.data),
            obj.modified,
            dict(obj.metadata),
            obj.content_type,
            obj.content_encoding,
        )

    def head(self, key: str) -> ObjectInfo | None:
        with self._lock:
            self._check_failure("head")
            obj = self._objects.get(key)
            return self._info(key, obj) if obj else None

    def has_prefix(self, prefix: str) -> bool:
        with self._lock:
            self._check_failure("has_prefix")
            return any(k.startswith(prefix) for k in self._objects)

    def probe(self, key: str) -> Probe:
        with self._lock:
            self._check_failure("probe")
            obj = self._objects.get(key)
            # Like S3Storage.probe (a LIST), the file's info carries no metadata.
            file = ObjectInfo(key, len(obj.data), obj.modified) if obj else None
            is_dir = any(k.startswith(key + "/") for k in self._objects)
            return Probe(file, is_dir)

    def probe_variants(
        self, key: str, suffixes: Sequence[str]
    ) -> tuple[Probe, dict[str, ObjectInfo]]:
        """probe(key), and the objects at key + each suffix (S3Storage: one LIST)."""
        with self._lock:
            self._check_failure("probe_variants")
            found = {
                name: ObjectInfo(name, len(obj.data), obj.modified)
                for name in (key, *(key + suffix for suffix in suffixes))
                if (obj := self._objects.get(name)) is not None
            }
            is_dir = any(k.startswith(key + "/") for k in self._objects)
        variants = {suffix: found[key + suffix] for suffix in suffixes if key + suffix in found}
        return Probe(found.get(key), is_dir), variants

    def list_dir(self, prefix: str) -> Iterator[Entry]:
        """S3's LIST with Delimiter='/': sub-directories then files, each sorted."""
        with self._lock:
            self._check_failure("list_dir")
            dirs: set[str] = set()
            files: list[Entry] = []
            for key in sorted(self._objects):
                if not key.startswith(prefix):
                    continue
                rest = key[len(prefix) :]
                if "/" in rest:
                    dirs.add(rest.split("/", 1)[0])
                elif rest:
                    obj = self._objects[key]
                    files.append(Entry(rest, False, len(obj.data), obj.modified))
        entries = [Entry(name, True) for name in sorted(dirs) if name] + files
        yield from entries

    # -- writing ---------------------------------------------------------------------

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
        data = bytes(body)
        # S3Storage sends this CRC64NVME, which S3 checks against the bytes it got.
        crc64nvme = crc64nvme_b64(data) if self.full_object_checksum else None
        with self._lock:
            self._check_failure("put")
            self._objects[key] = StoredObject(
                data,
                dict(metadata),
                content_type,
                _now(),
                _etag(data),
                dict(tags or {}),
                content_encoding,
                crc64nvme,
            )

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        """S3's PutObjectTagging: the whole tag set replaced, the object untouched."""
        with self._lock:
            self._check_failure("set_tags")
            self._object(key, "tagging").tags = dict(tags)

    def get_tags(self, key: str) -> dict[str, str]:
        with self._lock:
            self._check_failure("get_tags")
            return dict(self._object(key, "tagging").tags)

    def make_dir(self, prefix: str) -> None:
        self.put(prefix, b"", {}, "application/x-directory")

    def delete(self, key: str) -> None:
        """Deleting a missing key succeeds, as in S3."""
        with self._lock:
            self._check_failure("delete")
            self._objects.pop(key, None)

    def replace_metadata(
        self,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        size: int,
        *,
        content_encoding: str | None = None,
    ) -> None:
        with self._lock:
            self._check_failure("replace_metadata")
            obj = self._object(key, "metadata update")
            obj.metadata, obj.content_type, obj.modified = dict(metadata), content_type, _now()
            obj.content_encoding = content_encoding

    def copy(self, source: str, target: str, metadata: dict[str, str] | None = None) -> None:
        with self._lock:
            self._check_failure("copy")
            obj = self._objects.get(source)
            if obj is None:
                raise NotFound("copy: source not found")
            merged = {**obj.metadata, **(metadata or {})}
            self._objects[target] = StoredObject(
                obj.data,
                merged,
                obj.content_type,
                _now(),
                obj.etag,
                dict(obj.tags),  # CopyObject's default TaggingDirective is COPY
                obj.content_encoding,
                obj.crc64nvme,  # the same bytes: S3 keeps the checksum's algorithm
            )

    def open_read(self, key: str, offset: int) -> BinaryIO:
        """The object from `offset`; a range past the end is S3's InvalidRange."""
        with self._lock:
            self._check_failure("open_read")
            data = self._object(key, "read").data
        if offset < 0 or offset > len(data) or (offset == len(data) and data):
            raise StorageError("storage error during read (InvalidRange)")
        return io.BytesIO(data[offset:])

    # -- multipart -------------------------------------------------------------------

    def _upload(self, key: str, upload_id: str, action: str) -> MultipartUpload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise NotFound(f"{action}: not found")
        return upload

    def create_multipart(
        self,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        *,
        content_encoding: str | None = None,
        full_object_checksum: bool = False,
    ) -> str:
        with self._lock:
            self._check_failure("create_multipart")
            upload_id = uuid.uuid4().hex
            self._uploads[upload_id] = MultipartUpload(
                key,
                dict(metadata),
                content_type,
                _now(),
                content_encoding=content_encoding,
                full_object_checksum=full_object_checksum,
            )
            return upload_id

    def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | bytearray,
        *,
        full_object_checksum: bool = False,
    ) -> Part:
        """S3's checks: a part of an upload made for the full-object checksum carries a
        CRC64NVME, and no other upload's part does (S3: InvalidRequest)."""
        data = bytes(body)
        with self._lock:
            self._check_failure("upload_part")
            upload = self._upload(key, upload_id, "upload part")
            if not 1 <= number <= S3_MAX_PARTS:
                raise StorageError("storage error during upload part (InvalidArgument)")
            if full_object_checksum != upload.full_object_checksum:
                raise StorageError("storage error during upload part (InvalidRequest)")
            crc64nvme = crc64nvme_b64(data) if full_object_checksum else None
            part = Part(number, _etag(data), len(data), crc64nvme=crc64nvme)
            upload.parts[number] = (part, data)
            return part

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[Part],
        *,
        full_object_crc64nvme: str | None = None,
    ) -> None:
        """S3's checks: parts known with their ETag (and CRC64NVME), none repeated, all
        but the last big enough, the object's CRC64NVME that of its bytes; then the
        object appears and the upload is gone."""
        with self._lock:
            self._check_failure("complete_multipart")
            upload = self._upload(key, upload_id, "upload completion")
            ordered = sorted(parts, key=lambda p: p.number)
            self._check_completion(upload, ordered)
            data = b"".join(upload.parts[p.number][1] for p in ordered)
            self._check_full_object(upload, data, full_object_crc64nvme)
            self._objects[key] = StoredObject(
                data,
                upload.metadata,
                upload.content_type,
                _now(),
                _multipart_etag(ordered),
                content_encoding=upload.content_encoding,
                crc64nvme=full_object_crc64nvme,
            )
            del self._uploads[upload_id]

    def _check_completion(self, upload: MultipartUpload, ordered: list[Part]) -> None:
        if not ordered:
            raise StorageError("storage error during upload completion (MalformedXML)")
        numbers = [p.number for p in ordered]
        if len(set(numbers)) != len(numbers):
            raise StorageError("storage error during upload completion (InvalidPartOrder)")
        for part in ordered:
            stored = upload.parts.get(part.number)
            if stored is None or stored[0].etag != part.etag:
                raise StorageError("storage error during upload completion (InvalidPart)")
            if upload.full_object_checksum and part.crc64nvme != stored[0].crc64nvme:
                raise StorageError("storage error during upload completion (BadDigest)")
        if any(upload.parts[p.number][0].size < self.min_part_size for p in ordered[:-1]):
            raise StorageError("storage error during upload completion (EntityTooSmall)")

    @staticmethod
    def _check_full_object(upload: MultipartUpload, data: bytes, claimed: str | None) -> None:
        """A whole-object CRC64NVME only for an upload made for it, and S3 refuses one
        that is not the CRC64NVME of the object's bytes."""
        if claimed is None:
            return
        if not upload.full_object_checksum:
            raise StorageError("storage error during upload completion (InvalidRequest)")
        if claimed != crc64nvme_b64(data):
            raise StorageError("storage error during upload completion (BadDigest)")

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Idempotent, like S3Storage.abort_multipart."""
        with self._lock:
            self._check_failure("abort_multipart")
            upload = self._uploads.get(upload_id)
            if upload is not None and upload.key == key:
                del self._uploads[upload_id]

    def list_parts(self, key: str, upload_id: str) -> list[Part]:
        with self._lock:
            self._check_failure("list_parts")
            upload = self._upload(key, upload_id, "list parts")
            return [upload.parts[n][0] for n in sorted(upload.parts)]

    def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str, datetime]]:
        """(key, upload id, initiated) of every multipart upload still open under prefix."""
        with self._lock:
            self._check_failure("list_multipart_uploads")
            found = [
                (up.key, upload_id, up.initiated)
                for upload_id, up in self._uploads.items()
                if up.key.startswith(prefix)
            ]
        return sorted(found, key=lambda row: (row[0], row[2]))
