"""paramiko's SFTPServerInterface and handles, translating requests to UserFilesystem."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import paramiko
from paramiko.sftp import SFTP_OK

from sftp_gateway.errors import InvalidRequest, NotSupported
from sftp_gateway.filesystem import Download, FileStat, UserFilesystem
from sftp_gateway.paths import normalize
from sftp_gateway.transfer import FileWriter, SessionUploads

# SFTP v3 sends times as uint32: paramiko cannot pack any other value, and one row with
# a time beyond 2106 (or before 1970) would make every listing of its directory fail.
MAX_SFTP_TIME = 2**32 - 1


def sftp_time(seconds: int) -> int:
    """`seconds` as SFTP v3 can carry it: clamped into 0..2**32-1."""
    return min(max(int(seconds), 0), MAX_SFTP_TIME)


def attributes(item: FileStat) -> paramiko.SFTPAttributes:
    attr = paramiko.SFTPAttributes()
    attr.filename = item.name
    attr.st_size = item.size
    attr.st_mode = item.mode
    attr.st_uid = 0
    attr.st_gid = 0
    mtime = sftp_time(item.mtime if item.mtime is not None else int(time.time()))
    attr.st_mtime = mtime
    attr.st_atime = mtime
    return attr


class UploadHandle(paramiko.SFTPHandle):  # type: ignore[misc]
    """A file open for writing. CLOSE commits; paramiko's teardown close() abandons."""

    def __init__(self, writer: FileWriter) -> None:
        super().__init__()
        self.writer = writer
        self.refusal: InvalidRequest | None = None

    def refuse(self, reason: str) -> None:
        """A WRITE was refused before reaching the file: the file now has a hole, so
        it must never be published. Later writes and the CLOSE repeat the reason."""
        self.refusal = InvalidRequest(reason)

    def write(self, offset: int, data: bytes) -> int:
        if self.refusal is not None:
            raise self.refusal
        self.writer.write(offset, data)
        return SFTP_OK  # type: ignore[no-any-return]

    def read(self, offset: int, length: int) -> bytes:
        raise InvalidRequest("this file is open for writing; reading it back is not supported")

    def stat(self) -> paramiko.SFTPAttributes:
        name = self.writer.path.rsplit("/", 1)[-1]
        return attributes(FileStat(name, False, self.writer.size, self.writer.mtime))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        size = getattr(attr, "st_size", None)
        if size is not None:  # OpenSSH's scp opens without TRUNC, then sets the size
            self.writer.truncate_to(size)
        apply_attributes(attr, current_size=None, set_mtime=self._set_mtime)
        return SFTP_OK  # type: ignore[no-any-return]

    def _set_mtime(self, mtime: int) -> None:
        self.writer.mtime = mtime

    def commit(self) -> None:
        """A clean SFTP CLOSE: the only way an upload becomes an object."""
        if self.refusal is not None:
            self.writer.discard(str(self.refusal))
            raise self.refusal
        self.writer.commit()

    def close(self) -> None:
        """Called by paramiko for handles left open when the session ends."""
        self.writer.abandon()


class DownloadHandle(paramiko.SFTPHandle):  # type: ignore[misc]
    def __init__(self, download: Download, name: str) -> None:
        super().__init__()
        self.download = download
        self.name = name

    def read(self, offset: int, length: int) -> bytes:
        return self.download.read(offset, length)

    def write(self, offset: int, data: bytes) -> int:
        raise InvalidRequest("this file is open for reading only")

    def stat(self) -> paramiko.SFTPAttributes:
        return attributes(FileStat(self.name, False, self.download.size))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        return SFTP_OK  # type: ignore[no-any-return]

    def close(self) -> None:
        self.download.close()


def apply_attributes(
    attr: paramiko.SFTPAttributes,
    *,
    current_size: int | None,
    set_mtime: Callable[[int], None],
) -> None:
    """SETSTAT semantics: a size equal to the file's is fine, other sizes are not
    supported; permissions and owners are accepted and ignored; mtime is kept."""
    size = getattr(attr, "st_size", None)
    if size is not None and current_size is not None and size != current_size:
        raise NotSupported("changing a file's size is not supported")
    mtime = getattr(attr, "st_mtime", None)
    if mtime is not None:
        set_mtime(int(mtime))


class GatewaySFTPInterface(paramiko.SFTPServerInterface):  # type: ignore[misc]
    """One SFTP session of one authenticated user."""

    def __init__(self, server: paramiko.ServerInterface, *args: object, **kwargs: object) -> None:
        super().__init__(server, *args, **kwargs)
        self.fs: UserFilesystem = server.filesystem()  # type: ignore[attr-defined]
        # The files this SFTP session opened for writing and has not finished, including
        # those CLOSEd under a temporary name and awaiting their rename.
        self.uploads = SessionUploads()

    def canonicalize(self, path: str) -> str:
        return normalize(path)

    def stat(self, path: str) -> paramiko.SFTPAttributes:
        self.fs.require("list")
        return attributes(self.fs.stat(path))

    lstat = stat

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes]:
        return [attributes(item) for item in self.fs.list_dir(path)]

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle:
        if flags & (os.O_WRONLY | os.O_RDWR):
            writer = self.fs.open_upload(
                path,
                exclusive=bool(flags & os.O_EXCL),
                truncate=bool(flags & os.O_TRUNC),
                append=bool(flags & os.O_APPEND),
                create=bool(flags & os.O_CREAT),
                session=self.uploads,
            )
            return UploadHandle(writer)
        download = self.fs.open_download(path)
        return DownloadHandle(download, normalize(path).rsplit("/", 1)[-1])

    def remove(self, path: str) -> int:
        self.fs.remove(path)
        return SFTP_OK  # type: ignore[no-any-return]

    def rename(self, oldpath: str, newpath: str) -> int:
        self.fs.rename(oldpath, newpath, overwrite=False)
        return SFTP_OK  # type: ignore[no-any-return]

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        self.fs.rename(oldpath, newpath, overwrite=True)
        return SFTP_OK  # type: ignore[no-any-return]

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        self.fs.mkdir(path)
        return SFTP_OK  # type: ignore[no-any-return]

    def rmdir(self, path: str) -> int:
        self.fs.rmdir(path)
        return SFTP_OK  # type: ignore[no-any-return]

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        current = self.fs.stat(path)
        size = None if current.is_dir else current.size
        apply_attributes(attr, current_size=size, set_mtime=lambda m: self.fs.set_mtime(path, m))
        return SFTP_OK  # type: ignore[no-any-return]

    def readlink(self, path: str) -> str:
        raise NotSupported("symbolic links are not supported")

    def symlink(self, target_path: str, path: str) -> int:
        raise NotSupported("symbolic links are not supported")
