"""Compression of an upload as its bytes arrive: one gzip member or zstd frame per part.

Every S3 part ends a member (gzip) or a frame (zstd). Concatenated members and frames
are valid streams (RFC 1952 section 2.2; zstd format section 2), so an interrupted upload
resumes by starting a new member with its next part: no compressor state has to
survive a crash, and the object always decompresses to exactly the bytes sent.
Both libraries release the GIL while they work, so compression runs beside paramiko.
"""

from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO, Protocol, cast

import zstandard

DEFAULT_LEVELS = {"gzip": 6, "zstd": 3}
DECOMPRESSORS = ("gzip", "zstd")  # the `compression` metadata values a download undoes


class PartCompressor(Protocol):
    """Bytes in, compressed bytes out; `end_member` closes the current member/frame."""

    name: str

    def compress(self, data: bytes | bytearray | memoryview) -> bytes: ...
    def end_member(self) -> bytes: ...


class GzipParts:
    """gzip members (zlib with a gzip header, wbits 31), one per part."""

    name = "gzip"

    def __init__(self, level: int) -> None:
        self._level = level
        self._member: zlib._Compress | None = None

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if not len(data):
            return b""
        if self._member is None:
            self._member = zlib.compressobj(self._level, zlib.DEFLATED, 31)
        return self._member.compress(data)

    def end_member(self) -> bytes:
        """The rest of the member and its trailer (CRC32, size); b"" if none is open."""
        member, self._member = self._member, None
        return member.flush(zlib.Z_FINISH) if member is not None else b""


class ZstdParts:
    """zstd frames, one per part (content size unknown: the frame does not say it)."""

    name = "zstd"

    def __init__(self, level: int) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._frame: zstandard.ZstdCompressionObj | None = None

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if not len(data):
            return b""
        if self._frame is None:
            self._frame = self._compressor.compressobj()
        return self._frame.compress(data)

    def end_member(self) -> bytes:
        frame, self._frame = self._frame, None
        if frame is None:
            return b""
        return frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def compressor_for(name: str | None, level: int | None = None) -> PartCompressor | None:
    """The compressor for storage.compression (None for "none")."""
    if not name or name == "none":
        return None
    chosen = level if level is not None else DEFAULT_LEVELS[name]
    if name == "gzip":
        return GzipParts(chosen)
    if name == "zstd":
        return ZstdParts(chosen)
    raise ValueError(f"unknown compression {name!r}")


def decompressing(name: str, raw: BinaryIO) -> BinaryIO:
    """A reader of the original bytes of a stored object (all members/frames)."""
    if name == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    if name == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=True
        )
        return cast(BinaryIO, reader)
    raise ValueError(f"unknown compression {name!r}")


def decompress_all(name: str, data: bytes) -> bytes:
    """The original bytes of a whole stored object (tests, small files)."""
    if name == "gzip":
        return gzip.decompress(data)
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    return reader.read()
