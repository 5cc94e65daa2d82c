"""The day-file layout: one bar-record file per UTC day, written by ``obf-features replay --by-date``
and read by the offline OB engine's ``preload_date``.

``FOLDER/YYYY-MM-DD.jsonl`` holds the records (one JSON object a line, ascending ``bar_idx``) whose
``bar_ts`` (the bar's close, unix s) falls in that UTC day: ``[00:00:00, 24:00:00)``. A bar closing
exactly at midnight therefore opens the new day's file, as the bar clock's ``bar_ts`` says.

Stdlib only: shared by the worker (writer) and the trader-side adapter (reader).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

DAY_FILE_SUFFIX = ".jsonl"
_DAY_FILE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")


def as_date(day: date | datetime | str) -> date:
    """A UTC calendar day from a ``date``, an aware ``datetime`` (converted to UTC; a naive one is
    taken as UTC) or an ISO ``"YYYY-MM-DD"`` string; ValueError / TypeError otherwise."""
    if isinstance(day, datetime):
        return (day if day.tzinfo is None else day.astimezone(UTC)).date()
    if isinstance(day, date):
        return day
    if isinstance(day, str):
        return date.fromisoformat(day.strip())
    raise TypeError(f"a day must be a date, datetime or 'YYYY-MM-DD' string, got {type(day).__name__}")


def day_of(bar_ts: float) -> date:
    """The UTC day whose file holds a bar closing at ``bar_ts`` (unix s)."""
    return datetime.fromtimestamp(bar_ts, UTC).date()


def day_bounds(day: date | datetime | str) -> tuple[float, float]:
    """``[start, end)`` of a UTC day in unix s."""
    d = as_date(day)
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def day_file(folder: str | Path, day: date | datetime | str) -> Path:
    """``folder/YYYY-MM-DD.jsonl``, the file of one UTC day."""
    return Path(folder) / f"{as_date(day).isoformat()}{DAY_FILE_SUFFIX}"


def days_in(folder: str | Path) -> list[date]:
    """The days that have a file in ``folder``, ascending (other files are ignored)."""
    out = []
    for p in Path(folder).iterdir():
        m = _DAY_FILE_RE.fullmatch(p.name)
        if m is not None and p.is_file():
            out.append(date.fromisoformat(m.group(1)))
    return sorted(out)
