"""Absorb writes that arrive ahead of the stream, so out-of-order clients still work.

Some clients (asyncssh, older Go clients, Node ssh2 fastPut, WS_FTP) send WRITEs for
several offsets at once and the server may see them out of order. The stream needs
bytes in order, so chunks ahead of it wait here: in memory up to `memory_limit` (and
while the process's memory budget has room), then in an anonymous temporary file
(deleted by the OS when closed) up to `spill_limit` per file and the process's spill
budget across files. As soon as the gap before them fills, they flow on in order.
Nothing is ever written twice or skipped.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from sftp_gateway.errors import InvalidRequest
from sftp_gateway.upload.budget import Lease, ServerBusy

log = logging.getLogger(__name__)


class ReorderBuffer:
    """Chunks keyed by offset, waiting for the stream to reach them."""

    def __init__(self, memory_limit: int, spill_limit: int, memory: Lease, disk: Lease) -> None:
        self.memory_limit = memory_limit
        self.spill_limit = spill_limit
        self._memory_lease = memory
        self._disk_lease = disk
        self._memory: dict[int, bytes] = {}
        self._spilled: dict[int, tuple[int, int]] = {}  # offset -> (file position, length)
        self._memory_bytes = 0
        self._spill: BinaryIO | None = None
        self._spill_end = 0  # where the next spilled chunk goes in the file
        self._spilled_bytes = 0  # bytes waiting on disk now (what the limits count)
        self.highest_end = 0

    @property
    def pending(self) -> bool:
        return bool(self._memory or self._spilled)

    def add(self, offset: int, data: bytes) -> None:
        """Keep a chunk that starts beyond the stream's current end."""
        if offset in self._memory or offset in self._spilled:
            raise InvalidRequest(f"the bytes at offset {offset} were already written")
        if self._keep_in_memory(offset, data):
            pass
        else:
            self._spill_to_disk(offset, data)
        self.highest_end = max(self.highest_end, offset + len(data))

    def _keep_in_memory(self, offset: int, data: bytes) -> bool:
        """In memory if this file's share and the process's budget allow it."""
        if self._memory_bytes + len(data) > self.memory_limit:
            return False
        if not self._memory_lease.try_acquire(len(data)):
            return False  # the budget is spent: disk instead, no waiting
        self._memory[offset] = data
        self._memory_bytes += len(data)
        return True

    def _spill_to_disk(self, offset: int, data: bytes) -> None:
        if self._spilled_bytes + len(data) > self.spill_limit:
            raise InvalidRequest(
                "writes arrive too far out of order for this server "
                f"(more than {self.spill_limit} bytes ahead of the file's end)"
            )
        self._disk_lease.acquire(len(data), timeout=0)  # ServerBusy when the disk budget is spent
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="sftp-gateway-reorder-")  # noqa: SIM115 - lives until close()
        try:
            self._spill.seek(self._spill_end)
            self._spill.write(data)
            self._spill.flush()  # a full disk fails this WRITE, not a later one
        except OSError as exc:
            log.warning("reorder spill failed: %s", exc.strerror or exc)
            text = "no disk space left for out-of-order writes; try again later"
            raise ServerBusy(text) from None
        self._spilled[offset] = (self._spill_end, len(data))
        self._spill_end += len(data)
        self._spilled_bytes += len(data)

    def take_from(self, position: int) -> Iterator[bytes]:
        """Yield the waiting chunks that continue the stream at `position`, in order."""
        while True:
            if position in self._memory:
                data = self._memory.pop(position)
                self._memory_bytes -= len(data)
                self._memory_lease.release(len(data))
            elif position in self._spilled:
                data = self._read_spilled(position)
            else:
                return
            position += len(data)
            yield data

    def _read_spilled(self, position: int) -> bytes:
        """A spilled chunk, its disk given back to the budget; once nothing waits on
        disk, the file starts over (truncated), so only what waits takes space."""
        where, length = self._spilled.pop(position)
        assert self._spill is not None
        self._spill.seek(where)
        data = self._spill.read(length)
        self._spilled_bytes -= length
        self._disk_lease.release(length)
        if not self._spilled:
            self._spill.truncate(0)
            self._spill_end = 0
        return data

    def close(self) -> None:
        """Drop what waits and give its memory and disk back to the budgets."""
        self._memory.clear()
        self._spilled.clear()
        self._memory_bytes = 0
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._spill_end = self._spilled_bytes = 0
        self._memory_lease.close()
        self._disk_lease.close()
