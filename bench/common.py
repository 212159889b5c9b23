"""Constants shared by the benchmark modules, and the size parsing of its options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sftp_gateway import units

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
GIB = 1024 * MIB
CLK_TCK = os.sysconf("SC_CLK_TCK")
CREDENTIALS = ("bench-access-key", "bench-secret-key")
BENCH_USER = "bench"
SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
]  # fmt: skip
DEFAULT_SIZES = "50MB,512MiB,1GiB"


def parse_size(text: str) -> int:
    """`50MB` (10^6), `512MiB` (2^20), `1GiB`, `100KB` or plain bytes (the config's)."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def label_of(size: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size / 1e6:g}MB"
