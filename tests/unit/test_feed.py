"""Feeder pieces without a grid: deterministic synthetic books, the drain episode, recorded playback."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from obf_features_worker.dev.feed import read_recording, recorded_schedule, restamp, synthetic_payloads
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.snapshot import parse_snapshot
from obf_features_worker.offline.synthetic import DrainSchedule, SyntheticMarket


def test_same_seed_same_books_other_seed_other_books():
    a = SyntheticMarket(seed=3)
    b = SyntheticMarket(seed=3)
    c = SyntheticMarket(seed=4)
    for _ in range(20):
        ba, bb, bc = a.step(), b.step(), c.step()
    assert all(np.array_equal(x.bid_notional, y.bid_notional) for x, y in zip(ba, bb))
    assert not all(np.array_equal(x.bid_notional, y.bid_notional) for x, y in zip(ba, bc))


def test_payloads_are_valid_upstream_json_strings():
    market = SyntheticMarket(("BTCUSDT", "BTCUSD_PERP", "1000PEPE-USDT"), levels=7)
    payloads = synthetic_payloads(market, 1_700_000_000.25, seq=12)
    assert set(payloads) == {"asset_BTCUSDT_ob", "asset_BTCUSD_PERP_ob", "asset_1000PEPE-USDT_ob"}
    for key, text in payloads.items():
        assert isinstance(text, str)
        obj = json.loads(text)
        assert set(obj) == {"timestamp", "bid_notional", "ask_notional", "bid_depth", "ask_depth", "_pushed_at",
                            "_push_seq"}
        snap = parse_snapshot(key, text, now=math.inf)
        assert snap.n_levels == 7 and snap.seq == 12 and snap.ts == 1_700_000_000.25


def test_drain_factor_shape():
    d = DrainSchedule(start_s=10, every_s=100, ramp_s=10, hold_s=5, recover_s=10, floor=0.2)
    assert d.factor(9.99) == 1.0
    assert d.factor(10.0) == 1.0  # the ramp starts at full depth
    assert d.factor(15.0) == pytest.approx(0.2 ** 0.5)
    assert d.factor(20.0) == pytest.approx(0.2) and d.factor(24.9) == pytest.approx(0.2)
    assert d.factor(30.0) == pytest.approx(0.2 ** 0.5)
    assert d.factor(35.0) == 1.0
    assert d.factor(120.0) == d.factor(20.0)  # repeats every 100 s
    with pytest.raises(ValueError):
        DrainSchedule(start_s=0, every_s=20, ramp_s=10, hold_s=5, recover_s=10)  # period shorter than an episode


def test_drain_takes_the_regime_out_of_calm_and_back():
    # 8 assets at 10 Hz, 2 s bars through the real engine: CALM before, not CALM during the drain.
    hz, bar_s = 10.0, 2.0
    market = SyntheticMarket(hz=hz, seed=1, drain=DrainSchedule(start_s=40.0))
    engine = FeatureEngine()
    regimes = {}
    for k in range(1, 60):  # 2 min of bars
        snaps = {}
        while market.t < k * bar_s:
            ts = market.t
            for key, text in synthetic_payloads(market, ts, market.tick + 1).items():
                snap = parse_snapshot(key, text, now=math.inf)
                snaps[snap.symbol] = snap
        regimes[k] = engine.step(k, k * bar_s, snaps)["macro"]["cascade_regime"]
    before = [regimes[k] for k in range(6, 20)]  # after warm-up, before t=40 s
    during = [regimes[k] for k in range(21, 35)]  # t = 42 .. 70 s: ramp and hold
    assert set(before) == {"CALM"}
    assert "CASCADE" in during
    assert regimes[59] == "CALM"  # long after the recovery


def _line(sym: str, ts: float, seq: int | None, as_string: bool = True) -> str:
    payload = {"timestamp": ts, "bid_notional": [1.0], "ask_notional": [2.0], "extra": "kept"}
    if seq is not None:
        payload["_push_seq"] = seq
    return json.dumps({"key": f"asset_{sym}_ob", "value": json.dumps(payload) if as_string else payload})


def test_read_recording_sorts_by_time_and_counts_bad_lines():
    lines = [_line("BBBUSDT", 20.0, 2), _line("AAAUSDT", 10.0, 1, as_string=False), "not json",
             json.dumps({"key": "other", "value": "{}"}), json.dumps({"key": "asset_AAAUSDT_ob", "value": "{}"}), ""]
    recs, bad = read_recording(lines)
    assert [(r.key, r.ts) for r in recs] == [("asset_AAAUSDT_ob", 10.0), ("asset_BBBUSDT_ob", 20.0)]
    assert bad == 3


def test_schedule_keeps_recorded_spacing_scaled_by_speed_and_restamps():
    recs, _ = read_recording([_line("AAAUSDT", 100.0, 5), _line("AAAUSDT", 101.0, 6), _line("AAAUSDT", 103.0, 7)])
    sched = list(recorded_schedule(recs, start=1000.0, speed=2.0, loop=False))
    assert [at for at, _, _ in sched] == [1000.0, 1000.5, 1001.5]
    objs = [json.loads(p) for _, _, p in sched]
    assert [parse_snapshot("asset_AAAUSDT_ob", p, now=math.inf).ts for _, _, p in sched] == [1000.0, 1000.5, 1001.5]
    assert [o["_push_seq"] for o in objs] == [5, 6, 7] and all(o["extra"] == "kept" for o in objs)


def test_loop_keeps_seqs_increasing():
    recs, _ = read_recording([_line("AAAUSDT", 0.0, 5), _line("AAAUSDT", 1.0, 6)])
    it = recorded_schedule(recs, start=0.0, speed=1.0, loop=True)
    seqs = [json.loads(next(it)[2])["_push_seq"] for _ in range(6)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6


def test_restamp_without_seq_leaves_it_absent():
    recs, _ = read_recording([_line("AAAUSDT", 0.0, None)])
    assert "_push_seq" not in json.loads(restamp(recs[0], 5.0, 100))
