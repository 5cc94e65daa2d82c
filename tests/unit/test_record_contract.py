"""One record schema: what the engine writes (obf_contract.record's TypedDicts), what the adapter
decodes and the dataclasses the trader reads all name the same fields, and the values pass
through unchanged."""

from __future__ import annotations

import dataclasses
from typing import get_type_hints

import orjson
import pytest

from engine_adapter.features import (
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
    decode_bar,
)
from obf_contract import record as R
from tests.factories import bar_record

# The in-process engine's fields, in its order: the trader's code constructs and reads these.
IN_PROCESS_MARKET = ("median_imbalance", "agreement_pct", "depth_pressure")
IN_PROCESS_MACRO = ("median_imbalance", "agreement_pct", "depth_pressure", "cascade_regime", "depth_velocity",
                    "acceleration")


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _keys(td: type) -> set[str]:
    return set(get_type_hints(td))


def test_dataclasses_and_record_name_the_same_fields() -> None:
    assert set(_fields(OBPlacementFeatures)) == _keys(R.PlacementRecord) == _keys(R.PlacementColumns)
    assert set(_fields(OBSignalFeatures)) == _keys(R.SignalRecord) == _keys(R.SignalColumns)
    assert set(_fields(OBMarketFeatures)) == _keys(R.MarketRecord)
    assert set(_fields(OBMacroFeatures)) == _keys(R.MarketRecord) - {"notional_pressure"} | _keys(R.MacroRecord)
    assert _fields(OBMarketFeatures)[:3] == IN_PROCESS_MARKET
    assert _fields(OBMacroFeatures)[:6] == IN_PROCESS_MACRO
    # The column lists the engine, asset_view and check_columns go by, in the dataclasses' order.
    assert R.PLACEMENT_FIELDS == _fields(OBPlacementFeatures)
    assert R.SIGNAL_FIELDS == _fields(OBSignalFeatures)
    assert R.STATE_FIELDS == tuple(get_type_hints(R.StateColumns))


def test_an_engine_record_has_exactly_the_schema_and_decodes_unchanged() -> None:
    rec = bar_record(12, ("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    assert set(rec) == _keys(R.BarRecord) - {"producer"} and rec["schema"] == R.SCHEMA_VERSION
    R.check_columns(rec)
    assert rec["symbols"] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert set(rec["placement"]) == _keys(R.PlacementColumns)
    assert set(rec["signal"]) == _keys(R.SignalColumns)
    assert set(rec["state"]) == _keys(R.StateColumns)
    view = R.asset_view(rec)
    for asset in view.values():
        assert set(asset) == _keys(R.AssetRecord)
        assert set(asset["placement"]) == _keys(R.PlacementRecord)
        assert set(asset["signal"]) == _keys(R.SignalRecord)
    assert set(rec["market"]) == _keys(R.MarketRecord) and set(rec["macro"]) == _keys(R.MacroRecord)

    bar = decode_bar(orjson.dumps(rec))
    assert set(bar.assets) == set(rec["symbols"])
    for sym, asset in view.items():
        assert dataclasses.asdict(bar.assets[sym].placement) == asset["placement"]
        assert dataclasses.asdict(bar.assets[sym].signal) == asset["signal"]
    assert dataclasses.asdict(bar.market) == rec["market"]
    macro = dataclasses.asdict(bar.macro)
    assert {k: macro[k] for k in rec["macro"]} == rec["macro"]
    assert {k: macro[k] for k in IN_PROCESS_MARKET} == {k: rec["market"][k] for k in IN_PROCESS_MARKET}


@pytest.mark.parametrize("breakage", ["short-column", "unsorted", "duplicate", "n_present", "missing-group",
                                      "not-a-list"])
def test_check_columns_refuses_a_broken_shape(breakage: str) -> None:
    rec = bar_record(3, ("BTCUSDT", "ETHUSDT"))
    if breakage == "short-column":
        rec["signal"]["imbalance"].pop()
    elif breakage == "unsorted":
        rec["symbols"].reverse()
    elif breakage == "duplicate":
        rec["symbols"][1] = rec["symbols"][0]
    elif breakage == "n_present":
        rec["n_present"] = 3
    elif breakage == "missing-group":
        del rec["state"]
    else:
        rec["age_ms"] = dict(enumerate(rec["age_ms"]))
    with pytest.raises(ValueError):
        R.check_columns(rec)
    with pytest.raises(ValueError):
        R.asset_view(rec)
    if breakage == "missing-group":  # a reader that skips the state block (the adapter) accepts it
        R.check_columns(rec, state=False)
    else:
        with pytest.raises(ValueError):
            R.check_columns(rec, state=False)
