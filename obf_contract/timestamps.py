"""Timestamps as the upstream flow writes them: ISO-8601 or unix seconds / milliseconds.

Stdlib only: the worker's snapshot validation, its scan clock and the inspection commands share it
without loading the engine.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

# A unix timestamp number above this is in milliseconds (1e11 s is the year 5138).
MS_THRESHOLD = 1e11

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_MAX_ISO_LEN = 64


class BadTimestamp(ValueError):
    """A value that is not a usable timestamp; the message says why."""


def parse_timestamp(value: object) -> float:
    """ISO-8601 (offset or Z; naive = UTC) or unix s int/float (> 1e11 = ms) -> unix seconds.

    ISO strings resolve to whole microseconds and are converted as ``microseconds / 1e6``
    (correctly rounded), so an ISO string and the float literal of the same instant give the
    same float. Raises BadTimestamp.
    """
    t = type(value)
    if t is float or t is int or (isinstance(value, (int, float)) and t is not bool):
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except OverflowError:
            raise BadTimestamp("numeric timestamp out of range") from None
        if not math.isfinite(seconds):
            raise BadTimestamp(f"non-finite timestamp {value!r}")
        if seconds > MS_THRESHOLD:
            seconds = value / 1000  # type: ignore[operator]  # int / int is correctly rounded
    elif t is str:
        if len(value) > _MAX_ISO_LEN:  # type: ignore[arg-type]
            raise BadTimestamp("timestamp string too long")
        try:
            dt = datetime.fromisoformat(value)  # type: ignore[arg-type]
        except ValueError:
            raise BadTimestamp(f"not ISO-8601: {value!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            seconds = ((dt - _EPOCH) // _ONE_US) / 1_000_000
        except OverflowError:  # offsets near datetime.min/max
            raise BadTimestamp(f"timestamp out of range: {value!r}") from None
    else:
        raise BadTimestamp(f"timestamp has type {t.__name__}")
    if seconds < 0:
        raise BadTimestamp(f"timestamp before 1970: {value!r}")
    return seconds


def format_timestamp(ts: float) -> str:
    """Unix seconds -> ISO-8601 UTC with microseconds, e.g. ``2024-08-08T23:54:14.123456+00:00``."""
    return (_EPOCH + timedelta(microseconds=round(ts * 1_000_000))).isoformat(timespec="microseconds")

