"""The files the benchmark uploads: valid one-page PDFs of an exact size."""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import MIB
from tests.helpers import sha256_file

__all__ = ["make_pdf", "sha256_file"]


def _pdf_parts(payload: int) -> tuple[bytes, bytes]:
    """The bytes before and after a stream of `payload` bytes in a one-page PDF."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
    ]
    head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(head))
        head += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    offsets.append(len(head))
    head += b"4 0 obj\n<< /Length %d >>\nstream\n" % payload
    tail = b"\nendstream\nendobj\n"
    xref_at = len(head) + payload + len(tail)
    tail += b"xref\n0 5\n0000000000 65535 f \n"
    tail += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    tail += b"trailer\n<< /Size 5 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref_at
    return head, tail


def make_pdf(path: Path, size: int) -> Path:
    """A valid one-page PDF of exactly `size` bytes (random bytes in a content stream)."""
    payload = max(size - 400, 0)
    for _ in range(10):  # the digits of the lengths move the total a little: converge
        head, tail = _pdf_parts(payload)
        payload += size - (len(head) + payload + len(tail))
    head, tail = _pdf_parts(payload)
    if len(head) + payload + len(tail) != size:
        raise ValueError(f"cannot make a PDF of {size} bytes")
    with open(path, "wb") as out:
        out.write(head)
        left = payload
        while left:
            piece = os.urandom(min(left, 4 * MIB))
            out.write(piece)
            left -= len(piece)
        out.write(tail)
    return path
