"""The bytes of a file before its first part: most PDFs never reach one part, so their
writes are kept as they came (bytes, no copy) and sent as one PUT. They count against
the memory budget like part buffers, charged in chunks as they arrive."""

from __future__ import annotations

from sftp_gateway.upload.budget import Lease

CHARGE_STEP = 1024 * 1024  # charge the budget per MiB, not per 32 KiB write


class SmallBody:
    """Writes held until the file outgrows one part (then they move into a buffer)."""

    def __init__(self, lease: Lease, part_size: int) -> None:
        self._lease = lease
        self._part_size = part_size
        self._chunks: list[bytes] = []
        self.size = 0
        self.charged = 0  # bytes of the lease this body accounts for

    def fits(self, more: int) -> bool:
        """Whether `more` bytes still leave the file below one part."""
        return self.size + more < self._part_size

    def add(self, data: bytes | memoryview) -> None:
        """Keep the bytes; may wait for (or be refused) budget, before keeping them."""
        needed = self.size + len(data)
        if needed > self.charged:
            step = -(-needed // CHARGE_STEP) * CHARGE_STEP
            target = min(step, self._part_size)
            self._lease.acquire(target - self.charged)
            self.charged = target
        self._chunks.append(bytes(data))
        self.size = needed

    def body(self) -> bytes:
        """The whole file, joined once; the pieces go, so it is held once, not twice."""
        joined = b"".join(self._chunks)
        self._chunks = [joined]
        return joined

    def move_into(self, buffer: bytearray) -> int:
        """Copy the bytes to the start of a part buffer, which takes over their charge."""
        fill = 0
        for chunk in self._chunks:
            buffer[fill : fill + len(chunk)] = chunk
            fill += len(chunk)
        self._chunks, self.size, self.charged = [], 0, 0
        return fill

    def drop(self) -> None:
        """Forget the bytes; their charge goes back with the lease."""
        self._chunks, self.size, self.charged = [], 0, 0
