"""The trader's in-process engine calls, unchanged, against ours (issue 13): constructor calls and
attribute reads of the feature types, step_live warnings, universe mismatch, lookup keys, the
OBF_ENGINE switch and the mock engine. No member: the stub client of test_adapter_fastpath hands
the adapter's own listener the records (real decode -> BarCache -> memo path)."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any

import orjson
import pytest
from hazelcast.core import HazelcastJsonValue

import engine_adapter
from engine_adapter import (
    AdapterConfig,
    HazelcastOBEngine,
    MockOBEngine,
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
    wire,
)
from engine_adapter.features import NEUTRAL_MACRO, NEUTRAL_SIGNAL
from engine_adapter.mock import PAPER_BIASES
from obf_contract.record import asset_view, universe_hash
from tests.unit.test_adapter_fastpath import ASSETS, StubClient, record

# -- the in-process engine's constructor calls and attribute reads ---------------------------------


def test_in_process_constructor_calls_work_unchanged() -> None:
    # Exactly the calls of the trader's in-process OBFeatureEngine (keyword form).
    placement = OBPlacementFeatures(depth_1pct_usd=2.5e6, depth_quality=1.2, fill_probability=0.545,
                                    spread_proxy_bps=3.1)
    signal = OBSignalFeatures(imbalance=0.1, imbalance_ma5=0.05, imbalance_persistence=0.6, depth_asymmetry=-0.2,
                              withdrawal_velocity=-0.01)
    market = OBMarketFeatures(median_imbalance=0.02, agreement_pct=62.5, depth_pressure=0.4)
    macro = OBMacroFeatures(median_imbalance=0.02, agreement_pct=62.5, depth_pressure=0.4, cascade_regime="CALM",
                            depth_velocity=-0.003, acceleration=0.001)
    assert (macro.median_imbalance, macro.agreement_pct, macro.depth_pressure, macro.cascade_regime,
            macro.depth_velocity, macro.acceleration) == (0.02, 62.5, 0.4, "CALM", -0.003, 0.001)
    assert (market.median_imbalance, market.agreement_pct, market.depth_pressure) == (0.02, 62.5, 0.4)
    assert placement.fill_probability == 0.545 and signal.withdrawal_velocity == -0.01
    # ...and the positional form: the in-process six fields come first, in its order.
    assert OBMacroFeatures(0.02, 62.5, 0.4, "CALM", -0.003, 0.001) == macro
    assert OBMarketFeatures(0.02, 62.5, 0.4) == market
    names = [f.name for f in dataclasses.fields(OBMacroFeatures)]
    assert names[:6] == ["median_imbalance", "agreement_pct", "depth_pressure", "cascade_regime",
                         "depth_velocity", "acceleration"]
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(OBMacroFeatures)[6:])
    assert [f.name for f in dataclasses.fields(OBMarketFeatures)][:3] == ["median_imbalance", "agreement_pct",
                                                                          "depth_pressure"]
    assert [f.name for f in dataclasses.fields(OBPlacementFeatures)] == [
        "depth_1pct_usd", "depth_quality", "fill_probability", "spread_proxy_bps"]
    assert [f.name for f in dataclasses.fields(OBSignalFeatures)] == [
        "imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry", "withdrawal_velocity"]


def push(stub: StubClient, rec: dict[str, Any]) -> None:
    event = type("E", (), {"key": rec["bar_idx"], "value": HazelcastJsonValue(orjson.dumps(rec).decode())})()
    stub.map.on_entry(event)


def engine(stub: StubClient, **kw: Any) -> HazelcastOBEngine:
    return HazelcastOBEngine(AdapterConfig(max_wait_ms=0, **kw), client=stub)  # type: ignore[arg-type]


@pytest.fixture
def stub() -> StubClient:
    return StubClient()


def test_in_process_attribute_reads_against_the_adapter(stub: StubClient) -> None:
    eng = engine(stub)
    rec = record(7)
    push(stub, rec)
    eng.step_live(list(ASSETS), 7)
    m = rec["market"]
    # The trader's reads: get_macro(...).agreement_pct etc. (these raised AttributeError before).
    assert eng.get_macro(7).agreement_pct == m["agreement_pct"]
    assert eng.get_macro(7).median_imbalance == m["median_imbalance"]
    assert eng.get_macro(7).depth_pressure == m["depth_pressure"]
    assert eng.get_macro(7).cascade_regime == rec["macro"]["cascade_regime"]
    assert eng.get_macro(7).depth_velocity == rec["macro"]["depth_velocity"]
    assert eng.get_macro(7).acceleration == rec["macro"]["acceleration"]
    assert eng.get_market("BTCUSDT", 7).agreement_pct == m["agreement_pct"]
    view = asset_view(rec)
    assert eng.get_placement("BTCUSDT", 7).fill_probability == view["BTCUSDT"]["placement"]["fill_probability"]
    assert eng.get_signal("ETHUSDT", 7).imbalance == view["ETHUSDT"]["signal"]["imbalance"]


# -- step_live warnings -----------------------------------------------------------------------------


def test_third_consecutive_non_exact_bar_warns_every_bar_then_info_on_recovery(
        stub: StubClient, caplog: pytest.LogCaptureFixture) -> None:
    eng = engine(stub, stale_after_bars=2)
    push(stub, record(10))
    caplog.set_level(logging.DEBUG, logger="engine_adapter.adapter")
    assert eng.step_live(ASSETS, 10).kind == "exact"
    kinds = [eng.step_live(ASSETS, b).kind for b in (11, 12, 13, 14)]
    assert kinds == ["fallback", "fallback", "default", "default"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # bars 13 and 14: the third and fourth non-exact bars
    msg = warnings[0].getMessage()
    assert "bar_idx=13" in msg and "kind=default" in msg and "lag_bars=3" in msg and "last_exact_bar=10" in msg
    s = eng.stats()
    assert (s.non_exact_streak, s.non_exact_warnings, s.last_exact_bar_idx) == (4, 2, 10)
    push(stub, record(15))
    caplog.clear()
    assert eng.step_live(ASSETS, 15).kind == "exact"
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("exact again bar_idx=15 after 4 non-exact bars" in m for m in infos)
    s = eng.stats()
    assert (s.non_exact_streak, s.non_exact_warnings, s.last_exact_bar_idx) == (0, 2, 15)


def test_two_non_exact_bars_do_not_warn(stub: StubClient, caplog: pytest.LogCaptureFixture) -> None:
    eng = engine(stub)
    push(stub, record(10))
    caplog.set_level(logging.INFO, logger="engine_adapter.adapter")
    for b in (11, 12):
        eng.step_live(ASSETS, b)
    push(stub, record(13))
    eng.step_live(ASSETS, 13)
    assert [r for r in caplog.records if r.levelno >= logging.INFO and "exact" in r.getMessage()] == []
    assert eng.stats().non_exact_warnings == 0


def with_universe(rec: dict[str, Any], symbols: list[str]) -> dict[str, Any]:
    return {**rec, "universe": {"configured": True, "size": len(symbols), "hash": universe_hash(symbols)}}


def test_universe_mismatch_warns_once_per_change(stub: StubClient, caplog: pytest.LogCaptureFixture) -> None:
    eng = engine(stub)
    worker_universe = [*ASSETS, "XRPUSDT"]
    caplog.set_level(logging.WARNING, logger="engine_adapter.adapter")
    for b in (1, 2, 3):
        push(stub, with_universe(record(b), worker_universe))
        eng.step_live(ASSETS, b)
    mismatch = [r.getMessage() for r in caplog.records if "universe" in r.getMessage()]
    assert len(mismatch) == 1 and "trader=3 assets" in mismatch[0] and "worker=4 assets" in mismatch[0]
    push(stub, with_universe(record(4), worker_universe))
    eng.step_live(worker_universe[::-1], 4)  # the same set in another order: no mismatch
    push(stub, with_universe(record(5), worker_universe))
    eng.step_live(ASSETS[:2], 5)  # another trader list: a new mismatch, warned again
    mismatch = [r.getMessage() for r in caplog.records if "universe" in r.getMessage()]
    assert len(mismatch) == 2 and eng.stats().universe_mismatches == 2


# -- lookup keys ------------------------------------------------------------------------------------


def test_non_integral_and_millisecond_keys_never_raise(stub: StubClient) -> None:
    eng = engine(stub)
    rec = record(7)
    push(stub, rec)
    assert eng.step_live(ASSETS, 7.6).kind == "exact"  # truncated like int(7.6)
    imb = asset_view(rec)["BTCUSDT"]["signal"]["imbalance"]
    assert eng.get_signal("BTCUSDT", 7.2).imbalance == imb
    ms = int(rec["bar_ts"] * 1000)
    assert eng.get_signal("BTCUSDT", ms).imbalance == imb
    assert eng.resolve(ms).kind == "exact"
    assert eng.stats().cache.truncated_keys == 2


# -- switch: OBF_ENGINE, HZ_HOST, the mock engine -----------------------------------------------------


def test_wire_off_mock_and_live(stub: StubClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine_adapter.wiring")
    assert wire(ASSETS, environ={"OBF_ENGINE": "off"}) is None
    mock = wire(ASSETS, environ={"OBF_ENGINE": "Mock"})
    assert isinstance(mock, MockOBEngine)
    live = wire(ASSETS, environ={"OBF_FEATURES_MAP": "OBF_X"}, client=stub)  # type: ignore[arg-type]
    assert isinstance(live, HazelcastOBEngine)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("OBF wired: ")]
    assert lines[0].startswith("OBF wired: off ") and "assets=3" in lines[0]
    assert lines[1].startswith("OBF wired: mock ") and "assets=3" in lines[1]
    assert lines[2].startswith("OBF wired: live map=OBF_X cluster=dev") and "assets=3" in lines[2]
    live.close()
    with pytest.raises(ValueError, match="OBF_ENGINE"):
        wire(ASSETS, environ={"OBF_ENGINE": "paper"})


def test_hz_host_beside_hz_members() -> None:
    assert AdapterConfig.from_env({"HZ_HOST": "hz.internal"}).members == ("hz.internal",)
    assert AdapterConfig.from_env({"HZ_HOST": "10.0.0.5:5702"}).members == ("10.0.0.5:5702",)
    # HZ_MEMBERS wins when both are set
    assert AdapterConfig.from_env({"HZ_HOST": "a:1", "HZ_MEMBERS": "b:2,c:3"}).members == ("b:2", "c:3")
    with pytest.raises(ValueError, match="HZ_HOST"):
        AdapterConfig.from_env({"HZ_HOST": "bad host:99999"})


def test_mock_engine_biases_and_neutral_fields() -> None:
    eng = MockOBEngine()
    assert eng.step_live(["BTCUSDT", "XRPUSDT"], 42).kind == "exact"
    assert eng.get_signal("BTCUSDT").imbalance == -0.086
    assert eng.get_signal("ETHUSDT", 42).imbalance == -0.092
    assert eng.get_signal("BNBUSDT").imbalance == 0.05 and eng.get_signal("SOLUSDT").imbalance == 0.05
    assert eng.get_signal("XRPUSDT") == OBSignalFeatures()
    assert dataclasses.replace(eng.get_signal("BTCUSDT"), imbalance=0.0) == OBSignalFeatures()
    assert eng.get_placement("BTCUSDT") == OBPlacementFeatures()
    assert eng.get_market() == OBMarketFeatures() and eng.get_macro("BTCUSDT", 42) == OBMacroFeatures()
    assert dict(eng.biases) == dict(PAPER_BIASES)
    s = eng.stats()
    assert s.current_bar_idx == 42 and s.steps == {"exact": 1}
    assert eng.step_live(None, 43.9).bar_idx == 43


def test_mock_engine_has_the_adapter_api() -> None:
    public = {n for n, _ in inspect.getmembers(HazelcastOBEngine) if not n.startswith("_")}
    public -= {"from_client", "client"}  # ways to build/reach a Hazelcast client: live only
    assert public <= {n for n, _ in inspect.getmembers(MockOBEngine)}
    for name in ("step_live", "get_placement", "get_signal", "get_market", "get_macro", "resolve"):
        live = list(inspect.signature(getattr(HazelcastOBEngine, name)).parameters)
        mock = list(inspect.signature(getattr(MockOBEngine, name)).parameters)
        assert live == mock, name
    assert {"wire", "MockOBEngine"} <= set(engine_adapter.__all__)


# -- review of issue 13: the trader's numbering going back, never raising -----------------------------


def at(idx: int, ts_bar: int) -> dict[str, Any]:
    """record(idx) with the bar_ts of bar ``ts_bar`` (a restarted numbering: low number, late time)."""
    rec = record(idx)
    return {**rec, "bar_ts": record(ts_bar)["bar_ts"]}


def test_worker_ahead_of_trader_across_a_restart_every_new_bar_is_exact(stub: StubClient) -> None:
    eng = engine(stub)
    for b in (498, 499, 500):
        push(stub, record(b))
        assert eng.step_live(ASSETS, b).kind == "exact"
    push(stub, at(0, 501))  # the worker restarted first: today's bars 0 and 1 arrive
    push(stub, at(1, 502))
    assert eng.step_live(ASSETS, 501).kind == "default"  # the trader's last bar of yesterday: no such bar
    assert eng.step_live(ASSETS, 0).kind == "exact"  # its step_live(0) no longer wipes 0 and 1
    assert eng.get_bar().bar_ts == record(501)["bar_ts"]
    assert eng.step_live(ASSETS, 1).kind == "exact" and eng.get_bar(1).bar_ts == record(502)["bar_ts"]
    push(stub, at(1, 502))  # a re-write (re-seed) of bar 1 is not refused
    push(stub, at(2, 503))
    assert eng.step_live(ASSETS, 2).kind == "exact"
    assert eng.stats().cache.ignored.get("old_numbering", 0) == 0


def test_trader_ahead_of_worker_across_a_restart(stub: StubClient) -> None:
    eng = engine(stub)
    for b in (0, 1, 2, 498, 499, 500):
        push(stub, record(b))  # yesterday's bars 0..2 still cached
    assert eng.step_live(ASSETS, 500).kind == "exact"
    assert eng.step_live(ASSETS, 0).kind == "default"  # never yesterday's bar 0
    assert eng.get_signal("BTCUSDT") is NEUTRAL_SIGNAL and eng.get_bar(1) is None
    push(stub, at(0, 501))  # the worker's new numbering arrives
    assert eng.get_bar().bar_ts == record(501)["bar_ts"]  # the late exact bar replaces the default
    push(stub, at(1, 502))
    assert eng.step_live(ASSETS, 1).kind == "exact" and eng.get_bar().bar_ts == record(502)["bar_ts"]


def test_trader_re_stepping_an_older_scan_does_not_wipe_the_cache(stub: StubClient) -> None:
    eng = engine(stub)
    for b in range(100, 105):
        push(stub, record(b))
        eng.step_live(ASSETS, b)
    assert eng.step_live(ASSETS, 101).kind == "default"  # a repeat or a restart: never a bar of before
    assert eng.stats().cache.bars == 5
    push(stub, record(105))
    assert eng.step_live(ASSETS, 105).kind == "exact"  # past 104: the floor is lifted
    assert eng.resolve(101).kind == "exact"


@pytest.mark.parametrize(("key", "kind"), [
    (1e9, "timestamp"), (2_000_000_000, "timestamp"), (-1, "negative"), (-2.5, "negative"),
    (float("nan"), "not_finite"), (True, "bool"), ("7", "type"), (None, "type"),
])
def test_step_live_never_raises_on_a_bad_bar_idx(stub: StubClient, caplog: pytest.LogCaptureFixture,
                                                 key: Any, kind: str) -> None:
    eng = engine(stub)
    push(stub, record(7))
    assert eng.step_live(ASSETS, 7).kind == "exact"
    caplog.set_level(logging.WARNING, logger="engine_adapter.adapter")
    for _ in range(3):
        assert eng.step_live(ASSETS, key).kind == "default"
        assert eng.get_signal("BTCUSDT") is NEUTRAL_SIGNAL  # the current bar answers neutral
        assert eng.get_macro() is NEUTRAL_MACRO
    assert eng.stats().bad_steps == {kind: 3}
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1  # logged once per kind
    assert eng.step_live(ASSETS, 7).kind == "exact"  # the next good step is served again


def test_step_live_accepts_numpy_scalars(stub: StubClient) -> None:
    import numpy as np

    eng = engine(stub)
    push(stub, record(7))
    assert eng.step_live(ASSETS, np.float32(7.0)).kind == "exact"
    assert eng.step_live(ASSETS, np.int64(7)).kind == "exact"
    assert eng.step_live(ASSETS, np.float32(7.5)).kind == "exact"  # truncated like int()
    assert eng.stats().cache.truncated_keys == 1 and eng.stats().bad_steps == {}


def test_assets_generator_is_read_once_and_non_str_skipped(stub: StubClient,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    eng = engine(stub)
    push(stub, with_universe(record(3), list(ASSETS)))
    caplog.set_level(logging.WARNING, logger="engine_adapter.adapter")
    assert eng.step_live((a for a in ASSETS), 3).kind == "exact"
    assert [r for r in caplog.records if "universe" in r.getMessage()] == []  # no spurious mismatch
    assert eng.stats().asset_defaults == 0 and eng.stats().universe_mismatches == 0
    push(stub, with_universe(record(4), list(ASSETS)))
    assert eng.step_live([*ASSETS, 42, None], 4).kind == "exact"  # type: ignore[list-item]
    s = eng.stats()
    assert s.bad_assets == 2 and s.universe_mismatches == 0 and s.asset_defaults == 0


def test_iso_timestamps_resolve_and_a_bad_string_answers_neutral(stub: StubClient) -> None:
    from datetime import UTC, datetime

    eng = engine(stub)
    rec = record(7)
    push(stub, rec)
    eng.step_live(ASSETS, 7)
    iso = datetime.fromtimestamp(rec["bar_ts"], UTC).isoformat()
    imb = asset_view(rec)["BTCUSDT"]["signal"]["imbalance"]
    for key in (iso, iso.replace("+00:00", "Z"), iso.replace("+00:00", "")):
        assert eng.get_signal("BTCUSDT", key).imbalance == imb, key
        assert eng.resolve(key).kind == "exact"
    assert eng.get_signal("BTCUSDT", "not a time") is NEUTRAL_SIGNAL
    assert eng.stats().bad_keys == {"ValueError": 1}


def test_mock_engine_never_raises_on_a_bad_key() -> None:
    eng = MockOBEngine()
    eng.step_live(["BTCUSDT"], 5)
    for key in (-1, float("nan"), True, "7", 2e9, None, [1]):
        eng.step_live(["BTCUSDT"], key)  # type: ignore[arg-type]
        assert eng.get_signal("BTCUSDT", key).imbalance == PAPER_BIASES["BTCUSDT"]
    assert eng.current_bar_idx == 5


def test_wire_live_with_the_cluster_down_returns_none_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    # Review of issue 13: with OBF_ENGINE=live and no cluster, wire() used to hang the trader's start-up.
    import socket

    with socket.socket() as s:  # a local port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.INFO, logger="engine_adapter.wiring")
    env = {"HZ_MEMBERS": f"127.0.0.1:{port}", "OBF_CONNECT_TIMEOUT_S": "1"}
    assert wire(ASSETS, environ=env) is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("OBF wired: off (live engine unavailable)")
    assert f"members=127.0.0.1:{port}" in errors[0] and "timeout_s=1.0" in errors[0]


def test_connect_timeout_variable() -> None:
    from engine_adapter.wiring import startup_timeout

    assert startup_timeout({}) == 30.0
    assert startup_timeout({"OBF_CONNECT_TIMEOUT_S": "2.5"}) == 2.5
    assert startup_timeout({"OBF_CONNECT_TIMEOUT_S": "0"}) is None
    assert startup_timeout({"OBF_CONNECT_TIMEOUT_S": "inf"}) is None
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ValueError, match="OBF_CONNECT_TIMEOUT_S"):
            startup_timeout({"OBF_CONNECT_TIMEOUT_S": bad})
    with pytest.raises(ValueError, match="OBF_CONNECT_TIMEOUT_S"):
        wire(ASSETS, environ={"OBF_CONNECT_TIMEOUT_S": "soon"})
