"""The features as Nautilus custom data, and the one mapping from decoded bars to them.

Two types, one per bar and one per asset per bar, rather than a single per-bar object:

* a Nautilus custom data class (``@customdataclass``) holds scalar fields (they become typed
  Parquet columns in a ``ParquetDataCatalog``); a per-bar object would have to carry every
  asset in one JSON-string field, untyped in the catalog and parsed again by every strategy;
* a strategy interested in one asset filters ``OBAssetFeatures.symbol`` (or a catalog query
  ``where="symbol = 'BTCUSDT'"``) instead of walking every asset of every bar.

``OBAssetFeatures`` of a bar are published first and its ``OBBarFeatures`` last, so the bar
object tells a strategy that the bar is complete (Actor mode).

The value fields are derived from the adapter's dataclasses (``dataclasses.fields`` of
``OBPlacementFeatures`` / ``OBSignalFeatures`` / ``OBMarketFeatures`` / ``OBMacroFeatures``,
typed from their neutral defaults): a field added there appears here, in the same order, with
no edit. Each is named ``{group}_{field}`` (``signal_imbalance``, ``market_median_imbalance``,
``macro_cascade_regime``): the groups may share field names (the in-process engine's macro
object repeats market values), and ``get_signal(...).imbalance`` reads as ``signal_imbalance``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nautilus_trader.core.data import Data
from nautilus_trader.model.custom import customdataclass
from nautilus_trader.model.data import DataType

from engine_adapter.cache import Resolution
from engine_adapter.features import (
    NEUTRAL_MACRO,
    NEUTRAL_MARKET,
    NEUTRAL_PLACEMENT,
    NEUTRAL_SIGNAL,
    BarFeatures,
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
)

ASSET_GROUPS = (("placement", OBPlacementFeatures), ("signal", OBSignalFeatures))
BAR_GROUPS = (("market", OBMarketFeatures), ("macro", OBMacroFeatures))

# Head fields of every object: the requested bar, how it resolved and the bar used
# (used_bar_idx / age_bars are -1 when the resolution is "default").
_HEAD: dict[str, type] = {"bar_idx": int, "resolution": str, "used_bar_idx": int, "age_bars": int}


def value_fields(groups: tuple[tuple[str, type], ...]) -> dict[str, type]:
    """``{group}_{field}`` -> Python type (from the neutral default) of the dataclasses in ``groups``."""
    out: dict[str, type] = {}
    for group, cls in groups:
        for f in dataclasses.fields(cls):
            name = f"{group}_{f.name}"
            if name in out:
                raise TypeError(f"feature field {name} is defined twice")
            default = f.default
            out[name] = bool if type(default) is bool else int if type(default) is int else \
                float if type(default) is float else str
    return out


def _make(name: str, doc: str, fields: dict[str, type]) -> Any:
    ns: dict[str, Any] = {"__annotations__": dict(fields), "__module__": __name__, "__qualname__": name,
                          "__doc__": doc}
    return customdataclass(type(name, (Data,), ns))


ASSET_FIELDS = value_fields(ASSET_GROUPS)
BAR_FIELDS = value_fields(BAR_GROUPS)

OBAssetFeatures: Any = _make(
    "OBAssetFeatures",
    "One asset's placement and signal features in one bar (neutral values when absent: present=False).",
    {**_HEAD, "symbol": str, "present": bool, **ASSET_FIELDS},
)
OBBarFeatures: Any = _make(
    "OBBarFeatures",
    "One bar's market and macro features, its resolution, and how many assets it holds.",
    {**_HEAD, "n_present": int, "degraded": bool, **BAR_FIELDS},
)

BAR_DATA_TYPE = DataType(OBBarFeatures)
ASSET_DATA_TYPE = DataType(OBAssetFeatures)


def _head(bar_idx: int, res: Resolution) -> dict[str, Any]:
    return {"bar_idx": bar_idx, "resolution": res.kind,
            "used_bar_idx": -1 if res.bar_idx is None else res.bar_idx,
            "age_bars": -1 if res.age_bars is None else res.age_bars}


def to_nautilus(bar_idx: int, res: Resolution, bar: BarFeatures | None, symbols: tuple[str, ...] | None,
                ts_event: int, ts_init: int) -> tuple[list[Any], Any]:
    """The objects of one bar: ``(asset objects, bar object)``.

    ``bar``: the bar that answers ``bar_idx`` (None = default: neutral values). ``symbols``: the
    assets to publish (None = every asset of ``bar``); one absent from ``bar`` gets neutral values
    and ``present=False``. ``ts_event`` / ``ts_init``: unix ns.
    """
    head = _head(bar_idx, res)
    assets = {} if bar is None else bar.assets
    out = []
    for sym in (sorted(assets) if symbols is None else symbols):
        a = assets.get(sym)
        placement, signal = (NEUTRAL_PLACEMENT, NEUTRAL_SIGNAL) if a is None else (a.placement, a.signal)
        values = {**_values("placement", placement), **_values("signal", signal)}
        out.append(OBAssetFeatures(ts_event, ts_init, **head, symbol=sym, present=a is not None, **values))
    market = NEUTRAL_MARKET if bar is None or bar.market is None else bar.market
    macro = NEUTRAL_MACRO if bar is None or bar.macro is None else bar.macro
    bar_obj = OBBarFeatures(ts_event, ts_init, **head, n_present=0 if bar is None else bar.n_present,
                            degraded=False if bar is None else bar.degraded, **_values("market", market),
                            **_values("macro", macro))
    return out, bar_obj


def _values(group: str, obj: Any) -> dict[str, Any]:
    return {f"{group}_{f.name}": getattr(obj, f.name) for f in dataclasses.fields(obj)}


def bar_ns(bar_ts: float) -> int:
    """unix s -> unix ns, rounded (bar closes are whole milliseconds at most)."""
    return round(bar_ts * 1_000_000_000)
