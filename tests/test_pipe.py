"""The channel receive buffer hands out exactly the bytes fed, in order, at any sizes."""

from __future__ import annotations

import random

from paramiko.buffered_pipe import BufferedPipe

from sftp_gateway.sftp.pipe import ChunkBuffer


def test_chunk_buffer_in_a_paramiko_pipe_returns_every_byte_in_order() -> None:
    rng = random.Random(7)
    pipe = BufferedPipe()
    pipe._buffer = ChunkBuffer()
    sent, received = bytearray(), bytearray()
    for _ in range(3000):
        if rng.random() < 0.6:
            data = rng.randbytes(rng.randint(1, 70_000))
            pipe.feed(data)
            sent += data
        elif len(pipe._buffer):
            received += pipe.read(rng.randint(1, 100_000))
    received += pipe.empty()
    assert bytes(received) == bytes(sent)
    assert len(pipe._buffer) == 0


def test_chunk_buffer_keeps_bytes_already_buffered() -> None:
    buffer = ChunkBuffer(b"abc")
    buffer.frombytes(b"defg")
    assert buffer[:5].tobytes() == b"abcde"
    del buffer[:2]
    assert buffer[:None].tobytes() == b"cdefg"
    assert len(buffer) == 5
