"""Fuzz target: SFTP v3 packets into the gateway's real SFTP server.

Each input is a program: a valid INIT, then up to MAX_PACKETS packets whose type,
paths, handles, offsets, flags, attributes and bodies are drawn from the input (see
`Draw`), then a REALPATH sentinel whose reply shows that every packet was handled.

    python -m tests.fuzz.sftp_frames CORPUS_DIR [libFuzzer flags]   # fuzz
    python -m tests.fuzz.sftp_frames crash-FILE                     # replay one input
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import atheris

if __name__ == "__main__":  # coverage feedback for the fuzzer; not when a test imports us
    with atheris.instrument_imports(include=["sftp_gateway"]):
        import sftp_gateway.app
        import sftp_gateway.sftp.protocol  # noqa: F401

from tests.fuzz.draw import Draw
from tests.fuzz.harness import (
    REPLY_TIMEOUT,
    Finding,
    FuzzGateway,
    frame,
    fuzz_main,
    read_frames,
    send_in_background,
)

MAX_PACKETS = 48
SENTINEL_ID = 0x7FFF0000
SFTP_VERSION = 3
INIT, VERSION, STATUS = 1, 2, 101

PATHS = [
    b"/a.pdf",
    b"a.pdf",
    b"/dir",
    b"/dir/b.pdf",
    b"b.pdf.filepart",
    b"/b.pdf",
    b"../../bob/x.pdf",
    b"/../etc/passwd",
    b".",
    b"/",
    b"",
    b"dir/../../../x.pdf",
    b"//a.pdf",
    b"a.pdf/",
    b"/dir/",
    b"c.txt",
    b"~/a.pdf",
    b"..\\..\\x.pdf",
    b"a\x00.pdf",
    b"/dir/sub/c.pdf",
    b".~lock.pdf",
    b"x.pdf.part",
    b"\xff\xfe.pdf",
    b"/c.pdf",
]
PFLAGS = [
    0x01,  # READ
    0x1A,  # WRITE|CREAT|TRUNC: OpenSSH put
    0x0A,  # WRITE|CREAT: reput
    0x2A,  # WRITE|CREAT|EXCL
    0x0E,  # WRITE|APPEND|CREAT
    0x03,  # READ|WRITE
    0x02,  # WRITE
    0x00,
]
EXTENDED_NAMES = [
    b"posix-rename@openssh.com",
    b"statvfs@openssh.com",
    b"fsync@openssh.com",
    b"limits@openssh.com",
    b"hardlink@openssh.com",
    b"fstatvfs@openssh.com",
    b"copy-data",
    b"check-file",
]
MIB = 1024 * 1024
INTERESTING_OFFSETS = [0, 9, 5 * MIB, 10 * MIB, 2**31, 2**32, 2**63 - 1, 2**64 - 1]


def string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


class PacketWriter:
    """Draws one packet after another; remembers where each handle's writes end."""

    def __init__(self, draw: Draw) -> None:
        self.draw = draw
        self.next_offset: dict[bytes, int] = {}
        self.builders: list[tuple[int, Callable[[], bytes]]] = [
            (3, lambda: self.path() + self.pflags() + self.attrs()),  # OPEN
            (4, self.handle),  # CLOSE
            (5, lambda: self.handle() + self.offset() + struct.pack(">I", draw.u32())),  # READ
            (6, self.write),  # WRITE
            (7, self.path),  # LSTAT
            (8, self.handle),  # FSTAT
            (9, lambda: self.path() + self.attrs()),  # SETSTAT
            (10, lambda: self.handle() + self.attrs()),  # FSETSTAT
            (11, self.path),  # OPENDIR
            (12, self.handle),  # READDIR
            (13, self.path),  # REMOVE
            (14, lambda: self.path() + self.attrs()),  # MKDIR
            (15, self.path),  # RMDIR
            (16, self.path),  # REALPATH
            (17, self.path),  # STAT
            (18, lambda: self.path() + self.path()),  # RENAME
            (19, self.path),  # READLINK
            (20, lambda: self.path() + self.path()),  # SYMLINK
            (200, self.extended),  # EXTENDED
            (INIT, lambda: struct.pack(">I", draw.u32())),  # a second INIT
        ]

    def packet(self, request_id: int) -> bytes:
        selector = self.draw.u8()
        if selector >= 0xF0:  # any type, any body
            kind = self.draw.u8()
            return frame(kind, struct.pack(">I", request_id) + self.draw.blob())
        kind, build = self.builders[selector % len(self.builders)]
        if kind == INIT:
            return frame(kind, build())
        return frame(kind, struct.pack(">I", request_id) + build())

    def path(self) -> bytes:
        return string(self.draw.pick(PATHS))

    def handle_name(self) -> bytes:
        return self.draw.pick([b"hx%d" % n for n in range(1, 9)])

    def handle(self) -> bytes:
        return string(self.handle_name())

    def pflags(self) -> bytes:
        selector = self.draw.u8()
        value = PFLAGS[selector % len(PFLAGS)] if selector < 0xE0 else self.draw.u32()
        return struct.pack(">I", value)

    def offset(self, handle: bytes = b"") -> bytes:
        selector = self.draw.u8()
        if selector < 0x80:
            value = self.next_offset.get(handle, 0)
        elif selector < 0xF0:
            value = INTERESTING_OFFSETS[selector % len(INTERESTING_OFFSETS)]
        else:
            value = self.draw.u64()
        return struct.pack(">Q", value % 2**64)

    def write(self) -> bytes:
        name = self.handle_name()
        offset = self.offset(name)
        body = self.draw.data()
        self.next_offset[name] = struct.unpack(">Q", offset)[0] + len(body)
        return string(name) + offset + string(body)

    def attrs(self) -> bytes:
        """Common attribute sets (none, mtime, size, permissions), or any flags and fields."""
        draw = self.draw
        selector = draw.u8() % 8
        if selector == 0:
            return struct.pack(">I", 0)
        if selector == 1:
            return struct.pack(">III", 0x08, draw.u32(), draw.u32())
        if selector == 2:
            return struct.pack(">IQ", 0x01, draw.u64())
        if selector == 3:
            return struct.pack(">II", 0x04, draw.u32())
        flags = draw.u32()
        body = struct.pack(">I", flags)
        if flags & 0x01:
            body += struct.pack(">Q", draw.u64())
        if flags & 0x02:
            body += struct.pack(">II", draw.u32(), draw.u32())
        if flags & 0x04:
            body += struct.pack(">I", draw.u32())
        if flags & 0x08:
            body += struct.pack(">II", draw.u32(), draw.u32())
        if flags & 0x80000000:
            count = draw.u8()
            body += struct.pack(">I", count)
            body += b"".join(string(draw.blob()) + string(draw.blob()) for _ in range(count))
        return body

    def extended(self) -> bytes:
        name = self.draw.pick(EXTENDED_NAMES)
        if name in (b"posix-rename@openssh.com", b"hardlink@openssh.com"):
            args = self.path() + self.path()
        elif name == b"statvfs@openssh.com":
            args = self.path()
        elif name in (b"fsync@openssh.com", b"fstatvfs@openssh.com"):
            args = self.handle()
        elif name == b"limits@openssh.com":
            args = b""
        else:
            args = self.draw.blob()
        return string(name) + args


def program(data: bytes) -> list[bytes]:
    """The packets an input stands for: INIT, the drawn packets, the sentinel."""
    draw = Draw(data)
    writer = PacketWriter(draw)
    packets = [frame(INIT, struct.pack(">I", SFTP_VERSION))]
    while draw.more() and len(packets) <= MAX_PACKETS:
        packets.append(writer.packet(len(packets)))
    packets.append(frame(16, struct.pack(">I", SENTINEL_ID) + string(b"/")))
    return packets


def run(gateway: FuzzGateway, data: bytes) -> list[tuple[int, bytes]]:
    """Send one input's packets on a new sftp channel; the replies, up to the sentinel's."""
    packets = program(data)
    channel = gateway.open_channel()
    try:
        channel.invoke_subsystem("sftp")
        sender = send_in_background(channel, packets)
        replies = _replies_until_sentinel(channel)
        sender.join(REPLY_TIMEOUT)
    finally:
        gateway.end_channel(channel)
    gateway.check_invariants(f"after {len(packets)} SFTP packets")
    return replies


def _replies_until_sentinel(channel) -> list[tuple[int, bytes]]:  # type: ignore[no-untyped-def]
    replies: list[tuple[int, bytes]] = []
    try:
        for kind, payload in read_frames(channel):
            replies.append((kind, payload))
            if kind != VERSION and payload[:4] == struct.pack(">I", SENTINEL_ID):
                return replies
    except TimeoutError as exc:
        raise Finding(f"no reply to the sentinel within {REPLY_TIMEOUT} s: server hung") from exc
    return replies  # the server closed the channel: its right (e.g. an oversized packet)


def main() -> None:
    fuzz_main(run)


if __name__ == "__main__":
    main()
