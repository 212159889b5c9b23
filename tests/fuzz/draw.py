"""Reading structured values from a fuzz input, and writing seeds that read back the same.

`Draw` uses only the front-consuming calls of atheris.FuzzedDataProvider (little-endian
`ConsumeUInt`, `ConsumeBytes`), so an input is a plain sequence of fields and `Seed`
can write valid programs for the corpus. An exhausted input reads as zeros and b"".
"""

from __future__ import annotations

import struct
from typing import Self

import atheris

PDF_HEAD = b"%PDF-1.7\n"
# A fill of this many bytes per unit: WRITE bodies up to ~256 KiB from one 2-byte field.
FILL_UNIT = 4
# Bytes of fill per input: enough for a multipart upload (parts are >= 5 MiB), little
# enough to keep an input well under a second.
FILL_BUDGET = 12 * 1024 * 1024
TABLE_LIMIT = 0xE0  # a selector below this picks from a table; at or above, raw bytes


class Draw:
    """Typed fields from the front of a fuzz input."""

    def __init__(self, data: bytes) -> None:
        self._fdp = atheris.FuzzedDataProvider(data)
        self.fill_left = FILL_BUDGET

    def more(self) -> bool:
        return self._fdp.remaining_bytes() > 0

    def u8(self) -> int:
        return int(self._fdp.ConsumeUInt(1))

    def u16(self) -> int:
        return int(self._fdp.ConsumeUInt(2))

    def u32(self) -> int:
        return int(self._fdp.ConsumeUInt(4))

    def u64(self) -> int:
        return int(self._fdp.ConsumeUInt(8))

    def blob(self) -> bytes:
        """Up to 255 raw bytes, length first."""
        return bytes(self._fdp.ConsumeBytes(self.u8()))

    def pick(self, table: list[bytes]) -> bytes:
        """An entry of `table`, or raw bytes for a selector at or above TABLE_LIMIT."""
        selector = self.u8()
        if selector < TABLE_LIMIT:
            return table[selector % len(table)]
        return self.blob()

    def data(self) -> bytes:
        """A body: raw bytes, or a long fill (PDF-headed or not) within the input's budget."""
        selector = self.u8()
        if selector < 0x80:
            return self.blob()
        size = min(self.u16() * FILL_UNIT, self.fill_left)
        self.fill_left -= size
        head = PDF_HEAD if selector & 1 else b""
        return (head + b"x" * size)[: max(size, len(head))]


class Seed:
    """Writes the fields `Draw` reads, in the same order: a seed for the corpus."""

    def __init__(self) -> None:
        self.out = bytearray()

    def u8(self, value: int) -> Self:
        self.out += struct.pack("<B", value)
        return self

    def u16(self, value: int) -> Self:
        self.out += struct.pack("<H", value)
        return self

    def u32(self, value: int) -> Self:
        self.out += struct.pack("<I", value)
        return self

    def u64(self, value: int) -> Self:
        self.out += struct.pack("<Q", value)
        return self

    def blob(self, value: bytes) -> Self:
        self.u8(len(value))
        self.out += value
        return self

    def pick(self, table: list[bytes], value: bytes) -> Self:
        if value in table:
            return self.u8(table.index(value))
        return self.u8(TABLE_LIMIT).blob(value)

    def raw_data(self, value: bytes) -> Self:
        return self.u8(0).blob(value)

    def pdf_fill(self, size: int) -> Self:
        """A body of `size` bytes starting with a PDF header (size a multiple of 4)."""
        return self.u8(0x81).u16(size // FILL_UNIT)

    def bytes(self) -> bytes:
        return bytes(self.out)
