"""Independent plain-Python reference of the feature definitions (issue 3, section 2).

Written straight from the specification text, deliberately without the engine's data
layout: per-asset histories are plain Python lists holding every value ever seen (the
lookback is applied by slicing), the median comes from ``statistics.median``. Sums are
plain left-to-right loops (``total``), not ``sum()``, whose float algorithm changed in
Python 3.12. Used only by tests to check the numba engine.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def total(xs) -> float:
    acc = 0.0
    for x in xs:
        acc += x
    return acc


def band_cost(side: Sequence[float], q: float, band_span_bps: float) -> float:
    """Walk the bands until q USD is filled: w*k + w*(q - cumulative)/side_k, else w*L."""
    n = len(side)
    w = band_span_bps / n
    cumulative = 0.0
    for k, value in enumerate(side):
        if value > 0 and cumulative + value >= q:
            return w * k + w * (q - cumulative) / value
        cumulative += value
    return w * n


@dataclass
class _AssetHistory:
    ref: float | None = None
    imbalances: list[float] = field(default_factory=list)
    depths: list[float] = field(default_factory=list)


@dataclass
class ReferenceFeatures:
    """Reference engine with the same parameters as FeatureParams (plain attributes)."""

    imbalance_lookback: int = 10
    depth_lookback: int = 10
    ma_window: int = 5
    ema_alpha: float = 0.01
    ref_notional_usd: float = 10_000.0
    band_span_bps: float = 100.0
    cascade_threshold: float = 0.05
    stress_share: float = 0.25
    cascade_share: float = 0.5
    history: dict[str, _AssetHistory] = field(default_factory=dict)
    universe: Sequence[str] | None = None  # configured assets; None = every asset present so far
    market_index: list[float] = field(default_factory=list)  # depth_ref_usd of each non-empty bar
    prev_depth_velocity: float | None = None

    def asset(self, symbol: str, bid: Sequence[float], ask: Sequence[float]) -> dict[str, float]:
        """Features of one present asset (updates its EMA and histories)."""
        bid = [float(x) for x in bid]
        ask = [float(x) for x in ask]
        B = total(bid)
        A = total(ask)
        depth = B + A
        imbalance = 0.0 if B + A == 0 else (B - A) / (B + A)

        near_b = total(b / (k + 1) for k, b in enumerate(bid))
        near_a = total(a / (k + 1) for k, a in enumerate(ask))
        asymmetry = 0.0 if near_b + near_a == 0 else (near_b - near_a) / (near_b + near_a)

        h = self.history.setdefault(symbol, _AssetHistory())
        if h.ref is None:
            h.ref = depth
        else:
            h.ref = (1 - self.ema_alpha) * h.ref + self.ema_alpha * depth
        quality = 1.0 if h.ref == 0 else depth / h.ref
        fill = quality / (1 + quality)
        spread = band_cost(bid, self.ref_notional_usd, self.band_span_bps) + band_cost(
            ask, self.ref_notional_usd, self.band_span_bps)

        h.imbalances.append(imbalance)
        h.depths.append(depth)
        imbs = h.imbalances[-self.imbalance_lookback:]
        depths = h.depths[-self.depth_lookback:]
        last = imbs[-min(self.ma_window, len(imbs)):]
        ma = total(last) / len(last)
        persistence = sum(sign(x) for x in imbs) / len(imbs)
        k = len(depths) - 1
        oldest = depths[0]
        velocity = 0.0 if k == 0 or oldest <= 0 else (depth - oldest) / oldest / k
        return {
            "depth_1pct_usd": depth, "imbalance": imbalance, "depth_asymmetry": asymmetry,
            "depth_quality": quality, "fill_probability": fill, "spread_proxy_bps": spread,
            "imbalance_ma5": ma, "imbalance_persistence": persistence, "withdrawal_velocity": velocity,
            "_B": B, "_A": A,
        }

    def bar(self, books: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> dict[str, Any]:
        """All features of one bar from {symbol: (bid_notional, ask_notional)}."""
        assets = {sym: self.asset(sym, bid, ask) for sym, (bid, ask) in sorted(books.items())}
        n = len(assets)
        if n == 0:
            return {"assets": {}, "market": None, "macro": None}
        imbs = [f["imbalance"] for f in assets.values()]
        median = statistics.median(imbs)
        agreeing = [x for x in imbs if sign(x) == sign(median)]
        sum_b = total(f["_B"] for f in assets.values())
        sum_a = total(f["_A"] for f in assets.values())
        notional = 0.0 if sum_b + sum_a == 0 else (sum_b - sum_a) / (sum_b + sum_a)
        # In-process engine: depth_pressure is the plain sum of the present assets' imbalances.
        market = {"median_imbalance": median, "agreement_pct": 100 * (len(agreeing) / n),
                  "depth_pressure": total(imbs), "notional_pressure": notional}

        count = sum(1 for f in assets.values() if f["withdrawal_velocity"] < -self.cascade_threshold)
        if count / n >= self.cascade_share:
            regime = "CASCADE"
        elif count / n >= self.stress_share:
            regime = "STRESS"
        else:
            regime = "CALM"
        # In-process engine: the macro depth is the mean over the universe of each asset's EMA
        # reference (0 for a universe asset never present), its velocity the withdrawal formula.
        members = sorted(set(self.universe)) if self.universe is not None else sorted(self.history)
        refs = [self.history[s].ref if s in self.history else 0.0 for s in members]
        depth_ref = total(refs) / len(members)
        self.market_index.append(depth_ref)
        held = self.market_index[-self.depth_lookback:]
        k = len(held) - 1
        oldest = held[0]
        velocity = 0.0 if k == 0 or oldest <= 0 else (held[-1] - oldest) / oldest / k
        acceleration = 0.0 if self.prev_depth_velocity is None else velocity - self.prev_depth_velocity
        self.prev_depth_velocity = velocity
        macro = {"cascade_count": count, "cascade_regime": regime, "depth_velocity": velocity,
                 "acceleration": acceleration, "depth_ref_usd": depth_ref}
        for f in assets.values():
            del f["_B"], f["_A"]
        return {"assets": assets, "market": market, "macro": macro}
