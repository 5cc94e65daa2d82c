"""The worker's bar logic in-process against a fake grid: presence by age, stale re-read, write
backlog in order while the grid fails, retention, the write gate, health state, LATEST docs."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from obf_contract.record import asset_view
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.engine.snapshot import parse_snapshot
from obf_features_worker.service.bars import BarTick, ScanClock
from obf_features_worker.service.config import WorkerConfig
from obf_features_worker.service.worker import Worker
from tests.fakes import FakeGrid, WorkerFactory


def payload(ts: float, seq: int, bid: float = 100.0, ask: float = 50.0) -> str:
    return json.dumps({"timestamp": ts, "bid_notional": [bid, bid], "ask_notional": [ask, ask], "_push_seq": seq})


@pytest.fixture
def make_worker(workers: WorkerFactory) -> Callable[..., tuple[Worker, FakeGrid]]:
    """A worker on its own fake grid, closed at teardown."""

    def make(**overrides: Any) -> tuple[Worker, FakeGrid]:
        # Bars are driven by the test (like a scan clock), 1 s apart.
        overrides.setdefault("clock", "scan")
        return workers(WorkerConfig(worker_id="w-test", bar_seconds=1.0, max_age_s=2.0, **overrides))

    return make


def tick(i: int, ts: float | None = None) -> BarTick:
    t = float(i) if ts is None else ts
    return BarTick(i, t, t)


NOW = time.time()
B0 = int(NOW) - 100  # bar indices near "now" so snapshots pass the future-timestamp check


def test_presence_by_age_and_record_equals_engine(make_worker):
    w, grid = make_worker()
    w.book.offer("asset_AAAUSDT_ob", payload(B0 - 0.5, 1))
    w.book.offer("asset_BBBUSDT_ob", payload(B0 - 2.5, 1, bid=10.0))  # older than max age 2 s
    rec = w.process_bar(tick(B0))
    assert rec["symbols"] == ["AAAUSDT"]
    assert rec["producer"]["stale_assets"] == ["BBBUSDT"] and rec["producer"]["worker_id"] == "w-test"
    expected = FeatureEngine(FeatureParams()).step(
        B0, float(B0), {"AAAUSDT": parse_snapshot("asset_AAAUSDT_ob", payload(B0 - 0.5, 1), now=math.inf)})
    written = dict(grid.bars[B0])
    written.pop("producer")
    assert written == json.loads(json.dumps(expected))
    assert grid.latest["AAAUSDT"]["bar_idx"] == B0 and grid.latest["AAAUSDT"]["seq"] == 1
    assert grid.latest["AAAUSDT"]["age_ms"] == pytest.approx(500.0)
    assert "BBBUSDT" not in grid.latest
    h = grid.health[-1]
    assert (h["state"], h["n_assets"], h["n_present"], h["stale_assets"]) == ("running", 2, 1, ["BBBUSDT"])


def test_stale_asset_is_re_read_once_and_used_when_fresher(make_worker):
    w, grid = make_worker()
    w.book.offer("asset_AAAUSDT_ob", payload(B0 - 5.0, 1))
    w.book.offer("asset_BBBUSDT_ob", payload(B0 - 0.1, 1))
    grid.inputs["asset_AAAUSDT_ob"] = payload(B0 - 0.2, 2)  # its event was dropped; the entry is fresh
    rec = w.process_bar(tick(B0))
    assert grid.get_calls == [["asset_AAAUSDT_ob"]]  # one call, only the stale asset
    assert asset_view(rec)["AAAUSDT"]["seq"] == 2 and rec["producer"]["stale_assets"] == []
    # The same entry again is not a new event: no reject, no double count.
    w.process_bar(tick(B0 + 3))
    stats = w.book.stats()
    assert stats["rejected"] == {} and stats["accepted"] == 3


def test_writes_fail_into_a_backlog_and_flush_in_order(make_worker):
    w, grid = make_worker(retain_bars=4)
    w.book.offer("asset_AAAUSDT_ob", payload(B0, 1))
    w.process_bar(tick(B0))
    grid.failing = True
    for i in range(1, 4):
        w.process_bar(tick(B0 + i))
    assert w.health.write_failures == 3 and len(w.backlog) == 3
    grid.failing = False
    w.process_bar(tick(B0 + 4))
    assert grid.write_calls == [B0, B0 + 1, B0 + 2, B0 + 3, B0 + 4]  # oldest first, one call per bar
    assert sorted(grid.bars) == [B0 + 1, B0 + 2, B0 + 3, B0 + 4]  # retention after the flush
    assert grid.retention[-1] == (B0 + 4 - 4, B0 + 4)
    assert w.health.bars_written == 5 and not w.backlog


def test_a_write_that_failed_but_landed_is_not_written_twice(make_worker):
    # A timeout while partitions migrate: the member applied the write, the worker saw an error.
    w, grid = make_worker()
    w.book.offer("asset_AAAUSDT_ob", payload(B0, 1))
    grid.ambiguous_writes = {B0}
    w.process_bar(tick(B0))
    assert w.health.write_failures == 1 and w.backlog.bars() == [B0] and grid.c.writes[B0] == 1
    w.process_bar(tick(B0 + 1))
    # Retried only if absent: readers see bar B0 written once, with the worker's record.
    assert grid.c.writes[B0] == 1 and grid.c.writes[B0 + 1] == 1 and not w.backlog
    assert w.health.bars_written == 2


def test_a_retried_write_replaces_another_record_under_its_key(make_worker):
    # The failed write did not land and the key holds a record of another numbering: replaced.
    w, grid = make_worker()
    w.book.offer("asset_AAAUSDT_ob", payload(B0, 1))
    grid.failing = True
    w.process_bar(tick(B0))
    grid.failing = False
    grid.c.features[B0] = '{"bar_idx": 0, "other": "numbering"}'
    w.process_bar(tick(B0 + 1))
    assert grid.bars[B0]["bar_idx"] == B0 and grid.c.writes[B0] == 1 and not w.backlog


def test_backlog_is_bounded_by_retain_bars(make_worker):
    w, grid = make_worker(retain_bars=2)
    grid.failing = True
    for i in range(5):
        w.process_bar(tick(B0 + i))
    assert w.backlog.bars() == [B0 + 3, B0 + 4] and w.backlog_dropped == 3
    grid.failing = False
    w.process_bar(tick(B0 + 5))
    # The backlog holds the newest retain_bars records, the current one included.
    assert grid.write_calls == [B0 + 4, B0 + 5] and w.backlog_dropped == 4


def test_degraded_after_three_empty_bars_and_recovery(make_worker):
    w, grid = make_worker()
    states = []
    for i in range(4):
        rec = w.process_bar(tick(B0 + i))
        states.append((grid.health[-1]["state"], rec["degraded"], rec["producer"]["degraded"]))
    assert states == [("running", False, False), ("running", False, False), ("degraded", True, True),
                      ("degraded", True, True)]
    w.book.offer("asset_AAAUSDT_ob", payload(B0 + 4, 1))
    rec = w.process_bar(tick(B0 + 4))
    assert grid.health[-1]["state"] == "running" and rec["degraded"] is False


def test_write_gate_blocks_every_write_but_not_the_engine(workers: WorkerFactory):
    class Standby(Worker):
        @property
        def role(self) -> str:
            return "standby"

        def may_write(self, tick: BarTick) -> bool:
            return False

    seen: list[tuple[int, bool]] = []

    class Hooked(Standby):
        def after_bar(self, tick, record, written):
            seen.append((tick.bar_idx, written))

    w, grid = workers(WorkerConfig(worker_id="w-standby", clock="scan", bar_seconds=1.0), cls=Hooked)
    w.book.offer("asset_AAAUSDT_ob", payload(B0, 1))
    w.process_bar(tick(B0))
    assert grid.bars == {} and grid.latest == {} and seen == [(B0, False)]
    assert grid.health[-1]["role"] == "standby" and w.engine.last_bar_idx == B0


def test_scan_count_restart_keeps_engine_state_and_accepts_bar_zero(make_worker):
    w, grid = make_worker(clock="scan")
    assert isinstance(w.clock, ScanClock)
    w.book.offer("asset_AAAUSDT_ob", payload(B0, 1))
    w.process_bar(BarTick(41, B0 + 0.5, B0 + 0.5))
    w.book.offer("asset_AAAUSDT_ob", payload(B0 + 1, 2, bid=80.0))
    rec = w.process_bar(BarTick(0, B0 + 1.5, B0 + 1.5, new_epoch=True))
    assert rec["bar_idx"] == 0
    # The histories carried on: the imbalance MA averages both bars.
    imb1 = (200 - 100) / 300
    imb2 = (160 - 100) / 260
    assert asset_view(rec)["AAAUSDT"]["signal"]["imbalance_ma5"] == pytest.approx((imb1 + imb2) / 2)
    assert grid.retention[-1] == (0 - 500, 0)  # yesterday's higher keys go


def test_explicit_assets_are_re_read_even_if_never_seen(make_worker):
    w, grid = make_worker(assets=("AAAUSDT", "CCCUSDT"))
    grid.inputs["asset_CCCUSDT_ob"] = payload(B0 - 0.1, 9)
    rec = w.process_bar(tick(B0))
    assert grid.get_calls == [["asset_AAAUSDT_ob", "asset_CCCUSDT_ob"]]
    assert rec["symbols"] == ["CCCUSDT"] and rec["producer"]["stale_assets"] == ["AAAUSDT"]


def test_health_counts_coalesced_and_re_read_snapshots_and_shows_connections(make_worker):
    w, grid = make_worker()
    for seq in (1, 2, 3):  # three pushes before the bar: two never reach a bar
        w._on_asset_event("asset_AAAUSDT_ob", payload(B0 - 1.0 + seq * 0.1, seq), time.time())
    w._on_asset_event("asset_BBBUSDT_ob", payload(B0 - 5.0, 1), time.time())
    grid.inputs["asset_BBBUSDT_ob"] = payload(B0 - 0.2, 2)  # its newest event never came
    w.process_bar(tick(B0))
    events = grid.health[-1]["events"]
    # AAA's seq 1 and 2, and BBB's seq 1 (replaced by the re-read before the bar took it).
    assert (events["superseded"], events["read_refreshed"], events["accepted"]) == (3, 1, 5)
    w._on_asset_event("asset_AAAUSDT_ob", payload(B0 + 0.5, 4), time.time())  # one push per bar: none coalesced
    w.process_bar(tick(B0 + 1))
    events = grid.health[-1]["events"]
    assert (events["superseded"], events["read_refreshed"]) == (3, 1)
    assert set(grid.health[-1]["connections"]) == {"bars", "events"}
    # The grid's overload probe gets the document's updated_at without parsing it again.
    assert grid.health_probes[-1] == grid.health[-1]["updated_at"]


def test_while_the_events_are_shed_every_asset_is_re_read_at_bar_close(make_worker):
    w, grid = make_worker(assets=("AAAUSDT", "BBBUSDT"))
    w.book.offer("asset_AAAUSDT_ob", payload(B0 - 0.5, 1))  # fresh: not re-read while events come
    w.book.offer("asset_BBBUSDT_ob", payload(B0 - 5.0, 1))  # stale: re-read
    grid.inputs["asset_AAAUSDT_ob"] = payload(B0 - 0.1, 2)
    grid.inputs["asset_BBBUSDT_ob"] = payload(B0 - 0.1, 2)
    w.process_bar(tick(B0))
    assert grid.get_calls == [["asset_BBBUSDT_ob"]]
    grid.events_shed = True  # overload: the grid dropped its events connection; pull at bar close
    grid.inputs["asset_AAAUSDT_ob"] = payload(B0 + 0.9, 3)
    w.process_bar(tick(B0 + 1))
    assert sorted(grid.get_calls[-1]) == ["asset_AAAUSDT_ob", "asset_BBBUSDT_ob"]
    assert w.book.get("AAAUSDT").seq == 3  # the newest value, without its event
    assert grid.health[-1]["events"]["read_refreshed"] == 2


def test_while_the_events_are_shed_without_a_universe_every_asset_entry_is_read(make_worker):
    w, grid = make_worker()
    w.book.offer("asset_AAAUSDT_ob", payload(B0 - 0.5, 1))
    grid.events_shed = True
    grid.inputs["asset_AAAUSDT_ob"] = payload(B0 - 0.1, 2)
    grid.inputs["asset_CCCUSDT_ob"] = payload(B0 - 0.1, 1)  # an asset no event ever announced
    rec = w.process_bar(tick(B0))
    assert grid.get_calls == []  # one read of every asset_*_ob entry instead
    assert rec["symbols"] == ["AAAUSDT", "CCCUSDT"] and w.book.get("AAAUSDT").seq == 2
