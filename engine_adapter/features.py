"""The trader-facing feature types and the one-time decode of a bar record into them.

The four ``OB*Features`` dataclasses are what ``get_placement`` / ``get_signal`` /
``get_market`` / ``get_macro`` return. Their field defaults are the NEUTRAL values the
adapter answers with when it has no usable bar (worker down, bar stale, asset absent).

Why each default is neutral (it must not push a trading decision either way):

* Relative measures sit at their "normal" point, where a consumer applies no adjustment:
  ``depth_quality`` 1.0 (depth equals its own reference depth), ``fill_probability`` 0.5
  (= 1.0 / (1 + 1.0), the value the definition gives at normal depth; a coin flip).
* Signed measures sit at 0 (no direction): ``imbalance``, ``imbalance_ma5``,
  ``imbalance_persistence``, ``depth_asymmetry``, ``median_imbalance``, ``depth_pressure``,
  ``notional_pressure``.
* Rates of change sit at 0 (nothing is moving): ``withdrawal_velocity``,
  ``depth_velocity``, ``acceleration``; so no cascade either: ``cascade_count`` 0,
  ``cascade_regime`` "CALM" (the regime that imposes no risk veto).
* ``agreement_pct`` 50.0: half the market agrees, i.e. no consensus; a real directional
  median never yields less agreement than about half, so 50 never reads as a consensus.
* Absolute levels have no neutral value, so they read "not measured": ``depth_1pct_usd``
  0.0, ``spread_proxy_bps`` 0.0 and ``depth_ref_usd`` 0.0. Decide on the relative fields above, or check
  ``HazelcastOBEngine.resolve(...).kind`` before trusting absolute levels.

Drop-in: ``OBMacroFeatures`` carries the in-process engine's six fields under its names and in
its order (``median_imbalance, agreement_pct, depth_pressure, cascade_regime, depth_velocity,
acceleration``), so its constructor calls work unchanged; fields of ours come after them, with
defaults. ``OBMarketFeatures`` keeps the first three (+ ``notional_pressure``).

Records are decoded once, on arrival, by ``decode_bar``; the returned objects are immutable
and shared by every reader thread. This module imports only the stdlib and orjson.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from sys import intern
from types import MappingProxyType
from typing import Any, Literal, TypeGuard

import orjson

from obf_contract.record import SCHEMA_VERSION, asset_view  # the record schema this adapter reads

CascadeRegime = Literal["CALM", "STRESS", "CASCADE"]
CASCADE_REGIMES: frozenset[str] = frozenset({"CALM", "STRESS", "CASCADE"})


@dataclass(frozen=True, slots=True)
class OBPlacementFeatures:
    """Where and how to place an order in one asset's book.

    depth_1pct_usd: USD, >= 0, bid + ask notional within the band span (neutral 0.0 = not measured).
    depth_quality: ratio >= 0, depth / its reference depth (neutral 1.0 = normal).
    fill_probability: [0, 1), depth_quality / (1 + depth_quality) (neutral 0.5).
    spread_proxy_bps: bps >= 0, cost to fill the reference notional on both sides (neutral 0.0).
    """

    depth_1pct_usd: float = 0.0
    depth_quality: float = 1.0
    fill_probability: float = 0.5
    spread_proxy_bps: float = 0.0


@dataclass(frozen=True, slots=True)
class OBSignalFeatures:
    """Directional order-book signals of one asset.

    imbalance, imbalance_ma5, imbalance_persistence, depth_asymmetry: [-1, 1] (neutral 0.0).
    withdrawal_velocity: fraction of depth per bar, >= -1 (neutral 0.0 = depth not moving).
    """

    imbalance: float = 0.0
    imbalance_ma5: float = 0.0
    imbalance_persistence: float = 0.0
    depth_asymmetry: float = 0.0
    withdrawal_velocity: float = 0.0


@dataclass(frozen=True, slots=True)
class OBMarketFeatures:
    """Cross-asset view of one bar.

    median_imbalance: [-1, 1] (neutral 0.0). agreement_pct: [0, 100], share of assets whose
    imbalance sign equals the median's (neutral 50.0 = no consensus). depth_pressure: plain sum
    of the present assets' imbalances, [-n_present, n_present] (in-process engine; neutral 0.0).
    notional_pressure: (sum bid USD - sum ask USD) / (sum bid USD + sum ask USD), [-1, 1] (ours;
    neutral 0.0).
    """

    median_imbalance: float = 0.0
    agreement_pct: float = 50.0
    depth_pressure: float = 0.0
    notional_pressure: float = 0.0


@dataclass(frozen=True, slots=True)
class OBMacroFeatures:
    """Cross-asset consensus and liquidity-withdrawal regime of the whole market in one bar.

    The in-process engine's six fields, in its order: median_imbalance, agreement_pct,
    depth_pressure (as ``OBMarketFeatures``); cascade_regime: "CALM" | "STRESS" | "CASCADE"
    (neutral "CALM": no risk veto); depth_velocity: fraction of ``depth_ref_usd`` per bar over the
    depth lookback (neutral 0.0); acceleration: change of depth_velocity since the previous bar
    (neutral 0.0). Ours, after them: cascade_count: assets withdrawing depth faster than the
    threshold, >= 0 (neutral 0); depth_ref_usd: USD, mean over the universe of each asset's EMA
    reference depth (neutral 0.0 = not measured).
    """

    median_imbalance: float = 0.0
    agreement_pct: float = 50.0
    depth_pressure: float = 0.0
    cascade_regime: CascadeRegime = "CALM"
    depth_velocity: float = 0.0
    acceleration: float = 0.0
    cascade_count: int = 0
    depth_ref_usd: float = 0.0


NEUTRAL_PLACEMENT = OBPlacementFeatures()
NEUTRAL_SIGNAL = OBSignalFeatures()
NEUTRAL_MARKET = OBMarketFeatures()
NEUTRAL_MACRO = OBMacroFeatures()


@dataclass(frozen=True, slots=True)
class AssetFeatures:
    """One asset's features in one bar. ts: unix s of the snapshot used; age_ms: bar_ts - ts in ms."""

    ts: float
    age_ms: float
    seq: int | None
    placement: OBPlacementFeatures
    signal: OBSignalFeatures


@dataclass(frozen=True, slots=True, eq=False)
class BarFeatures:
    """A decoded bar record: every asset present in bar ``bar_idx`` plus the market/macro view.

    bar_ts: unix s (bar close). ``market`` / ``macro`` are None when no asset was present.
    ``assets`` is read-only. ``degraded``: the worker flagged its input as degraded.
    ``symbols``: the keys of ``assets``; consecutive bars with the same assets share one object.
    """

    bar_idx: int
    bar_ts: float
    n_assets: int
    n_present: int
    assets: Mapping[str, AssetFeatures]
    market: OBMarketFeatures | None
    macro: OBMacroFeatures | None
    degraded: bool
    worker_id: str | None = None
    computed_at: float | None = None  # unix s, when the worker computed the bar
    symbols: frozenset[str] = frozenset()
    universe_size: int | None = None  # the worker's universe of the cross-asset depth (record "universe")
    universe_hash: str | None = None  # obf_contract.record.universe_hash of its symbols

    def __post_init__(self) -> None:
        if len(self.symbols) != len(self.assets):  # built without symbols (decode_bar always sets them)
            object.__setattr__(self, "symbols", frozenset(self.assets))


class RecordRejected(ValueError):
    """A bar record the adapter cannot use; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def decode_bar(data: bytes | bytearray | memoryview | str) -> BarFeatures:
    """Decode one JSON bar record into ``BarFeatures``; RecordRejected on anything unusable."""
    try:
        rec = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordRejected("not_json", str(exc)) from None
    return bar_from_record(rec)


def bar_from_record(rec: Any) -> BarFeatures:
    """Build ``BarFeatures`` from a decoded record dict (docs/contract.md); RecordRejected if malformed."""
    if type(rec) is not dict:
        raise RecordRejected("not_object", f"record is a {type(rec).__name__}")
    schema = rec.get("schema")
    if schema != SCHEMA_VERSION or type(schema) is not int:
        raise RecordRejected("schema", f"schema {schema!r}, this adapter reads {SCHEMA_VERSION}")
    bar_idx = rec.get("bar_idx")
    if type(bar_idx) is not int or bar_idx < 0:
        raise RecordRejected("bar_idx", f"bar_idx {bar_idx!r} is not an int >= 0")
    bar_ts = rec.get("bar_ts")
    if not _is_number(bar_ts) or not math.isfinite(bar_ts) or bar_ts <= 0:
        raise RecordRejected("bar_ts", f"bar_ts {bar_ts!r} is not a positive unix time")
    # Interim (issue 14, columnar helper): schema 3 read through the per-asset view until the
    # adapter's columnar decode lands; keeps decode_bar's signature and results.
    try:
        raw_assets = asset_view(rec)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordRejected("assets", str(exc)) from None
    if type(raw_assets) is not dict:
        raise RecordRejected("assets", "assets is not an object")
    assets = _assets_bulk(raw_assets)
    if assets is None:  # something is off: the per-value checks say what
        try:
            assets = {intern(sym): _asset(sym, a) for sym, a in raw_assets.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordRejected("assets", str(exc)) from None
    try:
        market = _market(rec.get("market"))
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordRejected("market", str(exc)) from None
    try:
        macro = _macro(rec.get("macro"), market)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordRejected("macro", str(exc)) from None
    universe = rec.get("universe")
    universe = universe if type(universe) is dict else {}
    u_size = universe.get("size")
    u_hash = universe.get("hash")

    producer = rec.get("producer")
    producer = producer if type(producer) is dict else {}
    worker_id = producer.get("worker_id")
    computed_at = producer.get("computed_at")
    n_assets = rec.get("n_assets")
    n_present = rec.get("n_present")
    return BarFeatures(
        bar_idx=bar_idx,
        bar_ts=float(bar_ts),
        n_assets=n_assets if type(n_assets) is int else len(assets),
        n_present=n_present if type(n_present) is int else len(assets),
        assets=MappingProxyType(assets),
        market=market,
        macro=macro,
        degraded=bool(rec.get("degraded")) or bool(producer.get("degraded")),
        worker_id=worker_id if type(worker_id) is str else None,
        computed_at=float(computed_at) if _is_number(computed_at) else None,
        symbols=_shared_symbols(assets),
        universe_size=u_size if type(u_size) is int else None,
        universe_hash=u_hash if type(u_hash) is str else None,
    )


# The last distinct symbol set decoded. Bars usually hold the same assets as the bar before:
# they then share one frozenset (and, through sys.intern, one str per symbol), so the trader's
# per-bar work keyed on it is done once and its lookups touch memory that stays in the CPU cache.
_last_symbols: frozenset[str] = frozenset()


def _is_number(x: object) -> TypeGuard[int | float]:
    """An int or float, not a bool (``type`` rather than isinstance: no subclasses either)."""
    return type(x) in (int, float)


def _shared_symbols(assets: dict[str, Any]) -> frozenset[str]:
    global _last_symbols
    last = _last_symbols  # one read: another decoding thread may replace it meanwhile
    if last == assets.keys():
        return last
    symbols = frozenset(assets)
    _last_symbols = symbols
    return symbols


def _num(obj: Mapping[str, Any], name: str) -> float:
    v = obj[name]
    # bool is an int subclass: refuse it explicitly, it is never a feature value.
    if type(v) is not float and type(v) is not int:
        raise TypeError(f"{name} is {v!r}, not a number")
    v = float(v)
    if v - v != 0.0:  # NaN or inf (cannot come from JSON, but from a hand-built dict)
        raise ValueError(f"{name} is not finite")
    return v


_STR, _DICT, _FLOAT = {str}, {dict}, {float}
_ASSET_HEAD = operator.itemgetter("ts", "age_ms", "placement", "signal")
_PLACEMENT_VALUES = operator.itemgetter("depth_1pct_usd", "depth_quality", "fill_probability", "spread_proxy_bps")
_SIGNAL_VALUES = operator.itemgetter("imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry",
                                     "withdrawal_velocity")


def _assets_bulk(raw: dict[Any, Any]) -> dict[str, AssetFeatures] | None:
    """Every asset of a well-formed record in one pass of C-level checks, or None if any value
    is not a finite float in the right place (then ``_asset`` checks one by one and names it).

    Accepts exactly what the per-asset path accepts with all values floats (what the worker
    writes); about half the decode cost of checking value by value.
    """
    if not raw:
        return {}
    values = raw.values()
    if set(map(type, raw)) != _STR or set(map(type, values)) != _DICT:
        return None
    try:
        heads = list(map(_ASSET_HEAD, values))
        ts_age = [h[:2] for h in heads]
        placements = [h[2] for h in heads]
        signals = [h[3] for h in heads]
        if set(map(type, placements)) != _DICT or set(map(type, signals)) != _DICT:
            return None
        p_values = list(map(_PLACEMENT_VALUES, placements))
        s_values = list(map(_SIGNAL_VALUES, signals))
    except (KeyError, TypeError):
        return None
    flat = list(chain.from_iterable(ts_age))
    flat += chain.from_iterable(p_values)
    flat += chain.from_iterable(s_values)
    if set(map(type, flat)) != _FLOAT:
        return None
    total = sum(flat)
    if total - total != 0.0:  # a NaN or inf anywhere makes the sum non-finite (so may overflow)
        return None
    out = {}
    for sym, a, (ts, age_ms), pv, sv in zip(raw, values, ts_age, p_values, s_values):
        seq = a.get("seq")
        out[intern(sym)] = AssetFeatures(ts, age_ms, seq if type(seq) is int else None,
                                 OBPlacementFeatures(*pv), OBSignalFeatures(*sv))
    return out


def _asset(symbol: Any, a: Any) -> AssetFeatures:
    if type(symbol) is not str or type(a) is not dict:
        raise TypeError(f"asset {symbol!r} is not an object keyed by symbol")
    p = a["placement"]
    s = a["signal"]
    if type(p) is not dict or type(s) is not dict:
        raise TypeError(f"asset {symbol}: placement/signal must be objects")
    seq = a.get("seq")
    return AssetFeatures(
        ts=_num(a, "ts"),
        age_ms=_num(a, "age_ms"),
        seq=seq if type(seq) is int else None,
        placement=OBPlacementFeatures(
            depth_1pct_usd=_num(p, "depth_1pct_usd"),
            depth_quality=_num(p, "depth_quality"),
            fill_probability=_num(p, "fill_probability"),
            spread_proxy_bps=_num(p, "spread_proxy_bps"),
        ),
        signal=OBSignalFeatures(
            imbalance=_num(s, "imbalance"),
            imbalance_ma5=_num(s, "imbalance_ma5"),
            imbalance_persistence=_num(s, "imbalance_persistence"),
            depth_asymmetry=_num(s, "depth_asymmetry"),
            withdrawal_velocity=_num(s, "withdrawal_velocity"),
        ),
    )


def _market(m: Any) -> OBMarketFeatures | None:
    if m is None:
        return None
    if type(m) is not dict:
        raise TypeError("market is not an object or null")
    return OBMarketFeatures(
        median_imbalance=_num(m, "median_imbalance"),
        agreement_pct=_num(m, "agreement_pct"),
        depth_pressure=_num(m, "depth_pressure"),
        notional_pressure=_num(m, "notional_pressure"),
    )


def _macro(m: Any, market: OBMarketFeatures | None) -> OBMacroFeatures | None:
    if m is None:
        return None
    if market is None:
        raise ValueError("macro without market")
    if type(m) is not dict:
        raise TypeError("macro is not an object or null")
    count = m["cascade_count"]
    if type(count) is float and count.is_integer():
        count = int(count)
    if type(count) is not int or count < 0:
        raise TypeError(f"cascade_count {count!r} is not an int >= 0")
    regime = m["cascade_regime"]
    if regime not in CASCADE_REGIMES:
        raise ValueError(f"cascade_regime {regime!r} is not one of {sorted(CASCADE_REGIMES)}")
    return OBMacroFeatures(
        median_imbalance=market.median_imbalance,
        agreement_pct=market.agreement_pct,
        depth_pressure=market.depth_pressure,
        cascade_regime=regime,
        depth_velocity=_num(m, "depth_velocity"),
        acceleration=_num(m, "acceleration"),
        cascade_count=count,
        depth_ref_usd=_num(m, "depth_ref_usd"),
    )
