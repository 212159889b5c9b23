"""The seed corpus: valid SFTP sessions and SCP uploads, written as fuzz inputs.

python -m tests.fuzz.seeds OUT_DIR    # writes OUT_DIR/sftp/* and OUT_DIR/scp/*
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from tests.fuzz.draw import Seed
from tests.fuzz.scp_lines import COMMANDS, MODES, NAMES
from tests.fuzz.sftp_frames import EXTENDED_NAMES, PATHS, PFLAGS

OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = range(8)
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME = range(8, 16)
EXTENDED = 18  # indexes into PacketWriter.builders
PUT_FLAGS, REPUT_FLAGS, READ_FLAGS = 0x1A, 0x0A, 0x01
TRACKED = 0  # offset selector: where this handle's writes end
KIB = 1024
MIB = 1024 * KIB
CHUNK = 255 * KIB  # OpenSSH's write size with the limits extension


class SftpSeed(Seed):
    """An SFTP session in PacketWriter's terms."""

    def op(self, index: int) -> SftpSeed:
        return self.u8(index)

    def path(self, value: bytes) -> SftpSeed:
        return self.pick(PATHS, value)

    def handle(self, number: int) -> SftpSeed:
        return self.u8(number - 1)

    def open(self, path: bytes, flags: int) -> SftpSeed:
        """OPEN with these flags and empty attributes."""
        return self.op(OPEN).path(path).u8(PFLAGS.index(flags)).u8(0)

    def write_pdf(self, handle: int, size: int) -> SftpSeed:
        """WRITE `size` PDF bytes where this handle's previous writes ended."""
        return self.op(WRITE).handle(handle).u8(TRACKED).pdf_fill(size)

    def write_big(self, handle: int, size: int) -> SftpSeed:
        """Sequential WRITEs of OpenSSH's 255 KiB, `size` bytes in all (multipart sizes)."""
        while size > 0:
            self.write_pdf(handle, min(size, CHUNK))
            size -= CHUNK
        return self

    def close(self, handle: int) -> SftpSeed:
        return self.op(CLOSE).handle(handle)

    def extended(self, name: bytes) -> SftpSeed:
        return self.op(EXTENDED).pick(EXTENDED_NAMES, name)


def sftp_seeds() -> dict[str, bytes]:
    put = SftpSeed().open(b"/a.pdf", PUT_FLAGS).write_big(1, 6 * MIB).close(1)
    small = SftpSeed().open(b"/b.pdf", PUT_FLAGS).write_pdf(1, 1000).close(1).op(STAT)
    small.path(b"/b.pdf")
    winscp = SftpSeed().open(b"b.pdf.filepart", PUT_FLAGS).write_big(1, 6 * MIB).close(1)
    winscp.extended(b"posix-rename@openssh.com").path(b"b.pdf.filepart").path(b"/b.pdf")
    tree = SftpSeed().op(MKDIR).path(b"/dir").u8(0)
    tree.open(b"/dir/b.pdf", PUT_FLAGS).write_pdf(1, 400).close(1)
    tree.op(OPENDIR).path(b"/dir").op(READDIR).handle(2).op(READDIR).handle(2).close(2)
    tree.op(RMDIR).path(b"/dir").op(REMOVE).path(b"/dir/b.pdf").op(RMDIR).path(b"/dir")
    times = SftpSeed().op(SETSTAT).path(b"/a.pdf").u8(1).u32(1_700_000_000).u32(1_700_000_000)
    times.op(LSTAT).path(b"/a.pdf").open(b"/a.pdf", READ_FLAGS).op(FSTAT).handle(1)
    times.op(FSETSTAT).handle(1).u8(0).close(1)
    read = SftpSeed().open(b"/a.pdf", READ_FLAGS).op(READ).handle(1).u8(TRACKED).u32(32 * KIB)
    read.op(READ).handle(1).u8(0x80 + 1).u32(100).close(1)  # offset 9
    extensions = SftpSeed().extended(b"limits@openssh.com").extended(b"statvfs@openssh.com")
    extensions.path(b"/").extended(b"fsync@openssh.com").handle(1)
    interrupted = SftpSeed().open(b"/c.pdf", PUT_FLAGS).write_big(1, 6 * MIB)
    resumed = SftpSeed().op(STAT).path(b"/c.pdf").open(b"/c.pdf", REPUT_FLAGS)
    # One 5 MiB part of the interrupted upload is durable: resume there.
    resumed.op(WRITE).handle(1).u8(0x80 + 2).pdf_fill(64 * KIB).close(1)
    rename = SftpSeed().op(RENAME).path(b"/a.pdf").path(b"/c.pdf").op(REALPATH).path(b".")
    escape = SftpSeed().open(b"../../bob/x.pdf", PUT_FLAGS).write_pdf(1, 100).close(1)
    escape.op(REMOVE).path(b"/../etc/passwd").op(MKDIR).path(b"dir/../../../x.pdf").u8(0)
    seeds = {
        "put": put,
        "small": small,
        "winscp": winscp,
        "tree": tree,
        "times": times,
        "read": read,
        "extensions": extensions,
        "interrupted": interrupted,
        "resumed": resumed,
        "rename": rename,
        "escape": escape,
    }
    return {name: seed.bytes() for name, seed in seeds.items()}


class ScpSeed(Seed):
    """An SCP session in ItemWriter's terms: a command, then items."""

    FILE, DIRECTORY, END, TIMES, RAW_LINE, ACK = range(6)

    def command(self, value: bytes) -> ScpSeed:
        self.pick(COMMANDS, value)
        return self

    def file(self, name: bytes, size: int) -> ScpSeed:
        """A C line with the body's exact size, the body, then `\\0`."""
        self.u8(self.FILE).pick(MODES, b"0644").pick(NAMES, name).u8(0).pdf_fill(size)
        return self

    def directory(self, name: bytes) -> ScpSeed:
        self.u8(self.DIRECTORY).pick(MODES, b"0755").pick(NAMES, name)
        return self

    def end(self) -> ScpSeed:
        self.u8(self.END)
        return self

    def times(self, mtime: int) -> ScpSeed:
        self.u8(self.TIMES).u8(0).u32(mtime).u32(mtime)
        return self

    def ack(self) -> ScpSeed:
        self.u8(self.ACK).u8(0)
        return self


def scp_seeds() -> dict[str, bytes]:
    seeds = {
        "upload": ScpSeed().command(b"scp -t /").file(b"a.pdf", 1000),
        "big": ScpSeed().command(b"scp -t /").file(b"b.pdf", 255 * KIB),
        "tree": ScpSeed()
        .command(b"scp -r -t /")
        .directory(b"dir")
        .file(b"a.pdf", 400)
        .directory(b"sub")
        .end()
        .end(),
        "times": ScpSeed().command(b"scp -p -t /").times(1_700_000_000).file(b"a.pdf", 100),
        "download": ScpSeed().command(b"scp -f /a.pdf").ack().ack().ack(),
        "recursive-download": ScpSeed().command(b"scp -r -f /").ack().ack().ack().ack(),
        "escape": ScpSeed().command(b"scp -t /").file(b"../x.pdf", 100),
    }
    return {name: seed.bytes() for name, seed in seeds.items()}


TARGETS: dict[str, Callable[[], dict[str, bytes]]] = {"sftp": sftp_seeds, "scp": scp_seeds}


def write_seeds(out: Path) -> None:
    for target, make in TARGETS.items():
        directory = out / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (directory / name).write_bytes(data)


if __name__ == "__main__":
    write_seeds(Path(sys.argv[1]))
