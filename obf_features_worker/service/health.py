"""Worker health: rolling latency windows and the ``DOLPHIN_OBF_HEALTH`` document.

The document (key = worker id, refreshed every bar with a TTL so a dead worker's entry
disappears) is the shape fixed in docs/operations.md:
``{"worker_id", "host", "pid", "version", "state", "role", "started_at", "updated_at", "clock",
"bar_seconds", "last_bar_idx", "last_bar_ts", "bars_written", "n_assets", "n_present",
"stale_assets", "events": {...}, "compute_ms": {"p50", "p99"}, "bar_to_write_ms": {...},
"event_to_write_ms": {...}, "write_failures", "epoch", "cold_start_reason", "restored_from_bar",
"restore_gap_bars", "restore_replayed_records", "republished_records", "changelog_stops": {...},
"producer_clock": {...}, "connections": {...}}`` (``producer_clock``: ``ProducerClocks.summary()``;
``connections``: per client connection of the worker, ``bars`` and ``events``, ``{"connected",
"disconnects"}``).
``events.superseded``: snapshots coalesced away (replaced before a bar took them);
``events.read_refreshed``: snapshots taken from a map read instead of an event (after the initial
read: events never delivered, or late).

``epoch``: this worker's lease epoch while it leads, else null. ``restored_from_bar``: the last
bar of the state the worker continued from at start (warm restart, whatever its age): the
checkpoint's plus ``restore_replayed_records`` records written after it (``service.changelog``),
with ``restore_gap_bars`` the bars between it and the first bar stepped (missed); ``cold_start_reason``:
why it started cold instead (``checkpoint.REJECT_REASONS``); all null until the first bar decides.
``republished_records``: records written back after the grid lost them (``republish``).
``changelog_stops``: catch-ups from the leader's records (warm restart, standby) that stopped
before the bar asked for, by reason (``service.changelog.STOP_REASONS``: a missing or malformed
record, another lineage, the limit); a stop is never fatal, the bars after it are a restore gap.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MIN_STALE_AFTER_S = 15.0


def stale_after_s(bar_seconds: float | None) -> float:
    """The one staleness rule, s: a worker's health entry lives this long (its TTL), and a worker
    or bar older than this counts as stale: max(3 * bar_seconds, 15); bar_seconds unknown -> 15."""
    bs = bar_seconds if isinstance(bar_seconds, (int, float)) and bar_seconds > 0 else 1.0
    return max(3.0 * float(bs), MIN_STALE_AFTER_S)

STATES = ("starting", "running", "degraded", "stopping")
ROLES = ("leader", "standby")


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list: the smallest value with at least p% of the
    values at or below it. ``p`` in (0, 100]; ValueError for an empty list."""
    if not sorted_values:
        raise ValueError("percentile of an empty window")
    if not 0 < p <= 100:
        raise ValueError(f"p must be in (0, 100], got {p!r}")
    rank = math.ceil(p / 100.0 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


class LatencyWindow:
    """The last ``size`` latency samples (ms) with p50/p99. Thread-safe."""

    def __init__(self, size: int = 500) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self._values: deque[float] = deque(maxlen=int(size))
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        if math.isfinite(ms):
            with self._lock:
                self._values.append(float(ms))

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def summary(self) -> dict[str, float | None]:
        """``{"p50": ms, "p99": ms}`` rounded to 0.001 ms; None for both while empty."""
        with self._lock:
            values = sorted(self._values)
        if not values:
            return {"p50": None, "p99": None}
        return {"p50": round(percentile(values, 50), 3), "p99": round(percentile(values, 99), 3)}


@dataclass
class HealthStats:
    """What the worker's bar loop updates; ``document()`` renders it."""

    worker_id: str
    host: str
    pid: int
    version: str
    clock: str
    bar_seconds: float
    started_at: float
    state: str = "starting"
    role: str = "leader"
    last_bar_idx: int | None = None
    last_bar_ts: float | None = None
    bars_written: int = 0
    n_assets: int = 0
    n_present: int = 0
    stale_assets: list[str] = field(default_factory=list)
    write_failures: int = 0
    epoch: int | None = None
    cold_start_reason: str | None = None
    restored_from_bar: int | None = None
    restore_gap_bars: int | None = None
    restore_replayed_records: int | None = None
    republished_records: int = 0
    changelog_stops: dict[str, int] = field(default_factory=dict)
    compute_ms: LatencyWindow = field(default_factory=lambda: LatencyWindow(500))
    bar_to_write_ms: LatencyWindow = field(default_factory=lambda: LatencyWindow(500))
    event_to_write_ms: LatencyWindow = field(default_factory=lambda: LatencyWindow(5000))

    def document(self, now: float, book_stats: Mapping[str, Any], listener_errors: int,
                 connections: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The health document at unix time ``now``; ``book_stats`` is ``SnapshotBook.stats()``;
        ``connections``: ``WorkerGrid.connection_states()`` (per client connection: connected,
        disconnects), ``{}`` when not given."""
        if self.state not in STATES:
            raise ValueError(f"unknown health state {self.state!r}")
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "state": self.state,
            "role": self.role,
            "started_at": self.started_at,
            "updated_at": now,
            "clock": self.clock,
            "bar_seconds": self.bar_seconds,
            "last_bar_idx": self.last_bar_idx,
            "last_bar_ts": self.last_bar_ts,
            "bars_written": self.bars_written,
            "n_assets": self.n_assets,
            "n_present": self.n_present,
            "stale_assets": list(self.stale_assets),
            "events": {
                "received": int(book_stats.get("received", 0)),
                "accepted": int(book_stats.get("accepted", 0)),
                "ignored": int(book_stats.get("ignored", 0)),
                "read_echoes": int(book_stats.get("read_echoes", 0)),
                "superseded": int(book_stats.get("superseded", 0)),
                "read_refreshed": int(book_stats.get("read_refreshed", 0)),
                "seq_resets": int(book_stats.get("seq_resets", 0)),
                "seq_jumps": int(book_stats.get("seq_jumps", 0)),
                "rejected": {str(k): int(v) for k, v in dict(book_stats.get("rejected", {})).items()},
                "listener_errors": int(listener_errors),
            },
            "compute_ms": self.compute_ms.summary(),
            "bar_to_write_ms": self.bar_to_write_ms.summary(),
            "event_to_write_ms": self.event_to_write_ms.summary(),
            "write_failures": self.write_failures,
            "epoch": self.epoch,
            "cold_start_reason": self.cold_start_reason,
            "restored_from_bar": self.restored_from_bar,
            "restore_gap_bars": self.restore_gap_bars,
            "restore_replayed_records": self.restore_replayed_records,
            "republished_records": self.republished_records,
            "changelog_stops": dict(self.changelog_stops),
            "producer_clock": dict(book_stats.get("producer_clock") or {}),
            "connections": {str(k): dict(v) for k, v in (connections or {}).items()},
        }
