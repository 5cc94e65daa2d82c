"""Synthetic but realistic L2 books for several assets, deterministic for a seed.

Each asset has a mid price following a geometric random walk, a depth profile growing away
from the mid (USD per band, band k covering (k*w, (k+1)*w] bps), multiplicative per-band noise
and a slowly mean-reverting bid/ask imbalance. A *liquidity drain* withdraws depth from most
assets quickly (exponential decay to ``floor`` over ``ramp_s``), holds it and restores it, so
the withdrawal velocity of most assets falls below the cascade threshold and the market's
cascade regime leaves CALM.

Pure: ``SyntheticMarket.step()`` advances one tick of ``1 / hz`` seconds and returns the books;
the same seed and options give the same books, whatever the wall clock says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT")
# Typical mid prices (USD) and USD depth within 1% of the mid, per side, for a realistic spread
# of sizes; unknown symbols get a price and depth derived from their position.
_REFERENCE = {
    "BTCUSDT": (65_000.0, 25e6), "ETHUSDT": (3_200.0, 12e6), "SOLUSDT": (150.0, 4e6),
    "BNBUSDT": (580.0, 3e6), "XRPUSDT": (0.55, 2.5e6), "ADAUSDT": (0.45, 1.2e6),
    "DOGEUSDT": (0.15, 1.5e6), "AVAXUSDT": (30.0, 0.8e6),
}


@dataclass(frozen=True, slots=True)
class DrainSchedule:
    """When and how liquidity is withdrawn, in seconds of feed time.

    start_s: first drain begins (None = never). every_s: repeat period (None = once).
    ramp_s: time to fall to ``floor`` (fraction of normal depth, (0, 1)); hold_s at the floor;
    recover_s back to normal. share: fraction of assets drained, (0, 1].
    """

    start_s: float | None = None
    every_s: float | None = None
    ramp_s: float = 10.0
    hold_s: float = 10.0
    recover_s: float = 15.0
    floor: float = 0.15
    share: float = 0.75

    def __post_init__(self) -> None:
        for name in ("ramp_s", "hold_s", "recover_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"drain {name} must be > 0, got {v!r}")
        if self.start_s is not None and not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"drain start must be >= 0, got {self.start_s!r}")
        if self.every_s is not None and not (math.isfinite(self.every_s) and self.every_s > self.length_s):
            raise ValueError(f"drain period must exceed the episode length {self.length_s:g} s, got {self.every_s!r}")
        if not 0 < self.floor < 1:
            raise ValueError(f"drain floor must be in (0, 1), got {self.floor!r}")
        if not 0 < self.share <= 1:
            raise ValueError(f"drain share must be in (0, 1], got {self.share!r}")

    @property
    def length_s(self) -> float:
        return self.ramp_s + self.hold_s + self.recover_s

    def factor(self, t: float) -> float:
        """Depth multiplier at feed time ``t`` s for a drained asset: 1 outside episodes, >= floor."""
        if self.start_s is None or t < self.start_s:
            return 1.0
        u = t - self.start_s
        if self.every_s is not None:
            u = math.fmod(u, self.every_s)
        if u < self.ramp_s:
            return float(self.floor ** (u / self.ramp_s))
        u -= self.ramp_s
        if u < self.hold_s:
            return self.floor
        u -= self.hold_s
        if u < self.recover_s:
            return float(self.floor ** (1.0 - u / self.recover_s))
        return 1.0

    def active(self, t: float) -> bool:
        """True while an episode is running at feed time ``t``."""
        return self.factor(t) < 1.0


@dataclass(frozen=True, slots=True)
class Book:
    """One asset's book at one tick: USD notional and base quantity per band, level 0 nearest."""

    symbol: str
    mid: float
    bid_notional: np.ndarray
    ask_notional: np.ndarray
    bid_depth: np.ndarray
    ask_depth: np.ndarray


class SyntheticMarket:
    """Books for ``symbols``, advanced ``hz`` ticks per second of feed time."""

    def __init__(self, symbols: Sequence[str] = DEFAULT_SYMBOLS, *, levels: int = 10, band_span_bps: float = 100.0,
                 hz: float = 10.0, seed: int = 0, drain: DrainSchedule | None = None) -> None:
        if not symbols:
            raise ValueError("need at least one symbol")
        if not 1 <= levels <= 64:
            raise ValueError(f"levels must be in 1..64, got {levels!r}")
        if not (math.isfinite(hz) and 0 < hz <= 1000):
            raise ValueError(f"hz must be in (0, 1000], got {hz!r}")
        if not (math.isfinite(band_span_bps) and 0 < band_span_bps <= 10_000):
            raise ValueError(f"band_span_bps must be in (0, 10000], got {band_span_bps!r}")
        self.symbols = tuple(symbols)
        self.levels = int(levels)
        self.band_span_bps = float(band_span_bps)
        self.hz = float(hz)
        self.drain = drain or DrainSchedule()
        self.tick = 0
        self._rng = np.random.default_rng(seed)
        n = len(self.symbols)
        ref = [_REFERENCE.get(s, (10.0 * (1 + i), 1e6 * (1 + i % 4))) for i, s in enumerate(self.symbols)]
        self._mid = np.array([p for p, _ in ref], dtype=np.float64)
        depth_1pct = np.array([d for _, d in ref], dtype=np.float64) * (band_span_bps / 100.0)
        # Depth grows away from the mid (thin top of book), normalised so a side sums to depth_1pct.
        k = np.arange(self.levels, dtype=np.float64)
        profile = 0.5 + k / max(1, self.levels - 1)
        profile /= profile.sum()
        self._base = depth_1pct[:, None] * profile[None, :]  # [n, L] USD per band per side
        self._imbalance = self._rng.uniform(-0.2, 0.2, n)
        self._vol = 0.0002 / math.sqrt(self.hz)  # per-tick log-return sd (~2 bps per second)
        n_drained = max(1, round(self.drain.share * n))
        drained = self._rng.permutation(n)[:n_drained]
        self._drained = np.zeros(n, dtype=bool)
        self._drained[drained] = True

    @property
    def t(self) -> float:
        """Feed time (s) of the next tick."""
        return self.tick / self.hz

    @property
    def drained_symbols(self) -> tuple[str, ...]:
        return tuple(s for s, d in zip(self.symbols, self._drained) if d)

    def step(self) -> list[Book]:
        """Advance one tick and return every asset's book."""
        rng = self._rng
        n, L = self._base.shape
        t = self.t
        self.tick += 1
        self._mid *= np.exp(rng.normal(0.0, self._vol, n))
        # Mean-reverting imbalance (half-life ~10 s), kept inside (-0.6, 0.6).
        theta = 1.0 - 0.5 ** (1.0 / (10.0 * self.hz))
        self._imbalance += -theta * self._imbalance + rng.normal(0.0, 0.02, n)
        np.clip(self._imbalance, -0.6, 0.6, out=self._imbalance)
        factor = np.where(self._drained, self.drain.factor(t), 1.0)
        scale = (self._base * factor[:, None])
        bid = scale * (1.0 + self._imbalance)[:, None] * rng.lognormal(0.0, 0.05, (n, L))
        ask = scale * (1.0 - self._imbalance)[:, None] * rng.lognormal(0.0, 0.05, (n, L))
        w = self.band_span_bps / L
        centre_bps = (np.arange(L) + 0.5) * w
        bid_px = self._mid[:, None] * (1.0 - centre_bps[None, :] / 1e4)
        ask_px = self._mid[:, None] * (1.0 + centre_bps[None, :] / 1e4)
        return [Book(sym, float(self._mid[i]), bid[i], ask[i], bid[i] / bid_px[i], ask[i] / ask_px[i])
                for i, sym in enumerate(self.symbols)]
