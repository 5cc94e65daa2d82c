"""FeatureEngine: hand-computed features, reference comparison, state round-trip, carried-over behaviours."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from obf_contract.record import SCHEMA_VERSION, asset_view, check_columns, dumps_record, loads_record, universe_hash
from obf_features_worker.engine.feature_engine import FeatureEngine, StateMismatch
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.engine.snapshot import MIN_VALUE, Snapshot
from tests.reference import ReferenceFeatures

T0 = 1_723_161_000.0
PLACEMENT = ("depth_1pct_usd", "depth_quality", "fill_probability", "spread_proxy_bps")
SIGNAL = ("imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry", "withdrawal_velocity")


def snap(symbol: str, bid: Sequence[float], ask: Sequence[float], *, ts: float = T0,
         seq: int | None = None) -> Snapshot:
    return Snapshot(symbol, ts, np.asarray(bid, dtype=np.float64), np.asarray(ask, dtype=np.float64), seq=seq)


def books(**by_symbol: tuple[Sequence[float], Sequence[float]]) -> dict[str, Snapshot]:
    return {sym: snap(sym, bid, ask) for sym, (bid, ask) in by_symbol.items()}


class Runner:
    """Steps an engine bar after bar (bar_idx 1, 2, ...; bar_ts = T0 + bar_idx)."""

    def __init__(self, params: FeatureParams | None = None, **kw: object) -> None:
        self.engine = FeatureEngine(params, **kw)
        self.bar = 0

    def step(self, snapshots: Mapping[str, Snapshot]) -> dict:
        self.bar += 1
        return self.engine.step(self.bar, T0 + self.bar, snapshots)


def feature(rec: dict, symbol: str, name: str) -> float:
    i = rec["symbols"].index(symbol)
    return rec["placement"][name][i] if name in PLACEMENT else rec["signal"][name][i]


# -- hand-computed cases (worked out on paper in the comments) -----------------------------


def test_single_bar_placement_and_signal_by_hand() -> None:
    # L = 4, band span 100 bps -> w = 25 bps; REF_NOTIONAL = 250 USD.
    # bid = [100, 300, 0, 0] -> B = 400; ask = [50, 50, 100, 0] -> A = 200.
    r = Runner(FeatureParams(ref_notional_usd=250.0))
    rec = r.step(books(BTCUSDT=([100, 300, 0, 0], [50, 50, 100, 0])))
    f = lambda name: feature(rec, "BTCUSDT", name)  # noqa: E731
    assert f("depth_1pct_usd") == 600.0  # B + A
    assert f("imbalance") == pytest.approx(1 / 3, rel=1e-15)  # (400 - 200) / 600
    # near-touch weights 1/(k+1): bid 100 + 300/2 = 250; ask 50 + 50/2 + 100/3 = 325/3
    # (250 - 325/3) / (250 + 325/3) = 425 / 1075 = 17/43
    assert f("depth_asymmetry") == pytest.approx(17 / 43, rel=1e-15)
    # bid: band 0 holds 100 < 250; band 1: 100 + 300 >= 250 -> 25*1 + 25*(250-100)/300 = 37.5
    # ask: 50, 100, 200, 200 < 250 never filled -> w*L = 100.   Sum 137.5 bps.
    assert f("spread_proxy_bps") == pytest.approx(137.5, rel=1e-15)
    assert f("depth_quality") == 1.0  # first bar: ref = depth
    assert f("fill_probability") == 0.5
    assert f("imbalance_ma5") == pytest.approx(1 / 3, rel=1e-15)
    assert f("imbalance_persistence") == 1.0
    assert f("withdrawal_velocity") == 0.0  # one depth held: k = 0


def test_records_count_the_bars_no_engine_computed() -> None:
    snap = {"BTCUSDT": Snapshot("BTCUSDT", T0, np.array([1e6]), np.array([1e6]))}
    eng = FeatureEngine()
    gaps = [eng.step(k, T0 + k, snap if k != 9 else {})["gap_bars"] for k in (1, 2, 5, 9, 10)]
    assert gaps == [0, 0, 2, 3, 0]
    restored = FeatureEngine.from_state(eng.export_state(), FeatureParams())
    assert restored.step(14, T0 + 14, snap)["gap_bars"] == 3


def test_spread_fills_exactly_at_band_edge_and_in_first_band() -> None:
    # L = 2, w = 50. bid [10000, 5] fills in band 0: 0 + 50 * 10000/10000 = 50.
    # ask [4000, 6000]: band 1: 50*1 + 50*(10000-4000)/6000 = 100.  Total 150.
    r = Runner()
    rec = r.step(books(A1=([10_000, 5], [4_000, 6_000])))
    assert feature(rec, "A1", "spread_proxy_bps") == pytest.approx(150.0, rel=1e-15)
    # A deep first band: bid 40000 -> 50 * 10000/40000 = 12.5; ask 20000 -> 25. Total 37.5.
    rec = r.step(books(A1=([40_000, 0], [20_000, 0])))
    assert feature(rec, "A1", "spread_proxy_bps") == pytest.approx(37.5, rel=1e-15)
    # Empty book: neither side fills -> 2 * band span = 200.
    rec = r.step(books(A1=([0, 0], [0, 0])))
    assert feature(rec, "A1", "spread_proxy_bps") == 200.0


def test_zero_book_gives_neutral_ratios() -> None:
    r = Runner()
    rec = r.step(books(Z1=([0.0], [0.0])))
    a = asset_view(rec)["Z1"]
    assert a["placement"] == {"depth_1pct_usd": 0.0, "depth_quality": 1.0, "fill_probability": 0.5,
                              "spread_proxy_bps": 200.0}
    assert a["signal"] == {"imbalance": 0.0, "imbalance_ma5": 0.0, "imbalance_persistence": 0.0,
                           "depth_asymmetry": 0.0, "withdrawal_velocity": 0.0}
    assert rec["market"] == {"median_imbalance": 0.0, "agreement_pct": 100.0, "depth_pressure": 0.0,
                             "notional_pressure": 0.0}


def test_ema_depth_quality_and_velocity_by_hand() -> None:
    # alpha = 0.5. depths 600 then 1000: ref = 0.5*600 + 0.5*1000 = 800, quality 1.25, fill 1.25/2.25 = 5/9.
    # withdrawal velocity: (1000 - 600) / 600 / 1 = 2/3.
    r = Runner(FeatureParams(ema_alpha=0.5))
    r.step(books(X1=([300, 0], [300, 0])))
    rec = r.step(books(X1=([500], [500])))  # L may change between bars
    assert feature(rec, "X1", "depth_quality") == 1.25
    assert feature(rec, "X1", "fill_probability") == pytest.approx(5 / 9, rel=1e-15)
    assert feature(rec, "X1", "withdrawal_velocity") == pytest.approx(2 / 3, rel=1e-15)


def test_histories_ma_persistence_and_velocity_window_by_hand() -> None:
    # imbalance_lookback 3, ma_window 2, depth_lookback 3.
    # imbalances: (200-100)/300 = 1/3, (100-300)/400 = -1/2, (500-500)/1000 = 0, (600-400)/1000 = 1/5
    # depths:     300, 400, 1000, 1000
    # ma (last 2): 1/3, (1/3 - 1/2)/2, (-1/2 + 0)/2, (0 + 1/5)/2
    p = FeatureParams(imbalance_lookback=3, ma_window=2, depth_lookback=3)
    r = Runner(p)
    bars = [([200], [100]), ([100], [300]), ([500], [500]), ([600], [400])]
    recs = [r.step(books(S1=b)) for b in bars]
    ma = [feature(x, "S1", "imbalance_ma5") for x in recs]
    pers = [feature(x, "S1", "imbalance_persistence") for x in recs]
    vel = [feature(x, "S1", "withdrawal_velocity") for x in recs]
    assert ma == pytest.approx([1 / 3, (1 / 3 - 1 / 2) / 2, -1 / 4, 1 / 10], rel=1e-15)
    # signs +, -, 0, + -> held [+], [+,-], [+,-,0], [-,0,+]
    assert pers == [1.0, 0.0, 0.0, 0.0]
    # depths held [300], [300,400], [300,400,1000], [400,1000,1000]
    assert vel == pytest.approx([0.0, 100 / 300, (1000 - 300) / 300 / 2, (1000 - 400) / 400 / 2], rel=1e-15)


def test_persistence_mixed_signs_by_hand() -> None:
    # imbalances 1/3, 1/3, -1/3, 1/3, 1/2; lookback 4 holds the last four: +, -, +, + -> (1 - 1 + 1 + 1)/4 = 0.5
    r = Runner(FeatureParams(imbalance_lookback=4, ma_window=4))
    for bid, ask in [(2, 1), (2, 1), (1, 2), (2, 1), (3, 1)]:
        rec = r.step(books(P1=([bid], [ask])))
    assert feature(rec, "P1", "imbalance_persistence") == 0.5
    # ma over the same four: (1/3 - 1/3 + 1/3 + 1/2)/4 = 5/24
    assert feature(rec, "P1", "imbalance_ma5") == pytest.approx(5 / 24, rel=1e-15)


def test_velocity_zero_when_oldest_depth_is_zero() -> None:
    r = Runner()
    r.step(books(V1=([0], [0])))
    rec = r.step(books(V1=([10], [10])))
    assert feature(rec, "V1", "withdrawal_velocity") == 0.0


def test_market_odd_count_by_hand() -> None:
    # imbalances: A (3-1)/4 = 0.5, B (4-6)/10 = -0.2, C (11-9)/20 = 0.1 -> median 0.1
    # signs +, -, + agree with + : 2 of 3 -> 66.66..%
    # depth pressure (in-process engine): plain sum of imbalances 0.5 - 0.2 + 0.1 = 0.4
    # notional pressure: sum B = 3+4+11 = 18, sum A = 1+6+9 = 16 -> 2/34
    r = Runner()
    rec = r.step(books(AA=([3], [1]), BB=([4], [6]), CC=([11], [9])))
    m = rec["market"]
    assert m["median_imbalance"] == pytest.approx(0.1, rel=1e-15)
    assert m["agreement_pct"] == pytest.approx(200 / 3, rel=1e-15)
    assert m["depth_pressure"] == pytest.approx(0.4, rel=1e-15)
    assert m["notional_pressure"] == pytest.approx(2 / 34, rel=1e-15)


def test_market_even_count_and_zero_median_by_hand() -> None:
    # imbalances -0.5, -0.1, 0.3, 0.6 -> median (-0.1 + 0.3)/2 = 0.1; two positive of four agree: 50%.
    r = Runner()
    rec = r.step(books(E1=([1], [3]), E2=([9], [11]), E3=([13], [7]), E4=([8], [2])))
    assert rec["market"]["median_imbalance"] == pytest.approx(0.1, rel=1e-12)
    assert rec["market"]["agreement_pct"] == 50.0
    # imbalances -1, 0, 1 -> median 0; only the zero-imbalance asset shares its sign (0): 1/3.
    rec = r.step(books(E1=([0], [5]), E2=([5], [5]), E3=([5], [0])))
    assert rec["market"]["median_imbalance"] == 0.0
    assert rec["market"]["agreement_pct"] == pytest.approx(100 / 3, rel=1e-15)


def _cascade_bar(velocities: list[float]) -> dict:
    # Bar 1: every asset at depth 1000; bar 2: depth 1000 * (1 + v) -> withdrawal velocity v.
    r = Runner()
    names = [f"C{i}" for i in range(len(velocities))]
    r.step({n: snap(n, [500], [500]) for n in names})
    return r.step({n: snap(n, [500 * (1 + v)], [500 * (1 + v)]) for n, v in zip(names, velocities)})


def test_cascade_count_and_regime_by_hand() -> None:
    # threshold 0.05: -0.1 and -0.06 count, -0.01 and +0.2 do not -> 2 of 4 = 0.5 >= 0.5: CASCADE
    rec = _cascade_bar([-0.1, -0.06, -0.01, 0.2])
    assert rec["macro"]["cascade_count"] == 2 and rec["macro"]["cascade_regime"] == "CASCADE"
    # 1 of 4 = 0.25 >= 0.25: STRESS
    rec = _cascade_bar([-0.1, -0.01, -0.01, 0.2])
    assert rec["macro"]["cascade_count"] == 1 and rec["macro"]["cascade_regime"] == "STRESS"
    # 1 of 5 = 0.2: CALM; exactly -0.05 does not count (strictly below -threshold)
    rec = _cascade_bar([-0.5, -0.05, 0.0, 0.0, 0.0])
    assert rec["macro"]["cascade_count"] == 1 and rec["macro"]["cascade_regime"] == "CALM"


def test_depth_velocity_and_acceleration_by_hand() -> None:
    # alpha 0.5, one asset with depths 100, 300, 100, 100:
    # ref 100, 200, 150, 125 = depth_ref_usd (universe of one)
    # depth_lookback 3: velocity 0, (200-100)/100/1 = 1, (150-100)/100/2 = 0.25, (125-200)/200/2 = -0.1875
    # acceleration 0 (first), 1, 0.25 - 1 = -0.75, -0.1875 - 0.25 = -0.4375
    r = Runner(FeatureParams(ema_alpha=0.5, depth_lookback=3))
    recs = [r.step(books(M1=([d / 2], [d / 2]))) for d in (100, 300, 100, 100)]
    assert [x["macro"]["depth_ref_usd"] for x in recs] == [100.0, 200.0, 150.0, 125.0]
    assert [x["macro"]["depth_velocity"] for x in recs] == pytest.approx([0.0, 1.0, 0.25, -0.1875], rel=1e-14)
    assert [x["macro"]["acceleration"] for x in recs] == pytest.approx([0.0, 1.0, -0.75, -0.4375], rel=1e-14)


def test_depth_ref_is_mean_reference_over_seen_assets() -> None:
    # alpha 0.5, no configured universe. Bar 1: A depth 100, B depth 100 -> refs 100, 100: mean 100.
    # Bar 2: A depth 300 (ref 200), B absent (keeps its ref 100) -> mean 150, velocity 0.5.
    # Bar 3: empty -> no macro, history unchanged. Bar 4: C appears (depth 50, ref 50):
    # mean (200 + 100 + 50) / 3 = 350/3; velocity over 3 values (350/3 - 100) / 100 / 2 = 1/12.
    r = Runner(FeatureParams(ema_alpha=0.5))
    assert r.step(books(MA=([50], [50]), MB=([50], [50])))["macro"]["depth_ref_usd"] == 100.0
    rec = r.step(books(MA=([150], [150])))
    assert rec["macro"]["depth_ref_usd"] == 150.0
    assert rec["macro"]["depth_velocity"] == 0.5 and rec["macro"]["acceleration"] == 0.5
    assert r.step({})["macro"] is None
    rec = r.step(books(MC=([25], [25])))
    assert rec["macro"]["depth_ref_usd"] == pytest.approx(350 / 3, rel=1e-15)
    assert rec["macro"]["depth_velocity"] == pytest.approx(1 / 12, rel=1e-14)
    assert rec["universe"]["size"] == 3 and rec["universe"]["configured"] is False


def test_depth_ref_counts_a_configured_asset_never_present_as_zero() -> None:
    # Universe {MA, MB, MC}, alpha 0.5. Bar 1: MA 100, MB 100 -> (100 + 100 + 0) / 3 = 200/3.
    # Bar 2: MA 300 (ref 200) -> (200 + 100 + 0) / 3 = 100; velocity (100 - 200/3) / (200/3) = 0.5.
    r = Runner(FeatureParams(ema_alpha=0.5), universe=["MC", "MB", "MA"])
    assert r.step(books(MA=([50], [50]), MB=([50], [50])))["macro"]["depth_ref_usd"] == pytest.approx(200 / 3)
    rec = r.step(books(MA=([150], [150])))
    assert rec["macro"]["depth_ref_usd"] == 100.0
    assert rec["macro"]["depth_velocity"] == pytest.approx(0.5, rel=1e-14)
    assert rec["universe"] == {"configured": True, "size": 3, "hash": universe_hash(["MA", "MB", "MC"])}


# -- record shape and carried-over behaviours ----------------------------------------------


def test_features_populated_after_one_bar() -> None:
    r = Runner()
    rec = r.step({"BTCUSDT": snap("BTCUSDT", [5000, 4000], [3000, 2000], ts=T0 + 0.75, seq=12),
                  "ETHUSDT": snap("ETHUSDT", [100], [300], ts=T0 + 0.5)})
    assert rec["schema"] == SCHEMA_VERSION and rec["bar_idx"] == 1 and rec["bar_ts"] == T0 + 1
    assert rec["n_assets"] == 2 and rec["n_present"] == 2 and rec["degraded"] is False
    check_columns(rec)
    assert rec["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert rec["ts"] == [T0 + 0.75, T0 + 0.5] and rec["age_ms"] == [250.0, 500.0] and rec["seq"] == [12, None]
    assert set(rec["placement"]) == set(PLACEMENT) and set(rec["signal"]) == set(SIGNAL)
    assert set(rec["state"]) == {"ref_depth_usd"}
    for col in (*rec["placement"].values(), *rec["signal"].values(), *rec["state"].values()):
        assert type(col) is list and all(type(v) is float and math.isfinite(v) for v in col)
    # first bar: the EMA reference is the depth itself
    assert rec["state"]["ref_depth_usd"] == rec["placement"]["depth_1pct_usd"] == [14000.0, 400.0]
    assert set(rec["market"]) == {"median_imbalance", "agreement_pct", "depth_pressure", "notional_pressure"}
    assert set(rec["macro"]) == {"cascade_count", "cascade_regime", "depth_velocity", "acceleration",
                                 "depth_ref_usd"}
    assert rec["universe"] == {"configured": False, "size": 2, "hash": universe_hash(["BTCUSDT", "ETHUSDT"])}
    assert loads_record(dumps_record(rec)) == rec


def test_asset_without_snapshot_is_skipped() -> None:
    r = Runner()
    r.step(books(AAA=([1], [2]), BBB=([3], [4])))
    rec = r.step(books(AAA=([1], [2])))
    assert rec["n_assets"] == 2 and rec["n_present"] == 1 and rec["symbols"] == ["AAA"]
    assert r.engine.assets == ("AAA", "BBB")
    rec = r.step(books(BBB=([3], [4])))
    assert rec["symbols"] == ["BBB"] and check_columns(rec) is None


def test_ema_converges_to_constant_depth() -> None:
    # depth 2000 once, then constant 1000: ref = 1000 + 1000 * 0.99^n -> quality rises towards 1.
    r = Runner()
    r.step(books(Q1=([1000], [1000])))
    qualities = [feature(r.step(books(Q1=([500], [500]))), "Q1", "depth_quality") for _ in range(1500)]
    assert qualities[0] == pytest.approx(1000 / 1990, rel=1e-12)
    assert all(a < b for a, b in zip(qualities, qualities[1:]))
    assert qualities[-1] == pytest.approx(1.0, abs=1e-6)
    # constant from the start: quality stays at 1
    r = Runner()
    assert {feature(r.step(books(Q2=([700], [300]))), "Q2", "depth_quality") for _ in range(50)} == {1.0}


def test_histories_use_only_bars_where_the_asset_was_present() -> None:
    p = FeatureParams(imbalance_lookback=3, ma_window=2, depth_lookback=3)
    seq = [([2], [1]), ([1], [4]), ([3], [3]), ([5], [1]), ([1], [1])]
    gappy, dense = Runner(p), Runner(p)
    gappy_recs, dense_recs = [], []
    for i, (bid, ask) in enumerate(seq):
        dense_recs.append(dense.step(books(G1=(bid, ask))))
        gappy_recs.append(gappy.step(books(G1=(bid, ask), G2=([1], [1]))))
        for _ in range(i + 1):  # bars where G1 is absent (G2 alone, or nothing)
            gappy.step(books(G2=([1], [1])) if i % 2 else {})
    for g, d in zip(gappy_recs, dense_recs):
        assert asset_view(g)["G1"]["signal"] == asset_view(d)["G1"]["signal"]
        assert asset_view(g)["G1"]["placement"] == asset_view(d)["G1"]["placement"]
        i, j = g["symbols"].index("G1"), d["symbols"].index("G1")
        assert g["state"]["ref_depth_usd"][i] == d["state"]["ref_depth_usd"][j]


def test_degraded_after_consecutive_empty_bars_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="obf_features_worker.engine.feature_engine")
    r = Runner()
    r.step(books(D1=([1], [1])))
    flags = [r.step({})["degraded"] for _ in range(6)]
    assert flags == [False, False, True, True, True, True]
    warnings = [x for x in caplog.records if x.levelno == logging.WARNING]
    assert len(warnings) == 1 and "degraded" in warnings[0].getMessage()
    rec = r.step(books(D1=([1], [1])))
    assert rec["degraded"] is False and r.engine.degraded is False
    infos = [x for x in caplog.records if x.levelno == logging.INFO]
    assert len(infos) == 1 and "recovered" in infos[0].getMessage()
    # two empty bars are not an episode; a new streak of three is a new episode
    r.step({})
    r.step({})
    r.step(books(D1=([1], [1])))
    assert [r.step({})["degraded"] for _ in range(3)] == [False, False, True]
    assert len([x for x in caplog.records if x.levelno == logging.WARNING]) == 2


def test_empty_bar_record_and_histories_unchanged() -> None:
    r = Runner()
    r.step(books(H1=([4], [1])))
    before = r.engine.export_state()
    rec = r.step({})
    assert rec["n_present"] == 0 and asset_view(rec) == {} and rec["market"] is None and rec["macro"] is None
    assert rec["n_assets"] == 1
    after = r.engine.export_state()
    for key in ("n_obs", "ref_depth", "imbalance_history", "depth_history", "market"):
        assert after[key] == before[key]
    assert after["empty_streak"] == 1 and after["last_bar_idx"] == 2


def test_bar_idx_must_increase_and_keys_must_match() -> None:
    e = FeatureEngine()
    e.step(5, T0, {})
    with pytest.raises(ValueError):
        e.step(5, T0, {})
    with pytest.raises(ValueError):
        e.step(6, T0, {"BTCUSDT": snap("ETHUSDT", [1], [1])})
    with pytest.raises(TypeError):
        e.step(True, T0, {})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        e.step(7, math.nan, {})


def test_bad_snapshot_arrays_are_refused() -> None:
    e = FeatureEngine()
    with pytest.raises(ValueError):
        e.step(1, T0, {"A1": snap("A1", [1, 2], [1])})
    with pytest.raises(ValueError):
        e.step(2, T0, {"A1": snap("A1", [], [])})


# -- reference comparison, determinism, state ----------------------------------------------

SYMBOLS = [f"S{i:02d}" for i in range(8)]
# The parser's domain: 0, or MIN_VALUE..MAX_VALUE (smaller values are stored as 0; see snapshot.py).
level_value = st.one_of(st.just(0.0), st.integers(0, 10**6).map(float),
                        st.floats(0, 1e7).map(lambda v: v if v >= MIN_VALUE else 0.0),
                        st.floats(MIN_VALUE, 1.0))


@st.composite
def book_sides(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    n = draw(st.one_of(st.integers(1, 4), st.integers(1, 64)))
    side = st.lists(level_value, min_size=n, max_size=n)
    return draw(side), draw(side)


bars_strategy = st.lists(st.dictionaries(st.sampled_from(SYMBOLS), book_sides(), max_size=6), min_size=1, max_size=25)


@st.composite
def params_strategy(draw: st.DrawFn) -> FeatureParams:
    il = draw(st.integers(1, 6))
    stress = draw(st.sampled_from([0.1, 0.25, 0.5]))
    return FeatureParams(
        imbalance_lookback=il, depth_lookback=draw(st.integers(1, 6)), ma_window=draw(st.integers(1, il)),
        ema_alpha=draw(st.sampled_from([0.01, 0.3, 1.0])),
        ref_notional_usd=draw(st.sampled_from([1.0, 10_000.0, 1e6])),
        band_span_bps=draw(st.sampled_from([25.0, 100.0, 37.5])),
        cascade_threshold=draw(st.sampled_from([0.0, 0.05, 0.5])),
        stress_share=stress, cascade_share=draw(st.sampled_from([stress, 0.5, 1.0])),
        degraded_after_bars=draw(st.integers(1, 3)),
    )


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b)) + 1e-14


def reference_for(p: FeatureParams, universe: Sequence[str] | None = None) -> ReferenceFeatures:
    d = p.to_dict()
    del d["degraded_after_bars"]
    return ReferenceFeatures(**d, universe=universe)


universe_strategy = st.none() | st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=8, unique=True)


def run_bars(engine: FeatureEngine, bars: list[dict], start: int = 0) -> list[dict]:
    out = []
    for i, bar in enumerate(bars, start=start + 1):
        out.append(engine.step(i, T0 + i, {s: snap(s, b, a, ts=T0 + i - 0.5) for s, (b, a) in bar.items()}))
    return out


@given(params=params_strategy(), bars=bars_strategy, universe=universe_strategy)
def test_engine_matches_reference(params: FeatureParams, bars: list[dict], universe: list[str] | None) -> None:
    ref = reference_for(params, universe)
    engine = FeatureEngine(params, universe=universe, initial_capacity=1)
    for i, (bar, rec) in enumerate(zip(bars, run_bars(engine, bars)), start=1):
        want = ref.bar(bar)
        assert rec["n_present"] == len(bar)
        assert rec["n_assets"] == len(ref.history)
        check_columns(rec)
        assert set(rec["symbols"]) == set(want["assets"])
        for sym, expected in want["assets"].items():
            for name, value in expected.items():
                got = feature(rec, sym, name)
                assert close(got, value), (i, sym, name, got, value)
            got = rec["state"]["ref_depth_usd"][rec["symbols"].index(sym)]
            assert close(got, ref.history[sym].ref), (i, sym, "ref_depth_usd", got)
        if not bar:
            assert rec["market"] is None and rec["macro"] is None
            continue
        for name, value in want["market"].items():
            assert close(rec["market"][name], value), (i, name, rec["market"][name], value)
        macro = rec["macro"]
        assert macro["cascade_count"] == want["macro"]["cascade_count"]
        assert macro["cascade_regime"] == want["macro"]["cascade_regime"]
        for name in ("depth_velocity", "acceleration", "depth_ref_usd"):
            assert close(macro[name], want["macro"][name]), (i, name, macro[name], want["macro"][name])
        dumps_record(rec)  # finite everywhere


@given(params=params_strategy(), bars=bars_strategy, split=st.integers(0, 25), data=st.data(),
       universe=universe_strategy)
def test_state_round_trip_and_determinism(params: FeatureParams, bars: list[dict], split: int,
                                          data: st.DataObject, universe: list[str] | None) -> None:
    split = min(split, len(bars))
    whole = [dumps_record(r) for r in run_bars(FeatureEngine(params, universe=universe), bars)]

    # same inputs, mapping order shuffled and a tiny initial capacity: bit-identical
    shuffled = [dict(data.draw(st.permutations(list(bar.items())))) for bar in bars]
    assert [dumps_record(r) for r in run_bars(FeatureEngine(params, universe=universe, initial_capacity=1),
                                              shuffled)] == whole

    first = FeatureEngine(params, universe=universe)
    head = [dumps_record(r) for r in run_bars(first, bars[:split])]
    state = orjson.loads(orjson.dumps(first.export_state()))
    resumed = FeatureEngine.from_state(state, params, universe=universe)
    assert resumed.assets == first.assets and resumed.degraded == first.degraded
    tail = [dumps_record(r) for r in run_bars(resumed, bars[split:], start=split)]
    assert head + tail == whole
    assert resumed.export_state() == FeatureEngine.from_state(resumed.export_state(), params,
                                                              universe=universe).export_state()


def test_many_assets_grow_slots() -> None:
    symbols = [f"A{i:04d}" for i in range(300)]
    bar = {s: snap(s, [float(i + 1)] * (1 + i % 64), [float(300 - i)] * (1 + i % 64)) for i, s in enumerate(symbols)}
    small, big = FeatureEngine(initial_capacity=1), FeatureEngine(initial_capacity=512)
    for k in range(3):
        assert dumps_record(small.step(k, T0 + k, bar)) == dumps_record(big.step(k, T0 + k, bar))
    assert small.capacity == 512 and len(small.assets) == 300


def test_from_state_rejects_mismatches() -> None:
    params = FeatureParams()
    e = FeatureEngine(params)
    e.step(1, T0, books(AB=([1, 2], [3, 4])))
    good = e.export_state()
    FeatureEngine.from_state(good, params)

    def mutated(**changes: object) -> dict:
        s = orjson.loads(orjson.dumps(good))
        s.update(changes)
        return s

    bad_states = [
        mutated(version=1), mutated(kind="other"), mutated(params={**good["params"], "ma_window": 4}),
        mutated(n_obs=[1, 1]), mutated(n_obs=[-1]), mutated(n_obs=[1.5]), mutated(ref_depth=["x"]),
        mutated(imbalance_history=[[0.0] * 9]), mutated(depth_history=[[float("nan")] * 10]),
        mutated(assets=["AB", "AB"]), mutated(assets=["ab"]), mutated(assets="AB"),
        mutated(market={"n_obs": 1}), mutated(empty_streak=-1), mutated(degraded=1),
        mutated(last_bar_idx="1"), {k: v for k, v in good.items() if k != "depth_history"}, [], None,
    ]
    for state in bad_states:
        with pytest.raises(StateMismatch):
            FeatureEngine.from_state(state, params)  # type: ignore[arg-type]
    with pytest.raises(StateMismatch):
        FeatureEngine.from_state(good, FeatureParams(ema_alpha=0.02))
    with pytest.raises(StateMismatch, match="universe"):  # the worker's --assets changed since
        FeatureEngine.from_state(good, params, universe=["AB"])


def test_record_carries_every_state_value_the_bar_wrote() -> None:
    # Snapshot + changelog: a successor rebuilds the state from records, so the values the
    # kernel wrote into the histories must be the record's, bit for bit (no rounding between).
    rng = np.random.default_rng(11)
    p = FeatureParams(imbalance_lookback=4, depth_lookback=3, ma_window=2)
    engine = FeatureEngine(p)
    for bar in range(1, 40):
        present = [s for s in ("AAA", "BBB", "CCC", "DDD") if rng.random() < 0.7]
        rec = engine.step(bar, T0 + bar, {s: snap(s, rng.gamma(2.0, 1e4, 3), rng.gamma(2.0, 1e4, 3),
                                                   ts=T0 + bar - 0.5) for s in present})
        state = engine.export_state()
        for i, sym in enumerate(rec["symbols"]):
            slot = state["assets"].index(sym)
            newest = state["n_obs"][slot] - 1
            assert state["ref_depth"][slot] == rec["state"]["ref_depth_usd"][i]
            assert state["imbalance_history"][slot][newest % 4] == rec["signal"]["imbalance"][i]
            assert state["depth_history"][slot][newest % 3] == rec["placement"]["depth_1pct_usd"][i]
        if rec["macro"] is not None:
            market = state["market"]
            assert market["depth_ref_history"][(market["n_obs"] - 1) % 3] == rec["macro"]["depth_ref_usd"]
            assert market["prev_depth_velocity"] == rec["macro"]["depth_velocity"]


def test_numpy_seq_and_ts_from_a_direct_caller_become_plain_values() -> None:
    rec = Runner().step({"AAA": Snapshot("AAA", np.float64(T0 + 0.5), np.array([1.0]), np.array([2.0]),
                                         seq=np.int64(5)),  # type: ignore[arg-type]
                         "BBB": Snapshot("BBB", T0, np.array([1, 2]), np.array([3, 4]), seq=None)})
    assert rec["seq"] == [5, None] and type(rec["seq"][0]) is int
    assert rec["ts"] == [T0 + 0.5, T0] and all(type(t) is float for t in rec["ts"])
    assert rec["placement"]["depth_1pct_usd"] == [3.0, 10.0]  # int bands become float64 (Snapshot)
    assert loads_record(dumps_record(rec)) == rec


def test_bands_that_cannot_be_joined_as_bytes_give_the_same_record() -> None:
    # Snapshot makes its bands contiguous float64; should one not be (set behind its back), the
    # engine's packing falls back to np.concatenate with the same result.
    plain = books(AAA=([1.0, 2.0, 3.0], [3.0, 1.0, 0.5]), BBB=([5.0], [4.0]))
    odd = books(AAA=([1.0, 2.0, 3.0], [3.0, 1.0, 0.5]), BBB=([5.0], [4.0]))
    object.__setattr__(odd["AAA"], "bid_notional", np.array([1.0, 9.0, 2.0, 9.0, 3.0])[::2])  # strided view
    assert Runner().step(plain) == Runner().step(odd)
