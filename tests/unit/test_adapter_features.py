"""engine_adapter.features: neutral defaults, one-time decode of bar records, rejection reasons."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import orjson
import pytest

from engine_adapter import features
from engine_adapter.features import (
    NEUTRAL_MACRO,
    NEUTRAL_MARKET,
    NEUTRAL_PLACEMENT,
    NEUTRAL_SIGNAL,
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
    RecordRejected,
    bar_from_record,
    decode_bar,
    placement_of,
)
from obf_contract.record import PLACEMENT_FIELDS, SIGNAL_FIELDS, asset_view, dumps_record
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.snapshot import Snapshot

T0 = 1_723_161_000.0

# A record written by hand (not produced by any code under test), numbers chosen to be exact in binary.
HAND_RECORD = """{
 "schema": 3, "bar_idx": 42, "bar_ts": 1723161210.5, "n_assets": 3, "n_present": 2,
 "symbols": ["BTCUSDT", "ETHUSDT"],
 "ts": [1723161210.25, 1723161209], "age_ms": [250.0, 1500], "seq": [7, null],
 "placement": {"depth_1pct_usd": [1500000.0, 2000], "depth_quality": [1.25, 1],
               "fill_probability": [0.5555555555555556, 0.5], "spread_proxy_bps": [3.5, 0]},
 "signal": {"imbalance": [0.25, -0.5], "imbalance_ma5": [0.125, -0.25], "imbalance_persistence": [0.75, -1],
            "depth_asymmetry": [-0.5, 0], "withdrawal_velocity": [-0.0625, 0]},
 "state": {"ref_depth_usd": [1200000.0, 2000.0]},
 "market": {"median_imbalance": -0.125, "agreement_pct": 50.0, "depth_pressure": -0.25,
            "notional_pressure": 0.375},
 "macro": {"cascade_count": 1, "cascade_regime": "STRESS", "depth_velocity": -0.25, "acceleration": 0.5,
           "depth_ref_usd": 1750000.0},
 "degraded": false, "universe": {"configured": true, "size": 3, "hash": "0123456789abcdef"}, "gap_bars": 0,
 "producer": {"worker_id": "w-1", "computed_at": 1723161210.75, "stale_assets": ["SOLUSDT"], "degraded": false}
}"""


# -- neutral defaults ----------------------------------------------------------------------------


def test_neutral_defaults_are_the_documented_values() -> None:
    assert OBPlacementFeatures() == OBPlacementFeatures(
        depth_1pct_usd=0.0, depth_quality=1.0, fill_probability=0.5, spread_proxy_bps=0.0)
    assert OBSignalFeatures() == OBSignalFeatures(0.0, 0.0, 0.0, 0.0, 0.0)
    assert OBMarketFeatures() == OBMarketFeatures(median_imbalance=0.0, agreement_pct=50.0, depth_pressure=0.0,
                                                  notional_pressure=0.0)
    assert OBMacroFeatures() == OBMacroFeatures(median_imbalance=0.0, agreement_pct=50.0, depth_pressure=0.0,
                                                cascade_regime="CALM", depth_velocity=0.0, acceleration=0.0,
                                                cascade_count=0, depth_ref_usd=0.0)
    assert (NEUTRAL_PLACEMENT, NEUTRAL_SIGNAL, NEUTRAL_MARKET, NEUTRAL_MACRO) == (
        OBPlacementFeatures(), OBSignalFeatures(), OBMarketFeatures(), OBMacroFeatures())


def test_neutral_fill_probability_is_what_the_definition_gives_at_normal_depth() -> None:
    # docs: fill_probability = depth_quality / (1 + depth_quality); normal depth is quality 1.
    q = NEUTRAL_PLACEMENT.depth_quality
    assert NEUTRAL_PLACEMENT.fill_probability == q / (1 + q)


def test_neutral_signed_features_have_no_direction() -> None:
    for value in (*dataclasses.astuple(NEUTRAL_SIGNAL), NEUTRAL_MARKET.median_imbalance,
                  NEUTRAL_MARKET.depth_pressure, NEUTRAL_MARKET.notional_pressure, NEUTRAL_MACRO.median_imbalance,
                  NEUTRAL_MACRO.depth_pressure, NEUTRAL_MACRO.depth_velocity, NEUTRAL_MACRO.acceleration):
        assert value == 0.0


def test_feature_types_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        NEUTRAL_PLACEMENT.depth_quality = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        NEUTRAL_MACRO.cascade_regime = "CASCADE"  # type: ignore[misc]


# -- decoding ------------------------------------------------------------------------------------


def test_decode_hand_written_record() -> None:
    bar = decode_bar(HAND_RECORD)
    assert (bar.bar_idx, bar.bar_ts, bar.n_assets, bar.n_present) == (42, 1723161210.5, 3, 2)
    assert bar.worker_id == "w-1" and bar.computed_at == 1723161210.75 and bar.degraded is False
    btc = bar.assets["BTCUSDT"]
    assert (btc.ts, btc.age_ms, btc.seq) == (1723161210.25, 250.0, 7)
    assert btc.placement == OBPlacementFeatures(1500000.0, 1.25, 0.5555555555555556, 3.5)
    assert btc.signal == OBSignalFeatures(0.25, 0.125, 0.75, -0.5, -0.0625)
    eth = bar.assets["ETHUSDT"]
    assert eth.seq is None
    assert eth.placement == OBPlacementFeatures(2000.0, 1.0, 0.5, 0.0)
    assert eth.signal == OBSignalFeatures(-0.5, -0.25, -1.0, 0.0, 0.0)
    assert bar.market == OBMarketFeatures(-0.125, 50.0, -0.25, 0.375)
    # the in-process engine's six fields in its order, then ours
    assert bar.macro == OBMacroFeatures(-0.125, 50.0, -0.25, "STRESS", -0.25, 0.5, 1, 1750000.0)
    assert (bar.universe_size, bar.universe_hash) == (3, "0123456789abcdef")


def test_integral_json_numbers_become_floats() -> None:
    eth = decode_bar(HAND_RECORD).assets["ETHUSDT"]
    for value in (*dataclasses.astuple(eth.placement), *dataclasses.astuple(eth.signal), eth.ts, eth.age_ms):
        assert type(value) is float


def test_decoded_assets_are_read_only() -> None:
    bar = decode_bar(HAND_RECORD)
    with pytest.raises(TypeError):
        bar.assets["XRPUSDT"] = bar.assets["BTCUSDT"]  # type: ignore[index]


def test_empty_bar_has_no_market_and_degraded_from_producer() -> None:
    rec = {"schema": 3, "bar_idx": 3, "bar_ts": T0, "n_assets": 2, "n_present": 0, "symbols": [],
           "ts": [], "age_ms": [], "seq": [], "placement": {f: [] for f in PLACEMENT_FIELDS},
           "signal": {f: [] for f in SIGNAL_FIELDS}, "state": {"ref_depth_usd": []},
           "market": None, "macro": None, "degraded": False,
           "producer": {"worker_id": "w", "computed_at": T0, "degraded": True}}
    bar = bar_from_record(rec)
    assert bar.assets == {} and bar.market is None and bar.macro is None
    assert bar.degraded is True


def test_decode_a_genuine_engine_record() -> None:
    engine = FeatureEngine()
    rng = np.random.default_rng(5)
    rec = None
    for k in range(1, 4):
        snaps = {
            sym: Snapshot(sym, T0 + k - 0.2, rng.uniform(1e3, 1e5, 8), rng.uniform(1e3, 1e5, 8), seq=k)
            for sym in ("AAAUSDT", "BBBUSDT", "CCCUSDT")
        }
        rec = engine.step(k, T0 + k, snaps)
    assert rec is not None
    bar = decode_bar(dumps_record(rec))
    assert bar.bar_idx == rec["bar_idx"] and bar.bar_ts == rec["bar_ts"]
    rows = asset_view(rec)
    assert list(bar.assets) == list(rows) == rec["symbols"]
    for sym, a in rows.items():
        got = bar.assets[sym]
        assert dataclasses.asdict(got.placement) == a["placement"]
        assert dataclasses.asdict(got.signal) == a["signal"]
        assert (got.ts, got.age_ms, got.seq) == (a["ts"], a["age_ms"], a["seq"])
    assert dataclasses.asdict(bar.market) == rec["market"]
    # macro = the market's three in-process fields + the record's macro fields
    want = {k: v for k, v in {**rec["market"], **rec["macro"]}.items() if k != "notional_pressure"}
    assert dataclasses.asdict(bar.macro) == want


# -- rejections ----------------------------------------------------------------------------------


def _mutated(path: tuple[str, ...], value: object) -> bytes:
    rec = orjson.loads(HAND_RECORD)
    target = rec
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return orjson.dumps(rec)


_DELETE = object()


@pytest.mark.parametrize(("data", "reason"), [
    (b"{not json", "not_json"),
    (b"[1, 2]", "not_object"),
    (_mutated(("schema",), 1), "schema"),  # the schema before the in-process formulas
    (_mutated(("schema",), 4), "schema"),
    (_mutated(("schema",), True), "schema"),
    (_mutated(("bar_idx",), -1), "bar_idx"),
    (_mutated(("bar_idx",), "42"), "bar_idx"),
    (_mutated(("bar_idx",), 42.0), "bar_idx"),
    (_mutated(("bar_ts",), _DELETE), "bar_ts"),
    (_mutated(("bar_ts",), 0), "bar_ts"),
    (_mutated(("schema",), 2), "schema"),  # per-asset objects (before issue 14)
    (_mutated(("symbols",), {"BTCUSDT": 0, "ETHUSDT": 1}), "assets"),
    (_mutated(("symbols",), ["ETHUSDT", "BTCUSDT"]), "assets"),  # not sorted
    (_mutated(("symbols",), ["BTCUSDT", "BTCUSDT"]), "assets"),  # not distinct
    (_mutated(("symbols",), ["BTCUSDT", 7]), "assets"),
    (_mutated(("n_present",), 3), "assets"),
    (_mutated(("ts",), [1723161210.25]), "assets"),  # one value short
    (_mutated(("seq",), _DELETE), "assets"),
    (_mutated(("placement",), _DELETE), "assets"),
    (_mutated(("placement",), [[1.0, 2.0]]), "assets"),
    (_mutated(("placement", "depth_quality"), _DELETE), "assets"),
    (_mutated(("signal", "imbalance"), ["0.25", -0.5]), "assets"),
    (_mutated(("signal", "imbalance"), [True, -0.5]), "assets"),
    (_mutated(("placement", "depth_quality"), [1.25, None]), "assets"),
    (_mutated(("age_ms",), [250.0, "1500"]), "assets"),
    (_mutated(("ts",), [None, 1723161209.0]), "assets"),
    (_mutated(("market",), [1, 2, 3]), "market"),
    (_mutated(("market", "agreement_pct"), _DELETE), "market"),
    (_mutated(("market", "notional_pressure"), _DELETE), "market"),
    (_mutated(("market",), None), "macro"),  # a macro without its market
    (_mutated(("macro", "depth_ref_usd"), "x"), "macro"),
    (_mutated(("macro", "cascade_regime"), "PANIC"), "macro"),
    (_mutated(("macro", "cascade_regime"), ["CALM"]), "macro"),
    (_mutated(("macro", "cascade_count"), -1), "macro"),
    (_mutated(("macro", "cascade_count"), 1.5), "macro"),
])
def test_unusable_records_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RecordRejected) as info:
        decode_bar(data)
    assert info.value.reason == reason


@pytest.mark.parametrize("state", [_DELETE, None, [1.0], {}, {"ref_depth_usd": [1.0]}, {"ref_depth_usd": "x"}])
def test_the_state_block_is_not_the_adapters_concern(state: object) -> None:
    # Review finding 8: the adapter checks only the columns it reads; the worker's changelog
    # state (missing, malformed, another shape) never makes a bar unusable for the trader.
    expected = decode_bar(HAND_RECORD)
    rec = orjson.loads(HAND_RECORD)
    if state is _DELETE:
        del rec["state"]
    else:
        rec["state"] = state
    bar = decode_bar(orjson.dumps(rec))
    assert dict(bar.assets) == dict(expected.assets)
    assert (bar.market, bar.macro, bar.symbols) == (expected.market, expected.macro, expected.symbols)


def test_non_finite_values_in_a_hand_built_dict_are_rejected() -> None:
    rec = orjson.loads(HAND_RECORD)
    for group, field in (("placement", "depth_quality"), ("signal", "imbalance"), (None, "ts"), (None, "age_ms")):
        for bad in (math.inf, -math.inf, math.nan):
            rec = orjson.loads(HAND_RECORD)
            col = rec[field] if group is None else rec[group][field]
            col[1] = bad
            with pytest.raises(RecordRejected) as info:
                bar_from_record(rec)
            assert info.value.reason == "assets", (group, field, bad)


def test_a_huge_but_finite_column_is_accepted() -> None:
    # The fast check sums each column; an overflow to inf falls back to the per-value check.
    rec = orjson.loads(HAND_RECORD)
    rec["placement"]["depth_1pct_usd"] = [1.5e308, 1.5e308]
    assert decode_bar(orjson.dumps(rec)).assets["ETHUSDT"].placement.depth_1pct_usd == 1.5e308


def test_seq_reads_as_before() -> None:
    # An int is kept (64-bit or not), anything else reads as None; no seq at all stores nothing.
    rec = orjson.loads(HAND_RECORD)
    for seqs, want in (([7, None], [7, None]), ([None, None], [None, None]), ([7, True], [7, None]),
                       ([7, 1.5], [7, None]), ([2 ** 70, 3], [2 ** 70, 3]), ([-5, 0], [-5, 0])):
        rec["seq"] = seqs
        bar = bar_from_record(rec)
        assert [bar.assets[s].seq for s in ("BTCUSDT", "ETHUSDT")] == want, seqs
        bar.assets.prepare()  # type: ignore[attr-defined]
        assert [bar.assets[s].seq for s in ("BTCUSDT", "ETHUSDT")] == want, seqs


def test_consecutive_bars_share_one_symbol_table() -> None:
    a, b = decode_bar(HAND_RECORD), decode_bar(HAND_RECORD)
    assert a.symbols is b.symbols
    assert a.assets.table is b.assets.table  # type: ignore[attr-defined]
    assert next(iter(a.assets)) is next(iter(b.assets))  # one str per symbol


def test_unknown_producer_fields_are_tolerated() -> None:
    rec = orjson.loads(HAND_RECORD)
    rec["producer"] = {"something_new": 1}
    rec["extra_top_level"] = {"x": 1}
    bar = bar_from_record(rec)
    assert bar.worker_id is None and bar.computed_at is None and bar.bar_idx == 42


def _with_symbols(symbols: list[str], bar_idx: int = 42) -> bytes:
    rec = orjson.loads(HAND_RECORD)
    n = len(symbols)
    rec.update(bar_idx=bar_idx, symbols=symbols, n_present=n, ts=[1723161210.0] * n, age_ms=[500.0] * n,
               seq=list(range(n)))
    for group in ("placement", "signal"):
        rec[group] = {f: [float(k) for k in range(n)] for f in rec[group]}
    rec["placement"]["depth_1pct_usd"] = [1000.0 * (k + 1) for k in range(n)]
    del rec["state"]
    return orjson.dumps(rec)


def test_bars_with_changing_symbol_lists_index_one_shared_superset() -> None:
    # Review finding 5: presence is a per-bar array of ids into one shared table of every symbol seen.
    a = decode_bar(_with_symbols(["SYMA", "SYMB", "SYMC"]))
    b = decode_bar(_with_symbols(["SYMB", "SYMD"]))
    c = decode_bar(_with_symbols(["SYMA", "SYMB", "SYMC"]))
    ta, tb = a.assets.table, b.assets.table  # type: ignore[attr-defined]
    assert ta.universe is tb.universe and c.symbols is a.symbols  # a recent list: the same table
    assert a.symbols == frozenset({"SYMA", "SYMB", "SYMC"}) and b.symbols == {"SYMB", "SYMD"}
    assert list(b.assets) == ["SYMB", "SYMD"] and "SYMD" not in a.assets and "SYMA" not in b.assets
    assert hash(b.symbols) == hash(frozenset({"SYMB", "SYMD"})) and frozenset({"SYMA", "SYMX"}) - b.symbols == {
        "SYMA", "SYMX"}
    assert b.assets["SYMD"].placement.depth_1pct_usd == 2000.0  # position 1 of b's columns
    assert placement_of(a, "SYMD") is None and placement_of(b, "SYMA") is None
    with pytest.raises(KeyError):
        a.assets["SYMD"]
    # A symbol first seen later (an id beyond an older bar's positions) is absent from that bar.
    d = decode_bar(_with_symbols(["SYME"]))
    assert "SYME" in d.assets and "SYME" not in a.assets and "SYME" not in b.assets
    with pytest.raises(KeyError):
        b.assets.placement("SYME")  # type: ignore[attr-defined]
    # The trader's count of absent assets, an unknown one included, then known (the memo follows).
    wanted = frozenset({"SYMA", "SYMD", "SYMF"})
    assert (ta.count_absent(wanted), tb.count_absent(wanted)) == (2, 2)
    f = decode_bar(_with_symbols(["SYMA", "SYMF"]))
    assert f.assets.table.count_absent(wanted) == 1 and tb.count_absent(wanted) == 2  # type: ignore[attr-defined]


def test_a_full_universe_starts_a_new_one_and_older_bars_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "UNIVERSE_MAX", 4)
    monkeypatch.setattr(features, "_universe", features.SymbolUniverse())
    a = decode_bar(_with_symbols(["UNA", "UNB", "UNC"]))
    b = decode_bar(_with_symbols(["UNA", "UNB", "UND"]))  # 4 symbols: still the same universe
    c = decode_bar(_with_symbols(["UNA", "UNE"]))  # a 5th: a new universe of this bar's symbols
    ua, ub, uc = (x.assets.table.universe for x in (a, b, c))  # type: ignore[attr-defined]
    assert ua is ub and uc is not ua and ua.names == ["UNA", "UNB", "UNC", "UND"] and uc.names == ["UNA", "UNE"]
    assert [x.assets.placement("UNA").depth_1pct_usd for x in (a, b, c)] == [1000.0] * 3  # type: ignore[attr-defined]
    assert a.symbols == {"UNA", "UNB", "UNC"} and "UNE" not in a.symbols and c.symbols == {"UNA", "UNE"}
