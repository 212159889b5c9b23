"""Sizes, both ways: `8MiB` in config and on the command line, `1.5 KiB` in messages.

One reader (`parse_size`, for config.py, the CLI and the benchmark) and one writer
(`human_size`, for SFTP status texts, emails and CLI tables), so a size reads the same
wherever a user meets it: bytes below 1 KiB, then binary units, whole numbers without
a decimal (`1 GiB`, the limits people configure) and others with one (`1.5 KiB`).
"""

from __future__ import annotations

import re
from typing import Any

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KIB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MIB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GIB,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": TIB,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_HUMAN_UNITS = (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB))
SIZE_EXAMPLE = "a size such as 8MiB or 1GiB"


def parse_size(value: Any) -> int:
    """Turn `8MiB`, `1GiB`, `500 KB` or a plain integer into bytes (ValueError if not)."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_EXAMPLE}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"{value!r} is not {SIZE_EXAMPLE}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def human_size(size: int | float) -> str:
    """1023 -> '1023 bytes', 1536 -> '1.5 KiB', 1 GiB -> '1 GiB', 5 TiB -> '5 TiB'."""
    size = int(size)
    if abs(size) < KIB:
        return f"{size} bytes"
    for unit, factor in _HUMAN_UNITS:  # the largest unit the size shows at least 1.0 of
        if size % factor == 0:
            return f"{size // factor} {unit}"
        if abs(round(size / factor, 1)) >= 1:
            return f"{size / factor:.1f} {unit}"
    raise AssertionError("unreachable: KiB always fits")
