"""OfflineOBEngine: the live adapter's API over bars loaded up front, for paper trading and backtests.

Same calls as ``HazelcastOBEngine`` (``step_live``, ``get_placement`` / ``get_signal`` /
``get_market`` / ``get_macro``, ``resolve``, ``get_bar``, ``get_asset``, ``stats``, ``close``) plus
``preload_date(day)`` / ``preload(start, end)``, which load the bar records of a time range from
a source into a ``BarCache``, the same cache class and resolution code the live adapter uses: a
lookup is exact, falls back to the newest earlier bar at most ``stale_after_bars`` old, or
answers neutral defaults, and never uses a future bar. So paper/backtest and live give the same
answer for the same bars and the same requests (tests/integration/test_offline_parity.py).

Sources of bar records (the JSON of ``obf_contract.record``):

* ``RecordFileSource``: replay output files (``obf-features replay -o FILE``);
* ``DayFolderSource``: a folder of day files (``obf-features replay --by-date DIR``,
  layout in ``obf_contract.dayfiles``);
* ``FeatureMapSource``: a range of the worker's bar map (DOLPHIN_OBF_FEATURES), read once.

One difference from live, on purpose: before the first ``step_live`` a lookup of the current bar
(key None) answers neutral defaults, where the live adapter answers its newest bar: a preloaded
day's newest bar lies in the trader's future. A record that does not decode is counted by reason
(``stats().grid.rejected``) and skipped.

Imports only the stdlib, hazelcast and orjson: it lives with the adapter, in the trader process.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from hazelcast import predicate as pred
from hazelcast.client import HazelcastClient
from hazelcast.core import HazelcastJsonValue

from engine_adapter.adapter import AdapterStats, _market_key
from engine_adapter.cache import DEFAULT, EXACT, FALLBACK, BarCache, Resolution, parse_key
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
    RecordRejected,
    decode_bar,
    placement_of,
    signal_of,
)
from engine_adapter.grid import GridStats
from obf_contract.cluster import FEATURES_MAP, check_map_name
from obf_contract.dayfiles import as_date, day_bounds, day_file

log = logging.getLogger(__name__)

TimeLike = date | datetime | float | int
"""A range bound: a ``date`` (its UTC midnight), a ``datetime`` (naive = UTC) or unix seconds."""

_NO_RESOLUTION = Resolution(DEFAULT, None, None, None)


class BarSource(Protocol):
    """Where bar records come from: ``records(start, end)`` yields ``(key, json)`` for at least every
    bar whose ``bar_ts`` (unix s) is in ``[start, end)`` (more is fine: the engine filters). ``key`` is
    the map key (checked against ``bar_idx``) or None."""

    def records(self, start: float, end: float) -> Iterator[tuple[int | None, bytes | str]]: ...


class RecordFileSource:
    """Bar records in JSONL files (replay output); every file is read for every range."""

    def __init__(self, *paths: str | Path) -> None:
        if not paths:
            raise ValueError("RecordFileSource needs at least one file")
        self.paths = tuple(Path(p) for p in paths)

    def records(self, start: float, end: float) -> Iterator[tuple[int | None, bytes | str]]:
        for path in self.paths:
            yield from _lines(path)


class DayFolderSource:
    """A folder of day files ``YYYY-MM-DD.jsonl`` (``obf_contract.dayfiles``); reads the days of the
    range only. A missing day file holds no bars (logged)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"DayFolderSource: {self.folder} is not a folder")

    def records(self, start: float, end: float) -> Iterator[tuple[int | None, bytes | str]]:
        day = as_date(datetime.fromtimestamp(start, UTC))
        while day_bounds(day)[0] < end:
            path = day_file(self.folder, day)
            if path.is_file():
                yield from _lines(path)
            else:
                log.warning("no day file day=%s folder=%s", day.isoformat(), self.folder)
            day = date.fromordinal(day.toordinal() + 1)


class FeatureMapSource:
    """The bars of the worker's map (default DOLPHIN_OBF_FEATURES) with ``bar_ts`` in the range,
    read in one query (read-only). The map keeps what its TTL/eviction left: older days may be gone."""

    def __init__(self, client: HazelcastClient, map_name: str = FEATURES_MAP) -> None:
        self.client = client
        self.map_name = check_map_name(map_name)

    def records(self, start: float, end: float) -> Iterator[tuple[int | None, bytes | str]]:
        m: Any = self.client.get_map(self.map_name).blocking()
        entries = m.entry_set(pred.and_(pred.greater_or_equal("bar_ts", start), pred.less("bar_ts", end)))
        for key, value in entries:
            if isinstance(value, HazelcastJsonValue):
                yield key, value.to_string()
            elif isinstance(value, (str, bytes)):
                yield key, value
            else:
                yield key, b""  # counted as not_json by the engine


def _lines(path: Path) -> Iterator[tuple[int | None, bytes | str]]:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield None, line


class OfflineOBEngine:
    """The live adapter's read API over bars preloaded from a ``BarSource``.

    ``OfflineOBEngine(source)`` with a ``BarSource``, or a path: a folder (day files) or a record
    file. ``stale_after_bars``: as ``AdapterConfig.stale_after_bars`` (>= 0, default 2).

    Typical paper/backtest loop: ``preload_date(day)`` once a day, then per scan
    ``step_live(assets, bar_idx)`` and the ``get_*`` calls, exactly as against the live adapter.
    ``preload*`` replaces the loaded bars; lookups are local (no I/O) and thread-safe.
    """

    def __init__(self, source: BarSource | str | Path, *, stale_after_bars: int = 2) -> None:
        if isinstance(source, (str, Path)):
            source = DayFolderSource(source) if Path(source).is_dir() else RecordFileSource(source)
        if type(stale_after_bars) is not int or stale_after_bars < 0:
            raise ValueError(f"OfflineOBEngine.stale_after_bars must be an int >= 0, got {stale_after_bars!r}")
        self.source = source
        self.stale_after_bars = stale_after_bars
        self._cache = BarCache(1, stale_after_bars)
        self._lock = threading.Lock()
        self._current: int | None = None
        self._steps: dict[str, int] = {EXACT: 0, FALLBACK: 0, DEFAULT: 0}
        self._asset_defaults = 0
        self._rejected: Counter[str] = Counter()
        self._loaded = 0
        self._closed = False

    @classmethod
    def from_map(cls, client: HazelcastClient, map_name: str = FEATURES_MAP, *,
                 stale_after_bars: int = 2) -> OfflineOBEngine:
        """An engine that preloads from the worker's bar map through ``client`` (read-only)."""
        return cls(FeatureMapSource(client, map_name), stale_after_bars=stale_after_bars)

    # -- loading -------------------------------------------------------------------------------

    def preload_date(self, day: date | datetime | str) -> int:
        """Load the bars of one UTC day (``bar_ts`` in [00:00, 24:00)); returns how many."""
        return self.preload(*day_bounds(day))

    def preload(self, start: TimeLike, end: TimeLike) -> int:
        """Load the bars with ``bar_ts`` in ``[start, end)`` (replacing those loaded before); returns
        how many. Bad records are counted by reason in ``stats().grid.rejected`` and skipped."""
        lo, hi = _unix(start, "start"), _unix(end, "end")
        if hi <= lo:
            raise ValueError(f"preload: end ({hi}) must be after start ({lo})")
        bars: dict[int, BarFeatures] = {}
        rejected: Counter[str] = Counter()
        for key, data in self.source.records(lo, hi):
            try:
                bar = decode_bar(data)
            except RecordRejected as exc:
                rejected[exc.reason] += 1
                continue
            if key is not None and key != bar.bar_idx:
                rejected["key_mismatch"] += 1
                continue
            if lo <= bar.bar_ts < hi:
                bars[bar.bar_idx] = bar  # a later record of the same bar replaces it, as in the map
        ordered = [bars[k] for k in sorted(bars)]
        cache = BarCache(max(1, len(ordered)), self.stale_after_bars)
        cache.insert_many(ordered, "preload")
        ignored = cache.stats().ignored
        with self._lock:
            self._cache = cache
            self._rejected.update(rejected)
            self._rejected.update(ignored)  # bar_ts not increasing with bar_idx
            self._loaded = len(cache)
        if rejected or ignored:
            log.warning("preload skipped records rejected=%s ignored=%s", dict(rejected), ignored)
        log.info("preload start=%s end=%s bars=%d", lo, hi, len(cache))
        return len(cache)

    # -- the trader's per-scan call ------------------------------------------------------------

    def step_live(self, assets: Iterable[str] | None, bar_idx: int | float) -> Resolution:
        """Mark ``bar_idx`` as the current bar and return how it resolves (never waits: every bar
        that will ever be here is loaded). Assets absent from the resolved bar are counted; a
        non-integral ``bar_idx`` is truncated like the live adapter's (counted)."""
        is_ts, idx = parse_key(bar_idx)
        if is_ts:
            raise ValueError(f"step_live takes a bar_idx (< 1e9), got {bar_idx!r}")
        if isinstance(bar_idx, float) and not bar_idx.is_integer():
            self._cache.note_truncated(bar_idx)
        res, bar = self._cache.resolve(int(idx), count=False)
        missing = 0
        if assets is not None and bar is not None:
            missing = sum(1 for a in assets if a not in bar.assets)
        with self._lock:
            self._current = int(idx)
            self._steps[res.kind] += 1
            self._asset_defaults += missing
        return res

    # -- lookups (local only) -----------------------------------------------------------------

    def _resolved(self, key: Any) -> tuple[Resolution, BarFeatures | None]:
        if key is None:
            key = self._current
            if key is None:  # no "now" yet: every preloaded bar may be in the future
                self._cache.resolve(0)  # counted as a (default) lookup, like any other
                return _NO_RESOLUTION, None
        return self._cache.resolve(key)

    def resolve(self, timestamp_or_idx: Any = None) -> Resolution:
        """Which bar answers ``timestamp_or_idx`` (None = the current bar) and how: exact/fallback/default."""
        return self._resolved(timestamp_or_idx)[0]

    def get_bar(self, timestamp_or_idx: Any = None) -> BarFeatures | None:
        """The whole decoded bar that answers ``timestamp_or_idx``, or None (default)."""
        return self._resolved(timestamp_or_idx)[1]

    def get_asset(self, asset: str, timestamp_or_idx: Any = None) -> AssetFeatures | None:
        """One asset's features (with snapshot ts/age/seq), or None if unavailable."""
        bar = self._resolved(timestamp_or_idx)[1]
        return None if bar is None else bar.assets.get(asset)

    def wait_for_bar(self, bar_idx: int, timeout_s: float) -> bool:
        """True if bar ``bar_idx`` is loaded (never waits: nothing arrives later)."""
        return bar_idx in self._cache

    def _asset(self, asset: str, key: Any, placement: bool) -> Any:
        # One dataclass made for the asset asked about (only the newest loaded bar is prepared).
        bar = self._resolved(key)[1]
        if bar is None:
            return None
        got = placement_of(bar, asset) if placement else signal_of(bar, asset)
        if got is None:
            with self._lock:
                self._asset_defaults += 1
        return got

    def get_placement(self, asset: str, timestamp_or_idx: Any = None) -> OBPlacementFeatures:
        """Placement features of ``asset`` at a bar_idx or unix timestamp (None = current bar); neutral if none."""
        p = self._asset(asset, timestamp_or_idx, True)
        return NEUTRAL_PLACEMENT if p is None else p

    def get_signal(self, asset: str, timestamp_or_idx: Any = None) -> OBSignalFeatures:
        """Signal features of ``asset`` at a bar_idx or unix timestamp (None = current bar); neutral if none."""
        s = self._asset(asset, timestamp_or_idx, False)
        return NEUTRAL_SIGNAL if s is None else s

    def get_market(self, asset_or_key: Any = None, timestamp_or_idx: Any = None) -> OBMarketFeatures:
        """Cross-asset features: ``get_market(key)`` or ``get_market(asset, key)`` (asset ignored)."""
        bar = self._resolved(_market_key(asset_or_key, timestamp_or_idx))[1]
        return NEUTRAL_MARKET if bar is None or bar.market is None else bar.market

    def get_macro(self, asset_or_key: Any = None, timestamp_or_idx: Any = None) -> OBMacroFeatures:
        """Cascade regime features: ``get_macro(key)`` or ``get_macro(asset, key)`` (asset ignored)."""
        bar = self._resolved(_market_key(asset_or_key, timestamp_or_idx))[1]
        return NEUTRAL_MACRO if bar is None or bar.macro is None else bar.macro

    # -- state ---------------------------------------------------------------------------------

    @property
    def current_bar_idx(self) -> int | None:
        """The bar of the last ``step_live`` (None before the first)."""
        return self._current

    def loaded_indices(self) -> list[int]:
        """Every loaded bar_idx, ascending."""
        return self._cache.cached_indices()

    def refresh(self) -> None:
        """No-op (the live adapter re-reads its map; preloaded bars do not change)."""

    def stats(self) -> AdapterStats:
        """The live adapter's counters; ``grid`` reports no connection and the preload's rejects."""
        cache = self._cache.stats()
        with self._lock:
            current = self._current
            return AdapterStats(
                current_bar_idx=current,
                lag_bars=None if current is None or cache.newest_idx is None else current - cache.newest_idx,
                steps=dict(self._steps),
                waits=0, wait_hits=0, wait_timeouts=0, wait_ms_max=0.0,
                asset_defaults=self._asset_defaults,
                cache=cache,
                grid=GridStats(connected=False, disconnects=0, reconnects=0, events=0, decoded=self._loaded,
                               rejected=dict(self._rejected), listener_errors=0, seeds=0, seeded_bars=0,
                               seed_failures=0, reseed_pending=False),
                closed=self._closed,
            )

    def close(self) -> None:
        """Marks the engine closed; lookups keep answering from the loaded bars. Idempotent."""
        self._closed = True

    def __enter__(self) -> OfflineOBEngine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _unix(t: TimeLike, name: str) -> float:
    if isinstance(t, datetime):
        return datetime(*t.timetuple()[:6], t.microsecond, tzinfo=t.tzinfo or UTC).timestamp()
    if isinstance(t, date):
        return day_bounds(t)[0]
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"preload {name} must be a date, datetime or unix seconds, got {type(t).__name__}")
    return float(t)
