"""The resumable SHA-256 gives hashlib's digest, whatever the chunking, buffer types and resumes."""

from __future__ import annotations

import hashlib
import random

import pytest

from sftp_gateway.upload.sha256 import ResumableSha256


def test_matches_hashlib_across_buffer_types_and_saved_states() -> None:
    rng = random.Random(5)
    data = rng.randbytes(3_000_000)
    ours, reference, position = ResumableSha256(), hashlib.sha256(), 0
    while position < len(data):
        chunk = data[position : position + rng.randint(0, 200_000)]
        position += len(chunk)
        kind = rng.choice(["bytes", "bytearray", "view", "slice"])
        if kind == "bytearray":
            ours.update(bytearray(chunk))
        elif kind == "view":
            ours.update(memoryview(bytearray(chunk)))
        elif kind == "slice":
            ours.update(memoryview(b"<" + chunk + b">")[1 : 1 + len(chunk)])
        else:
            ours.update(chunk)
        reference.update(chunk)
        if rng.random() < 0.3:
            ours = ResumableSha256(ours.state())  # as after an interruption
            assert ours.hexdigest() == reference.hexdigest()
    assert ours.hexdigest() == reference.hexdigest()


def test_empty_input_and_a_bad_state() -> None:
    assert ResumableSha256().hexdigest() == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ValueError):
        ResumableSha256(b"short")
