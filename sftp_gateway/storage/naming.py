"""storage.compression_naming: suffix. A compressed object is stored as `name.gz` or
`name.zst`, without Content-Encoding, so S3 tools download the compressed file as it is.

SFTP users still see, read, rename and remove `name`: this Storage sits between the
gateway and S3 and maps each key the gateway asks for (the file's key) to the object
that holds it (the key, or the key plus a suffix). The gateway, its catalog and its
events keep speaking of the file's key; only S3 sees the suffix.

The rule that keeps it unambiguous: in such a bucket a key ending in `.gz` or `.zst`
is the compressed form of the name without it. So a file whose own name ends so is
stored compressed under a second suffix (`a.gz` -> `a.gz.gz`), and one that would be
stored as it is (no compression for it) is refused. Writing a name removes its other
forms (the plain object written before compression was turned on, say), so a name is
one object. Costs: a LIST before each HEAD-like call, and one after each write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import BinaryIO, Protocol, runtime_checkable

from sftp_gateway.config import StorageConfig
from sftp_gateway.errors import NotFound, UploadRejected
from sftp_gateway.storage.base import Entry, ObjectInfo, Part, Probe, Storage

SUFFIXES = {"gzip": ".gz", "zstd": ".zst"}  # the compression -> the key's suffix
ALGORITHMS = {suffix: name for name, suffix in SUFFIXES.items()}
KNOWN_UPLOADS = 10_000  # multipart upload id -> stored key, remembered per process
_EPOCH = datetime.min.replace(tzinfo=UTC)


@runtime_checkable
class VariantStorage(Storage, Protocol):
    """A store that can say which of a key's suffixed forms exist in one request."""

    def probe_variants(
        self, key: str, suffixes: Sequence[str]
    ) -> tuple[Probe, dict[str, ObjectInfo]]: ...


def storage_for(config: StorageConfig, storage: Storage | None = None) -> Storage:
    """The gateway's Storage for this config: S3 (or the given store), with the suffix
    naming of compressed objects when storage.compression_naming says so."""
    if storage is None:
        from sftp_gateway.storage.s3 import S3Storage

        storage = S3Storage(config)
    if config.compression_naming != "suffix" or isinstance(storage, SuffixNamedStorage):
        return storage
    if not isinstance(storage, VariantStorage):
        raise TypeError(f"{type(storage).__name__} cannot name objects by suffix")
    return SuffixNamedStorage(storage)


def file_name(stored: str) -> str:
    """The name a stored key shows: without its compression suffix."""
    for suffix in ALGORITHMS:
        if stored.endswith(suffix):
            return stored[: -len(suffix)]
    return stored


class SuffixNamedStorage:
    """The Storage protocol in file keys, over a bucket whose compressed objects carry
    their compression as a key suffix."""

    def __init__(self, inner: VariantStorage) -> None:
        self.inner = inner
        self.bucket = inner.bucket
        self._uploads: dict[str, str] = {}  # multipart upload id -> its stored key
        if hasattr(inner, "ping"):  # /readyz asks the store (web/health.py)
            self.ping = inner.ping

    @property
    def full_object_checksum(self) -> bool:
        return self.inner.full_object_checksum

    # -- which object holds a file ------------------------------------------------------

    def _forms(self, key: str) -> tuple[Probe, dict[str, ObjectInfo]]:
        """Every stored form of the file `key` that exists (stored key -> its info),
        and whether `key` is also a directory."""
        probe, variants = self.inner.probe_variants(key, tuple(ALGORITHMS))
        forms = {key + suffix: info for suffix, info in variants.items()}
        if probe.file is not None and file_name(key) == key:  # else `key` is a form itself
            forms[key] = probe.file
        return probe, forms

    def _stored(self, key: str) -> tuple[str | None, Probe]:
        """The object holding the file (the newest form, should a write have left two),
        and the file as probe() shows it."""
        probe, forms = self._forms(key)
        if not forms:
            return None, Probe(None, probe.is_dir)
        stored, info = max(forms.items(), key=lambda item: item[1].modified or _EPOCH)
        return stored, Probe(ObjectInfo(key, info.size, info.modified), probe.is_dir)

    def _existing(self, key: str, action: str) -> str:
        stored, _ = self._stored(key)
        if stored is None:
            raise NotFound(f"{action}: not found")
        return stored

    def _key_for_write(self, key: str, content_encoding: str | None) -> str:
        """Where a new object of the file goes: the key plus its compression's suffix."""
        if content_encoding:
            return key + SUFFIXES[content_encoding]
        if file_name(key) != key:
            raise UploadRejected(
                f"{key.rsplit('/', 1)[-1]}: names ending in .gz or .zst are kept for "
                "compressed files on this server (storage.compression_naming: suffix)"
            )
        return key

    def _drop_other_forms(self, key: str, kept: str) -> None:
        """A file is one object: a write removes what held the name before."""
        _, forms = self._forms(key)
        for stored in forms:
            if stored != kept:
                self.inner.delete(stored)

    # -- looking -----------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        if key.endswith("/"):
            return self.inner.head(key)
        stored, _ = self._stored(key)
        info = self.inner.head(stored) if stored is not None else None
        if info is None or stored is None:
            return None
        metadata = dict(info.metadata)
        if stored != key:  # the suffix says how: also for objects put there by others
            metadata.setdefault("compression", ALGORITHMS[stored[len(key) :]])
        return replace(info, key=key, metadata=metadata)

    def has_prefix(self, prefix: str) -> bool:
        return self.inner.has_prefix(prefix)

    def probe(self, key: str) -> Probe:
        return self._stored(key)[1]

    def list_dir(self, prefix: str) -> Iterator[Entry]:
        """The directory in file names; a name with two forms (a write in progress of
        replacing one) is listed once."""
        seen: set[str] = set()
        for entry in self.inner.list_dir(prefix):
            if entry.is_dir:
                yield entry
                continue
            name = file_name(entry.name)
            if name not in seen:
                seen.add(name)
                yield replace(entry, name=name)

    def get_tags(self, key: str) -> dict[str, str]:
        return self.inner.get_tags(self._existing(key, "tagging"))

    def open_read(self, key: str, offset: int) -> BinaryIO:
        return self.inner.open_read(self._existing(key, "read"), offset)

    # -- writing -----------------------------------------------------------------------

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
        stored = self._key_for_write(key, content_encoding)
        self.inner.put(stored, body, metadata, content_type, tags=tags)
        self._drop_other_forms(key, stored)

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        self.inner.set_tags(self._existing(key, "tagging"), tags)

    def replace_metadata(
        self,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        size: int,
        *,
        content_encoding: str | None = None,
    ) -> None:
        stored = self._existing(key, "metadata update")
        self.inner.replace_metadata(stored, metadata, content_type, size)

    def copy(self, source: str, target: str, metadata: dict[str, str] | None = None) -> None:
        """A rename's copy: the object keeps its form (`a.pdf.gz` -> `b.pdf.gz`)."""
        stored = self._stored(source)[0]
        if stored is None:
            raise NotFound("copy: source not found")
        suffix = stored[len(source) :]
        copied = self._key_for_write(target, ALGORITHMS.get(suffix))
        self.inner.copy(stored, copied, metadata)
        self._drop_other_forms(target, copied)

    def delete(self, key: str) -> None:
        """Every form of the file (deleting what does not exist succeeds, as in S3)."""
        if key.endswith("/"):
            self.inner.delete(key)
            return
        for stored in self._forms(key)[1]:
            self.inner.delete(stored)

    def make_dir(self, prefix: str) -> None:
        self.inner.make_dir(prefix)

    # -- multipart -----------------------------------------------------------------------

    def create_multipart(
        self,
        key: str,
        metadata: dict[str, str],
        content_type: str,
        *,
        content_encoding: str | None = None,
        full_object_checksum: bool = False,
    ) -> str:
        stored = self._key_for_write(key, content_encoding)
        upload_id = self.inner.create_multipart(
            stored, metadata, content_type, full_object_checksum=full_object_checksum
        )
        self._remember(upload_id, stored)
        return upload_id

    def _remember(self, upload_id: str, stored: str) -> None:
        if len(self._uploads) >= KNOWN_UPLOADS:
            del self._uploads[next(iter(self._uploads))]  # the oldest
        self._uploads[upload_id] = stored

    def _upload_key(self, key: str, upload_id: str) -> str:
        """The stored key of a multipart upload of the file (made by another process,
        before a restart: asked of S3 once, by its id)."""
        stored = self._uploads.get(upload_id)
        if stored is None:
            found = [k for k, uid, _ in self.inner.list_multipart_uploads(key) if uid == upload_id]
            stored = found[0] if found else key  # none: S3 answers NoSuchUpload
            self._remember(upload_id, stored)
        return stored

    def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | bytearray,
        *,
        full_object_checksum: bool = False,
    ) -> Part:
        stored = self._upload_key(key, upload_id)
        return self.inner.upload_part(
            stored, upload_id, number, body, full_object_checksum=full_object_checksum
        )

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[Part],
        *,
        full_object_crc64nvme: str | None = None,
    ) -> None:
        stored = self._upload_key(key, upload_id)
        self.inner.complete_multipart(
            stored, upload_id, parts, full_object_crc64nvme=full_object_crc64nvme
        )
        self._uploads.pop(upload_id, None)
        self._drop_other_forms(key, stored)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.inner.abort_multipart(self._upload_key(key, upload_id), upload_id)
        self._uploads.pop(upload_id, None)

    def list_parts(self, key: str, upload_id: str) -> list[Part]:
        return self.inner.list_parts(self._upload_key(key, upload_id), upload_id)

    def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str, datetime]]:
        """(file key, upload id, initiated) of the open multipart uploads."""
        return [
            (file_name(stored), upload_id, initiated)
            for stored, upload_id, initiated in self.inner.list_multipart_uploads(prefix)
        ]
