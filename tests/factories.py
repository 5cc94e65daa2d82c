"""Factories for test inputs: upstream payloads, validated snapshots and bar records.

Records come from the real engine (``FeatureEngine.step``) over synthetic books, so they always
have the current schema; tests that need hand-picked values build their own on top of one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from obf_contract.keys import asset_key
from obf_contract.record import PLACEMENT_FIELDS, SCHEMA_VERSION, SIGNAL_FIELDS
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.engine.snapshot import Snapshot, parse_snapshot, payload_json
from obf_features_worker.offline.synthetic import SyntheticMarket

T0 = 1_723_161_000.0  # 2024-08-08T23:50:00Z
SYMBOLS = ("BTCUSDT", "ETHUSDT")


def payloads(symbols: Sequence[str] = SYMBOLS, ts: float = T0, *, seed: int = 7, seq: int | None = None,
             levels: int = 10) -> dict[str, str]:
    """``{asset key: upstream JSON}`` for one synthetic tick of ``symbols`` stamped ``ts`` (unix s)."""
    books = SyntheticMarket(tuple(symbols), seed=seed, levels=levels).step()
    return {asset_key(b.symbol): payload_json(ts, b.bid_notional, b.ask_notional, b.bid_depth, b.ask_depth, seq=seq)
            for b in books}


def snapshots(symbols: Sequence[str] = SYMBOLS, ts: float = T0, *, seed: int = 7) -> dict[str, Snapshot]:
    """Validated snapshots (``{symbol: Snapshot}``) of one synthetic tick."""
    return {parse_snapshot(key, value, now=ts + 1.0).symbol: parse_snapshot(key, value, now=ts + 1.0)
            for key, value in payloads(symbols, ts, seed=seed).items()}


def bar_record(bar_idx: int, symbols: Sequence[str] = SYMBOLS, *, bar_ts: float | None = None, seed: int = 7,
               params: FeatureParams | None = None) -> dict[str, Any]:
    """The record the engine computes for one bar of synthetic books (first bar of a fresh engine)."""
    ts = T0 + bar_idx if bar_ts is None else bar_ts
    return dict(FeatureEngine(params).step(bar_idx, ts, snapshots(symbols, ts - 0.5, seed=seed)))


def columns(assets: Mapping[str, Mapping[str, Any]], *, ref_depth: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The columnar part of a schema 3 record (symbols, ts, age_ms, seq, placement, signal, state)
    from per-asset dicts shaped like ``asset_view``'s (the inverse of it), for hand-built records.
    A missing field becomes None in its column; ``state.ref_depth_usd`` defaults to each asset's
    depth (``ref_depth`` overrides per symbol)."""
    symbols = sorted(assets)
    rows = [assets[s] for s in symbols]
    refs = ref_depth or {}

    def col(group: str | None, name: str) -> list[Any]:
        return [(a if group is None else a.get(group, {})).get(name) for a in rows]

    return {
        "symbols": symbols, "ts": col(None, "ts"), "age_ms": col(None, "age_ms"), "seq": col(None, "seq"),
        "placement": {f: col("placement", f) for f in PLACEMENT_FIELDS},
        "signal": {f: col("signal", f) for f in SIGNAL_FIELDS},
        "state": {"ref_depth_usd": [refs.get(s, a.get("placement", {}).get("depth_1pct_usd")) for s, a in
                                    zip(symbols, rows)]},
    }


def columnar_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A schema 3 record from one written per asset (``"assets": {symbol: AssetRecord}``, the
    shape ``asset_view`` gives; ``columns`` builds its columns): for tests that hand-pick
    per-asset values. Every other key is kept."""
    out = {k: v for k, v in rec.items() if k != "assets"}
    out.update(schema=SCHEMA_VERSION, n_present=len(rec["assets"]), **columns(rec["assets"]))
    return out
