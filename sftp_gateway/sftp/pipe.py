"""A receive buffer for paramiko channels that does not slow down as it fills.

paramiko's BufferedPipe keeps received bytes in an `array` and deletes the bytes it
hands out from the front, which moves everything behind them: every read costs the
whole buffered amount. With a large SSH window (the buffer holds up to a window of
data when the reader is behind) that is many times the bytes received. `ChunkBuffer`
keeps the chunks as they arrived and copies only what is read. It is put in place by
`sshcompat.use_chunk_buffer` (the swap relies on paramiko internals).
"""

from __future__ import annotations

from collections import deque


class _Head:
    """What `buffer[:limit]` returns: `.tobytes()` copies just those bytes."""

    def __init__(self, buffer: ChunkBuffer, limit: int | None) -> None:
        self._buffer = buffer
        self._limit = limit

    def tobytes(self) -> bytes:
        return self._buffer.peek(self._limit)


class ChunkBuffer:
    """The subset of `array.array('B')` that BufferedPipe uses, over a deque of chunks."""

    def __init__(self, initial: bytes = b"") -> None:
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of the first chunk already handed out
        self._size = 0
        if initial:
            self.frombytes(initial)

    def __len__(self) -> int:
        return self._size

    def frombytes(self, data: bytes) -> None:
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)

    def peek(self, limit: int | None) -> bytes:
        wanted = self._size if limit is None else min(limit, self._size)
        if not wanted:
            return b""
        first = self._chunks[0]
        if len(first) - self._offset >= wanted:
            return first[self._offset : self._offset + wanted]
        pieces, taken = [], 0
        for index, chunk in enumerate(self._chunks):
            start = self._offset if index == 0 else 0
            piece = chunk[start : start + wanted - taken]
            pieces.append(piece)
            taken += len(piece)
            if taken == wanted:
                break
        return b"".join(pieces)

    def __getitem__(self, item: slice) -> _Head:
        if not isinstance(item, slice) or item.start or item.step:
            raise TypeError("ChunkBuffer supports only [:limit]")
        return _Head(self, item.stop)

    def __delitem__(self, item: slice) -> None:
        if not isinstance(item, slice) or item.start or item.step:
            raise TypeError("ChunkBuffer supports only del [:limit]")
        count = self._size if item.stop is None else min(item.stop, self._size)
        self._size -= count
        while count:
            remaining = len(self._chunks[0]) - self._offset
            if count >= remaining:
                self._chunks.popleft()
                self._offset = 0
                count -= remaining
            else:
                self._offset += count
                count = 0
