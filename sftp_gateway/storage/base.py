"""What the gateway needs from an object store, independent of boto3."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    content_encoding: str | None = None


@dataclass(frozen=True)
class Entry:
    """One name in a directory listing: a file (with its size) or a sub-directory."""

    name: str
    is_dir: bool
    size: int = 0
    modified: datetime | None = None


@dataclass(frozen=True)
class Probe:
    """What a name is: a file (with its info), a directory (a prefix), both, or nothing."""

    file: ObjectInfo | None
    is_dir: bool

    @property
    def exists(self) -> bool:
        return self.file is not None or self.is_dir


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    size: int
    checksum: str | None = None
    # Bytes of the file this part carries when it is stored compressed (None: `size`).
    source_size: int | None = None
    # Its CRC64NVME (base64) in an upload with the full-object checksum, instead of
    # `checksum` (CRC32): the object's checksum is combined from these and the sizes.
    crc64nvme: str | None = None


class Storage(Protocol):
    bucket: str

    @property
    def full_object_checksum(self) -> bool:
        """New objects get a full-object CRC64NVME (storage.full_object_checksum)."""
        ...

    def head(self, key: str) -> ObjectInfo | None: ...
    def has_prefix(self, prefix: str) -> bool: ...
    def probe(self, key: str) -> Probe: ...
    def list_dir(self, prefix: str) -> Iterator[Entry]: ...
    def put(
        self,
        key: str,
        body: bytes | bytearray,
        metadata: dict[str, str],
        content_type: str,
        *,
        tags: dict[str, str] | None = None,
        content_encoding: str | None = None,
    ) -> None: ...
    def create_multipart(
        self,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        *,
        content_encoding: str | None = None,
        full_object_checksum: bool = False,
    ) -> str: ...
    def set_tags(self, key: str, tags: dict[str, str]) -> None: ...
    def get_tags(self, key: str) -> dict[str, str]: ...
    def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | bytearray,
        *,
        full_object_checksum: bool = False,
    ) -> Part: ...
    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[Part],
        *,
        full_object_crc64nvme: str | None = None,
    ) -> None: ...
    def abort_multipart(self, key: str, upload_id: str) -> None: ...
    def list_parts(self, key: str, upload_id: str) -> list[Part]: ...
    def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str, datetime]]: ...
    def replace_metadata(
        self,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        size: int,
        *,
        content_encoding: str | None = None,
    ) -> None: ...
    def copy(self, source: str, target: str, metadata: dict[str, str] | None = None) -> None: ...
    def open_read(self, key: str, offset: int) -> BinaryIO: ...
    def delete(self, key: str) -> None: ...
    def make_dir(self, prefix: str) -> None: ...
