"""Catch-up from the changelog: the bar records written after a checkpoint bring its state to the
writer's (snapshot + changelog, docs/reliability.md).

The leader writes each bar's record first and its checkpoint only every ``checkpoint_every_bars``
bars, after the record. A successor (a restarted worker, a standby) restores the newest checkpoint
(bar ``c``) and applies the records after it in bar order with ``FeatureEngine.apply_record``,
following their chain: the next record is the lowest key above the last bar applied, and it must
say so (``bar_idx - 1 - gap_bars`` is that bar). At the first break (a key missing inside the
chain, a record that does not decode or does not continue the state) it stops: the bars after it
are a restore gap, as bars no process stepped. Reads: one ``get_all`` of the keys when the range
is short (a standby's one bar), else a key query first; at most ``max_records`` records.

Pure apart from the two grid reads; ``GridError`` propagates (the caller decides).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from obf_contract.record import loads_record
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.service.grid import json_text

log = logging.getLogger(__name__)

# Keys read in one get_all: a short range is read directly, a longer one through a key query.
READ_BATCH = 64

# Why a catch-up stopped before the bar it was asked for (None: it got there).
STOP_GAP = "gap"  # the next key in the map is not the next record of the chain (or none is left)
STOP_UNREADABLE = "unreadable"  # the next record does not decode
STOP_MISMATCH = "mismatch"  # the next record does not continue the state (another lineage)
STOP_LIMIT = "limit"  # max_records applied


class RecordGrid(Protocol):
    """What the catch-up reads (``service.grid.WorkerGrid`` has both)."""

    def get_records(self, bar_idxs: Iterable[int]) -> dict[int, Any]: ...

    def bar_keys_between(self, low_exclusive: int, high_exclusive: int) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What one catch-up did: ``applied`` records; ``bar_ts`` of the last one (unix s, None if
    none); ``stopped``: None (no record left before the bar asked for) or a ``STOP_*`` reason
    with ``detail``. A record that merely is not there yet is not a stop."""

    applied: int
    bar_ts: float | None
    stopped: str | None = None
    detail: str = ""


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
            except ValueError as exc:
                return CatchUp(applied, bar_ts, STOP_UNREADABLE, f"bar {key}: {exc}"[:300])
            ts: Any = rec.get("bar_ts")
            if rec.get("bar_idx") != key or type(ts) not in (int, float):
                return CatchUp(applied, bar_ts, STOP_UNREADABLE, f"key {key} holds bar {rec.get('bar_idx')!r} "
                                                                 f"at {ts!r}")
            prev = engine.last_bar_idx
            gap = rec.get("gap_bars")
            if type(gap) is not int or key - 1 - gap != prev:
                return CatchUp(applied, bar_ts, STOP_GAP, f"bar {key} (gap_bars {gap!r}) does not follow bar {prev}")
            if applied >= max_records:
                return CatchUp(applied, bar_ts, STOP_LIMIT, f"{max_records} records applied")
            try:
                engine.apply_record(rec)
            except ValueError as exc:
                return CatchUp(applied, bar_ts, STOP_MISMATCH, f"bar {key}: {exc}"[:300])
            applied += 1
            bar_ts = float(ts)
            _raise_seqs(seqs, rec)
    return CatchUp(applied, bar_ts)


def _raise_seqs(seqs: dict[str, int], rec: dict[str, Any]) -> None:
    for sym, seq in zip(rec["symbols"], rec.get("seq") or ()):
        if type(seq) is int and seq >= 0 and seq > seqs.get(sym, -1):
            seqs[sym] = seq
