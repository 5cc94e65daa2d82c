"""Offline replay: ordering, bar/presence rules, bad-line accounting, determinism, CLI."""

from __future__ import annotations

import json
import math
import random

import pytest

from obf_contract.record import asset_view, check_columns, dumps_record, loads_record
from obf_features_worker import cli
from obf_features_worker.engine import snapshot
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.offline import replay


def line(sym: str, ts: float | str, bid=(300.0,), ask=(100.0,), seq: int | None = None, *,
         as_object: bool = False) -> str:
    payload = snapshot.payload_json(ts, list(bid), list(ask), seq=seq)
    value = json.loads(payload) if as_object else payload
    return json.dumps({"key": f"asset_{sym}_ob", "value": value})


def run(lines, bar_seconds=1.0, max_age_s=None, params=None):
    stats = replay.ReplayStats()
    recs = list(replay.replay_records(lines, bar_seconds, max_age_s, params, stats=stats))
    return recs, stats


def present(rec) -> dict[str, float]:
    check_columns(rec)
    return dict(zip(rec["symbols"], rec["ts"]))


def test_bar_closes_and_presence_by_age():
    lines = [line("AAA", 10.2, seq=1), line("AAA", 11.0, seq=2), line("BBB", 13.5, seq=1)]
    recs, stats = run(lines, bar_seconds=1.0)  # default max age 2 s
    # closes at every whole second from the first snapshot (10.2) to the first close at/after 13.5
    assert [r["bar_idx"] for r in recs] == [11, 12, 13, 14]
    assert [r["bar_ts"] for r in recs] == [11.0, 12.0, 13.0, 14.0]
    assert [present(r) for r in recs] == [
        {"AAA": 11.0},  # ts <= close is inclusive
        {"AAA": 11.0},
        {"AAA": 11.0},  # age exactly 2 s: still present
        {"BBB": 13.5},  # AAA is 3 s old
    ]
    assert asset_view(recs[3])["BBB"]["age_ms"] == pytest.approx(500.0)
    assert stats.bars == 4 and stats.used == 3 and stats.assets == {"AAA", "BBB"}
    assert (stats.first_bar_idx, stats.last_bar_idx) == (11, 14)


def test_max_age_and_fractional_bar_seconds():
    lines = [line("AAA", 1.0), line("AAA", 2.25), line("BBB", 1.75)]
    recs, _ = run(lines, bar_seconds=0.5, max_age_s=0.25)
    # closes 1.0, 1.5, 2.0, 2.5 -> bar_idx = close / 0.5
    assert [r["bar_idx"] for r in recs] == [2, 3, 4, 5]
    assert [present(r) for r in recs] == [{"AAA": 1.0}, {}, {"BBB": 1.75}, {"AAA": 2.25}]
    assert recs[1]["n_present"] == 0 and recs[1]["market"] is None


def test_bar_range_is_exact_on_multiples():
    assert replay.bar_range(0.3, 0.3, 0.1) == (3, 3)  # 0.3 / 0.1 = 2.9999999999999996
    assert replay.bar_range(0.7, 0.7, 0.1) == (7, 7)  # 0.7 / 0.1 = 6.999999999999999
    assert replay.bar_range(10.0, 12.5, 1.0) == (10, 13)
    # 3 * 0.1 = 0.30000000000000004 is itself a close although its quotient rounds up past 3
    assert replay.bar_range(3 * 0.1, 3 * 0.1, 0.1) == (3, 3)
    # 3 * 0.3 = 0.8999999999999999 < 0.9: the first close at or after 0.9 is 4 * 0.3
    assert replay.bar_range(0.9, 0.9, 0.3) == (4, 4)


def test_records_equal_the_engine_driven_by_hand():
    lines = [line("AAA", 10.2, bid=(300.0, 50.0), ask=(100.0, 70.0), seq=1),
             line("BBB", 10.9, bid=(10.0,), ask=(30.0,), seq=7),
             line("AAA", 11.4, bid=(200.0, 0.0), ask=(100.0, 20.0), seq=2)]
    recs, _ = run(lines)
    snaps = [snapshot.parse_snapshot(json.loads(s)["key"], json.loads(s)["value"], now=math.inf) for s in lines]
    engine = FeatureEngine(FeatureParams())
    expected = [engine.step(11, 11.0, {"AAA": snaps[0], "BBB": snaps[1]}),
                engine.step(12, 12.0, {"AAA": snaps[2], "BBB": snaps[1]})]
    assert [dumps_record(r) for r in recs] == [dumps_record(r) for r in expected]
    # and the numbers mean what the contract says: imbalance (B - A) / (B + A)
    assert asset_view(recs[0])["AAA"]["signal"]["imbalance"] == pytest.approx((350 - 170) / (350 + 170))
    assert asset_view(recs[0])["BBB"]["signal"]["imbalance"] == pytest.approx(-0.5)


def test_unsorted_input_gives_the_same_bytes():
    rng = random.Random(7)
    lines = []
    for i in range(200):
        ts = 100.0 + i * 0.1
        lines.append(line("AAA", ts, bid=(rng.uniform(1, 1e6),), ask=(rng.uniform(1, 1e6),), seq=i))
        lines.append(line("BBB", ts + 0.05, bid=(rng.uniform(1, 1e6),), ask=(rng.uniform(1, 1e6),), seq=i))
    ordered = [dumps_record(r) for r in run(lines)[0]]
    shuffled = lines[:]
    rng.shuffle(shuffled)
    assert [dumps_record(r) for r in run(shuffled)[0]] == ordered
    assert [dumps_record(r) for r in run(lines)[0]] == ordered  # deterministic run to run
    assert all(b"producer" not in r for r in ordered)


def test_value_as_object_or_string_and_iso_or_float_timestamps_agree():
    a = [line("AAA", 5.5, seq=1), line("AAA", 6.5, seq=2)]
    b = [line("AAA", "1970-01-01T00:00:05.500000+00:00", seq=1, as_object=True),
         line("AAA", 6.5, seq=2, as_object=True).encode()]
    assert [dumps_record(r) for r in run(a)[0]] == [dumps_record(r) for r in run(b)[0]]


def test_bad_lines_are_counted_by_reason_and_never_fatal():
    good = [line("AAA", 10.0, seq=1), line("AAA", 11.0, seq=3)]
    bad = [
        "{not json",  # bad_line
        "[1, 2]",  # bad_line: not an object
        json.dumps({"key": "asset_AAA_ob"}),  # bad_line: no value
        json.dumps({"key": "asset_aaa_ob", "value": json.loads(good[0])["value"]}),  # bad_symbol
        json.dumps({"key": "asset_AAA_ob", "value": '{"timestamp": 10.5, "bid_notional": [NaN], '
                                                     '"ask_notional": [1.0]}'}),  # non_finite
        json.dumps({"key": "asset_AAA_ob", "value": {"timestamp": 10.5, "bid_notional": [1.0]}}),  # bad_field
        line("AAA", 10.5, seq=2, bid=(-1.0,)),  # negative
        line("AAA", 10.7, seq=2),  # valid and in order (2 > 1)
        line("AAA", 10.7, seq=2),  # stale_seq: the same timestamp and seq again, a duplicate
        "",  # blank lines are skipped, not counted
    ]
    recs, stats = run(bad[:4] + good[:1] + bad[4:] + good[1:])
    assert stats.rejected == {"bad_line": 3, "bad_symbol": 1, "non_finite": 1, "bad_field": 1, "negative": 1,
                              "stale_seq": 1}
    assert stats.lines == 11 and stats.valid == 4 and stats.used == 3
    assert [present(r) for r in recs] == [{"AAA": 10.0}, {"AAA": 11.0}]
    assert len(stats.samples) == 5
    assert "bad_line=3" in stats.summary() and "stale_seq=1" in stats.summary()


def test_no_valid_line_gives_no_bars():
    recs, stats = run(["nope", ""])
    assert recs == [] and stats.bars == 0 and stats.rejected == {"bad_line": 1}


@pytest.mark.parametrize("kwargs", [dict(bar_seconds=0), dict(bar_seconds=float("nan")),
                                    dict(bar_seconds=1, max_age_s=-1), dict(bar_seconds=1, max_age_s=math.inf)])
def test_invalid_arguments_fail_fast(kwargs):
    with pytest.raises(ValueError):
        replay.replay_records([], **kwargs)


def test_cli_replay(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    wide = (100.0, 0.0, 0.0, 0.0, 50_000.0)  # 5 bands: band 4 is needed to fill the 10k reference
    inp.write_text("\n".join([line("AAA", 10.0, bid=wide, ask=wide, seq=1), "garbage",
                              line("AAA", 11.0, bid=wide, ask=wide, seq=2)]) + "\n")
    out1, out2, out3 = (tmp_path / f"o{i}.jsonl" for i in range(3))
    assert cli.main(["replay", str(inp), "--bar-seconds", "1", "--output", str(out1)]) == 0
    err = capsys.readouterr().err
    assert "bars=2" in err and "assets=1" in err and "snapshots_used=2/3" in err and "bad_line=1" in err
    assert cli.main(["replay", str(inp), "--bar-seconds", "1", "--output", str(out2)]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    recs = [loads_record(b) for b in out1.read_bytes().splitlines()]
    assert [r["bar_idx"] for r in recs] == [10, 11]
    # spread proxy walks to band 4 on each side: w*4 + w*(10000 - 100)/5000 with w = span / 5
    def proxy(span):
        w = span / 5
        return 2 * (w * 4 + w * (10_000 - 100) / 50_000)
    assert asset_view(recs[0])["AAA"]["placement"]["spread_proxy_bps"] == pytest.approx(proxy(100.0))
    assert cli.main(["replay", str(inp), "--bar-seconds", "1", "--band-span-bps", "25",
                     "--output", str(out3)]) == 0
    recs = [loads_record(b) for b in out3.read_bytes().splitlines()]
    assert asset_view(recs[0])["AAA"]["placement"]["spread_proxy_bps"] == pytest.approx(proxy(25.0))
    capsys.readouterr()
    assert cli.main(["replay", str(inp), "--bar-seconds", "0", "--output", str(out3)]) == 2
    assert cli.main(["replay", str(inp), "--bar-seconds", "1", "--ma-window", "99", "--output", str(out3)]) == 2
    assert cli.main(["replay", str(tmp_path / "missing"), "--bar-seconds", "1", "--output", str(out3)]) == 2
    assert "error" in capsys.readouterr().err


def test_assets_filter_and_are_the_universe_of_the_cross_asset_depth(tmp_path, capsys):
    # As a worker with --assets: only the listed assets count, and depth_ref_usd averages over
    # all of them (CCC, listed but never present, counts 0).
    lines = [line("AAA", 10.2, bid=(300.0,), ask=(100.0,), seq=1), line("BBB", 10.5, bid=(10.0,), ask=(30.0,), seq=1),
             line("ZZZ", 10.6, seq=1)]
    recs = list(replay.replay_records(lines, 1.0, assets=["BBB", "AAA", "CCC"]))
    assert [set(r["symbols"]) for r in recs] == [{"AAA", "BBB"}]
    snaps = {s: snapshot.parse_snapshot(json.loads(x)["key"], json.loads(x)["value"], now=math.inf)
             for s, x in (("AAA", lines[0]), ("BBB", lines[1]))}
    expected = FeatureEngine(universe=["AAA", "BBB", "CCC"]).step(11, 11.0, snaps)
    assert dumps_record(recs[0]) == dumps_record(expected)
    assert recs[0]["macro"]["depth_ref_usd"] == (400.0 + 40.0) / 3
    assert recs[0]["universe"]["configured"] is True and recs[0]["universe"]["size"] == 3
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    assert cli.main(["replay", str(inp), "--bar-seconds", "1", "--assets", "BBB,AAA,CCC", "--output", str(out)]) == 0
    assert out.read_bytes() == dumps_record(expected) + b"\n"
    capsys.readouterr()
