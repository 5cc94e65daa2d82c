"""The Nautilus data types follow the adapter's dataclasses; the conversion, the catalog round
trip and the actor's error containment, without a member."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("nautilus_trader")

from engine_adapter.cache import Resolution  # noqa: E402
from engine_adapter.features import (  # noqa: E402
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
    bar_from_record,
)
from obf_contract.record import asset_view  # noqa: E402
from obf_nautilus import catalog, data  # noqa: E402
from obf_nautilus.actor import OBFeaturesActor, OBFeaturesActorConfig  # noqa: E402
from tests.integration.test_adapter import ASSETS, record  # noqa: E402


def names(**groups: type) -> list[str]:
    return [f"{g}_{f.name}" for g, c in groups.items() for f in dataclasses.fields(c)]


def test_fields_are_the_adapter_dataclasses_fields_in_order() -> None:
    head = ["bar_idx", "resolution", "used_bar_idx", "age_bars"]
    assert list(data.OBAssetFeatures.__annotations__) == [
        *head, "symbol", "present", *names(placement=OBPlacementFeatures, signal=OBSignalFeatures)]
    assert list(data.OBBarFeatures.__annotations__) == [
        *head, "n_present", "degraded", *names(market=OBMarketFeatures, macro=OBMacroFeatures)]
    assert data.OBBarFeatures.__annotations__["macro_cascade_count"] is int
    assert data.OBBarFeatures.__annotations__["macro_cascade_regime"] is str


def test_groups_may_share_field_names() -> None:
    @dataclasses.dataclass
    class Repeats:  # as the in-process macro object repeats market values
        median_imbalance: float = 0.0
        count: int = 0

    fields = data.value_fields((("market", OBMarketFeatures), ("macro", Repeats)))
    assert fields["market_median_imbalance"] is float and fields["macro_median_imbalance"] is float
    assert fields["macro_count"] is int


def test_to_nautilus_exact_and_absent_assets() -> None:
    rec = record(7, assets=ASSETS[:2])
    bar = bar_from_record(rec)
    assets, bar_obj = data.to_nautilus(7, Resolution("exact", 7, 7, 0, bar.bar_ts), bar, ASSETS, 5, 6)
    assert [a.symbol for a in assets] == list(ASSETS)
    for a in assets[:2]:
        want = asset_view(rec)[a.symbol]["placement"]
        assert a.present and {k: getattr(a, f"placement_{k}") for k in want} == want
    assert not assets[2].present and assets[2].placement_depth_quality == 1.0
    assert assets[2].placement_fill_probability == 0.5
    assert {k: getattr(bar_obj, f"macro_{k}") for k in rec["macro"]} == rec["macro"]
    assert (bar_obj.ts_event, bar_obj.ts_init, bar_obj.n_present) == (5, 6, 2)
    _, default = data.to_nautilus(8, Resolution("default", None, 8, None), None, None, 1, 1)
    assert (default.resolution, default.used_bar_idx, default.age_bars, default.market_agreement_pct) == \
        ("default", -1, -1, 50.0)


def test_catalog_round_trip_and_cli(tmp_path: Path) -> None:
    recs = [record(i) for i in range(1, 6)]
    path = tmp_path / "bars.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs) + b"{broken\n")
    assert catalog.main(["--catalog", str(tmp_path / "cat"), str(path)]) == 0
    loaded = catalog.load_catalog(tmp_path / "cat")
    objs = [c.data for c in loaded]
    assert len(objs) == 5 * (len(ASSETS) + 1)  # the broken line skipped
    assert [type(o).__name__ for o in objs[:len(ASSETS) + 1]] == ["OBAssetFeatures"] * len(ASSETS) + ["OBBarFeatures"]
    bars = [o for o in objs if isinstance(o, data.OBBarFeatures)]
    assert [b.bar_idx for b in bars] == [1, 2, 3, 4, 5]
    assert all({k: getattr(b, f"market_{k}") for k in r["market"]} == r["market"] for b, r in zip(bars, recs))


class _Broken:
    def step_live(self, assets: Any, bar_idx: int) -> Resolution:
        raise RuntimeError("engine down")

    def resolve(self, key: Any = None) -> Resolution:
        raise AssertionError("not reached")

    def get_bar(self, key: Any = None) -> None:
        raise AssertionError("not reached")


def test_actor_config_is_validated_and_engine_errors_are_contained() -> None:
    with pytest.raises(ValueError, match="bar_seconds"):
        OBFeaturesActor(_Broken(), OBFeaturesActorConfig(bar_seconds=0.0))
    with pytest.raises(ValueError, match="publish_delay_ms"):
        OBFeaturesActor(_Broken(), OBFeaturesActorConfig(publish_delay_ms=-1.0))
    actor = OBFeaturesActor(_Broken(), OBFeaturesActorConfig(bar_seconds=5.0))

    class Event:
        ts_event = 10_000_000_000

    actor._on_close(Event())  # must not raise: counted and logged
    assert actor.errors == 1 and actor.published_bars == 0
