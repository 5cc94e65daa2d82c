"""HazelcastOBEngine: the trader's drop-in OB engine, read-only over DOLPHIN_OBF_FEATURES.

Same calls as the in-process engine it replaces: ``step_live(assets, bar_idx)`` once per scan
(before ``eng.step_bar(...)``), then ``get_placement`` / ``get_signal`` / ``get_market`` /
``get_macro``. No feature math, no writes: the features are computed by the obf-features
worker and arrive through an entry listener into a local ``BarCache``. Every ``get_*`` call is
a local dictionary lookup (no network, no JSON) answered from that cache, with neutral
defaults when no usable bar exists (see ``engine_adapter.cache`` for the resolution rules).

Imports only the stdlib, hazelcast and orjson: the trader process never loads the worker.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any

from hazelcast.client import HazelcastClient

from engine_adapter.cache import (
    DEFAULT,
    EXACT,
    FALLBACK,
    TIMESTAMP_MIN,
    BarCache,
    CacheStats,
    Resolution,
    parse_key,
)
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
    SymbolTable,
    placement_of,
    signal_of,
    trader_maps,
)
from engine_adapter.grid import FeatureMapReader, GridStats

# The only worker modules the adapter loads: stdlib + hazelcast only, no numpy/numba.
from obf_contract.client import client_settings as contract_client_settings
from obf_contract.client import make_client, reconnect_settings
from obf_contract.cluster import (
    DEFAULT_CLUSTER_NAME,
    DEFAULT_MEMBER,
    FEATURES_MAP,
    check_cluster_name,
    check_map_name,
    check_member,
    check_members,
)
from obf_contract.pickle_guard import refuse_pickle
from obf_contract.record import universe_hash

log = logging.getLogger(__name__)
# How long step_live lets a missing bar's entry event come before the reader reads the bar itself (s).
FETCH_GRACE_S = 0.05

# From this many consecutive step_live bars that do not resolve exact, each such bar logs a
# WARNING (the in-process engine warns from the third consecutive empty bar, every bar).
NON_EXACT_WARN_AFTER = 3


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """Settings of the adapter; a bad value raises ValueError naming the field.

    cluster_name / members: the Hazelcast cluster (env HZ_CLUSTER, HZ_MEMBERS = "h:p,h:p", or
        HZ_HOST = "host" / "host:port" for a single member when HZ_MEMBERS is unset).
    map_name: the worker's bar map (env OBF_FEATURES_MAP, default DOLPHIN_OBF_FEATURES).
    cache_bars: bars kept locally, newest by bar_idx (>= 1, default 500).
    seed_bars: newest bars read from the map at start and after a reconnect (1..cache_bars,
        default: cache_bars).
    stale_after_bars: a fallback bar may be at most this many bars older than the requested one
        before lookups return neutral defaults (>= 0, default 2: one late and one missed bar).
    max_wait_ms: how long ``step_live`` waits for the current bar's record (0 = never), ms.
    connect_timeout_s: own client only: give up connecting (at start, or reconnecting after an
        outage) after this many s; None (default) = keep trying forever. Once it gives up the
        client is shut down and lookups answer from the cache, then neutral defaults.
    reconnect_backoff_max_s: own client only: longest pause between reconnect attempts, s.
    """

    cluster_name: str = DEFAULT_CLUSTER_NAME
    members: tuple[str, ...] = (DEFAULT_MEMBER,)
    map_name: str = FEATURES_MAP
    cache_bars: int = 500
    seed_bars: int | None = None
    stale_after_bars: int = 2
    max_wait_ms: float = 50.0
    connect_timeout_s: float | None = None
    reconnect_backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        for name, value, check in (("cluster_name", self.cluster_name, check_cluster_name),
                                   ("members", self.members, check_members),
                                   ("map_name", self.map_name, check_map_name)):
            try:
                object.__setattr__(self, name, check(value))
            except ValueError as exc:
                raise ValueError(f"AdapterConfig.{name}: {exc}") from None
        _check_int("cache_bars", self.cache_bars, 1)
        _check_int("stale_after_bars", self.stale_after_bars, 0)
        seed = self.cache_bars if self.seed_bars is None else self.seed_bars
        if type(seed) is not int or not 1 <= seed <= self.cache_bars:
            raise ValueError(f"AdapterConfig.seed_bars must be an int in 1..cache_bars ({self.cache_bars}), "
                             f"got {self.seed_bars!r}")
        object.__setattr__(self, "seed_bars", seed)
        object.__setattr__(self, "max_wait_ms", _number_in("max_wait_ms", self.max_wait_ms, 0.0, 60_000.0))
        if self.connect_timeout_s is not None:
            object.__setattr__(self, "connect_timeout_s",
                               _number_in("connect_timeout_s", self.connect_timeout_s, 0.001, 1e9))
        object.__setattr__(self, "reconnect_backoff_max_s",
                           _number_in("reconnect_backoff_max_s", self.reconnect_backoff_max_s, 0.01, 3600.0))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AdapterConfig:
        """Settings from the environment (HZ_CLUSTER, HZ_MEMBERS or HZ_HOST, OBF_FEATURES_MAP,
        OBF_ADAPTER_CACHE_BARS, OBF_ADAPTER_SEED_BARS, OBF_ADAPTER_STALE_AFTER_BARS,
        OBF_ADAPTER_MAX_WAIT_MS); keyword overrides win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("HZ_CLUSTER", "").strip():
            values["cluster_name"] = env["HZ_CLUSTER"].strip()
        if env.get("HZ_MEMBERS", "").strip():
            values["members"] = tuple(m.strip() for m in env["HZ_MEMBERS"].split(",") if m.strip())
        elif env.get("HZ_HOST", "").strip():
            # The trader's variable: one host (the client tries ports 5701-5703) or host:port.
            try:
                values["members"] = (check_member(env["HZ_HOST"].strip()),)
            except ValueError as exc:
                raise ValueError(f"HZ_HOST: {exc}") from None
        if env.get("OBF_FEATURES_MAP", "").strip():
            values["map_name"] = env["OBF_FEATURES_MAP"].strip()
        for name, conv in (("cache_bars", int), ("seed_bars", int), ("stale_after_bars", int),
                           ("max_wait_ms", float)):
            var = f"OBF_ADAPTER_{name.upper()}"
            raw = env.get(var, "").strip()
            if raw:
                try:
                    values[name] = conv(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not a valid {conv.__name__}") from None
        values.update(overrides)
        return cls(**values)


def _check_int(name: str, value: object, low: int) -> None:
    if type(value) is not int or value < low:
        raise ValueError(f"AdapterConfig.{name} must be an int >= {low}, got {value!r}")


def _number_in(name: str, value: object, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"AdapterConfig.{name} must be a number in {low:g}..{high:g}, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class AdapterStats:
    """What the trader can check to tell whether features are live.

    current_bar_idx: the bar of the last ``step_live``. lag_bars: current_bar_idx minus the
    newest cached bar (None before data). steps: ``step_live`` outcomes by resolution kind.
    waits: step_live calls that had to wait; wait_hits: the bar arrived during the wait;
    wait_timeouts: it did not within max_wait_ms. asset_defaults: get_placement/get_signal
    answered neutral because the asset was absent from an otherwise usable bar.
    non_exact_streak / non_exact_warnings / last_exact_bar_idx: see ``step_live``.
    universe_mismatches: times the trader's assets started to differ from the worker's universe.
    cache.lookups: get_*/resolve outcomes by kind (lookups of the current bar included).
    grid: connection and decode counters.
    """

    current_bar_idx: int | None
    lag_bars: int | None
    steps: dict[str, int]
    waits: int
    wait_hits: int
    wait_timeouts: int
    wait_ms_max: float
    asset_defaults: int
    cache: CacheStats
    grid: GridStats
    closed: bool = field(default=False)
    non_exact_streak: int = 0  # consecutive step_live bars (up to the last) not resolved exact
    non_exact_warnings: int = 0  # step_live bars logged at WARNING (the streak had reached 3)
    last_exact_bar_idx: int | None = None  # the last step_live bar that resolved exact
    universe_mismatches: int = 0  # changes to a trader asset list that differs from the worker's universe
    bad_steps: dict[str, int] = field(default_factory=dict)  # refused step_live bar_idx by kind (answered default)
    bad_assets: int = 0  # non-str entries skipped from step_live's assets
    bad_keys: dict[str, int] = field(default_factory=dict)  # refused getter keys by error kind (answered default)


class HazelcastOBEngine:
    """Read-only OB engine: features of the bars the obf-features worker writes, by bar_idx.

    Build it once: ``HazelcastOBEngine(AdapterConfig.from_env())`` (its own client, shut down by
    ``close()``) or ``HazelcastOBEngine(config, client=existing_client)`` (the trader's client:
    ``close()`` leaves it running).

    Hot path: ``step_live`` resolves the current bar once and memoises it; a getter asked about
    the current bar (key None or that bar_idx) is then two dict lookups and a counter increment,
    no lock, no parsing (well under 0.1 us on top of Python's own call cost). Any change of the
    cache (a bar arrives, is replaced or evicted) drops the memo and the next getter re-resolves,
    so a late exact bar replaces a fallback at once. Other keys take the general path (~1 us).
    ``get_bar()`` returns the whole decoded bar, for a trader that reads every asset itself.

    Threads: any thread may call every method and always gets consistent answers. The counters
    of the current-bar fast path (``stats().cache.lookups``, ``asset_defaults``) are plain
    increments without a lock: exact when one thread makes the calls (the trader's scan thread,
    the intended use); concurrent callers on several threads may lose a count.
    """

    def __init__(self, config: AdapterConfig | None = None, *, client: HazelcastClient | None = None) -> None:
        self.config = config if config is not None else AdapterConfig.from_env()
        cfg = self.config
        self._owns_client = client is None
        if client is None:
            client = make_client(**_own_client(cfg))
        else:
            refuse_pickle(client)  # the trader's client: a pickled record must never be unpickled
        self._client = client
        # The current-bar memo, by lookup key: {None: cur, bar_idx: cur}, or empty once the cache
        # changed. Replaced whole (never mutated), so a reader sees one consistent dict.
        self._fast: dict[Any, _CurrentBar] = _NO_FAST
        self._cache = BarCache(cfg.cache_bars, cfg.stale_after_bars, on_change=self._drop_memo)
        self._reader = FeatureMapReader(client, cfg.map_name, self._cache, cfg.seed_bars)  # type: ignore[arg-type]
        self._max_wait_s = cfg.max_wait_ms / 1000.0
        self._lock = threading.Lock()
        self._cur = _NO_CURRENT  # the last memo (its idx is the current bar)
        # Counts of replaced memos (their hits / absent), folded in under _lock.
        self._memo_lookups: dict[str, int] = {EXACT: 0, FALLBACK: 0, DEFAULT: 0}
        self._memo_asset_defaults = 0
        # step_live's last (assets, their set, bar symbols, missing): bars usually share their
        # symbol set (BarFeatures.symbols), so the count is done again only when either changes.
        self._missing_memo: tuple[tuple[str, ...], frozenset[str], AbstractSet[str], int] = \
            ((), frozenset(), frozenset(), 0)
        self._steps: dict[str, int] = {EXACT: 0, FALLBACK: 0, DEFAULT: 0}
        self._waits = 0
        self._wait_hits = 0
        self._wait_timeouts = 0
        self._wait_ms_max = 0.0
        self._asset_defaults = 0
        self._non_exact_streak = 0
        self._non_exact_warnings = 0
        self._last_exact: int | None = None
        # (trader assets, bar universe hash) last checked, and the last mismatch warned about.
        self._universe_memo: tuple[tuple[str, ...], str | None] = ((), None)
        self._universe_warned: tuple[str, str] | None = None
        self._universe_mismatches = 0
        self._last_idx: int | None = None  # the last good step_live bar_idx
        self._last_bar_ts: float | None = None  # bar_ts of the last bar a step_live resolved to
        self._high_water: int | None = None  # the number the trader's numbering went back from
        self._bad_steps: dict[str, int] = {}  # refused step_live keys by kind
        self._bad_assets = 0  # non-str entries skipped from step_live's assets
        self._bad_keys: dict[str, int] = {}  # refused getter keys by kind
        self._assets_memo: tuple[tuple[Any, ...], tuple[str, ...]] = ((), ())
        self._closed = False
        try:
            self._reader.start()
        except BaseException:
            self._reader.close()
            if self._owns_client:
                client.shutdown()
            raise
        log.info("ob engine ready map=%s cluster=%s bars=%d own_client=%s",
                 cfg.map_name, cfg.cluster_name, len(self._cache), self._owns_client)

    @classmethod
    def from_client(cls, client: HazelcastClient, config: AdapterConfig | None = None) -> HazelcastOBEngine:
        """An adapter on the trader's existing client (``close()`` will not shut it down)."""
        return cls(config, client=client)

    # -- the trader's per-scan call ------------------------------------------------------------

    def step_live(self, assets: Iterable[str] | None, bar_idx: int | float) -> Resolution:
        """Mark ``bar_idx`` as the current bar; wait up to max_wait_ms for its record if not here yet.

        Read-only; woken by the record's arrival (no polling). Returns how the bar resolves
        (exact / fallback / default). ``assets``: the symbols the trader will ask about; the
        ones absent from the resolved bar are counted in ``stats().asset_defaults``. A
        non-integral ``bar_idx`` is truncated like the in-process engine's ``int()`` (counted).
        Never raises: a bar_idx that is not one (negative, NaN, a bool, a timestamp >= 1e9, another
        type) answers neutral defaults for this bar, counted in ``stats().bad_steps`` by kind and
        logged once per kind; a non-str asset is skipped (``stats().bad_assets``). ``assets`` is
        read once (a generator is fine).

        When the bar_idx goes back (the trader's numbering restarted, or a scan is re-stepped),
        nothing cached is dropped; until the trader passes the number it went back from (or the
        worker's numbering restarts), a bar_idx lookup resolves only to bars not older than the
        bar the trader used before going back (that bar included): never to the previous numbering's bar of the same
        number, never to a future bar. The worker's new numbering that arrived first resolves
        exact at once.

        From the third consecutive bar that does not resolve exact, every such bar logs a WARNING
        (bar, kind, lag, last exact bar); an INFO line when exact bars return. When ``assets``
        differs from the universe the worker averaged the cross-asset depth over (the record's
        size and hash), one WARNING per change: those values then differ from the in-process
        engine's, which used the trader's list.
        """
        idx = self._step_index(bar_idx)
        if idx is None:
            return self._bad_step()
        if assets is not None:
            assets = self._clean_assets(assets)  # once: a generator must not be consumed twice
        last = self._last_idx
        if last is not None and idx < last:
            # The trader's numbering went back (UTC midnight, upstream restart, a re-stepped
            # scan). Nothing is dropped (the worker's restart does that, and its new bars may be
            # here already); bar_idx lookups resolve only to bars not older than the trader's last one.
            self._high_water = last if self._high_water is None else max(self._high_water, last)
            self._cache.trader_restarted(idx, self._last_bar_ts)
        elif self._high_water is not None and idx > self._high_water:
            self._high_water = None  # past the number it went back from: no bar of before can match
            self._cache.lift_trader_floor()
        self._last_idx = idx
        waited_ms = None
        if not self._cache.has_exact(idx):
            # Its entry event may be late or lost (member restart, reconnect): the reader's fetch
            # thread reads the bar directly if it is still missing after the grace (no network here).
            self._reader.request_bar(idx, min(FETCH_GRACE_S, self._max_wait_s / 2))
            if self._max_wait_s > 0:
                t0 = time.perf_counter()
                arrived = self._cache.wait_for(idx, self._max_wait_s)
                waited_ms = (time.perf_counter() - t0) * 1000.0
        cur = self._memoise(idx)
        res = cur.res
        if res.bar_ts is not None:
            self._last_bar_ts = res.bar_ts
        missing = 0 if assets is None else self._count_missing(assets, cur.symbols)
        with self._lock:
            self._steps[res.kind] += 1
            self._asset_defaults += missing
            if waited_ms is not None:
                self._waits += 1
                if arrived:
                    self._wait_hits += 1
                else:
                    self._wait_timeouts += 1
                self._wait_ms_max = max(self._wait_ms_max, waited_ms)
        if res.kind != EXACT:
            self._note_non_exact(idx, res)
        elif self._non_exact_streak:
            self._note_exact(idx)
        else:
            self._last_exact = idx
        if assets is not None and cur.bar is not None and cur.bar.universe_hash is not None:
            self._check_universe(assets, cur.bar)
        return res

    def _step_index(self, bar_idx: object) -> int | None:
        """step_live's bar_idx as an int, or None (counted in ``bad_steps`` by kind, logged once per kind)."""
        if type(bar_idx) is int and 0 <= bar_idx < TIMESTAMP_MIN:  # the usual case, no parsing
            return bar_idx
        try:
            if isinstance(bar_idx, str):
                raise TypeError("a str is not a bar_idx")
            is_ts, idx = parse_key(bar_idx)
        except TypeError:
            kind = "bool" if isinstance(bar_idx, bool) else "type"
        except ValueError:
            kind = "negative" if _as_float(bar_idx) < 0 else "not_finite"
        else:
            if not is_ts:
                if idx != bar_idx:  # non-integral: truncated like the in-process engine's int()
                    self._cache.note_truncated(float(bar_idx))  # type: ignore[arg-type]
                return int(idx)
            kind = "timestamp"
        self._bad_step_count(kind, bar_idx)
        return None

    def _bad_step_count(self, kind: str, bar_idx: object) -> None:
        with self._lock:
            self._bad_steps[kind] = n = self._bad_steps.get(kind, 0) + 1
        if n == 1:
            log.warning("step_live bar_idx %r refused (%s): answering neutral defaults for this bar; further ones "
                        "are only counted in stats().bad_steps", _short(bar_idx), kind)

    def _bad_step(self) -> Resolution:
        """A refused step_live key: the current bar answers neutral defaults until the next good step."""
        cur = _CurrentBar(None, _BAD_STEP_RES, None)
        with self._lock:
            old, self._cur = self._cur, cur
            self._memo_lookups[old.kind] += old.hits
            self._memo_asset_defaults += old.absent
            self._steps[DEFAULT] += 1
        self._fast = {None: cur}
        return _BAD_STEP_RES

    def _clean_assets(self, assets: Iterable[str]) -> tuple[str, ...]:
        """The trader's assets as a tuple of str, materialised once; a non-str one is counted and skipped."""
        key = assets if type(assets) is tuple else tuple(assets)
        raw, clean = self._assets_memo
        if key == raw:
            return clean
        good = tuple(a for a in key if type(a) is str)
        if len(good) != len(key):
            bad = len(key) - len(good)
            with self._lock:
                self._bad_assets += bad
                first = self._bad_assets == bad
            if first:
                log.warning("step_live assets: %d non-str entries skipped (e.g. %r); further ones are only counted "
                            "in stats().bad_assets", bad, _short(next(a for a in key if type(a) is not str)))
        self._assets_memo = (key, good)
        return good

    def _note_non_exact(self, idx: int, res: Resolution) -> None:
        self._non_exact_streak += 1
        streak = self._non_exact_streak
        if streak < NON_EXACT_WARN_AFTER:
            log.debug("step_live bar_idx=%d kind=%s used=%s age_bars=%s", idx, res.kind, res.bar_idx, res.age_bars)
            return
        self._non_exact_warnings += 1
        newest = self._cache.newest()
        lag = None if newest is None else idx - newest.bar_idx
        log.warning("OB features not exact for %d consecutive bars bar_idx=%d kind=%s used_bar=%s lag_bars=%s "
                    "last_exact_bar=%s", streak, idx, res.kind, res.bar_idx, lag, self._last_exact)

    def _note_exact(self, idx: int) -> None:
        if self._non_exact_streak >= NON_EXACT_WARN_AFTER:
            log.info("OB features exact again bar_idx=%d after %d non-exact bars last_exact_bar=%s", idx,
                     self._non_exact_streak, self._last_exact)
        self._non_exact_streak = 0
        self._last_exact = idx

    def _check_universe(self, key: tuple[str, ...], bar: BarFeatures) -> None:
        """Warn once per change when the trader's assets are not the worker's universe."""
        theirs = bar.universe_hash
        memo_key, memo_hash = self._universe_memo
        if theirs == memo_hash and key == memo_key:
            return
        self._universe_memo = (key, theirs)
        mine = universe_hash(key)
        assert theirs is not None  # noqa: S101 - narrows the type; checked by the caller
        if mine == theirs:
            self._universe_warned = None
            return
        if self._universe_warned == (mine, theirs):
            return
        self._universe_warned = (mine, theirs)
        self._universe_mismatches += 1
        log.warning("trader assets differ from the worker's universe: trader=%d assets (%s) worker=%s assets (%s) "
                    "bar_idx=%d; cross-asset depth values (depth_ref_usd, depth_velocity) differ from the "
                    "in-process engine's, run the worker with --assets set to the trader's list",
                    len(set(key)), mine, bar.universe_size, theirs, bar.bar_idx)

    def _count_missing(self, key: tuple[str, ...], symbols: AbstractSet[str]) -> int:
        """How many of ``key`` (each occurrence) are not in ``symbols``."""
        memo_key, wanted, memo_symbols, memo_missing = self._missing_memo
        if key == memo_key:  # ~1 us at 400 assets
            if symbols is memo_symbols:
                return memo_missing
        else:
            wanted = frozenset(key)
        if len(wanted) != len(key):  # duplicates: count every occurrence
            missing = sum(1 for a in key if a not in symbols)
        elif isinstance(symbols, SymbolTable):  # a decoded bar: C loops over its ids
            missing = symbols.count_absent(wanted)
        else:
            missing = len(wanted.difference(symbols))
        self._missing_memo = (key, wanted, symbols, missing)
        return missing

    # -- lookups (local only) -----------------------------------------------------------------

    def resolve(self, timestamp_or_idx: Any = None) -> Resolution:
        """Which bar answers ``timestamp_or_idx`` (None = the current bar) and how: exact/fallback/default."""
        cur = self._view(timestamp_or_idx)
        if cur is not None:
            return cur.res
        return self._lookup(timestamp_or_idx)[0]

    def get_bar(self, timestamp_or_idx: Any = None) -> BarFeatures | None:
        """The whole decoded bar that answers ``timestamp_or_idx``, or None (default).

        The bulk accessor: ``bar.assets[symbol].placement`` / ``.signal`` (with the snapshot's ts,
        age_ms, seq), ``bar.market``, ``bar.macro`` (None when no asset was present: use the
        NEUTRAL_* values then). ``bar.assets`` is read-only and shared, never copy it per call: for
        the newest bar a lookup is a dict hit (its objects are prepared when it arrives); for an
        older bar each lookup makes that asset's objects (a few us).
        """
        cur = self._view(timestamp_or_idx)
        if cur is not None:
            return cur.bar
        return self._lookup(timestamp_or_idx)[1]

    def get_asset(self, asset: str, timestamp_or_idx: Any = None) -> AssetFeatures | None:
        """One asset's features (with snapshot ts/age/seq), or None if unavailable."""
        cur = self._view(timestamp_or_idx)
        bar = cur.bar if cur is not None else self._lookup(timestamp_or_idx)[1]
        return None if bar is None else bar.assets.get(asset)

    def wait_for_bar(self, bar_idx: int, timeout_s: float) -> bool:
        """Block until bar ``bar_idx`` resolves exact (True) or ``timeout_s`` passes (False); no network."""
        return self._cache.wait_for(bar_idx, timeout_s)

    # get_placement / get_signal inline the memo lookup of ``_view`` (a method call costs about
    # as much as the whole lookup); keep the three in step.

    def get_placement(self, asset: str, timestamp_or_idx: Any = None) -> OBPlacementFeatures:
        """Placement features of ``asset`` at a bar_idx or unix timestamp (None = current bar); neutral if none."""
        try:
            cur = self._fast[timestamp_or_idx]
        except (KeyError, TypeError):  # not the current bar (TypeError: unhashable, refused below)
            p = self._asset(asset, timestamp_or_idx, True)
            return NEUTRAL_PLACEMENT if p is None else p
        cur.hits += 1
        try:
            return cur.placement[asset]
        except KeyError:
            cur.absent += cur.bar is not None
            return NEUTRAL_PLACEMENT

    def get_signal(self, asset: str, timestamp_or_idx: Any = None) -> OBSignalFeatures:
        """Signal features of ``asset`` at a bar_idx or unix timestamp (None = current bar); neutral if none."""
        try:
            cur = self._fast[timestamp_or_idx]
        except (KeyError, TypeError):  # not the current bar (TypeError: unhashable, refused below)
            s = self._asset(asset, timestamp_or_idx, False)
            return NEUTRAL_SIGNAL if s is None else s
        cur.hits += 1
        try:
            return cur.signal[asset]
        except KeyError:
            cur.absent += cur.bar is not None
            return NEUTRAL_SIGNAL

    def get_market(self, asset_or_key: Any = None, timestamp_or_idx: Any = None) -> OBMarketFeatures:
        """Cross-asset features: ``get_market(key)`` or ``get_market(asset, key)`` (asset ignored)."""
        key = _market_key(asset_or_key, timestamp_or_idx)
        cur = self._view(key)
        bar = cur.bar if cur is not None else self._lookup(key)[1]
        if bar is None or bar.market is None:
            return NEUTRAL_MARKET
        return bar.market

    def get_macro(self, asset_or_key: Any = None, timestamp_or_idx: Any = None) -> OBMacroFeatures:
        """Cascade regime features: ``get_macro(key)`` or ``get_macro(asset, key)`` (asset ignored)."""
        key = _market_key(asset_or_key, timestamp_or_idx)
        cur = self._view(key)
        bar = cur.bar if cur is not None else self._lookup(key)[1]
        if bar is None or bar.macro is None:
            return NEUTRAL_MACRO
        return bar.macro

    def _asset(self, asset: str, key: Any, placement: bool) -> Any:
        """``asset``'s placement (else signal) features in the bar answering ``key``, or None
        (an absent asset of a usable bar is counted). Made on demand for a bar not prepared."""
        cur = self._view(key)
        if cur is not None:
            if cur.bar is None:
                return None
            try:
                return cur.placement[asset] if placement else cur.signal[asset]
            except KeyError:
                got = None
        else:
            bar = self._lookup(key)[1]
            if bar is None:
                return None
            got = placement_of(bar, asset) if placement else signal_of(bar, asset)
        if got is None:
            with self._lock:
                self._asset_defaults += 1
        return got

    def _view(self, key: Any) -> _CurrentBar | None:
        """The memoised current bar if ``key`` names it (None, or its bar_idx), re-resolved if the
        cache changed since; counts the lookup. None: resolve ``key`` through the cache."""
        try:
            cur = self._fast[key]
        except (KeyError, TypeError):
            cur = self._cur
            if cur.idx is None:
                if key is not None or cur is _NO_CURRENT:
                    return None
                cur.hits += 1  # a refused step_live key: the current bar answers default
                return cur
            if key is not None and (key.__class__ is not int or key != cur.idx):
                return None
            if self._fast is _NO_FAST:  # the cache changed since: re-resolve the current bar
                cur = self._memoise(cur.idx)
        cur.hits += 1
        return cur

    def _memoise(self, idx: int) -> _CurrentBar:
        """Resolve bar ``idx`` and make it the current bar's memo (also counted as current)."""
        cache = self._cache
        version = cache.version
        res, bar = cache.resolve(idx, count=False)
        cur = _CurrentBar(idx, res, bar, self._cur)
        with self._lock:
            old, self._cur = self._cur, cur
            self._memo_lookups[old.kind] += old.hits
            self._memo_asset_defaults += old.absent
        # A bool must not pass for bar 0 / 1 (True == 1): those bars are looked up by None only.
        self._fast = {None: cur} if idx <= 1 else {None: cur, idx: cur}
        # The cache bumps version before it calls _drop_memo: if it changed since we read it, the
        # memo just installed may predate that change, so drop it (the next lookup re-resolves).
        if cache.version != version:
            self._fast = _NO_FAST
        return cur

    def _drop_memo(self) -> None:
        # BarCache.on_change: reactor thread, cache lock held. One assignment, cannot raise.
        self._fast = _NO_FAST

    def _lookup(self, key: Any) -> tuple[Resolution, BarFeatures | None]:
        """Resolve a key through the cache; a key it refuses (a str that is not ISO-8601, a bool,
        a negative or non-finite number, another type) answers default, counted in ``bad_keys``."""
        try:
            return self._cache.resolve(self._key(key))
        except (TypeError, ValueError) as exc:
            kind = type(exc).__name__
            with self._lock:
                self._bad_keys[kind] = n = self._bad_keys.get(kind, 0) + 1
            if n == 1:
                log.warning("lookup key %r refused (%s): answering neutral defaults; further ones are only counted "
                            "in stats().bad_keys", _short(key), exc)
            return _BAD_STEP_RES, None

    def _key(self, timestamp_or_idx: Any) -> Any:
        if timestamp_or_idx is not None:
            return timestamp_or_idx
        current = self._cur.idx
        if current is not None:
            return current
        newest = self._cache.newest()  # before the first step_live: the newest known bar
        return 0 if newest is None else newest.bar_idx

    # -- state ---------------------------------------------------------------------------------

    @property
    def current_bar_idx(self) -> int | None:
        """The bar of the last ``step_live`` (None before the first)."""
        return self._cur.idx

    @property
    def client(self) -> HazelcastClient:
        return self._client

    def refresh(self) -> None:
        """Ask for a background re-read of the newest bars (non-blocking; normally automatic)."""
        self._reader.request_reseed()

    def stats(self) -> AdapterStats:
        """Counters and freshness, see ``AdapterStats``."""
        with self._lock:
            cur = self._cur
            memo_lookups: dict[str, int] = dict(self._memo_lookups)
            memo_lookups[cur.kind] += cur.hits
            memo_asset_defaults = self._memo_asset_defaults + cur.absent
        cache = self._cache.stats(extra_lookups=memo_lookups)
        with self._lock:
            current = self._cur.idx
            return AdapterStats(
                current_bar_idx=current,
                lag_bars=None if current is None or cache.newest_idx is None else current - cache.newest_idx,
                steps=dict(self._steps),
                waits=self._waits,
                wait_hits=self._wait_hits,
                wait_timeouts=self._wait_timeouts,
                wait_ms_max=self._wait_ms_max,
                asset_defaults=self._asset_defaults + memo_asset_defaults,
                cache=cache,
                grid=self._reader.stats(),
                closed=self._closed,
                non_exact_streak=self._non_exact_streak,
                non_exact_warnings=self._non_exact_warnings,
                last_exact_bar_idx=self._last_exact,
                universe_mismatches=self._universe_mismatches,
                bad_steps=dict(self._bad_steps),
                bad_assets=self._bad_assets,
                bad_keys=dict(self._bad_keys),
            )

    def close(self) -> None:
        """Stop listening; shut the client down only if the adapter built it. Idempotent.

        Lookups keep answering from the cache afterwards (nothing new arrives).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._reader.close()
        if self._owns_client:
            self._client.shutdown()
        log.info("ob engine closed map=%s own_client=%s", self.config.map_name, self._owns_client)

    def __enter__(self) -> HazelcastOBEngine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _CurrentBar:
    """One resolution of the trader's current bar, plus the lookups answered from it.

    placement / signal: symbol -> the trader's dataclass: the bar's prepared dicts (one dict hit)
    when it has them, else views that make one asset's object per lookup (a bar that is not the
    newest, e.g. a fallback). A memo of the same bar keeps its predecessor's prepared dicts: the
    cache releases them once a newer bar arrives, while the trader may still read this one."""

    __slots__ = ("idx", "res", "bar", "kind", "placement", "signal", "prepared", "symbols", "hits", "absent")

    def __init__(self, idx: int | None, res: Resolution, bar: BarFeatures | None,
                 prev: _CurrentBar | None = None) -> None:
        self.idx = idx
        self.res = res
        self.bar = bar
        self.kind = res.kind
        self.placement: Mapping[str, OBPlacementFeatures]
        self.signal: Mapping[str, OBSignalFeatures]
        if bar is None:
            self.placement, self.signal, self.prepared = _NO_ASSETS, _NO_ASSETS, True
        elif prev is not None and prev.bar is bar and prev.prepared:
            self.placement, self.signal, self.prepared = prev.placement, prev.signal, True
        else:
            self.placement, self.signal, self.prepared = trader_maps(bar)
        self.symbols: AbstractSet[str] = bar.symbols if bar is not None else frozenset()
        self.hits = 0  # lookups answered from this memo (unlocked increments)
        self.absent = 0  # of those, for an asset absent from a usable bar


_NO_ASSETS: Mapping[str, Any] = MappingProxyType({})
_NO_CURRENT = _CurrentBar(None, Resolution(DEFAULT, None, None, None), None)  # before step_live
_NO_FAST: dict[Any, _CurrentBar] = {}  # shared and never mutated: "no memo"
_BAD_STEP_RES = Resolution(DEFAULT, None, None, None)  # a refused key


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - classification only, never raises
        return math.nan


def _short(value: object) -> str:
    # A refused key in a log line: bounded, whatever its repr.
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not raise on the trader's thread
        text = f"<{type(value).__name__}>"
    return text[:60]


def _own_client(config: AdapterConfig) -> dict[str, Any]:
    # Starts synchronously (the constructor returns connected and seeded), reconnects with a
    # backoff capped at reconnect_backoff_max_s, forever unless connect_timeout_s is set.
    return dict(cluster_name=config.cluster_name, members=config.members, client_name="obf-engine-adapter",
                **reconnect_settings(config.connect_timeout_s, config.reconnect_backoff_max_s))


def client_settings(config: AdapterConfig) -> dict[str, Any]:
    """``hazelcast.HazelcastClient`` keyword arguments of the adapter's own client."""
    return contract_client_settings(**_own_client(config))


def _market_key(asset_or_key: Any = None, timestamp_or_idx: Any = None) -> Any:
    # Callers use both get_market(key) and get_market(asset, key); a str first argument is an asset.
    if timestamp_or_idx is not None or isinstance(asset_or_key, str):
        return timestamp_or_idx
    return asset_or_key
