"""Test data for the inspection tools: real engine bar records from deterministic random books,
plus the worker's producer block and health document in the shared formats (docs/operations.md)."""

from __future__ import annotations

import random
from typing import Any

from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.snapshot import parse_snapshot


def engine_records(n_bars: int, symbols: list[str], *, seed: int = 1, start_idx: int = 1_000,
                   bar_seconds: float = 1.0, absent: dict[int, set[str]] | None = None) -> list[dict[str, Any]]:
    """``n_bars`` BarRecords from the real FeatureEngine; ``absent[i]`` = symbols missing from bar i."""
    rng = random.Random(seed)
    engine = FeatureEngine()
    out = []
    for i in range(n_bars):
        idx = start_idx + i
        ts = idx * bar_seconds
        snaps = {}
        for sym in symbols:
            if absent and sym in absent.get(i, set()):
                continue
            value = {
                "timestamp": ts - 0.05,
                "bid_notional": [rng.uniform(1e4, 1e6) for _ in range(10)],
                "ask_notional": [rng.uniform(1e4, 1e6) for _ in range(10)],
                "_push_seq": i,
            }
            snaps[sym] = parse_snapshot(f"asset_{sym}_ob", value, now=ts)
        out.append(engine.step(idx, ts, snaps))
    return out


def with_producer(rec: dict[str, Any], worker_id: str = "w1", *, degraded: bool = False,
                  stale: list[str] | None = None) -> dict[str, Any]:
    rec = dict(rec)
    rec["producer"] = {"worker_id": worker_id, "computed_at": rec["bar_ts"] + 0.01,
                       "stale_assets": list(stale or []), "degraded": degraded}
    return rec


def health_doc(worker_id: str, now: float, *, state: str = "running", role: str = "leader", bar_seconds: float = 1.0,
               last_bar_idx: int | None = 1_000, last_bar_ts: float | None = None,
               updated_at: float | None = None, rejected: dict[str, int] | None = None,
               stale_assets: list[str] | None = None) -> dict[str, Any]:
    return {
        "worker_id": worker_id, "host": "hostA", "pid": 4242, "version": "0.1.0", "state": state, "role": role,
        "started_at": now - 100, "updated_at": now if updated_at is None else updated_at, "clock": "interval",
        "bar_seconds": bar_seconds, "last_bar_idx": last_bar_idx,
        "last_bar_ts": now - 0.5 if last_bar_ts is None else last_bar_ts, "bars_written": 99, "n_assets": 3,
        "n_present": 3, "stale_assets": list(stale_assets or []),
        "events": {"received": 1000, "accepted": 990, "ignored": 4, "rejected": dict(rejected or {}),
                   "listener_errors": 0},
        "compute_ms": {"p50": 0.2, "p99": 0.9}, "bar_to_write_ms": {"p50": 2.0, "p99": 5.0},
        "event_to_write_ms": {"p50": 400.0, "p99": 990.0}, "write_failures": 0,
    }
