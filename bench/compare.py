"""Compare benchmark result files side by side: one line per (file, size).

python bench/compare.py bench/results/*.json
python bench/compare.py --label 'sweep-*' bench/results/*.json
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = [
    ("S3 s", "direct_s3_s", ".2f"),
    ("gw s", "gateway_s", ".2f"),
    ("gw/S3", "ratio_gateway_direct", ".2f"),
    ("gwCPU/GiB", "gateway_cpu_per_gib", ".2f"),
    ("RSS+MiB", "peak_above_idle_mib", ".1f"),
    ("tail s", "last_byte_to_catalog_row", ".3f"),
]


def _cell(row: dict[str, Any], key: str, spec: str) -> str:
    value = row.get(key)
    return "-" if value is None else format(value, spec)


def rows(paths: Sequence[Path], label: str) -> list[list[str]]:
    out = []
    for path in paths:
        data = json.loads(path.read_text())
        meta = data["meta"]
        if not fnmatch.fnmatch(meta.get("label", ""), label):
            continue
        options = meta.get("overrides", []) + meta.get("ssh_opts", [])
        settings = " ".join(options + meta.get("gateway_env", []))
        code = meta.get("gateway_code", "").split("(")[-1].rstrip(")")
        for size, row in data["sizes"].items():
            cells = [meta.get("label", ""), code, size]
            cells += [_cell(row, key, spec) for _, key, spec in COLUMNS]
            out.append([*cells, settings or "defaults"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--label", default="*", help="only results whose label matches")
    args = parser.parse_args(argv)
    header = ["label", "code", "size", *(title for title, _, _ in COLUMNS), "settings"]
    table = [header, *rows(sorted(args.files), args.label)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
