"""WorkerMetrics: scrape the real HTTP endpoint on 127.0.0.1 and parse the exposition text."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from obf_features_worker.service.metrics import COMPUTE_BUCKETS, WorkerMetrics


@pytest.fixture
def served() -> Iterator[tuple[WorkerMetrics, int]]:
    m = WorkerMetrics(worker_id="w-test")
    port = m.start(0, addr="127.0.0.1")
    try:
        yield m, port
    finally:
        m.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_event_totals_and_rejects_by_reason(served):
    m, port = served
    m.set_event_totals(received=120, accepted=100, ignored=5, rejected={"bad_json": 10, "stale": 5},
                       listener_errors=1)
    s = scrape(port)
    assert s[("obf_events_received_total", ())] == 120
    assert s[("obf_events_accepted_total", ())] == 100
    assert s[("obf_events_ignored_total", ())] == 5
    assert s[("obf_events_rejected_total", (("reason", "bad_json"),))] == 10
    assert s[("obf_events_rejected_total", (("reason", "stale"),))] == 5
    assert s[("obf_listener_errors_total", ())] == 1
    assert s[("obf_worker_info", (("worker_id", "w-test"),))] == 1


def test_bars_histograms_and_degraded(served):
    m, port = served
    computes = [0.0003, 0.004, 0.03]
    latencies = [[0.05, 0.2], [0.3], [1.5, 0.01, 0.02]]
    for i, (c, lat) in enumerate(zip(computes, latencies, strict=True)):
        m.observe_bar(compute_seconds=c, event_to_write_seconds=lat, bar_to_write_seconds=0.01,
                      degraded=(i == 1), bar_idx=1000 + i, bar_ts=1.7e9 + i)
    s = scrape(port)
    assert s[("obf_bars_written_total", ())] == 3
    assert s[("obf_bar_compute_seconds_count", ())] == 3
    assert s[("obf_bar_compute_seconds_sum", ())] == pytest.approx(sum(computes))
    for le in COMPUTE_BUCKETS:
        expected = sum(1 for c in computes if c <= le)
        assert s[("obf_bar_compute_seconds_bucket", (("le", repr(float(le))),))] == expected, le
    flat = [x for lat in latencies for x in lat]
    assert s[("obf_event_to_write_seconds_count", ())] == len(flat)
    assert s[("obf_event_to_write_seconds_sum", ())] == pytest.approx(sum(flat))
    assert s[("obf_event_to_write_seconds_bucket", (("le", "0.25"),))] == sum(1 for x in flat if x <= 0.25)
    assert s[("obf_bar_to_write_seconds_count", ())] == 3
    assert s[("obf_degraded", ())] == 0  # the last bar was not degraded
    assert s[("obf_last_bar_idx", ())] == 1002
    assert s[("obf_last_bar_timestamp_seconds", ())] == pytest.approx(1.7e9 + 2)
    m.observe_bar(compute_seconds=0.001, degraded=True)
    assert scrape(port)[("obf_degraded", ())] == 1


def test_update_from_health_doc(served):
    m, port = served
    doc = {
        "worker_id": "w-test", "state": "degraded", "n_assets": 7, "n_present": 5, "last_bar_idx": 42,
        "last_bar_ts": 1.7e9, "write_failures": 2,
        "events": {"received": 52, "accepted": 40, "ignored": 3, "read_echoes": 2, "rejected": {"no_levels": 7},
                   "listener_errors": 0},
    }
    m.update_from_health(doc)
    s = scrape(port)
    assert s[("obf_events_received_total", ())] == 52
    assert s[("obf_events_read_echoes_total", ())] == 2
    assert s[("obf_events_rejected_total", (("reason", "no_levels"),))] == 7
    assert s[("obf_write_failures_total", ())] == 2
    assert s[("obf_worker_state", (("state", "degraded"),))] == 1
    assert s[("obf_worker_state", (("state", "running"),))] == 0
    assert s[("obf_assets", (("kind", "known"),))] == 7
    assert s[("obf_assets", (("kind", "present"),))] == 5
    assert s[("obf_last_bar_idx", ())] == 42


def test_producer_clocks_and_seq_counters_from_health(served):
    m, port = served
    m.update_from_health({
        "events": {"received": 9, "accepted": 9, "seq_resets": 2, "seq_jumps": 1, "rejected": {}},
        "producer_clock": {"min_s": -10.2, "p50_s": 0.01, "max_s": 0.03, "n_flagged": 1,
                           "flagged": {"XRPUSDT": -10.2},
                           "all_rejected": {"XRPUSDT": {"reason": "future_timestamp", "rejects": 9}}},
    })
    s = scrape(port)
    assert s[("obf_events_seq_resets_total", ())] == 2 and s[("obf_events_seq_jumps_total", ())] == 1
    assert s[("obf_producer_clock_offset_seconds", (("asset", "XRPUSDT"),))] == -10.2
    assert s[("obf_producer_clock_offset_seconds", (("asset", "_p50"),))] == 0.01
    assert s[("obf_producer_clock_flagged_assets", ())] == 1
    assert s[("obf_assets_all_rejected", ())] == 1


def test_malformed_health_doc_never_raises(served):
    m, port = served
    m.update_from_health({"events": {"received": 5, "accepted": 5, "rejected": {}}})
    m.update_from_health({"events": "garbage", "state": None})
    m.update_from_health({"events": {"received": "x"}})
    # The last good values survive the bad updates.
    assert scrape(port)[("obf_events_received_total", ())] == 5


def test_two_instances_do_not_collide_and_start_is_guarded():
    a, b = WorkerMetrics("a"), WorkerMetrics("b")
    pa, pb = a.start(0, addr="127.0.0.1"), b.start(0, addr="127.0.0.1")
    try:
        a.observe_bar(compute_seconds=0.001)
        assert scrape(pa)[("obf_bars_written_total", ())] == 1
        assert scrape(pb)[("obf_bars_written_total", ())] == 0
        with pytest.raises(RuntimeError):
            a.start(0, addr="127.0.0.1")
    finally:
        a.stop()
        b.stop()
    a.stop()  # idempotent
    with pytest.raises(ValueError):
        WorkerMetrics().start(70000)


def test_coalescing_reread_and_connections_from_health(served):
    m, port = served
    m.update_from_health({
        "events": {"received": 90, "accepted": 80, "superseded": 60, "read_refreshed": 4, "rejected": {}},
        "connections": {"bars": {"connected": True, "disconnects": 0},
                        "events": {"connected": False, "disconnects": 3},
                        "spare": {"connected": True, "shed": True, "disconnects": 0}},
    })
    s = scrape(port)
    assert s[("obf_events_superseded_total", ())] == 60
    assert s[("obf_events_read_refreshed_total", ())] == 4
    assert s[("obf_connection_up", (("connection", "bars"),))] == 1
    assert s[("obf_connection_up", (("connection", "events"),))] == 0
    # Dropped on purpose (overload): up, and shed (alerts on "up" never page on a designed state).
    assert s[("obf_connection_up", (("connection", "spare"),))] == 1
    assert s[("obf_connection_shed", (("connection", "spare"),))] == 1
    assert s[("obf_connection_shed", (("connection", "events"),))] == 0
    assert s[("obf_connection_disconnects_total", (("connection", "events"),))] == 3
    assert s[("obf_connection_disconnects_total", (("connection", "bars"),))] == 0
