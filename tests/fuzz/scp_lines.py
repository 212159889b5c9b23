"""Fuzz target: legacy SCP (`scp -O`) commands, control lines and bodies into scp.py.

Each input is a program: an exec command (`scp -t /dir`, `scp -r -f /`, ...), then up
to MAX_ITEMS items (C/D/E/T lines with drawn modes, sizes, names and bodies, raw lines,
acknowledgement bytes), then EOF; the server must end the session by itself.

    python -m tests.fuzz.scp_lines CORPUS_DIR [libFuzzer flags]   # fuzz
    python -m tests.fuzz.scp_lines crash-FILE                     # replay one input
"""

from __future__ import annotations

import atheris

if __name__ == "__main__":  # coverage feedback for the fuzzer; not when a test imports us
    with atheris.instrument_imports(include=["sftp_gateway"]):
        import sftp_gateway.app
        import sftp_gateway.scp  # noqa: F401

from tests.fuzz.draw import Draw
from tests.fuzz.harness import (
    REPLY_TIMEOUT,
    Finding,
    FuzzGateway,
    fuzz_main,
    send_in_background,
)

MAX_ITEMS = 32
COMMANDS = [
    b"scp -t /",
    b"scp -t /dir",
    b"scp -r -t /",
    b"scp -d -t /dir",
    b"scp -p -t /a.pdf",
    b"scp -t a.pdf",
    b"scp -r -p -t /",
    b"scp -f /a.pdf",
    b"scp -r -f /",
    b"scp -f '*.pdf'",
    b"scp -t ../",
    b"scp -p -f /dir/b.pdf /a.pdf",
    b"md5sum a.pdf",
    b"scp -t",
]
MODES = [b"0644", b"0600", b"0755", b"7777", b"abc", b""]
NAMES = [
    b"a.pdf",
    b"b.pdf",
    b"../x.pdf",
    b"dir/x.pdf",
    b"..",
    b".",
    b"",
    b"a.pdf.filepart",
    b"/etc/passwd",
    b"c.txt",
    b"dir",
    b"sub",
    b"\xff.pdf",
]
SIZES = [b"0", b"9", b"-1", b"99999999999999999999", b"1e3", b""]


class ItemWriter:
    """Draws SCP control lines and bodies."""

    def __init__(self, draw: Draw) -> None:
        self.draw = draw

    def item(self) -> bytes:
        builders = (self.file, self.directory, self.end, self.times, self.raw_line, self.ack)
        selector = self.draw.u8()
        if selector >= 0xF0:
            return self.draw.blob()  # bytes with no line structure at all
        return builders[selector % len(builders)]()

    def file(self) -> bytes:
        """`C<mode> <size> <name>`, the body, and the sender's `\\0` after it."""
        mode, name = self.draw.pick(MODES), self.draw.pick(NAMES)
        sized = self.draw.u8()
        body = self.draw.data()
        size = str(len(body)).encode() if sized < 0x80 else self.draw.pick(SIZES)
        trailer = b"\0" if sized % 2 == 0 else b""
        return b"C" + mode + b" " + size + b" " + name + b"\n" + body + trailer

    def directory(self) -> bytes:
        return b"D" + self.draw.pick(MODES) + b" 0 " + self.draw.pick(NAMES) + b"\n"

    def end(self) -> bytes:
        return b"E\n"

    def times(self) -> bytes:
        if self.draw.u8() < 0x80:
            return b"T%d 0 %d 0\n" % (self.draw.u32(), self.draw.u32())
        return b"T" + self.draw.blob() + b"\n"

    def raw_line(self) -> bytes:
        return self.draw.blob() + b"\n"

    def ack(self) -> bytes:
        """What a client sends to the source side: ok, or a warning/fatal with text."""
        return [b"\0", b"\1warning\n", b"\2fatal\n"][self.draw.u8() % 3]


def program(data: bytes) -> tuple[bytes, list[bytes]]:
    draw = Draw(data)
    command = draw.pick(COMMANDS)
    writer = ItemWriter(draw)
    items = []
    while draw.more() and len(items) < MAX_ITEMS:
        items.append(writer.item())
    return command, items


def run(gateway: FuzzGateway, data: bytes) -> bytes:
    """Exec the command on a new channel, send the items, EOF; what the server sent."""
    command, items = program(data)
    channel = gateway.open_channel()
    try:
        channel.exec_command(command)
        received = _exchange(channel, items)
    finally:
        gateway.end_channel(channel)
    gateway.check_invariants(f"after scp {command!r} with {len(items)} items")
    return received


def _exchange(channel, items: list[bytes]) -> bytes:  # type: ignore[no-untyped-def]
    """Send then EOF (in the background, so no window fills), read until the server
    closes the channel: after the client's EOF it must end the session by itself."""
    sender = send_in_background(channel, items, eof=True)
    received = bytearray()
    try:
        while chunk := channel.recv(1 << 16):
            received += chunk
    except TimeoutError as exc:
        raise Finding(f"scp session still open {REPLY_TIMEOUT} s after the client's EOF") from exc
    sender.join(REPLY_TIMEOUT)
    return bytes(received)


def main() -> None:
    fuzz_main(run)


if __name__ == "__main__":
    main()
