"""What storage.compression costs and saves: ratio, CPU seconds per GiB, wall time.

Runs the gateway's own compressor (sftp_gateway/upload/compress.py, one member/frame
per 8 MiB part, as an upload makes them) over generated data, one thread:

- pdf-text: PDF pages whose content streams are uncompressed text (reports, forms);
- pdf-mixed: the same pages, each with a random-noise image stream (as a JPEG would be);
- random: incompressible bytes (already compressed files, encrypted archives).

    python bench/compression.py [--mib 64]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from sftp_gateway.upload.compress import compressor_for, decompress_all

PART = 8 * 1024 * 1024
SETTINGS = [("gzip", 1), ("gzip", 6), ("zstd", 1), ("zstd", 3), ("zstd", 9)]


def pdf_page(number: int, image: int) -> bytes:
    """One page: a text content stream and, if image > 0, an image stream of noise."""
    lines = b"".join(
        b"BT /F1 10 Tf 50 %d Td (Invoice %d line %d: 12 x widget @ 3.50 EUR = 42.00 EUR) Tj ET\n"
        % (800 - 12 * i, number, i)
        for i in range(60)
    )
    page = b"%d 0 obj << /Length %d >> stream\n%s\nendstream endobj\n" % (
        number,
        len(lines),
        lines,
    )
    if image:
        page += b"<< /Subtype /Image /Filter /DCTDecode /Length %d >> stream\n" % image
        page += os.urandom(image) + b"\nendstream\n"
    return page


def generated(kind: str, size: int) -> bytes:
    if kind == "random":
        return os.urandom(size)
    out = bytearray(b"%PDF-1.7\n")
    number = 0
    while len(out) < size:
        number += 1
        out += pdf_page(number, 24_000 if kind == "pdf-mixed" else 0)
    return bytes(out[:size])


def measure(data: bytes, name: str, level: int) -> tuple[float, float, float]:
    """(ratio stored/original, CPU s per GiB, wall s per GiB) of compressing `data`."""
    compressor = compressor_for(name, level)
    assert compressor is not None
    chunks: list[bytes] = []
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(data), PART):
        for piece in range(start, min(start + PART, len(data)), 256 * 1024):
            chunks.append(
                compressor.compress(data[piece : min(piece + 256 * 1024, start + PART, len(data))])
            )
        chunks.append(compressor.end_member())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stored = b"".join(chunks)
    assert decompress_all(name, stored) == data
    per_gib: Callable[[float], float] = lambda seconds: seconds * (1 << 30) / len(data)  # noqa: E731
    return len(stored) / len(data), per_gib(cpu), per_gib(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB of each kind of data")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    print(f"{'data':<10} {'codec':<8} {'ratio':>6} {'CPU s/GiB':>10} {'wall s/GiB':>11}")
    for kind in ("pdf-text", "pdf-mixed", "random"):
        data = generated(kind, size)
        for name, level in SETTINGS:
            ratio, cpu, wall = measure(data, name, level)
            print(
                f"{kind:<10} {name + '-' + str(level):<8} {ratio:>6.3f} {cpu:>10.2f} {wall:>11.2f}"
            )


if __name__ == "__main__":
    main()
