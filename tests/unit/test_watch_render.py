"""watch: frames rendered from records without a grid, and the listener-to-render hand-over."""

from __future__ import annotations

import re
import threading

import pytest

from obf_contract.record import asset_view
from obf_features_worker.inspection.watch import COLUMNS, BarInbox, asset_rows, header_lines, plain_lines, render_text
from tests.factories import columns
from tests.inspection_records import engine_records, with_producer


def hand_record() -> dict:
    def asset(imb, dq, depth, age):
        return {"ts": 99.9, "age_ms": age, "seq": 7,
                "placement": {"depth_1pct_usd": depth, "depth_quality": dq, "fill_probability": dq / (1 + dq),
                              "spread_proxy_bps": 1.25},
                "signal": {"imbalance": imb, "imbalance_ma5": imb / 2, "imbalance_persistence": 1.0,
                           "depth_asymmetry": -0.5, "withdrawal_velocity": -0.02}}
    return {
        "schema": 3, "bar_idx": 1234, "bar_ts": 1_723_161_600.0, "n_assets": 4, "n_present": 3,
        **columns({"ETHUSDT": asset(-0.25, 0.4, 2_500_000.0, 120.0), "BTCUSDT": asset(0.5, 1.0, 12_340_000.0, 80.0),
                   "SOLUSDT": asset(0.1, 2.0, 950.0, 30.0)}),
        "market": {"median_imbalance": 0.1, "agreement_pct": 66.6667, "depth_pressure": -0.2},
        "macro": {"cascade_count": 1, "cascade_regime": "STRESS", "depth_velocity": -0.0123, "acceleration": 0.0},
        "degraded": False,
        "producer": {"worker_id": "w-7", "computed_at": 1_723_161_600.02, "stale_assets": ["XRPUSDT"],
                     "degraded": True},
    }


def test_header_shows_regime_agreement_and_flags():
    first, second = header_lines(hand_record(), now=1_723_161_602.5)
    assert first.startswith("bar 1234  00:00:00Z  ")  # 1_723_161_600 = 2024-08-09 00:00:00 UTC
    assert "regime STRESS" in first and "agreement 66.7%" in first
    assert "cascades 1" in first and "present 3/4" in first
    assert "depth_vel -0.0123" in second and "median_imb +0.100" in second and "pressure -0.200" in second
    assert "worker w-7" in second and "bar age 2.5s" in second
    assert "DEGRADED" in second and "stale 1: XRPUSDT" in second


def test_frame_rows_are_the_assets_with_formatted_values():
    text = render_text(hand_record(), width=200)
    lines = text.splitlines()
    header_row = next(line for line in lines if line.lstrip().startswith("symbol"))
    assert [c.header for c in COLUMNS] == header_row.split()[1:]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split() and line.split()[0].endswith("USDT")}
    assert list(rows) == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]  # by symbol, stale asset last
    # Hand-formatted expectations for BTCUSDT: imb +0.500, ma5 +0.250, depth 12.34M, d_qual 1.00, fill 0.50.
    assert rows["BTCUSDT"] == ["+0.500", "+0.250", "+1.00", "-0.500", "-0.020", "12.34M", "1.00", "0.50", "1.25", "80"]
    assert rows["ETHUSDT"][5:8] == ["2.50M", "0.40", "0.29"]
    assert rows["SOLUSDT"][5] == "950"
    assert rows["XRPUSDT"] == ["stale"]


def test_sort_by_feature_is_descending_with_missing_last():
    rec = hand_record()
    rec["signal"]["imbalance"][rec["symbols"].index("SOLUSDT")] = None  # a value the tool cannot use
    order = [sym for sym, _ in asset_rows(rec, sort="imb")]
    assert order == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    order = [sym for sym, _ in asset_rows(rec, sort="d_qual")]
    assert order == ["SOLUSDT", "BTCUSDT", "ETHUSDT"]  # 2.0, 1.0, 0.4
    with pytest.raises(ValueError):
        asset_rows(rec, sort="nope")


def test_max_rows_truncates_with_a_note():
    text = render_text(hand_record(), width=200, max_rows=2)
    assert "BTCUSDT" in text and "ETHUSDT" in text and "SOLUSDT" not in text
    assert "... 2 more assets" in text


def test_bar_without_assets_and_missing_blocks_renders():
    rec = {"bar_idx": 5, "bar_ts": 5.0, "n_assets": 2, "n_present": 0, **columns({}), "market": None,
           "macro": None, "degraded": True}
    text = render_text(rec, width=200)
    assert "regime -" in text and "agreement -%" in text and "DEGRADED" in text
    lines = plain_lines(rec)
    assert len(lines) == 2


def test_real_engine_records_render_every_column():
    recs = engine_records(6, ["BTCUSDT", "ETHUSDT", "1000SHIBUSDT"], seed=3)
    rec = with_producer(recs[-1], "w1")
    lines = plain_lines(rec)
    assert lines[0].startswith(f"bar {rec['bar_idx']} ")
    asset_lines = lines[2:]
    assert [line.split()[0] for line in asset_lines] == rec["symbols"] == sorted(rec["symbols"])
    view = asset_view(rec)
    for line in asset_lines:
        assert not re.search(r"=-(\s|$)", line), line  # no missing cell
        sym = line.split()[0]
        assert f"imb={view[sym]['signal']['imbalance']:+.3f}" in line


def test_inbox_hands_over_newest_bar_and_never_blocks_the_producer():
    inbox = BarInbox(maxsize=4)
    done = threading.Event()

    def reactor():  # stands in for the client's reactor thread
        for idx in range(100, 110):
            inbox.offer(idx, f'{{"bar_idx": {idx}}}')
        inbox.offer(111, "not json")
        done.set()

    t = threading.Thread(target=reactor)
    t.start()
    assert done.wait(5), "offer blocked on a full queue"
    t.join()
    assert inbox.dropped == 7  # 11 offers into 4 slots
    got = inbox.newest(timeout=1)
    assert got is not None and got[0] == 109  # the undecodable newer one is skipped
    assert inbox.newest(timeout=0.01) is None
