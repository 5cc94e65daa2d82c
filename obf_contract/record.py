"""The per-bar feature record (what the worker writes and replay outputs) and its JSON codec.

Records are plain dicts at runtime; the TypedDicts document and type-check the shape.
Encoding is deterministic (sorted keys, shortest round-trip floats) and refuses NaN/inf.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NotRequired, TypedDict, cast

import orjson

# 2: the in-process engine's depth_pressure / depth_velocity, market.notional_pressure,
# macro.depth_ref_usd and the record's universe (docs/contract.md).
# 3: columnar (issue 14): one list per field over the present assets (``symbols``), plus
# ``state.ref_depth_usd``, so a successor rebuilds the engine state from a checkpoint and the
# records written since (snapshot + changelog).
SCHEMA_VERSION = 3

CascadeRegime = Literal["CALM", "STRESS", "CASCADE"]

# Column names, in the trader's dataclass field order (OBPlacementFeatures / OBSignalFeatures).
PLACEMENT_FIELDS: tuple[str, ...] = ("depth_1pct_usd", "depth_quality", "fill_probability", "spread_proxy_bps")
SIGNAL_FIELDS: tuple[str, ...] = ("imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry",
                                  "withdrawal_velocity")
STATE_FIELDS: tuple[str, ...] = ("ref_depth_usd",)


class PlacementRecord(TypedDict):
    """One asset's placement features (a row of ``PlacementColumns``)."""

    depth_1pct_usd: float  # USD, >= 0: total notional both sides within the band span
    depth_quality: float  # ratio, >= 0: depth / EMA reference depth (1.0 = normal)
    fill_probability: float  # [0, 1): depth_quality / (1 + depth_quality)
    spread_proxy_bps: float  # bps, [0, 2 * band_span_bps]: cost to fill ref notional on both sides


class SignalRecord(TypedDict):
    """One asset's signal features (a row of ``SignalColumns``)."""

    imbalance: float  # [-1, 1]
    imbalance_ma5: float  # [-1, 1]
    imbalance_persistence: float  # [-1, 1]
    depth_asymmetry: float  # [-1, 1]
    withdrawal_velocity: float  # fraction of depth per bar, >= -1


class AssetRecord(TypedDict):
    """One asset's row of a bar, as ``asset_view`` builds it (not stored in this shape)."""

    ts: float  # unix s of the snapshot used
    age_ms: float  # (bar_ts - ts) * 1000
    seq: int | None  # the snapshot's _push_seq
    placement: PlacementRecord
    signal: SignalRecord


class PlacementColumns(TypedDict):
    """``PlacementRecord``'s fields, one list each, in ``BarRecord.symbols`` order."""

    depth_1pct_usd: list[float]
    depth_quality: list[float]
    fill_probability: list[float]
    spread_proxy_bps: list[float]


class SignalColumns(TypedDict):
    """``SignalRecord``'s fields, one list each, in ``BarRecord.symbols`` order."""

    imbalance: list[float]
    imbalance_ma5: list[float]
    imbalance_persistence: list[float]
    depth_asymmetry: list[float]
    withdrawal_velocity: list[float]


class StateColumns(TypedDict):
    """What the engine's state update needs beyond the features (the changelog part of a record)."""

    ref_depth_usd: list[float]  # USD, >= 0: each present asset's EMA reference depth after this bar


class MarketRecord(TypedDict):
    median_imbalance: float  # [-1, 1]
    agreement_pct: float  # [0, 100]
    depth_pressure: float  # [-n_present, n_present]: plain sum of the present assets' imbalances
    notional_pressure: float  # [-1, 1]: (sum bid USD - sum ask USD) / (sum bid USD + sum ask USD)


class MacroRecord(TypedDict):
    cascade_count: int  # [0, n_present]
    cascade_regime: CascadeRegime
    depth_velocity: float  # fraction of depth_ref_usd per bar over the depth lookback
    acceleration: float  # change of depth_velocity since the previous bar with assets
    depth_ref_usd: float  # USD, >= 0: mean over the universe of each asset's EMA reference depth


class UniverseRecord(TypedDict):
    """The assets the cross-asset depth is averaged over (``universe_hash`` of their symbols)."""

    configured: bool  # the worker's --assets list (True) or every asset seen so far (False)
    size: int
    hash: str


class ProducerRecord(TypedDict):
    """Added by the live worker (absent from replay output)."""

    worker_id: str
    computed_at: float  # unix s
    stale_assets: list[str]  # expected assets without a recent enough snapshot in this bar
    degraded: bool


class BarRecord(TypedDict):
    """One bar, columnar: ``symbols`` names the present assets (sorted, distinct) and every
    per-asset list (``ts``, ``age_ms``, ``seq``, each column of ``placement`` / ``signal`` /
    ``state``) has ``n_present`` entries in that order."""

    schema: int
    bar_idx: int
    bar_ts: float  # unix s, bar close
    n_assets: int  # assets ever seen by the engine
    n_present: int  # assets with a snapshot in this bar
    symbols: list[str]
    ts: list[float]
    age_ms: list[float]
    seq: list[int | None]
    placement: PlacementColumns
    signal: SignalColumns
    state: StateColumns
    market: MarketRecord | None
    macro: MacroRecord | None
    degraded: bool
    universe: UniverseRecord
    # Bars between the previous bar this engine computed and this one that no engine computed
    # (the worker was down, or a catch-up limit skipped them): every asset's history skipped them.
    gap_bars: int
    producer: NotRequired[ProducerRecord]


def check_columns(rec: Mapping[str, Any], *, state: bool = True) -> None:
    """ValueError naming the first way ``rec`` breaks the columnar shape: ``symbols`` a list of
    distinct sorted strings of length ``n_present``, every per-asset column a list of that length.
    ``state=False`` leaves the ``state`` block unchecked: for a reader that never reads it (the
    trader's adapter), so the worker's changelog columns can change without breaking it."""
    symbols = rec.get("symbols")
    n = rec.get("n_present")
    if type(symbols) is not list or type(n) is not int or len(symbols) != n:
        raise ValueError(f"symbols must be a list of n_present={n!r} names")
    if any(type(s) is not str for s in symbols) or any(a >= b for a, b in zip(symbols, symbols[1:])):
        raise ValueError("symbols must be distinct strings in sorted order")
    for name in ("ts", "age_ms", "seq"):
        col = rec.get(name)
        if type(col) is not list or len(col) != n:
            raise ValueError(f"{name} must be a list of {n} values")
    groups = [("placement", PLACEMENT_FIELDS), ("signal", SIGNAL_FIELDS)]
    if state:
        groups.append(("state", STATE_FIELDS))
    for group, fields in groups:
        cols = rec.get(group)
        if type(cols) is not dict:
            raise ValueError(f"{group} must be an object of columns")
        for f in fields:
            col = cols.get(f)
            if type(col) is not list or len(col) != n:
                raise ValueError(f"{group}.{f} must be a list of {n} values")


def asset_view(rec: Mapping[str, Any]) -> dict[str, AssetRecord]:
    """``{symbol: AssetRecord}`` for the present assets of a columnar record: for tools and tests,
    not hot paths (it builds the per-asset dicts the columnar form avoids). ValueError if malformed."""
    check_columns(rec)
    placement, signal = rec["placement"], rec["signal"]
    out: dict[str, AssetRecord] = {}
    for i, sym in enumerate(rec["symbols"]):
        out[sym] = {
            "ts": rec["ts"][i], "age_ms": rec["age_ms"][i], "seq": rec["seq"][i],
            "placement": cast(PlacementRecord, {f: placement[f][i] for f in PLACEMENT_FIELDS}),
            "signal": cast(SignalRecord, {f: signal[f][i] for f in SIGNAL_FIELDS}),
        }
    return out


def universe_hash(symbols: Iterable[str]) -> str:
    """16 hex digits naming a set of symbols (order and repeats do not matter)."""
    text = "\n".join(sorted(set(symbols)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def dumps_record(rec: Mapping[str, Any]) -> bytes:
    """Encode a record as compact JSON bytes with sorted keys; ValueError on NaN/inf anywhere."""
    # orjson writes NaN/inf as null, so refuse them first. The check sums each column at C speed
    # (_check_finite): cheaper than searching the encoded bytes for a null, which a None seq or
    # a bar without market writes as well.
    _check_finite(rec, "$")
    return orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)


def loads_record(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Decode one record; ValueError if it is not a JSON object."""
    obj = orjson.loads(data)
    if type(obj) is not dict:
        raise ValueError(f"record is a JSON {type(obj).__name__}, not an object")
    return obj


def _check_finite(obj: Any, path: str) -> None:
    # orjson would silently write NaN as null, so refuse before encoding.
    t = type(obj)
    if t is float:
        if not math.isfinite(obj):
            raise ValueError(f"non-finite float {obj!r} at {path}")
    elif t is dict or isinstance(obj, Mapping):
        for k, v in obj.items():
            tv = type(v)
            if tv is float:
                if v - v != 0.0:  # NaN/inf; faster than math.isfinite on the hot path
                    raise ValueError(f"non-finite float {v!r} at {path}.{k}")
            elif tv is dict or tv is list or tv is tuple:
                _check_finite(v, f"{path}.{k}")
    elif t is list or t is tuple:
        # A column: a finite sum means every term is finite (NaN/inf propagate), one C-speed
        # pass; filter(None, ...) drops the Nones of a seq column (and zeros, which are finite).
        # A column of strings joins. Anything else (nested or mixed values, an overflowing sum)
        # is looked at value by value, which also names the offending index.
        try:
            total = sum(obj, 0.0)
        except (TypeError, OverflowError):
            try:
                total = sum(filter(None, obj), 0.0)
            except (TypeError, OverflowError):
                try:
                    "".join(obj)
                    return
                except TypeError:
                    total = math.nan
        if total - total == 0.0:
            return
        for i, v in enumerate(obj):
            tv = type(v)
            if tv is float:
                if v - v != 0.0:
                    raise ValueError(f"non-finite float {v!r} at {path}[{i}]")
            elif tv is dict or tv is list or tv is tuple or isinstance(v, Mapping):
                _check_finite(v, f"{path}[{i}]")
