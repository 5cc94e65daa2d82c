"""Feature engine parameters: one frozen, validated dataclass.

The defaults are the feature contract of ``docs/features.md``. A bad value fails
fast with a ``ValueError`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

# Upper bound on history lengths: state memory is n_assets x lookback floats.
MAX_LOOKBACK = 10_000


@dataclass(frozen=True, slots=True)
class FeatureParams:
    """Parameters of the feature definitions.

    imbalance_lookback: bars of imbalance history per asset (>= 1).
    depth_lookback: bars of depth history per asset and of the aggregate depth ``depth_ref_usd`` (>= 1).
    ma_window: bars in ``imbalance_ma5`` (1 .. imbalance_lookback).
    ema_alpha: weight of the current depth in the reference-depth EMA, in [1e-6, 1].
    ref_notional_usd: USD size walked through the bands by ``spread_proxy_bps`` (> 0).
    band_span_bps: the L bands cover 0 .. band_span_bps from the mid, in bps (0, 10000].
    cascade_threshold: withdrawal velocity below ``-cascade_threshold`` counts as a cascade (>= 0).
    stress_share / cascade_share: share of present assets in cascade for STRESS / CASCADE, in (0, 1].
    degraded_after_bars: consecutive bars with no asset present before ``degraded`` (>= 1).
    """

    imbalance_lookback: int = 10
    depth_lookback: int = 10
    ma_window: int = 5
    ema_alpha: float = 0.01
    ref_notional_usd: float = 10_000.0
    band_span_bps: float = 100.0
    cascade_threshold: float = 0.05
    stress_share: float = 0.25
    cascade_share: float = 0.5
    degraded_after_bars: int = 3

    def __post_init__(self) -> None:
        for name in ("imbalance_lookback", "depth_lookback", "ma_window", "degraded_after_bars"):
            value = getattr(self, name)
            if type(value) is not int:
                raise ValueError(f"FeatureParams.{name} must be an int, got {value!r}")
        for name in ("ema_alpha", "ref_notional_usd", "band_span_bps", "cascade_threshold",
                     "stress_share", "cascade_share"):
            value = getattr(self, name)
            if type(value) not in (int, float):
                raise ValueError(f"FeatureParams.{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"FeatureParams.{name} must be finite, got {value!r}")
            # Store floats so to_dict()/equality are independent of how a value was spelled.
            object.__setattr__(self, name, float(value))

        _check_range("imbalance_lookback", self.imbalance_lookback, 1, MAX_LOOKBACK)
        _check_range("depth_lookback", self.depth_lookback, 1, MAX_LOOKBACK)
        _check_range("ma_window", self.ma_window, 1, self.imbalance_lookback,
                     hint="it averages the imbalance history, which holds imbalance_lookback bars")
        _check_range("degraded_after_bars", self.degraded_after_bars, 1, 1_000_000)
        # Lower bound keeps depth / reference-depth finite for any valid snapshot.
        _check_range("ema_alpha", self.ema_alpha, 1e-6, 1.0)
        _check_range("ref_notional_usd", self.ref_notional_usd, 0.0, 1e15, low_open=True)
        _check_range("band_span_bps", self.band_span_bps, 0.0, 10_000.0, low_open=True)
        _check_range("cascade_threshold", self.cascade_threshold, 0.0, 1e6)
        _check_range("stress_share", self.stress_share, 0.0, 1.0, low_open=True)
        _check_range("cascade_share", self.cascade_share, 0.0, 1.0, low_open=True)
        if self.stress_share > self.cascade_share:
            raise ValueError(
                f"FeatureParams.stress_share ({self.stress_share}) must be <= cascade_share "
                f"({self.cascade_share})"
            )

    def to_dict(self) -> dict[str, Any]:
        """All parameters as a plain JSON-serialisable dict (field name -> value)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureParams:
        """Inverse of ``to_dict``; missing fields take defaults, unknown fields are an error."""
        if not isinstance(d, Mapping):
            raise ValueError(f"FeatureParams.from_dict needs a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"unknown FeatureParams field(s): {', '.join(unknown)}")
        return cls(**dict(d))


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                 hint: str = "") -> None:
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        suffix = f" ({hint})" if hint else ""
        raise ValueError(f"FeatureParams.{name} must be in {bracket}{low}, {high}], got {value!r}{suffix}")
