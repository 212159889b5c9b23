"""Output and input for people at a terminal: aligned tables, sizes, times, `--since 2h`.

The CLI prints a table when stdout is a terminal and tab-separated lines when it is
piped (stable columns for scripts, no header), so this stays a tiny formatter of its own
rather than a dependency such as rich.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sftp_gateway.units import human_size

_RELATIVE = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|hr|d|day|days|w|wk|weeks?)\s*$", re.I)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SINCE_HELP = "ISO 8601 date or time (UTC unless stated), or 30m, 2h, 3d, 1w, today, yesterday."


@dataclass(frozen=True)
class Column:
    """A table column: its header and whether values line up on the right (numbers)."""

    header: str
    right: bool = False


def stdout_is_terminal() -> bool:
    """Tables for people, TSV for pipes (`| cut -f3`, `| sort`)."""
    return sys.stdout.isatty()


def render_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, under a header."""
    widths = [len(c.header) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if column.right else cell.ljust(width)
            for column, cell, width in zip(columns, cells, widths, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line([c.header for c in columns]), *(line(row) for row in rows)])


def render_tsv(rows: Sequence[Sequence[str]]) -> str:
    """One line per row, tabs between fields; tabs and newlines inside become spaces."""
    return "\n".join(
        "\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row) for row in rows
    )


def human_rate(bytes_per_second: float) -> str:
    return human_size(int(bytes_per_second)) + "/s"


def local_time(moment: datetime | None) -> str:
    """A UTC timestamp as the operator's local wall-clock time, to the second."""
    if moment is None:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def upload_rate(size: int, started_at: datetime, now: datetime | None = None) -> float:
    """Average bytes per second since the upload started (size / elapsed)."""
    now = now or datetime.now(UTC)
    elapsed = (now - started_at).total_seconds()
    return size / elapsed if elapsed > 0 else 0.0


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (UTC unless stated), `2h`/`3d`/`30m`/`1w` ago, or local `today`/`yesterday`.

    Raises ValueError with a sentence naming the accepted forms.
    """
    now = now or datetime.now(UTC)
    word = value.strip().lower()
    if word in ("today", "yesterday"):
        midnight = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight - timedelta(days=1 if word == "yesterday" else 0)
    match = _RELATIVE.match(word)
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)[0]])
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: use ISO 8601 (2026-11-01), 2h, 3d, today or yesterday"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
