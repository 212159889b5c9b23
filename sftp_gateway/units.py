"""Sizes, both ways: `8MiB` in config and on the command line, `1.5 KiB` in messages.

One reader (`parse_size`, for config.py, the CLI and the benchmark) and one writer
(`human_size`, for SFTP status texts, emails and CLI tables), so a size reads the same
wherever a user meets it: bytes below 1 KiB, then binary units, whole numbers without
a decimal (`1 GiB`, the limits people configure) and others with one (`1.5 KiB`).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
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
# Beyond any file, memory or disk (and a signed 64-bit integer, as catalogs store sizes).
MAX_SIZE = 2**63 - 1
MAX_SIZE_TEXT = "8 EiB"


def parse_size(value: Any) -> int:
    """Turn `8MiB`, `1GiB`, `500 KB`, `1.5KiB` or a plain integer into bytes, exactly
    (ValueError if not: a fraction of a byte, a negative or absurdly large size)."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_EXAMPLE}")
    if isinstance(value, int):
        return _checked(value, value)
    if isinstance(value, float):  # YAML's `1.5`: only a whole, exactly held number
        if not math.isfinite(value) or not value.is_integer() or abs(value) > 2**53:
            raise ValueError(f"{value!r} is not a whole number of bytes")
        return _checked(int(value), value)
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"{_shown(value)} is not {SIZE_EXAMPLE}")
    digits = match.group(1)
    whole, _, fraction = digits.partition(".")
    if len(whole.lstrip("0")) > 30:  # checked before int() meets its cap on digits
        raise ValueError(f"{_shown(value)} is too large (at most {MAX_SIZE_TEXT})")
    if len(whole) + len(fraction) > 100:
        raise ValueError(f"{_shown(value)} has too many digits")
    number = Fraction(digits) * SIZE_UNITS[match.group(2).lower()]  # exact
    if number > MAX_SIZE:
        raise ValueError(f"{_shown(value)} is too large (at most {MAX_SIZE_TEXT})")
    if number.denominator != 1:
        raise ValueError(
            f"{_shown(value)} is not a whole number of bytes: use a smaller unit or plain bytes"
        )
    return _checked(number.numerator, value)


def _checked(size: int, value: Any) -> int:
    if size < 0:
        raise ValueError("a size cannot be negative")
    if size > MAX_SIZE:
        raise ValueError(f"{_shown(value)} is too large (at most {MAX_SIZE_TEXT})")
    return size


def _shown(value: Any) -> str:
    """The value as a message quotes it, cut short (a 400-digit number is not read)."""
    text = str(value) if isinstance(value, int) and value < 10**40 else None
    if text is None:
        text = "the number" if isinstance(value, int) else repr(value)
    return text if len(text) <= 40 else text[:24] + "..." + text[-8:]


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
