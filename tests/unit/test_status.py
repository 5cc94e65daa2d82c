"""status: the verdict rules over health docs, the newest bar and the latest docs (no grid)."""

from __future__ import annotations

import json

import pytest

from obf_features_worker.inspection.status import Verdict, evaluate, render, unreachable_report
from obf_features_worker.service.health import stale_after_s
from tests.inspection_records import engine_records, health_doc, with_producer

NOW = 1_800_000_000.0


def test_stale_after_is_the_health_ttl_rule():
    assert stale_after_s(1.0) == 15.0
    assert stale_after_s(10.0) == 30.0
    assert stale_after_s(None) == 15.0


def test_healthy_running_leader_is_ok():
    r = evaluate([health_doc("w1", NOW)], None, {}, NOW)
    assert r.verdict is Verdict.OK and r.workers[0].healthy
    assert r.workers[0].lag_s == pytest.approx(0.5)


@pytest.mark.parametrize("doc, problem", [
    (dict(state="degraded"), "state degraded"),
    (dict(state="starting", last_bar_ts=None, last_bar_idx=None), "no bar written yet"),
    (dict(role="standby"), "standby"),
    (dict(last_bar_ts=NOW - 16.0), "last bar 16s ago"),
    (dict(bar_seconds=10.0, last_bar_ts=NOW - 31.0), "last bar 31s ago"),
    (dict(updated_at=NOW - 20.0), "health 20s old"),
])
def test_unhealthy_workers_give_warning(doc, problem):
    d = {**health_doc("w1", NOW), **doc}
    r = evaluate([d], None, {}, NOW)
    assert r.verdict is Verdict.WARNING
    assert any(problem in p for p in r.workers[0].problems), r.workers[0].problems


def test_lag_within_three_bars_of_a_slow_clock_is_fine():
    r = evaluate([health_doc("w1", NOW, bar_seconds=10.0, last_bar_ts=NOW - 29.0)], None, {}, NOW)
    assert r.verdict is Verdict.OK


def test_one_healthy_leader_among_others_is_ok():
    docs = [health_doc("a", NOW, state="degraded"), health_doc("b", NOW), health_doc("c", NOW, role="standby")]
    r = evaluate(docs, None, {}, NOW)
    assert r.verdict is Verdict.OK and [w.healthy for w in r.workers] == [False, True, False]


def test_no_worker_is_critical_and_unreachable_is_unknown():
    assert evaluate([], None, {}, NOW).verdict is Verdict.CRITICAL
    r = unreachable_report("dev", ["h:1"], "boom", NOW)
    assert r.verdict is Verdict.UNKNOWN and int(r.verdict) == 3 and not r.reachable


def test_clock_skew_future_timestamps_count_as_fresh():
    r = evaluate([health_doc("w1", NOW, updated_at=NOW + 3.0, last_bar_ts=NOW + 2.0)], None, {}, NOW)
    assert r.verdict is Verdict.OK and r.workers[0].health_age_s == 0.0


def test_rejects_and_assets_from_bar_and_latest_docs():
    recs = engine_records(3, ["BTCUSDT", "ETHUSDT", "SOLUSDT"], start_idx=int(NOW) - 3, absent={2: {"SOLUSDT"}})
    newest = with_producer(recs[-1], "w1", stale=["SOLUSDT"])
    # later bars overwrite: the latest per symbol
    latest = {sym: {"symbol": sym, "bar_idx": int(r["bar_idx"]), "bar_ts": r["bar_ts"], "age_ms": age}
              for r in recs for sym, age in zip(r["symbols"], r["age_ms"])}
    doc = health_doc("w1", NOW, rejected={"bad_json": 3, "stale": 1}, stale_assets=["SOLUSDT"])
    r = evaluate([doc], newest, latest, NOW)
    assert r.workers[0].rejected == {"bad_json": 3, "stale": 1}
    assert r.newest_bar is not None and r.newest_bar.bar_idx == newest["bar_idx"]
    by = {a.symbol: a for a in r.assets}
    assert set(by) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert by["SOLUSDT"].stale and not by["SOLUSDT"].in_newest_bar
    assert by["SOLUSDT"].bar_idx == recs[1]["bar_idx"]  # its latest bar is the one before
    assert by["SOLUSDT"].bar_age_s == pytest.approx(NOW - recs[1]["bar_ts"])
    assert not by["BTCUSDT"].stale and by["BTCUSDT"].bar_idx == newest["bar_idx"]
    assert r.verdict is Verdict.OK and any("1 stale asset" in x for x in r.reasons)


def test_json_and_render_do_not_fail_on_partial_docs():
    r = evaluate([{"worker_id": "x", "events": "garbage", "state": None}], {"bar_idx": 1}, {}, NOW)
    assert r.verdict is Verdict.WARNING
    d = json.loads(json.dumps(r.to_json()))
    assert d["verdict"] == "WARNING" and d["exit_code"] == 1
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    console.print(render(r))
    assert "WARNING" in console.export_text()


def test_producer_clocks_and_all_rejected_assets_are_shown():
    clock = {"threshold_s": 2.0, "flagged": {"XRPUSDT": -10.2, "ADAUSDT": 3.4},
             "all_rejected": {"XRPUSDT": {"reason": "future_timestamp", "rejects": 40,
                                          "note": "clock 10.2 s ahead, all pushes rejected"}}}
    r = evaluate([{**health_doc("w1", NOW), "producer_clock": clock}], None, {}, NOW)
    assert r.workers[0].all_rejected == {"XRPUSDT": "clock 10.2 s ahead, all pushes rejected"}
    assert r.workers[0].clock_flagged == {"XRPUSDT": -10.2, "ADAUSDT": 3.4}
    by = {a.symbol: a for a in r.assets}
    # never held by the worker, yet listed: stale, with the reason in words
    assert by["XRPUSDT"].stale and by["XRPUSDT"].note == "clock 10.2 s ahead, all pushes rejected"
    assert by["ADAUSDT"].note.startswith("clock 3.4 s behind") and not by["ADAUSDT"].stale
    assert any("every push rejected: XRPUSDT" in x for x in r.reasons)
    assert any("producer clock(s) off: ADAUSDT" in x for x in r.reasons)
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    console.print(render(r))
    text = console.export_text()
    assert "XRPUSDT: clock 10.2 s ahead, all pushes rejected" in text
    assert "ADAUSDT: producer clock 3.4 s behind" in text


def test_changelog_stops_are_shown_by_reason():
    doc = {**health_doc("w1", NOW), "changelog_stops": {"unreadable": 2, "gap": 1, "junk": "x"}}
    r = evaluate([doc], None, {}, NOW)
    assert r.workers[0].changelog_stops == {"gap": 1, "unreadable": 2}
    assert evaluate([health_doc("w1", NOW)], None, {}, NOW).workers[0].changelog_stops == {}
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    console.print(render(r))
    assert "changelog catch-up stopped: gap=1, unreadable=2" in console.export_text()
