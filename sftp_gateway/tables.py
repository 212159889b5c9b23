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

    Raises ValueError with a sentence naming the accepted forms (or saying the time is
    out of range: a span reaching back before the year 1).
    """
    now, shown = now or datetime.now(UTC), _shown(value)
    word = value.strip().lower()
    if word in ("today", "yesterday"):
        midnight = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight - timedelta(days=1 if word == "yesterday" else 0)
    try:
        span = _span(word)
        moment = now - span if span is not None else _iso_moment(value)
    except OverflowError:
        raise ValueError(
            f"{shown} reaches back before the year 1: use a shorter span or a date"
        ) from None
    if moment is None:
        raise ValueError(
            f"{shown} is not a time: use ISO 8601 (2026-11-01), 2h, 3d, today or yesterday"
        )
    return moment


def parse_until(value: str, longest: timedelta, now: datetime | None = None) -> datetime:
    """When something given for a while ends: a span from now (`30m`, `12h`, `7d`, `2w`)
    or an ISO 8601 date or time (UTC unless stated), which must be in the future and at
    most `longest` ahead.

    Raises ValueError with a sentence naming the accepted forms or what is wrong.
    """
    now, shown = now or datetime.now(UTC), _shown(value)
    try:
        span = _span(value)
        until = now + span if span is not None else _iso_moment(value)
    except OverflowError:
        until, span = datetime.max.replace(tzinfo=UTC), None
    if until is None:
        raise ValueError(
            f"{shown} is not a duration or a date: use 30m, 12h, 7d, 2w or an ISO 8601"
            " date or time in the future (2026-12-31, 2026-12-31T18:00Z)"
        )
    if span is not None and until <= now:
        raise ValueError(f"{shown} is no time at all: use 30m, 12h, 7d or 2w")
    if until <= now:
        raise ValueError(
            f"{shown} is in the past (it is now {now:%Y-%m-%d %H:%M} UTC):"
            " give a future date or time, or a duration such as 7d"
        )
    if until - now > longest:
        raise ValueError(f"{shown} is too far ahead: at most {longest.days}d from now")
    return until


def _span(word: str) -> timedelta | None:
    """`30m`, `2h`, `3d`, `1w` (also `90 min`, `2 days`), or None if `word` is no span;
    OverflowError for one longer than a timedelta holds (2.7 million years)."""
    match = _RELATIVE.match(word)
    if match is None:
        return None
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > 20:  # int() would refuse 4300 digits with a ValueError of its own
        raise OverflowError("span too long")
    return timedelta(seconds=int(digits) * _SECONDS[match.group(2)[0].lower()])


def _iso_moment(value: str) -> datetime | None:
    """An ISO 8601 date or time in UTC (UTC unless it states an offset), or None if the
    value is not one; OverflowError if it cannot be told in UTC (near year 1 or 9999)."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _shown(value: str) -> str:
    """The value as a message quotes it: repr, cut short when it is long."""
    return repr(value if len(value) <= 40 else value[:37] + "...")
