"""A user's view of the bucket: the one place for permissions, paths and policies.

Front ends (SFTP, SCP) translate protocol requests into these calls and map the
GatewayErrors they raise to protocol statuses; they never touch S3 or SQL themselves.
"""

from __future__ import annotations

import fnmatch
import posixpath
import stat as stat_mode
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from sftp_gateway.auth import Principal
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import Settings
from sftp_gateway.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    NotSupported,
    PermissionDenied,
    StorageError,
)
from sftp_gateway.listings import UNSEEN, RecentListings
from sftp_gateway.paths import Jail, normalize
from sftp_gateway.records import UploadRecord
from sftp_gateway.storage.base import ObjectInfo, Storage
from sftp_gateway.transfer import (
    ActiveUploads,
    ClientInfo,
    FileWriter,
    SessionUploads,
    Target,
    Uploader,
    check_name_allowed,
    drop_partial,
    metadata_safe_name,
)
from sftp_gateway.upload.compress import DECOMPRESSORS, decompressing
from sftp_gateway.upload.services import UploadServices

FILE_MODE = stat_mode.S_IFREG | 0o644
DIR_MODE = stat_mode.S_IFDIR | 0o755
MTIME_BATCH = 500


@dataclass(frozen=True)
class FileStat:
    name: str
    is_dir: bool
    size: int = 0
    mtime: int | None = None

    @property
    def mode(self) -> int:
        return DIR_MODE if self.is_dir else FILE_MODE


def _epoch(ts: datetime | None) -> int | None:
    return int(ts.timestamp()) if ts else None


def _shown_size(record: UploadRecord | None, stored: int) -> int:
    """What clients see: a compressed object's original size (the catalog's), as long
    as the object in S3 is still the one the catalog stored."""
    if record is not None and record.compression and record.stored_size == stored:
        return record.size
    return stored


class UserFilesystem:
    """What one authenticated user may see and do, in virtual paths."""

    def __init__(
        self,
        *,
        principal: Principal,
        settings: Settings,
        storage: Storage,
        catalog: Catalog,
        client: ClientInfo,
        active: ActiveUploads,
        services: UploadServices,
    ) -> None:
        self.principal = principal
        self.settings = settings
        self.storage = storage
        self.catalog = catalog
        self.client = client
        self.active = active
        self.services = services  # the process's memory budget and part sender
        self.uploader = Uploader(settings, storage, catalog, principal, client, services)
        self.jail = Jail.for_home(settings.storage.prefix, principal.home)
        # STATs in bursts (a client checking each name before its upload): one listing
        bucket = storage.bucket
        self.recent: RecentListings[UploadRecord] = RecentListings(
            storage,
            settings.storage.stat_cache_seconds,
            resumable_one=lambda key: catalog.interrupted_upload(bucket, key),
            resumable_under=lambda prefix: catalog.resumable_under(bucket, prefix),
        )

    # -- looking ---------------------------------------------------------------------

    def require(self, permission: str) -> None:
        if not self.principal.may(permission):
            raise PermissionDenied(f"permission denied: this account may not {permission}")

    def stat(self, path: str) -> FileStat:
        """A file (with its in-progress size while uploading) or a directory."""
        virtual = normalize(path)
        name = posixpath.basename(virtual) or "/"
        if virtual == "/":
            return FileStat(name, True)
        key = self.jail.key(virtual)
        writer = self.active.get(key)
        if writer is not None:
            return FileStat(name, False, writer.size, writer.mtime or _epoch(writer.started_at))
        partial = self.recent.resumable(key)
        if partial is not None:  # resumable: clients resume from this size
            return FileStat(name, False, partial.size, partial.mtime or _epoch(partial.started_at))
        probe = self.recent.probe(key)
        if probe.file is not None:
            record = self.catalog.latest_completed(self.storage.bucket, [key]).get(key)
            mtime = (record.mtime if record else None) or _epoch(probe.file.modified)
            return FileStat(name, False, _shown_size(record, probe.file.size), mtime)
        if probe.is_dir:
            return FileStat(name, True)
        raise NotFound(f"no such file or directory: {virtual}")

    def list_dir(self, path: str) -> Iterator[FileStat]:
        """Every entry of a directory (all pages); an empty listing of a missing
        directory is NotFound, as a POSIX server would say."""
        self.require("list")
        virtual = normalize(path)
        prefix = self.jail.dir_prefix(virtual)
        batch: list[FileStat] = []
        keys: list[str] = []
        seen_any = virtual == "/"
        for entry in self.storage.list_dir(prefix):
            seen_any = True
            if entry.is_dir:
                yield FileStat(entry.name, True)
                continue
            batch.append(FileStat(entry.name, False, entry.size, _epoch(entry.modified)))
            keys.append(prefix + entry.name)
            if len(batch) >= MTIME_BATCH:
                yield from self._with_mtimes(batch, keys)
                batch, keys = [], []
        yield from self._with_mtimes(batch, keys)
        for partial in self._partials_in(prefix, listed=set(keys)):
            seen_any = True
            yield partial
        if not seen_any and self.storage.head(prefix) is None:  # no 'dir/' marker either
            raise NotFound(f"no such directory: {virtual}")

    def _partials_in(self, prefix: str, listed: set[str]) -> Iterator[FileStat]:
        """Interrupted uploads directly in this directory, shown at their resumable size."""
        for record in self.catalog.interrupted_under(self.storage.bucket, prefix):
            name = record.object_key[len(prefix) :]
            if name and "/" not in name and record.object_key not in listed:
                yield FileStat(name, False, record.size, _epoch(record.started_at))

    def _with_mtimes(self, batch: list[FileStat], keys: list[str]) -> Iterator[FileStat]:
        """The catalog's view of listed files: the client's mtime, and a compressed
        object's original size (LIST gives the stored one)."""
        records = self.catalog.latest_completed(self.storage.bucket, keys) if keys else {}
        for item, key in zip(batch, keys, strict=True):
            record = records.get(key)
            if record is None:
                yield item
                continue
            mtime = record.mtime or item.mtime
            yield FileStat(item.name, False, _shown_size(record, item.size), mtime)

    # -- reading ---------------------------------------------------------------------

    def open_download(self, path: str) -> Download:
        self.require("read")
        key = self.jail.key(path)
        info = self.storage.head(key)
        if info is None:
            if self.storage.has_prefix(key + "/"):
                raise InvalidRequest(f"{normalize(path)} is a directory")
            raise NotFound(f"no such file: {normalize(path)}")
        size, compression = self._content_of(key, info)
        return Download(self.storage, key, size, compression)

    def _content_of(self, key: str, info: ObjectInfo) -> tuple[int, str | None]:
        """A stored object's size as clients see it, and its compression (None: the
        object is the file's own bytes)."""
        compression = info.metadata.get("compression")
        if compression not in DECOMPRESSORS:
            return info.size, None
        return self._original_size(key, info.size), compression

    def _original_size(self, key: str, stored: int) -> int:
        """A compressed object's own size: the catalog's, else its `size` tag."""
        record = self.catalog.latest_completed(self.storage.bucket, [key]).get(key)
        if record is not None and record.stored_size == stored:
            return record.size
        size = self.storage.get_tags(key).get("size", "")
        if not size.isdigit():
            raise StorageError(f"{key}: compressed object without its original size")
        return int(size)

    # -- writing ---------------------------------------------------------------------

    def open_upload(
        self,
        path: str,
        *,
        exclusive: bool = False,
        truncate: bool = True,
        append: bool = False,
        create: bool = True,
        expected_size: int | None = None,
        session: SessionUploads | None = None,
        client_ref: str | None = None,
    ) -> FileWriter:
        """Check name, permissions and conflicts; the upload itself (new, resumed or
        appended: transfer.py decides) starts at the first write. `session` owns the
        writer and closes it out when the session ends."""
        self.require("write")
        virtual = normalize(path)
        visible_key = self.jail.key(virtual)
        final = self.final_name(virtual)
        check_name_allowed(final, self.settings.uploads.allowed_extensions)
        # After a STAT that S3 could not answer, do not wait on S3 again: the upload
        # meets the outage itself.
        if self.recent.last_probe(visible_key) is not UNSEEN:
            self._refuse_under_a_file(virtual)
        final_key = self.jail.key(final)
        temporary = final_key != visible_key
        # A plain truncating open by a user who may overwrite needs to know only that the
        # name is no directory, which OpenSSH's put has just STATed: one round trip less.
        blind = (
            truncate
            and create
            and not exclusive
            and not temporary
            and self.principal.may("overwrite")
        )
        probe = (self.recent.last_probe(visible_key) if blind else None) or self.storage.probe(
            visible_key
        )
        if probe.is_dir:
            raise InvalidRequest(f"{virtual} is a directory")
        exists = probe.file is not None
        partial = self.catalog.interrupted_upload(self.storage.bucket, final_key)
        if exclusive and (exists or partial is not None):  # STAT shows a partial as a file
            raise AlreadyExists(f"{virtual} already exists")
        if not create and not exists and partial is None:  # OPEN without CREAT
            raise NotFound(f"no such file: {virtual}")
        if exists or (temporary and self.storage.head(final_key) is not None):
            self.require("overwrite")
        self.recent.touched(visible_key)
        self.recent.touched(final_key)
        existing_size, compression = (
            self._existing_content(visible_key) if exists and not truncate else (0, None)
        )
        target = Target(
            path=virtual,
            visible_key=visible_key,
            final_path=final,
            final_key=final_key,
            exists=exists,
            existing_size=existing_size,
            existing_compression=compression,
            partial=partial,
            may_overwrite=self.principal.may("overwrite"),
        )
        return FileWriter(
            self.uploader,
            target,
            registry=self.active,
            session=session,
            truncate=truncate,
            append=append,
            expected_size=expected_size,
            client_ref=client_ref,
        )

    def _existing_content(self, key: str) -> tuple[int, str | None]:
        """The size a client sees of the file it opened without truncating (what it
        appends to, or writes over) and how it is stored: APPEND to a compressed object
        continues its original bytes, not its compressed ones."""
        info = self.storage.head(key)
        return (0, None) if info is None else self._content_of(key, info)

    def final_name(self, virtual: str) -> str:
        """The name a temporary upload name stands for (`a.pdf.filepart` -> `a.pdf`)."""
        base = posixpath.basename(virtual)
        for pattern in self.settings.uploads.temp_name_patterns:
            suffix = pattern[1:]  # "*.part" -> ".part"; `.part` alone names no file
            named = pattern.startswith("*.") and len(base) > len(suffix)
            if named and fnmatch.fnmatchcase(base, pattern):
                return virtual[: -len(suffix)]
        return virtual

    def set_mtime(self, path: str, mtime: int) -> None:
        """Keep a client's modification time (sftp -p, rclone, WinSCP) in the catalog.
        Directories keep none (S3 has no directories): their times are accepted, unkept."""
        if normalize(path) == "/":
            return
        key = self.jail.key(path)
        writer = self.active.get(key)
        if writer is not None:
            writer.mtime = mtime
            return
        records = self.catalog.latest_completed(self.storage.bucket, [key])
        if key in records:
            self.catalog.update_upload(records[key].id, mtime=mtime)
        elif not self.storage.probe(key).exists:
            raise NotFound(f"no such file or directory: {normalize(path)}")

    def remove(self, path: str) -> None:
        self.require("delete")
        key = self.jail.key(path)
        self.recent.touched(key)
        writer = self.active.get(key)
        if writer is not None:  # e.g. a .filepart closed but not yet renamed
            writer.discard("removed by the client before it was published")
            return
        partial = self.catalog.interrupted_upload(self.storage.bucket, key)
        if partial is not None:
            drop_partial(self.uploader, partial, "removed by the client")
        probe = self.storage.probe(key)
        if probe.file is not None:
            self.storage.delete(key)
        elif partial is None:
            if probe.is_dir:
                raise InvalidRequest(f"{normalize(path)} is a directory (use rmdir)")
            raise NotFound(f"no such file: {normalize(path)}")

    def mkdir(self, path: str) -> None:
        self.require("mkdir")
        virtual = normalize(path)
        if virtual == "/":
            raise AlreadyExists("/ already exists")
        key = self.jail.key(virtual)
        self.recent.touched(key)
        if self.storage.probe(key).exists:
            raise AlreadyExists(f"{virtual} already exists")
        self._refuse_under_a_file(virtual)
        self.storage.make_dir(key + "/")

    def _refuse_under_a_file(self, virtual: str) -> None:
        """S3 would keep `a.pdf/b.pdf` beside the file `a.pdf`, where no client can
        browse to it (`cd a.pdf` finds a file): a name under a file is refused, as a
        POSIX server refuses it (ENOTDIR). A missing directory is fine: S3 has none.
        When S3 cannot say, the request goes ahead and meets the outage itself."""
        parent = posixpath.dirname(virtual)
        while parent != "/":
            try:
                is_file = self.recent.is_file(self.jail.key(parent))
            except StorageError:
                return
            if is_file:
                raise InvalidRequest(f"{parent} is a file, not a directory")
            parent = posixpath.dirname(parent)

    def rmdir(self, path: str) -> None:
        self.require("delete")
        virtual = normalize(path)
        if virtual == "/":
            raise PermissionDenied("the home directory cannot be removed")
        prefix = self.jail.dir_prefix(virtual)
        self.recent.touched(prefix.rstrip("/"))
        entries = iter(self.storage.list_dir(prefix))
        if next(entries, None) is not None:
            raise InvalidRequest(f"directory {virtual} is not empty")
        if self.storage.head(prefix) is None:
            raise NotFound(f"no such directory: {virtual}")
        self.storage.delete(prefix)

    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        """Server-side copy then delete; the catalog follows the object."""
        self.require("rename")
        old_virtual, new_virtual = normalize(old), normalize(new)
        old_key, new_key = self.jail.key(old_virtual), self.jail.key(new_virtual)
        if old_key == new_key:
            return
        self.recent.touched(old_key)
        self.recent.touched(new_key)
        writer = self.active.get(old_key)
        if writer is not None:
            self._rename_written(writer, new_virtual, new_key, overwrite=overwrite)
            return
        source = self.storage.probe(old_key)
        if source.file is None:
            if source.is_dir:
                raise NotSupported("renaming directories is not supported")
            raise NotFound(f"no such file: {old_virtual}")
        check_name_allowed(new_virtual, self.settings.uploads.allowed_extensions)
        self._check_rename_target(new_virtual, new_key, overwrite=overwrite)
        self._move_object(old_key, new_key, new_virtual)

    def _check_rename_target(self, new_virtual: str, new_key: str, *, overwrite: bool) -> None:
        """A file may take the name of a file (posix-rename, with `overwrite`), never
        the name of a directory nor a name under a file: S3 would hold both and list the
        name twice, or keep the file where no client can browse."""
        self._refuse_under_a_file(new_virtual)
        target = self.storage.probe(new_key)
        if target.is_dir:
            raise InvalidRequest(f"{new_virtual} is a directory")
        if target.file is not None:
            if not overwrite:
                raise AlreadyExists(f"{new_virtual} already exists")
            self.require("overwrite")

    def _move_object(self, old_key: str, new_key: str, new_virtual: str) -> None:
        """Server-side copy then delete; the catalog follows the object."""
        original_name = metadata_safe_name(posixpath.basename(new_virtual))
        self.storage.copy(old_key, new_key, {"original-name": original_name})
        self.storage.delete(old_key)
        self.catalog.rename_object(self.storage.bucket, old_key, new_key, new_virtual)

    def _rename_written(
        self, writer: FileWriter, new_virtual: str, new_key: str, *, overwrite: bool
    ) -> None:
        """Rename of a file uploaded under a temporary name (WinSCP's .filepart): publish
        it, zero-copy when the new name is the key it was streamed to."""
        if not writer.sealed or writer.upload is None:
            raise InvalidRequest(f"{writer.path} is still being uploaded; close it first")
        check_name_allowed(new_virtual, self.settings.uploads.allowed_extensions)
        self._check_rename_target(new_virtual, new_key, overwrite=overwrite)
        if writer.upload.key == new_key:
            writer.publish(path=new_virtual)
            return
        record = writer.publish()
        self._move_object(record.object_key, new_key, new_virtual)


class Download:
    """A file open for reading: one streaming ranged GET, reopened only on a seek."""

    CHUNK = 256 * 1024

    def __init__(
        self, storage: Storage, key: str, size: int, compression: str | None = None
    ) -> None:
        self.storage = storage
        self.key = key
        self.size = size  # the file's own size (decompressed)
        self.compression = compression
        self._body: BinaryIO | None = None
        self._position = 0

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size:
            return b""
        if self._body is None or offset != self._position:
            self._open_at(offset)
        assert self._body is not None
        try:
            data = self._body.read(min(length, self.size - offset))
        except StorageError:  # S3 cut or stalled the stream: one new GET from here
            self.close()
            self._open_at(offset)
            assert self._body is not None
            data = self._body.read(min(length, self.size - offset))
        self._position += len(data)
        return data

    def _open_at(self, offset: int) -> None:
        """A ranged GET; a compressed object has no byte ranges of the file, so it is
        read from its start (or onward from here) and decompressed up to `offset`."""
        if self.compression is None:
            self.close()
            self._body = self.storage.open_read(self.key, offset)
            self._position = offset
            return
        if self._body is None or offset < self._position:
            self.close()
            self._body = decompressing(self.compression, self.storage.open_read(self.key, 0))
            self._position = 0
        while self._position < offset:
            skipped = self._body.read(min(self.CHUNK * 4, offset - self._position))
            if not skipped:
                raise StorageError(f"{self.key}: compressed object ends before byte {offset}")
            self._position += len(skipped)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
