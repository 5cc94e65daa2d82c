"""Offline replay: snapshot JSONL in, BarRecord JSONL out, through the same ingest and engine as live.

Input: one snapshot per line, ``{"key": "asset_BTCUSDT_ob", "value": <payload object or JSON string>}``,
in any order. Valid snapshots are sorted by their timestamp (stable: ties keep input order) and offered to
an ``ingest.SnapshotBook`` in that order, so the live ordering rules apply (duplicates are rejected).
Bad lines are counted by reason, never fatal.

Bars close at every multiple of ``bar_seconds`` (unix time) from the first valid snapshot's timestamp up
to the first multiple at or after the last one, so every snapshot is seen by some bar;
``bar_idx = close / bar_seconds``. An asset is present in a bar if its latest accepted snapshot with
``ts <= close`` is at most ``max_age_s`` old (default ``2 * bar_seconds``).

Output records carry no ``producer`` field, so two replays of the same input are byte-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, cast

import orjson

from obf_contract import dayfiles
from obf_contract.record import dumps_record
from obf_features_worker.engine import snapshot
from obf_features_worker.engine.feature_engine import FeatureEngine, normalise_universe
from obf_features_worker.engine.ingest import SnapshotBook, present_at
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.service.config import comma_list

log = logging.getLogger(__name__)

# Line-level reject reasons (payload-level ones are snapshot.RejectReason values).
BAD_LINE = "bad_line"  # not a JSON object with "key" and "value"


@dataclass
class ReplayStats:
    """Summary of one replay; filled in while ``replay_records`` runs."""

    lines: int = 0  # non-blank input lines
    valid: int = 0  # lines whose payload parsed and validated
    used: int = 0  # snapshots accepted by the book (valid and in _push_seq order)
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    bars: int = 0
    bars_empty: int = 0  # bars with no asset present
    assets: set[str] = field(default_factory=set)  # symbols with at least one accepted snapshot
    first_bar_idx: int | None = None
    last_bar_idx: int | None = None
    samples: list[str] = field(default_factory=list)  # first few rejects: "line N: reason: detail"

    def summary(self) -> str:
        """One line: bars, assets, snapshots used, rejected by reason."""
        rej = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "none"
        return (f"bars={self.bars} (empty={self.bars_empty}) assets={len(self.assets)} "
                f"snapshots_used={self.used}/{self.lines} rejected: {rej}")


_MAX_SAMPLES = 5


def bar_range(first_ts: float, last_ts: float, bar_seconds: float) -> tuple[int, int]:
    """Indices (k_first, k_last) of the bar closes ``k * bar_seconds`` covering [first_ts, last_ts].

    k_first is the first close at or after first_ts, k_last the first close at or after last_ts.
    """
    return _ceil_index(first_ts, bar_seconds), _ceil_index(last_ts, bar_seconds)


def _ceil_index(ts: float, s: float) -> int:
    k = math.ceil(ts / s)
    # ts / s can round up past an exact multiple (e.g. 0.3 / 0.1); the close itself decides.
    if (k - 1) * s >= ts:
        k -= 1
    elif k * s < ts:
        k += 1
    return k


@dataclass(frozen=True, slots=True)
class _Entry:
    ts: float
    key: str
    snap: snapshot.Snapshot
    line: int


def _reject(stats: ReplayStats, reason: str, line: int, detail: str) -> None:
    stats.rejected[reason] += 1
    if len(stats.samples) < _MAX_SAMPLES:
        stats.samples.append(f"line {line}: {reason}: {detail[:160]}")


def _read_entries(lines: Iterable[str | bytes], stats: ReplayStats, max_payload_bytes: int) -> list[_Entry]:
    entries: list[_Entry] = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        stats.lines += 1
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            _reject(stats, BAD_LINE, n, f"undecodable line: {exc}")
            continue
        if type(obj) is not dict or "key" not in obj or "value" not in obj:
            _reject(stats, BAD_LINE, n, 'line is not an object with "key" and "value"')
            continue
        key, value = obj["key"], obj["value"]
        try:
            # now=inf: a recording is in the past by definition, the live future-skew rule is moot.
            snap = snapshot.parse_snapshot(key, value, now=math.inf, max_payload_bytes=max_payload_bytes)
        except snapshot.SnapshotRejected as exc:
            _reject(stats, exc.reason.value, n, exc.detail)
            continue
        stats.valid += 1
        entries.append(_Entry(snap.ts, key, snap, n))
    entries.sort(key=lambda e: e.ts)  # list.sort is stable: equal timestamps keep input order
    return entries


def replay_records(
    lines: Iterable[str | bytes],
    bar_seconds: float,
    max_age_s: float | None = None,
    params: FeatureParams | None = None,
    *,
    stats: ReplayStats | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_payload_bytes: int = 65_536,
    assets: Iterable[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Replay snapshot lines into BarRecords (see the module docstring for the rules).

    bar_seconds: bar length in s (> 0). max_age_s: staleness limit in s (>= 0, default 2*bar_seconds).
    stats: filled in as the replay runs (complete once the iterator is exhausted).
    progress: called as ``progress(bars_done, bars_total)`` after each bar.
    assets: the worker's ``--assets`` (only these count, and they are the universe of the
    cross-asset depth); None = every asset, as a worker without ``--assets``.
    Raises ValueError for invalid bar_seconds / max_age_s (before reading any line).
    """
    if not (isinstance(bar_seconds, (int, float)) and math.isfinite(bar_seconds) and bar_seconds > 0):
        raise ValueError(f"bar_seconds must be a finite number > 0, got {bar_seconds!r}")
    age_limit = 2.0 * bar_seconds if max_age_s is None else max_age_s
    if not (isinstance(age_limit, (int, float)) and math.isfinite(age_limit) and age_limit >= 0):
        raise ValueError(f"max_age_s must be a finite number >= 0, got {max_age_s!r}")
    universe = normalise_universe(assets)
    return _replay(lines, float(bar_seconds), float(age_limit), params or FeatureParams(),
                   stats if stats is not None else ReplayStats(), progress, max_payload_bytes, universe)


def _replay(lines: Iterable[str | bytes], s: float, age_limit: float, params: FeatureParams,
            stats: ReplayStats, progress: Callable[[int, int], None] | None,
            max_payload_bytes: int, universe: tuple[str, ...] | None) -> Iterator[dict[str, Any]]:
    entries = _read_entries(lines, stats, max_payload_bytes)
    if not entries:
        log.warning("replay has no valid snapshot lines=%d rejected=%d", stats.lines, sum(stats.rejected.values()))
        return
    k_first, k_last = bar_range(entries[0].ts, entries[-1].ts, s)
    total = k_last - k_first + 1
    # Infinite skew: the future-timestamp rule compares to wall-clock now, which is moot offline.
    book = SnapshotBook(assets=universe, max_future_skew_s=math.inf, max_payload_bytes=max_payload_bytes)
    engine = FeatureEngine(params, universe=universe)
    i = 0
    for k in range(k_first, k_last + 1):
        close = k * s
        while i < len(entries) and entries[i].ts <= close:
            e = entries[i]
            book.offer(e.key, None, received_at=e.ts, parsed=e.snap)
            i += 1
        present = present_at(book.latest(), close, age_limit)
        rec = engine.step(k, close, present)
        stats.bars += 1
        if not present:
            stats.bars_empty += 1
        if stats.first_bar_idx is None:
            stats.first_bar_idx = k
        stats.last_bar_idx = k
        yield cast(dict[str, Any], rec)  # a BarRecord: plain dict at run time
        if progress is not None:
            progress(stats.bars, total)
    book_stats = book.stats()
    stats.used = int(book_stats["accepted"])
    stats.assets = set(book.latest())
    for reason, n in book_stats["rejected"].items():
        stats.rejected[str(reason)] += int(n)
    for sample in book_stats["samples"][: max(0, _MAX_SAMPLES - len(stats.samples))]:
        stats.samples.append(f"{sample['key']}: {sample['reason']}: {sample['detail']}")


# ----------------------------------------------------------------------------------------------
# CLI

# FeatureParams fields exposed as flags (--band-span-bps etc.), typed from their defaults.
_PARAM_FIELDS = dataclasses.fields(FeatureParams)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def configure(p: argparse.ArgumentParser) -> None:
    """The `obf-features replay` options on the parser the CLI made for it."""
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("input", metavar="INPUT.jsonl", help="snapshot lines ('-' for stdin)")
    p.add_argument("--bar-seconds", type=float, required=True, help="bar length in seconds (> 0)")
    p.add_argument("--max-age-s", type=float, default=None,
                   help="an asset is present if its snapshot is at most this old at bar close (default 2 x bar)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", "-o", help="BarRecord JSONL path ('-' for stdout)")
    out.add_argument("--by-date", metavar="DIR",
                     help="write one BarRecord file per UTC day of bar_ts, DIR/YYYY-MM-DD.jsonl (the layout the "
                          "offline OB engine's preload_date reads; existing day files are overwritten)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a TTY")
    p.add_argument("--assets", default=None, metavar="SYM,SYM",
                   help="the worker's --assets: only these count and they are the cross-asset universe "
                        "(default: every asset, as a worker without --assets)")
    g = p.add_argument_group("engine parameters (default: the FeatureParams defaults)")
    defaults = FeatureParams()
    for f in _PARAM_FIELDS:
        default = getattr(defaults, f.name)
        g.add_argument(_flag(f.name), dest=f"param_{f.name}", type=type(default), default=None,
                       metavar=type(default).__name__.upper(), help=f"default {default}")
    p.set_defaults(func=run)


def params_from_args(args: argparse.Namespace) -> FeatureParams:
    """FeatureParams with the flags given on the command line; ValueError on a bad value."""
    overrides = {f.name: getattr(args, f"param_{f.name}") for f in _PARAM_FIELDS
                 if getattr(args, f"param_{f.name}", None) is not None}
    return FeatureParams(**overrides)


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[int, int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # total=None (a pulsing bar) while the input is read and sorted; the first bar sets the total.
    with Progress(TextColumn("replay bars"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("bars", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def write_by_date(records: Iterable[dict[str, Any]], folder: str | Path) -> list[date]:
    """Write ``records`` (ascending bar_ts, as replay yields them) into one file per UTC day of
    ``bar_ts``: ``folder/YYYY-MM-DD.jsonl`` (``obf_contract.dayfiles``); returns the days written.

    Each day file is written to a temporary name and renamed when its day is complete, so a
    reader never sees half a day; a day file already there is replaced.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    days: list[date] = []
    current: date | None = None
    f: Any = None
    try:
        for rec in records:
            day = dayfiles.day_of(rec["bar_ts"])
            if day != current:
                if current is not None and day < current:
                    raise ValueError(f"records are not in bar_ts order: bar {rec.get('bar_idx')} of {day} "
                                     f"after bars of {current}")
                if f is not None:
                    _finish_day(f, root, days[-1])
                current = day
                days.append(day)
                f = open(_partial(root, day), "wb")
            f.write(dumps_record(rec) + b"\n")
        if f is not None:
            _finish_day(f, root, days[-1])
            f = None
    finally:
        if f is not None:  # an error: the unfinished day never replaces a complete file
            f.close()
            _partial(root, days[-1]).unlink(missing_ok=True)
    return days


def _partial(root: Path, day: date) -> Path:
    return root / f".{dayfiles.day_file(root, day).name}.partial"


def _finish_day(f: Any, root: Path, day: date) -> None:
    f.close()
    os.replace(_partial(root, day), dayfiles.day_file(root, day))


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success (bad lines are reported, not fatal), 2 on bad arguments or unreadable files."""
    stats = ReplayStats()
    started = time.perf_counter()
    try:
        params = params_from_args(args)
        with contextlib.ExitStack() as stack:
            fin = sys.stdin.buffer if args.input == "-" else stack.enter_context(open(args.input, "rb"))
            progress: Callable[[int, int], None] | None = None
            if not args.no_progress and sys.stderr.isatty():
                progress = stack.enter_context(_progress_bar())
            assets = comma_list(args.assets) if args.assets else None
            records = replay_records(fin, args.bar_seconds, args.max_age_s, params, stats=stats, progress=progress,
                                     assets=assets)
            if args.by_date is not None:
                days = write_by_date(records, args.by_date)
                print(f"replay: wrote {len(days)} day file(s) to {args.by_date}: "
                      + ", ".join(d.isoformat() for d in days), file=sys.stderr)
            else:
                out = sys.stdout.buffer if args.output == "-" else stack.enter_context(open(args.output, "wb"))
                for rec in records:
                    out.write(dumps_record(rec) + b"\n")
    except (OSError, ValueError) as exc:
        print(f"replay: error: {exc}", file=sys.stderr)
        return 2
    for sample in stats.samples:
        print(f"replay: rejected {sample}", file=sys.stderr)
    print(f"replay: {stats.summary()} seconds={time.perf_counter() - started:.2f}", file=sys.stderr)
    return 0
