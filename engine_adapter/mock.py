"""MockOBEngine: the paper-trading OB engine, with the adapter's API and static imbalance biases.

For paper trading and instant rollback (``OBF_ENGINE=mock``, see ``engine_adapter.wiring``): no
cluster, no threads, no I/O. Every lookup resolves "exact" to the trader's current bar;
``get_signal(asset).imbalance`` is the asset's static bias (the paper trader's values: BTCUSDT
-0.086, ETHUSDT -0.092, BNBUSDT +0.05, SOLUSDT +0.05, any other asset 0.0) and every other field
is the neutral default of ``engine_adapter.features``. Imports only the stdlib and the adapter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any

from engine_adapter.adapter import AdapterStats
from engine_adapter.cache import EXACT, CacheStats, Resolution, parse_key
from engine_adapter.features import (
    NEUTRAL_MACRO,
    NEUTRAL_MARKET,
    NEUTRAL_PLACEMENT,
    NEUTRAL_SIGNAL,
    AssetFeatures,
    BarFeatures,
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
)
from engine_adapter.grid import GridStats

log = logging.getLogger(__name__)

# The paper trader's static imbalance biases, [-1, 1]; other assets 0.0.
PAPER_BIASES: Mapping[str, float] = MappingProxyType({
    "BTCUSDT": -0.086,
    "ETHUSDT": -0.092,
    "BNBUSDT": 0.05,
    "SOLUSDT": 0.05,
})


class MockOBEngine:
    """Same calls as ``HazelcastOBEngine``; answers static biases (see the module docstring).

    biases: symbol -> imbalance in [-1, 1] (default ``PAPER_BIASES``).
    """

    def __init__(self, biases: Mapping[str, float] | None = None) -> None:
        chosen = PAPER_BIASES if biases is None else biases
        for sym, value in chosen.items():
            if type(sym) is not str or type(value) not in (int, float) or not math.isfinite(value) \
                    or not -1.0 <= value <= 1.0:
                raise ValueError(f"MockOBEngine.biases: {sym!r} -> {value!r} is not a symbol -> number in [-1, 1]")
        self._signals = {sym: OBSignalFeatures(imbalance=float(v)) for sym, v in chosen.items()}
        self._current: int | None = None
        self._steps = 0
        self._closed = False

    @property
    def biases(self) -> Mapping[str, float]:
        """symbol -> static imbalance."""
        return MappingProxyType({s: f.imbalance for s, f in self._signals.items()})

    def step_live(self, assets: Iterable[str] | None, bar_idx: int | float) -> Resolution:
        """Mark ``bar_idx`` as the current bar (truncated like ``int()``); always "exact"."""
        # Never raises (like the live engine): a key that is not a bar_idx keeps the current bar.
        try:
            is_ts, idx = (True, 0) if isinstance(bar_idx, str) else parse_key(bar_idx)
        except (TypeError, ValueError):
            is_ts, idx = True, 0
        if not is_ts:
            self._current = int(idx)
        self._steps += 1
        return Resolution(EXACT, self._current, self._current, 0)

    def resolve(self, timestamp_or_idx: Any = None) -> Resolution:
        idx = self._idx(timestamp_or_idx)
        return Resolution(EXACT, idx, idx, 0)

    def get_bar(self, timestamp_or_idx: Any = None) -> BarFeatures | None:
        """No bars exist: None (read the per-asset getters)."""
        return None

    def get_asset(self, asset: str, timestamp_or_idx: Any = None) -> AssetFeatures | None:
        return None

    def wait_for_bar(self, bar_idx: int, timeout_s: float) -> bool:
        return True

    def get_placement(self, asset: str, timestamp_or_idx: Any = None) -> OBPlacementFeatures:
        return NEUTRAL_PLACEMENT

    def get_signal(self, asset: str, timestamp_or_idx: Any = None) -> OBSignalFeatures:
        return self._signals.get(asset, NEUTRAL_SIGNAL)

    def get_market(self, asset_or_key: Any = None, timestamp_or_idx: Any = None) -> OBMarketFeatures:
        return NEUTRAL_MARKET

    def get_macro(self, asset_or_key: Any = None, timestamp_or_idx: Any = None) -> OBMacroFeatures:
        return NEUTRAL_MACRO

    @property
    def current_bar_idx(self) -> int | None:
        return self._current

    def refresh(self) -> None:
        """Nothing to refresh."""

    def stats(self) -> AdapterStats:
        """The adapter's stats shape: every step exact, an empty cache, never connected."""
        cache = CacheStats(bars=0, capacity=0, oldest_idx=None, newest_idx=None, newest_bar_ts=None,
                           last_insert_at=None, lookups={}, inserted={}, replaced=0, evicted=0)
        grid = GridStats(connected=False, disconnects=0, reconnects=0, events=0, decoded=0, rejected={},
                         listener_errors=0, seeds=0, seeded_bars=0, seed_failures=0, reseed_pending=False)
        return AdapterStats(current_bar_idx=self._current, lag_bars=0 if self._current is not None else None,
                            steps={EXACT: self._steps}, waits=0, wait_hits=0, wait_timeouts=0, wait_ms_max=0.0,
                            asset_defaults=0, cache=cache, grid=grid, closed=self._closed,
                            last_exact_bar_idx=self._current)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> MockOBEngine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _idx(self, key: Any) -> int | None:
        if key is None:
            return self._current
        try:
            is_ts, value = parse_key(key)
        except (TypeError, ValueError):  # never raises on the trader's thread
            return self._current
        return self._current if is_ts else int(value)
