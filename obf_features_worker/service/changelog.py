"""Catch-up from the changelog: the bar records written after a checkpoint bring its state to the
writer's (snapshot + changelog, docs/reliability.md).

The leader writes each bar's record first and its checkpoint only every ``checkpoint_every_bars``
bars, after the record. A successor (a restarted worker, a standby) restores the newest checkpoint
(bar ``c``) and applies the records after it in bar order with ``FeatureEngine.apply_record``,
following their chain: the next record is the lowest key above the last bar applied, and it must
say so (``bar_idx - 1 - gap_bars`` is that bar). At the first break (a key missing inside the
chain, a record that does not decode, breaks the columnar shape or does not continue the state)
it stops: the bars after it are a restore gap, as bars no process stepped. A malformed record is
a stop (reported by reason), never an exception: the grid is input, and a worker that crashed on
it would crash again on every restart reading the same record. Reads: one ``get_all`` of the keys
when the range is short (a standby's one bar), else a key query first; at most ``max_records``.

Pure apart from the two grid reads; ``GridError`` propagates (the caller decides).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from obf_contract.record import check_columns, loads_record
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.service.grid import json_text

log = logging.getLogger(__name__)

# Keys read in one get_all: a short range is read directly, a longer one through a key query.
READ_BATCH = 64

# Why a catch-up stopped before the bar it was asked for (None: it got there).
STOP_GAP = "gap"  # the next key in the map is not the next record of the chain (or none is left)
STOP_UNREADABLE = "unreadable"  # the next record does not decode or breaks the columnar shape
STOP_MISMATCH = "mismatch"  # the next record does not continue the state (another lineage, bad values)
STOP_LIMIT = "limit"  # max_records applied
STOP_REASONS = (STOP_GAP, STOP_UNREADABLE, STOP_MISMATCH, STOP_LIMIT)


class RecordGrid(Protocol):
    """What the catch-up reads (``service.grid.WorkerGrid`` has both)."""

    def get_records(self, bar_idxs: Iterable[int]) -> dict[int, Any]: ...

    def bar_keys_between(self, low_exclusive: int, high_exclusive: int) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What one catch-up did: ``applied`` records; ``bar_ts`` of the last one (unix s, None if
    none); ``stopped``: None (no record left before the bar asked for) or a ``STOP_*`` reason
    with ``detail``; ``stop_key``: the key of the record it stopped at (None for a limit or no
    stop). A record that merely is not there yet is not a stop."""

    applied: int
    bar_ts: float | None
    stopped: str | None = None
    detail: str = ""
    stop_key: int | None = None


def catch_up(engine: FeatureEngine, grid: RecordGrid, *, before_bar: int, seqs: dict[str, int],
             max_records: int) -> CatchUp:
    """Apply to ``engine`` (restored, ``last_bar_idx`` set) the records of the bars after its last
    and before ``before_bar``, in chain order, at most ``max_records`` (>= 1). ``seqs`` (symbol ->
    last ``_push_seq``) is raised to each applied record's ``seq``. The engine is left at the last
    record applied (a consistent state whatever happens). Raises GridError."""
    last = engine.last_bar_idx
    if last is None:
        raise ValueError("catch_up needs an engine restored from a checkpoint (last_bar_idx set)")
    if before_bar - last - 1 <= 0:
        return CatchUp(0, None)
    if before_bar - last - 1 <= READ_BATCH:
        keys = list(range(last + 1, before_bar))
    else:
        keys = grid.bar_keys_between(last, before_bar)
    applied = 0
    bar_ts: float | None = None
    for start in range(0, len(keys), READ_BATCH):
        batch = keys[start:start + READ_BATCH]
        found = grid.get_records(batch)
        for key in batch:
            raw = found.get(key)
            if raw is None:
                # Not written (yet), or a bar no engine stepped: the next record present says
                # which (its gap_bars covers the skipped bars, or it does not follow).
                continue
            text = json_text(raw)
            try:
                rec = loads_record(text if text is not None else b"")
                check_columns(rec)
                # The seq updates are worked out before the engine changes: a bad seq column
                # must not leave the engine one record ahead of the seqs.
                seq_updates = _seq_updates(rec)
            except ValueError as exc:
                return CatchUp(applied, bar_ts, STOP_UNREADABLE, f"bar {key}: {exc}"[:300], key)
            ts: Any = rec.get("bar_ts")
            if rec.get("bar_idx") != key or type(ts) not in (int, float):
                return CatchUp(applied, bar_ts, STOP_UNREADABLE, f"key {key} holds bar {rec.get('bar_idx')!r} "
                                                                 f"at {ts!r}"[:300], key)
            prev = engine.last_bar_idx
            gap = rec.get("gap_bars")
            if type(gap) is not int or key - 1 - gap != prev:
                return CatchUp(applied, bar_ts, STOP_GAP, f"bar {key} (gap_bars {gap!r}) does not follow bar {prev}",
                               key)
            if applied >= max_records:
                return CatchUp(applied, bar_ts, STOP_LIMIT, f"{max_records} records applied")
            try:
                engine.apply_record(rec)
            except Exception as exc:  # noqa: BLE001 - any bad value in a record is a stop, never a crash
                # apply_record checks the whole record before changing the state (ValueError); any
                # other exception is a value it did not foresee: still this record's fault.
                return CatchUp(applied, bar_ts, STOP_MISMATCH, f"bar {key}: {type(exc).__name__}: {exc}"[:300], key)
            applied += 1
            bar_ts = float(ts)
            for sym, seq in seq_updates:
                if seq > seqs.get(sym, -1):
                    seqs[sym] = seq
    return CatchUp(applied, bar_ts)


def _seq_updates(rec: dict[str, Any]) -> list[tuple[str, int]]:
    """(symbol, seq) for each present asset with a usable seq (an int >= 0; None or another
    value is no update); the record's shape has been checked (``check_columns``)."""
    return [(sym, seq) for sym, seq in zip(rec["symbols"], rec["seq"]) if type(seq) is int and seq >= 0]
