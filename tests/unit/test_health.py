"""Health: nearest-rank percentiles over rolling windows and the health document's shape."""

from __future__ import annotations

import math

import pytest

from obf_features_worker.service.health import HealthStats, LatencyWindow, percentile

DOC_KEYS = {
    "worker_id", "host", "pid", "version", "state", "role", "started_at", "updated_at", "clock", "bar_seconds",
    "last_bar_idx", "last_bar_ts", "bars_written", "n_assets", "n_present", "stale_assets", "events",
    "compute_ms", "bar_to_write_ms", "event_to_write_ms", "write_failures", "epoch", "cold_start_reason",
    "restored_from_bar", "restore_gap_bars", "restore_replayed_records", "republished_records",
    "changelog_stops", "producer_clock", "connections",
}


def test_percentile_nearest_rank_by_hand():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([5.0], 50) == 5.0 and percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0], 50) == 1.0 and percentile([1.0, 2.0], 99) == 2.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_window_keeps_only_the_last_samples():
    w = LatencyWindow(10)
    assert w.summary() == {"p50": None, "p99": None}
    for v in range(1, 1001):
        w.add(float(v))
    assert len(w) == 10
    # Window holds 991..1000: the 5th smallest is the median by nearest rank, the 10th the p99.
    assert w.summary() == {"p50": 995.0, "p99": 1000.0}


def test_window_ignores_non_finite_and_rounds():
    w = LatencyWindow(5)
    w.extend([math.nan, math.inf, 1.23456])
    assert w.summary() == {"p50": 1.235, "p99": 1.235}


def test_document_shape_and_events():
    h = HealthStats(worker_id="w", host="h", pid=42, version="0.1.0", clock="scan", bar_seconds=2.0,
                    started_at=100.0)
    h.compute_ms.add(3.0)
    clocks = {"threshold_s": 2.0, "assets": 1, "flagged": {}, "all_rejected": {}}
    book = {"received": 11, "accepted": 6, "ignored": 1, "seq_resets": 2, "seq_jumps": 1, "read_echoes": 1,
            "superseded": 3, "read_refreshed": 2,
            "rejected": {"bad_json": 2, "negative": 1}, "samples": [{"x": 1}], "producer_clock": clocks}
    conns = {"bars": {"connected": True, "disconnects": 0}, "events": {"connected": False, "disconnects": 2}}
    doc = h.document(123.0, book, listener_errors=4, connections=conns)
    assert set(doc) == DOC_KEYS
    assert doc["events"] == {"received": 11, "accepted": 6, "ignored": 1, "read_echoes": 1, "seq_resets": 2,
                             "seq_jumps": 1, "superseded": 3, "read_refreshed": 2,
                             "rejected": {"bad_json": 2, "negative": 1}, "listener_errors": 4}
    assert doc["connections"] == conns and doc["connections"] is not conns
    assert h.document(123.0, book, listener_errors=4)["connections"] == {}
    assert doc["producer_clock"] == clocks
    assert (doc["state"], doc["role"], doc["started_at"], doc["updated_at"]) == ("starting", "leader", 100.0, 123.0)
    assert doc["compute_ms"] == {"p50": 3.0, "p99": 3.0}
    assert doc["bar_to_write_ms"] == {"p50": None, "p99": None}
    assert doc["last_bar_idx"] is None and doc["write_failures"] == 0
    assert doc["epoch"] is None and doc["cold_start_reason"] is None and doc["restored_from_bar"] is None


def test_document_refuses_unknown_state():
    h = HealthStats(worker_id="w", host="h", pid=1, version="v", clock="interval", bar_seconds=1.0, started_at=0.0)
    h.state = "sleeping"
    with pytest.raises(ValueError):
        h.document(1.0, {}, 0)
