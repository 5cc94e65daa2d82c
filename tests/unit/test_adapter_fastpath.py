"""The adapter's fast paths: the current-bar memo of HazelcastOBEngine (invalidation, answers
equal to the general path, counters) and the bulk decode of a record's assets. No member: a
stub client hands the adapter's own listener callback the records, so bars go through the real
decode -> BarCache.insert -> on_change path."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from hazelcast.config import Config
from hazelcast.core import HazelcastJsonValue
from hazelcast.serialization.service import SerializationServiceV1
from hypothesis import given
from hypothesis import strategies as st

from engine_adapter import AdapterConfig, HazelcastOBEngine, features
from engine_adapter.features import NEUTRAL_MACRO, NEUTRAL_MARKET, NEUTRAL_PLACEMENT, NEUTRAL_SIGNAL, RecordRejected
from obf_contract.record import asset_view
from tests.factories import columnar_record

T0 = 1_723_161_000.0  # unix s
SPACING = 5.0  # s between bars
ASSETS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def record(idx: int, assets: tuple[str, ...] = ASSETS, tag: float = 0.0) -> dict[str, Any]:
    """A valid record; every value is a function of (idx, asset position, tag)."""
    out = {}
    for k, sym in enumerate(assets):
        out[sym] = {
            "ts": T0 + idx * SPACING - 0.5, "age_ms": 500.0, "seq": idx,
            "placement": {"depth_1pct_usd": 1000.0 * idx + k + tag, "depth_quality": 1.0, "fill_probability": 0.5,
                          "spread_proxy_bps": 1.0 + k},
            "signal": {"imbalance": (idx % 7) / 10 - k / 100, "imbalance_ma5": 0.0, "imbalance_persistence": 0.0,
                       "depth_asymmetry": 0.0, "withdrawal_velocity": -k / 1000},
        }
    return columnar_record({"bar_idx": idx, "bar_ts": T0 + idx * SPACING, "n_assets": len(assets), "assets": out,
            "market": {"median_imbalance": idx / 1000, "agreement_pct": 50.0 + tag, "depth_pressure": 0.0,
                       "notional_pressure": 0.0},
            "macro": {"cascade_count": 0, "cascade_regime": "CALM", "depth_velocity": idx / 100, "acceleration": 0.0,
                      "depth_ref_usd": 1000.0},
            "degraded": False})


def placement_of(rec: dict[str, Any], sym: str) -> tuple[float, ...]:
    return tuple(asset_view(rec)[sym]["placement"].values())


def signal_of(rec: dict[str, Any], sym: str) -> tuple[float, ...]:
    return tuple(asset_view(rec)[sym]["signal"].values())


def as_tuple(features: Any) -> tuple[float, ...]:
    return tuple(getattr(features, name) for name in features.__slots__)


class _Done:
    def __init__(self, value: Any = None) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


class StubMap:
    """Just enough of a map proxy for the reader: listener registration and an empty seed."""

    def __init__(self) -> None:
        self.on_entry: Any = None

    def add_entry_listener(self, **kw: Any) -> _Done:
        self.on_entry = kw["added_func"]
        return _Done("listener-1")

    def remove_entry_listener(self, _id: str) -> _Done:
        return _Done(True)

    def blocking(self) -> StubMap:
        return self

    def aggregate(self, _agg: Any) -> None:
        return None  # empty map: nothing to seed


class StubClient:
    def __init__(self) -> None:
        self.map = StubMap()
        self._serialization_service = SerializationServiceV1(Config())  # what the adapter's pickle guard edits
        self.lifecycle_service = SimpleNamespace(add_listener=lambda fn: "lc-1", remove_listener=lambda _id: None,
                                                 is_running=lambda: True)

    def get_map(self, _name: str) -> StubMap:
        return self.map


@pytest.fixture
def stub() -> StubClient:
    return StubClient()


def engine(stub: StubClient, **kw: Any) -> HazelcastOBEngine:
    return HazelcastOBEngine(AdapterConfig(max_wait_ms=0, **kw), client=stub)  # type: ignore[arg-type]


def deliver(stub: StubClient, rec: dict[str, Any]) -> None:
    """What the client's reactor thread does for one map event."""
    stub.map.on_entry(SimpleNamespace(key=rec["bar_idx"], value=HazelcastJsonValue(orjson.dumps(rec).decode())))


def test_late_exact_bar_replaces_the_fallback(stub: StubClient) -> None:
    eng = engine(stub)
    r6, r7 = record(6), record(7)
    deliver(stub, r6)
    assert eng.step_live(list(ASSETS), 7).kind == "fallback"
    assert as_tuple(eng.get_placement("BTCUSDT")) == placement_of(r6, "BTCUSDT")
    assert as_tuple(eng.get_signal("ETHUSDT", 7)) == signal_of(r6, "ETHUSDT")
    deliver(stub, r7)  # the current bar arrives after step_live gave up waiting
    assert as_tuple(eng.get_signal("ETHUSDT", 7)) == signal_of(r7, "ETHUSDT")
    assert as_tuple(eng.get_placement("BTCUSDT")) == placement_of(r7, "BTCUSDT")
    assert eng.resolve().kind == "exact" and eng.get_bar() is not None and eng.get_bar().bar_idx == 7
    assert eng.get_market().median_imbalance == r7["market"]["median_imbalance"]


def test_a_replaced_current_bar_is_picked_up(stub: StubClient) -> None:
    eng = engine(stub)
    deliver(stub, record(7, tag=0.0))
    eng.step_live(list(ASSETS), 7)
    assert eng.get_placement("SOLUSDT", 7).depth_1pct_usd == 7002.0
    deliver(stub, record(7, tag=0.25))  # the worker rewrote the bar
    assert eng.get_placement("SOLUSDT", 7).depth_1pct_usd == 7002.25
    assert eng.get_market(7).agreement_pct == 50.25


def test_eviction_of_the_current_bar_drops_the_memo(stub: StubClient) -> None:
    eng = engine(stub, cache_bars=2)
    r5 = record(5)
    deliver(stub, r5)
    assert eng.step_live(list(ASSETS), 5).kind == "exact"
    assert as_tuple(eng.get_signal("BTCUSDT")) == signal_of(r5, "BTCUSDT")
    deliver(stub, record(6))
    deliver(stub, record(7))  # bar 5 evicted: nothing at or before 5 is left
    assert eng.get_signal("BTCUSDT") == NEUTRAL_SIGNAL
    assert eng.get_placement("BTCUSDT", 5) == NEUTRAL_PLACEMENT
    assert eng.get_market() == NEUTRAL_MARKET and eng.get_macro(5) == NEUTRAL_MACRO
    assert eng.resolve().kind == "default"


def test_a_bar_arriving_while_step_live_resolves_is_not_lost(stub: StubClient, monkeypatch) -> None:
    """The memo must not outlive a change made between reading the cache and installing it."""
    eng = engine(stub)
    r7 = record(7)
    deliver(stub, record(6))
    cache = eng._cache
    real_resolve = cache.resolve
    calls = []

    def resolve_then_insert(key: Any, *, count: bool = True) -> Any:
        out = real_resolve(key, count=count)
        if not calls:
            calls.append(key)
            deliver(stub, r7)  # lands after the resolution, before the memo is installed
        return out

    monkeypatch.setattr(cache, "resolve", resolve_then_insert)
    assert eng.step_live(list(ASSETS), 7).kind == "fallback"  # what was cached when it resolved
    assert as_tuple(eng.get_placement("ETHUSDT")) == placement_of(r7, "ETHUSDT")
    assert eng.resolve().kind == "exact"


def test_fast_answers_equal_the_general_path(stub: StubClient) -> None:
    eng = engine(stub)
    recs = {i: record(i, assets=ASSETS[: 1 + i % 3]) for i in (10, 11, 12, 14)}
    for rec in recs.values():
        deliver(stub, rec)
    for current in (10, 11, 12, 13, 14, 15, 17):
        eng.step_live(None, current)
        keys = [None, current, np.int64(current), float(current), T0 + current * SPACING + 1.0, 11, 16]
        for key in keys:
            want_idx = current if key is None else key
            res, bar = eng._cache.resolve(want_idx, count=False)
            for sym in ASSETS:
                a = None if bar is None else bar.assets.get(sym)
                assert eng.get_placement(sym, key) == (NEUTRAL_PLACEMENT if a is None else a.placement), (current, key)
                assert eng.get_signal(sym, key) == (NEUTRAL_SIGNAL if a is None else a.signal), (current, key)
                assert eng.get_asset(sym, key) == a
            assert eng.get_market(key) == (NEUTRAL_MARKET if bar is None else bar.market)
            assert eng.get_macro("BTCUSDT", key) == (NEUTRAL_MACRO if bar is None else bar.macro)
            assert eng.get_bar(key) is bar
            assert eng.resolve(key) == res


@pytest.mark.parametrize("current", [0, 1, 2])
def test_a_bool_is_never_a_bar_index(stub: StubClient, current: int) -> None:
    eng = engine(stub)
    deliver(stub, record(current))
    eng.step_live(list(ASSETS), current)
    for key in (True, False):  # refused (never bar 1 / 0), answered neutral, never raised
        assert eng.get_placement("BTCUSDT", key) is NEUTRAL_PLACEMENT
        assert eng.get_signal("BTCUSDT", key) is NEUTRAL_SIGNAL
    assert eng.stats().bad_keys == {"TypeError": 4}


def test_counters_count_every_lookup_across_memos(stub: StubClient) -> None:
    eng = engine(stub)
    deliver(stub, record(20, assets=("BTCUSDT", "ETHUSDT")))  # SOLUSDT absent from this bar
    deliver(stub, record(21))
    before = eng.stats()
    eng.step_live(list(ASSETS), 20)  # one absent asset
    for _ in range(4):
        for sym in ASSETS:
            eng.get_placement(sym)
            eng.get_signal(sym, 20)
    eng.get_market(20)
    eng.get_macro()
    eng.step_live(list(ASSETS), 21)  # the memo of bar 20 is replaced: its counts must survive
    eng.get_placement("SOLUSDT", 21)
    eng.step_live(list(ASSETS), 23)  # fallback to 21
    eng.get_signal("BTCUSDT")
    eng.step_live(list(ASSETS), 30)  # default
    eng.get_signal("BTCUSDT")
    eng.get_macro()
    after = eng.stats()
    lookups = {k: after.cache.lookups[k] - before.cache.lookups[k] for k in after.cache.lookups}
    assert lookups == {"exact": 4 * 3 * 2 + 2 + 1, "fallback": 1, "default": 2}
    # step_live(20): 1 absent; 4 rounds x 2 getters for SOLUSDT; steps 21/23: bar 21 has all three;
    # step_live(30) resolves to no bar: all 3 requested assets; getters on no bar count nothing.
    assert after.asset_defaults - before.asset_defaults == 1 + 4 * 2 + 3
    assert after.steps == {"exact": 2, "fallback": 1, "default": 1}


def test_step_live_counts_each_missing_occurrence(stub: StubClient) -> None:
    eng = engine(stub)
    deliver(stub, record(3, assets=("BTCUSDT",)))
    eng.step_live(["ETHUSDT", "BTCUSDT", "ETHUSDT"], 3)  # duplicates count per occurrence
    assert eng.stats().asset_defaults == 2
    eng.step_live(iter(["SOLUSDT", "XRPUSDT"]), 3)  # any iterable
    assert eng.stats().asset_defaults == 4
    eng.step_live(("BTCUSDT",), 3)
    assert eng.stats().asset_defaults == 4


# -- columnar decode: fast checks vs value-by-value, prepared vs on-demand objects ----------------------

FIELDS_OF = {"placement": ("depth_1pct_usd", "depth_quality", "fill_probability", "spread_proxy_bps"),
             "signal": ("imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry",
                        "withdrawal_velocity")}
FAULTS = st.sampled_from([math.nan, math.inf, -math.inf, 3, True, None, "1", [], {}])


@st.composite
def columnar(draw: st.DrawFn) -> dict[str, Any]:
    """A schema 3 record of finite floats, then (usually) one fault: a bad value or a bad structure."""
    finite = st.floats(-1e6, 1e6)
    syms = sorted(draw(st.lists(st.sampled_from(ASSETS + ("XRPUSDT", "ADAUSDT")), unique=True, max_size=5)))
    n = len(syms)
    col = st.lists(finite, min_size=n, max_size=n)
    rec: dict[str, Any] = {
        "schema": 3, "bar_idx": 1, "bar_ts": T0, "n_present": n, "symbols": syms,
        "ts": draw(col), "age_ms": draw(col),
        "seq": draw(st.lists(st.one_of(st.none(), st.integers(0, 99), st.booleans()), min_size=n, max_size=n)),
        "placement": {f: draw(col) for f in FIELDS_OF["placement"]},
        "signal": {f: draw(col) for f in FIELDS_OF["signal"]},
        "state": {"ref_depth_usd": draw(col)}, "market": None, "macro": None}
    if n and draw(st.integers(0, 3)) > 0:
        i = draw(st.integers(0, n - 1))
        where = draw(st.sampled_from(["ts", "age_ms", "placement", "signal", "short", "group"]))
        if where in FIELDS_OF:
            rec[where][draw(st.sampled_from(FIELDS_OF[where]))][i] = draw(FAULTS)
        elif where == "short":
            del rec[draw(st.sampled_from(["ts", "age_ms", "seq"]))][i]
        elif where == "group":
            rec[draw(st.sampled_from(sorted(FIELDS_OF)))] = draw(st.sampled_from([None, [], "x"]))
        else:
            rec[where][i] = draw(FAULTS)
    return rec


def _expected_assets(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The per-asset objects a record must decode to, checked value by value (None: rejected)."""
    try:
        rows = asset_view(rec)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    out = {}
    for sym, a in rows.items():
        values = [a["ts"], a["age_ms"], *a["placement"].values(), *a["signal"].values()]
        if any(type(v) not in (int, float) or not math.isfinite(v) for v in values):
            return None
        out[sym] = features.AssetFeatures(
            float(a["ts"]), float(a["age_ms"]), a["seq"] if type(a["seq"]) is int else None,
            features.OBPlacementFeatures(*map(float, a["placement"].values())),
            features.OBSignalFeatures(*map(float, a["signal"].values())))
    return out


@given(columnar())
def test_columnar_decode_equals_the_value_by_value_reading(rec: dict[str, Any]) -> None:
    expected = _expected_assets(rec)
    if expected is None:
        with pytest.raises(RecordRejected) as info:
            features.bar_from_record(rec)
        assert info.value.reason == "assets"
        return
    bar = features.bar_from_record(rec)
    assert dict(bar.assets) == expected  # made on demand, asset by asset
    for sym, a in expected.items():
        assert features.placement_of(bar, sym) == a.placement and features.signal_of(bar, sym) == a.signal
    assert isinstance(bar.assets, features.AssetColumns)
    bar.assets.prepare()  # the newest bar's objects, built column by column
    assert dict(bar.assets) == expected
    placement, signal = bar.assets.prepared  # type: ignore[misc]
    assert placement == {s: a.placement for s, a in expected.items()}
    assert signal == {s: a.signal for s, a in expected.items()}
    assert all(type(v) is float for a in bar.assets.values() for v in (*dataclasses.astuple(a.placement),
                                                                       *dataclasses.astuple(a.signal), a.ts, a.age_ms))
    assert bar.symbols == frozenset(expected) and bar.n_present == len(expected)


def test_age_ms_is_stored_only_when_it_is_not_derived_from_ts() -> None:
    rec = record(3)
    derived = features.bar_from_record(rec).assets
    rec["age_ms"] = [a + 1.0 for a in rec["age_ms"]]
    stored = features.bar_from_record(rec).assets
    assert isinstance(derived, features.AssetColumns) and isinstance(stored, features.AssetColumns)
    assert stored.nbytes() == derived.nbytes() + 8 * len(ASSETS)
    for sym in ASSETS:
        assert stored[sym].age_ms == derived[sym].age_ms + 1.0


def test_only_the_newest_cached_bar_keeps_prepared_objects(stub: StubClient) -> None:
    eng = engine(stub)
    for idx in (1, 2, 3):
        deliver(stub, record(idx))
    bars = [eng.get_bar(i) for i in (1, 2, 3)]
    assert [b.assets.prepared is not None for b in bars] == [False, False, True]  # type: ignore[union-attr]
    eng.step_live(list(ASSETS), 3)
    held = eng.get_placement("BTCUSDT")
    deliver(stub, record(4))  # bar 3 released by the cache; the trader still reads it, prepared
    assert bars[2].assets.prepared is None  # type: ignore[union-attr]
    assert eng.get_placement("BTCUSDT") is held
    assert eng.get_bar(4).assets.prepared is not None  # type: ignore[union-attr]
    deliver(stub, record(2, tag=1.0))  # a rewrite of an older bar is not prepared
    assert eng.get_bar(2).assets.prepared is None  # type: ignore[union-attr]
    assert eng.get_placement("SOLUSDT", 2).depth_1pct_usd == 2003.0  # made on demand


def test_consecutive_bars_with_the_same_assets_share_their_symbol_set(stub: StubClient) -> None:
    eng = engine(stub)
    for idx, assets in ((1, ASSETS), (2, ASSETS[::-1]), (3, ASSETS[:2]), (4, ASSETS[:2])):
        deliver(stub, record(idx, assets=assets))
    b1, b2, b3, b4 = (eng.get_bar(i) for i in (1, 2, 3, 4))
    assert b1.symbols == frozenset(ASSETS) and b1.symbols is b2.symbols  # same set, any order
    assert b3.symbols == frozenset(ASSETS[:2]) and b3.symbols is b4.symbols and b3.symbols is not b1.symbols


def test_missing_assets_follow_the_bar_when_its_asset_set_changes(stub: StubClient) -> None:
    eng = engine(stub)
    wanted = list(ASSETS) + ["XRPUSDT"]
    sets = {1: ASSETS, 2: ASSETS, 3: ASSETS[:1], 4: ASSETS, 5: ()}
    for idx, assets in sets.items():
        deliver(stub, record(idx, assets=assets))
    expected = 0
    for idx, assets in sets.items():
        eng.step_live(wanted, idx)
        expected += sum(1 for a in wanted if a not in assets)
        assert eng.stats().asset_defaults == expected, idx


def test_a_hand_built_bar_gets_its_symbols() -> None:
    bar = features.bar_from_record(record(9))
    rebuilt = features.BarFeatures(bar.bar_idx, bar.bar_ts, bar.n_assets, bar.n_present, bar.assets, bar.market,
                                   bar.macro, bar.degraded)
    assert rebuilt.symbols == frozenset(ASSETS)


@pytest.mark.parametrize("key", [[7], {"bar": 7}, "7"])
def test_a_bad_key_answers_neutral_and_is_counted(stub: StubClient, key: Any) -> None:
    # Issue 13 review: the trader's thread never sees a raise; a refused key answers neutral.
    eng = engine(stub)
    deliver(stub, record(7))
    eng.step_live(list(ASSETS), 7)
    assert eng.get_placement("BTCUSDT", key) is NEUTRAL_PLACEMENT
    assert eng.get_signal("BTCUSDT", key) is NEUTRAL_SIGNAL
    assert eng.get_asset("BTCUSDT", key) is None
    n = 3
    if not isinstance(key, str):  # get_market("7") names an asset: the current bar
        assert eng.get_market(key) is NEUTRAL_MARKET and eng.get_bar(key) is None
        assert eng.resolve(key).kind == "default"
        n += 3
    assert sum(eng.stats().bad_keys.values()) == n


@pytest.mark.parametrize("current", [0, 1])
def test_bars_0_and_1_by_explicit_index_use_the_memo(stub: StubClient, current: int) -> None:
    eng = engine(stub)
    rec = record(current)
    deliver(stub, rec)
    eng.step_live(list(ASSETS), current)
    before = eng.stats().cache.lookups["exact"]
    for _ in range(3):
        assert as_tuple(eng.get_signal("SOLUSDT", current)) == signal_of(rec, "SOLUSDT")
    assert eng.stats().cache.lookups["exact"] == before + 3
