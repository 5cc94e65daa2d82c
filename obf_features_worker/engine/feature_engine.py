"""FeatureEngine: per-bar features for every present asset, one numba kernel call per bar.

Pure computation (no I/O): the live worker and the offline replay drive the same engine, so
live and backtest features are the same numbers. Per-asset state lives in fixed-size numpy
ring buffers indexed by an asset slot; slots are assigned on first appearance (in symbol
order within a bar) and capacity doubles as assets appear, so memory is bounded by
assets x lookback. Present assets are always processed in sorted symbol order, which makes
every cross-asset sum independent of the caller's mapping order.

The universe of the aggregate depth (``depth_ref_usd``) is the configured asset list (an asset
never present counts 0) or, when none is configured, every asset present in at least one bar so
far. Each record names it by size and hash (``record["universe"]``) so the trader can tell when
its own asset list differs.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np

from obf_contract.keys import SYMBOL_RE
from obf_contract.record import (
    PLACEMENT_FIELDS,
    SCHEMA_VERSION,
    SIGNAL_FIELDS,
    STATE_FIELDS,
    BarRecord,
    universe_hash,
)
from obf_features_worker.engine import kernels as K
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.engine.snapshot import MAX_LEVELS, Snapshot

log = logging.getLogger(__name__)

# 2: depth_pressure / depth_velocity follow the in-process engine (market history holds
# depth_ref_usd, not the mean depth_quality) and the state names its universe.
STATE_VERSION = 2
_ROW_ORDER = (K.COL_DEPTH, K.COL_IMBALANCE, K.COL_DEPTH_ASYMMETRY, K.COL_DEPTH_QUALITY, K.COL_FILL_PROBABILITY,
              K.COL_SPREAD_PROXY, K.COL_IMBALANCE_MA, K.COL_IMBALANCE_PERSISTENCE, K.COL_WITHDRAWAL_VELOCITY,
              K.COL_BID_USD, K.COL_ASK_USD)
assert _ROW_ORDER == tuple(range(K.N_ASSET_COLS)), "step() unpacks kernel rows in this column order"  # noqa: S101 - narrows the type; holds by construction
assert K.COL_BID_USD == K.N_ASSET_COLS - 2 and K.COL_ASK_USD == K.N_ASSET_COLS - 1, "USD columns last"  # noqa: S101 - narrows the type; holds by construction
STATE_KIND = "obf_feature_engine"


class StateMismatch(ValueError):
    """An exported engine state cannot be restored (other version or params, or malformed)."""


class FeatureEngine:
    """Stateful feature computation over bars; see docs/features.md for the definitions."""

    def __init__(self, params: FeatureParams | None = None, *, universe: Iterable[str] | None = None,
                 initial_capacity: int = 64) -> None:
        """universe: the configured asset list (``--assets``) or None (every asset seen so far)."""
        self.params = params if params is not None else FeatureParams()
        if not isinstance(self.params, FeatureParams):
            raise TypeError(f"params must be FeatureParams, got {type(self.params).__name__}")
        self.universe = normalise_universe(universe)
        cap = max(1, int(initial_capacity))
        p = self.params
        self._slots: dict[str, int] = {}
        self._symbols: list[str] = []
        self._ref_depth = np.zeros(cap, dtype=np.float64)
        self._n_obs = np.zeros(cap, dtype=np.int64)
        self._imb_hist = np.zeros((cap, p.imbalance_lookback), dtype=np.float64)
        self._depth_hist = np.zeros((cap, p.depth_lookback), dtype=np.float64)
        self._market_hist = np.zeros(p.depth_lookback, dtype=np.float64)
        self._market_n = np.zeros(1, dtype=np.int64)
        self._prev_velocity = np.zeros(1, dtype=np.float64)
        self._market_out = np.zeros(K.N_MARKET_COLS, dtype=np.float64)
        self._empty_streak = 0
        self.degraded = False
        self.last_bar_idx: int | None = None
        self._gap_bars = 0
        self._universe_slots = np.zeros(0, dtype=np.int64)  # rebuilt when an asset is added
        self._universe_info: dict[str, Any] = {}
        self._universe_dirty = True

    @property
    def assets(self) -> tuple[str, ...]:
        """Every asset seen so far, in slot order."""
        return tuple(self._symbols)

    @property
    def capacity(self) -> int:
        """Rows allocated in the state arrays (>= len(assets))."""
        return int(self._n_obs.shape[0])

    def step(self, bar_idx: int, bar_ts: float, snapshots: Mapping[str, Snapshot]) -> BarRecord:
        """Compute the record of bar ``bar_idx`` closing at ``bar_ts`` (unix s).

        Every snapshot passed counts as present (the caller filters by age). ``bar_idx`` must
        increase from step to step. A bar with no snapshot leaves every history unchanged.
        """
        if isinstance(bar_idx, (bool, np.bool_)) or not isinstance(bar_idx, (int, np.integer)):
            raise TypeError(f"bar_idx must be an int, got {bar_idx!r}")
        bar_idx = int(bar_idx)
        bar_ts = float(bar_ts)
        if not math.isfinite(bar_ts):
            raise ValueError(f"bar_ts must be finite, got {bar_ts!r}")
        if self.last_bar_idx is not None and bar_idx <= self.last_bar_idx:
            raise ValueError(f"bar_idx {bar_idx} does not follow the last bar {self.last_bar_idx}")
        # Bars no engine computed between the last one and this (worker down, catch-up limit):
        # every asset's history skipped them.
        self._gap_bars = 0 if self.last_bar_idx is None else bar_idx - self.last_bar_idx - 1

        symbols = sorted(snapshots)
        n = len(symbols)
        if n == 0:
            self.last_bar_idx = bar_idx
            self._note_empty_bar(bar_idx)
            return self._record(bar_idx, bar_ts, _empty_columns(), None, None)

        snaps = [snapshots[s] for s in symbols]
        if [s.symbol for s in snaps] != symbols:
            bad = next(k for k, s in zip(symbols, snaps) if s.symbol != k)
            raise ValueError(f"snapshot for {snapshots[bad].symbol!r} passed under key {bad!r}")
        bids = [s.bid_notional for s in snaps]
        asks = [s.ask_notional for s in snaps]

        try:
            slots = np.fromiter(map(self._slots.__getitem__, symbols), dtype=np.int64, count=n)
        except KeyError:
            for sym in symbols:
                if sym not in self._slots:
                    self._add_asset(sym)
            slots = np.fromiter(map(self._slots.__getitem__, symbols), dtype=np.int64, count=n)
        if self._universe_dirty:
            self._rebuild_universe()
        # Snapshot guarantees equal bid/ask lengths in 1..MAX_LEVELS (its __post_init__). The
        # join touches every array first (fresh objects, mostly not in cache); the lengths are
        # read right after, while they are.
        bid = _pack(bids)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, bids), dtype=np.int64, count=n), out=offsets[1:])
        ask = _pack(asks)
        if bid.shape[0] != offsets[n] or ask.shape[0] != offsets[n]:
            raise ValueError(f"every snapshot needs equal bid/ask lengths in 1..{MAX_LEVELS}")
        asset_out = np.empty((n, K.N_ASSET_COLS), dtype=np.float64)
        p = self.params
        K.step_bar(
            slots, offsets, bid, ask,
            p.band_span_bps, p.ref_notional_usd, p.ema_alpha, p.ma_window,
            p.cascade_threshold, p.stress_share, p.cascade_share,
            self._ref_depth, self._n_obs, self._imb_hist, self._depth_hist,
            self._universe_slots, self._market_hist, self._market_n, self._prev_velocity,
            asset_out, self._market_out,
        )
        self.last_bar_idx = bar_idx
        if self.degraded:
            log.info("feature input recovered bar_idx=%d n_present=%d empty_bars=%d",
                     bar_idx, n, self._empty_streak)
        self.degraded = False
        self._empty_streak = 0

        # Columnar record straight from the kernel's arrays: one list per column (C-speed
        # tolist, plain Python floats, so every caller gets JSON-ready data and the encoding is
        # the shortest round-trip of the same doubles). Row order = kernels.COL_*; the two USD
        # columns are not in the record.
        (depth, imbalance, asymmetry, quality, fill, spread, ma, persistence,
         velocity) = asset_out[:, :K.COL_BID_USD].T.tolist()
        ts = np.fromiter((s.ts for s in snaps), dtype=np.float64, count=n)
        seq = [s.seq for s in snaps]
        if not _SEQ_TYPES.issuperset(map(type, seq)):  # numpy ints from a direct caller
            seq = [None if q is None else int(q) for q in seq]
        columns: dict[str, Any] = {
            "symbols": symbols,
            "ts": ts.tolist(),
            "age_ms": ((bar_ts - ts) * 1000.0).tolist(),
            "seq": seq,
            "placement": {
                "depth_1pct_usd": depth,
                "depth_quality": quality,
                "fill_probability": fill,
                "spread_proxy_bps": spread,
            },
            "signal": {
                "imbalance": imbalance,
                "imbalance_ma5": ma,
                "imbalance_persistence": persistence,
                "depth_asymmetry": asymmetry,
                "withdrawal_velocity": velocity,
            },
            # The EMA reference after this bar: the one state input a feature does not carry
            # (imbalance / depth_1pct_usd are the history values, bit for bit).
            "state": {"ref_depth_usd": self._ref_depth[slots].tolist()},
        }
        mk = self._market_out.tolist()
        market = {
            "median_imbalance": mk[K.MKT_MEDIAN_IMBALANCE],
            "agreement_pct": mk[K.MKT_AGREEMENT_PCT],
            "depth_pressure": mk[K.MKT_DEPTH_PRESSURE],
            "notional_pressure": mk[K.MKT_NOTIONAL_PRESSURE],
        }
        macro = {
            "cascade_count": int(mk[K.MKT_CASCADE_COUNT]),
            "cascade_regime": K.REGIME_NAMES[int(mk[K.MKT_CASCADE_REGIME])],
            "depth_velocity": mk[K.MKT_DEPTH_VELOCITY],
            "acceleration": mk[K.MKT_ACCELERATION],
            "depth_ref_usd": mk[K.MKT_DEPTH_REF_USD],
        }
        return self._record(bar_idx, bar_ts, columns, market, macro)

    def _record(self, bar_idx: int, bar_ts: float, columns: dict[str, Any],
                market: dict[str, Any] | None, macro: dict[str, Any] | None) -> BarRecord:
        # Plain dicts and lists at runtime (the TypedDicts document the shape): no per-field copy.
        rec: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "bar_idx": bar_idx,
            "bar_ts": bar_ts,
            "n_assets": len(self._symbols),
            "n_present": len(columns["symbols"]),
            "market": market,
            "macro": macro,
            "degraded": self.degraded,
            "universe": self.universe_info(),
            "gap_bars": self._gap_bars,
        }
        rec.update(columns)
        return cast(BarRecord, rec)

    def universe_info(self) -> dict[str, Any]:
        """The universe of the cross-asset depth: ``{"configured": bool, "size": n, "hash": hex}``."""
        if self._universe_dirty:
            self._rebuild_universe()
        return dict(self._universe_info)

    def _rebuild_universe(self) -> None:
        members = self.universe if self.universe is not None else tuple(sorted(self._symbols))
        slots = [self._slots.get(sym, -1) for sym in members]
        # An empty universe (nothing configured, nothing seen) only happens on empty bars,
        # which never reach the kernel; keep one slot so the kernel never divides by zero.
        self._universe_slots = np.array(slots if slots else [-1], dtype=np.int64)
        self._universe_info = {"configured": self.universe is not None, "size": len(members),
                               "hash": universe_hash(members)}
        self._universe_dirty = False

    def _note_empty_bar(self, bar_idx: int) -> None:
        self._empty_streak += 1
        if not self.degraded and self._empty_streak >= self.params.degraded_after_bars:
            self.degraded = True
            log.warning("feature input degraded bar_idx=%d empty_bars=%d n_assets=%d",
                        bar_idx, self._empty_streak, len(self._symbols))

    def _add_asset(self, symbol: str) -> None:
        if SYMBOL_RE.fullmatch(symbol) is None:
            raise ValueError(f"invalid symbol {symbol!r}")
        slot = len(self._symbols)
        if slot >= self.capacity:
            self._grow(2 * self.capacity)
        self._slots[symbol] = slot
        self._symbols.append(symbol)
        self._universe_dirty = True

    def _grow(self, cap: int) -> None:
        def grown(a: np.ndarray) -> np.ndarray:
            out = np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
            out[: a.shape[0]] = a
            return out

        self._ref_depth = grown(self._ref_depth)
        self._n_obs = grown(self._n_obs)
        self._imb_hist = grown(self._imb_hist)
        self._depth_hist = grown(self._depth_hist)

    # -- changelog: advance the state by a record ------------------------------------------

    def apply_record(self, record: Mapping[str, Any]) -> None:
        """Advance the state by one schema-3 record exactly as ``step()`` did when it produced it
        (snapshot + changelog: a checkpoint's state, then the records written since).

        The record must continue this state: ``bar_idx - 1 - gap_bars`` is the last bar (``gap_bars``
        0 when there is none), its ``n_assets`` / ``universe`` / ``degraded`` are what this state
        gives, and each present asset's ``state.ref_depth_usd`` is its EMA update from this
        state's reference and the record's depth (a record of another lineage, e.g. a cold-started
        writer, is refused here). ValueError, with the state unchanged, otherwise. Pure (no I/O);
        the values may be lists (decoded JSON) or numpy arrays.
        """
        if record.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"record schema {record.get('schema')!r} is not {SCHEMA_VERSION}")
        bar_idx = record.get("bar_idx")
        gap = record.get("gap_bars")
        if type(bar_idx) is not int or type(gap) is not int or gap < 0:
            raise ValueError(f"record bar_idx / gap_bars must be ints (gap >= 0), got {bar_idx!r} / {gap!r}")
        last = self.last_bar_idx
        if (last is None and gap != 0) or (last is not None and bar_idx - 1 - gap != last):
            raise ValueError(f"record of bar {bar_idx} (gap_bars {gap}) does not follow the last bar {last}")
        symbols = record.get("symbols")
        n = record.get("n_present")
        if not isinstance(symbols, list) or type(n) is not int or len(symbols) != n:
            raise ValueError("record symbols must be a list of n_present names")
        if any(type(s) is not str or SYMBOL_RE.fullmatch(s) is None for s in symbols) or \
                any(a >= b for a, b in zip(symbols, symbols[1:])):
            raise ValueError("record symbols must be valid distinct symbols in sorted order")
        new = [s for s in symbols if s not in self._slots]
        n_assets = len(self._symbols) + len(new)
        if record.get("n_assets") != n_assets:
            raise ValueError(f"record n_assets {record.get('n_assets')!r} != {n_assets} assets after this bar")
        members = self.universe if self.universe is not None else tuple(sorted([*self._symbols, *new]))
        universe = {"configured": self.universe is not None, "size": len(members), "hash": universe_hash(members)}
        if record.get("universe") != universe:
            raise ValueError(f"record universe {record.get('universe')!r} differs from this state's {universe}")

        if n == 0:
            streak = self._empty_streak + 1
            degraded = self.degraded or streak >= self.params.degraded_after_bars
            if record.get("degraded") is not degraded:
                raise ValueError(f"record degraded {record.get('degraded')!r}, this state gives {degraded}")
            for sym in new:  # none: an empty bar names no asset
                self._add_asset(sym)
            self._empty_streak = streak
            self.degraded = degraded
            self.last_bar_idx = bar_idx
            self._gap_bars = gap
            return

        if record.get("degraded") is not False:
            raise ValueError("a record with assets present must say degraded false")
        depth = _record_column(record, "placement", "depth_1pct_usd", n)
        imbalance = _record_column(record, "signal", "imbalance", n)
        ref = _record_column(record, "state", "ref_depth_usd", n)
        macro = record.get("macro")
        if not isinstance(macro, Mapping):
            raise ValueError("a record with assets present must have a macro block")
        depth_ref = _record_number(macro, "depth_ref_usd")
        velocity = _record_number(macro, "depth_velocity")
        # The EMA reference is the one state value a record carries rather than implies: check it
        # continues this state (bit for bit, the kernel's formula), so a record of another lineage
        # is refused instead of silently mixed in.
        known = np.fromiter((self._slots.get(s, -1) for s in symbols), dtype=np.int64, count=n)
        seen = known >= 0
        prev_n = np.where(seen, self._n_obs[np.where(seen, known, 0)], 0)
        prev_ref = np.where(seen, self._ref_depth[np.where(seen, known, 0)], 0.0)
        a = self.params.ema_alpha
        expected = np.where(prev_n == 0, depth, (1.0 - a) * prev_ref + a * depth)
        if not np.array_equal(expected, ref):
            bad = int(np.flatnonzero(expected != ref)[0])
            raise ValueError(f"record ref_depth_usd of {symbols[bad]} ({ref[bad]!r}) does not continue this "
                             f"state's EMA ({expected[bad]!r})")

        for sym in new:  # sorted: the slots step() assigned
            self._add_asset(sym)
        slots = np.fromiter((self._slots[s] for s in symbols), dtype=np.int64, count=n)
        t = self._n_obs[slots]
        self._imb_hist[slots, t % self._imb_hist.shape[1]] = imbalance
        self._depth_hist[slots, t % self._depth_hist.shape[1]] = depth
        self._n_obs[slots] = t + 1
        self._ref_depth[slots] = ref
        m = int(self._market_n[0])
        self._market_hist[m % self._market_hist.shape[0]] = depth_ref
        self._market_n[0] = m + 1
        self._prev_velocity[0] = velocity
        self._empty_streak = 0
        self.degraded = False
        self.last_bar_idx = bar_idx
        self._gap_bars = gap

    def copy(self) -> FeatureEngine:
        """An independent engine in the same state (a standby steps a copy of its leader's state)."""
        other = FeatureEngine.__new__(FeatureEngine)
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                value = value.copy()
            elif type(value) in (dict, list, set):
                value = type(value)(value)  # of immutable items: symbols, slots, universe info
            elif not isinstance(value, (int, float, str, tuple, FeatureParams, type(None))):
                value = copy.deepcopy(value)
            setattr(other, name, value)
        return other

    # -- state export / import -------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """The full engine state as plain JSON-serialisable data (floats round-trip exactly)."""
        n = len(self._symbols)
        return {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "params": self.params.to_dict(),
            "universe": None if self.universe is None else list(self.universe),
            "assets": list(self._symbols),
            "n_obs": self._n_obs[:n].tolist(),
            "ref_depth": self._ref_depth[:n].tolist(),
            "imbalance_history": self._imb_hist[:n].tolist(),
            "depth_history": self._depth_hist[:n].tolist(),
            "market": {
                "n_obs": int(self._market_n[0]),
                "depth_ref_history": self._market_hist.tolist(),
                "prev_depth_velocity": float(self._prev_velocity[0]),
            },
            "empty_streak": self._empty_streak,
            "degraded": self.degraded,
            "last_bar_idx": self.last_bar_idx,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], params: FeatureParams, *,
                   universe: Iterable[str] | None = None) -> FeatureEngine:
        """Rebuild an engine from ``export_state()``; StateMismatch if it does not fit ``params``
        and ``universe`` (the configured asset list, None = every asset seen)."""
        if not isinstance(state, Mapping):
            raise StateMismatch(f"state must be a mapping, got {type(state).__name__}")
        if state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
            raise StateMismatch(
                f"state kind/version {state.get('kind')!r}/{state.get('version')!r}, "
                f"expected {STATE_KIND!r}/{STATE_VERSION}"
            )
        if state.get("params") != params.to_dict():
            raise StateMismatch(f"state params {state.get('params')!r} differ from {params.to_dict()!r}")
        wanted = normalise_universe(universe)
        stored = state.get("universe")
        if (None if stored is None else tuple(stored) if type(stored) is list else stored) != wanted:
            raise StateMismatch(f"state universe {_universe_text(stored)} differs from the configured "
                                f"{_universe_text(wanted)}")
        try:
            return cls._restore(state, params, wanted)
        except StateMismatch:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise StateMismatch(f"malformed engine state: {exc}") from None

    @classmethod
    def _restore(cls, state: Mapping[str, Any], params: FeatureParams,
                 universe: tuple[str, ...] | None) -> FeatureEngine:
        symbols = state["assets"]
        if type(symbols) is not list or len(set(symbols)) != len(symbols):
            raise StateMismatch("state assets must be a list of distinct symbols")
        n = len(symbols)
        engine = cls(params, universe=universe, initial_capacity=max(64, n))
        for sym in symbols:
            if type(sym) is not str:
                raise StateMismatch(f"state asset {sym!r} is not a string")
            engine._add_asset(sym)

        n_obs = _int_array(state["n_obs"], (n,), "n_obs")
        ref_depth = _float_array(state["ref_depth"], (n,), "ref_depth")
        imb = _float_array(state["imbalance_history"], (n, params.imbalance_lookback), "imbalance_history")
        depth = _float_array(state["depth_history"], (n, params.depth_lookback), "depth_history")
        market = state["market"]
        market_n = _int_array([market["n_obs"]], (1,), "market.n_obs")
        market_hist = _float_array(market["depth_ref_history"], (params.depth_lookback,),
                                   "market.depth_ref_history")
        prev_velocity = _float_array([market["prev_depth_velocity"]], (1,), "market.prev_depth_velocity")
        empty_streak = state["empty_streak"]
        degraded = state["degraded"]
        last_bar_idx = state["last_bar_idx"]
        if type(empty_streak) is not int or empty_streak < 0:
            raise StateMismatch(f"empty_streak must be an int >= 0, got {empty_streak!r}")
        if type(degraded) is not bool:
            raise StateMismatch(f"degraded must be a bool, got {degraded!r}")
        if last_bar_idx is not None and type(last_bar_idx) is not int:
            raise StateMismatch(f"last_bar_idx must be an int or null, got {last_bar_idx!r}")

        engine._n_obs[:n] = n_obs
        engine._ref_depth[:n] = ref_depth
        engine._imb_hist[:n] = imb
        engine._depth_hist[:n] = depth
        engine._market_n[:] = market_n
        engine._market_hist[:] = market_hist
        engine._prev_velocity[:] = prev_velocity
        engine._empty_streak = empty_streak
        engine.degraded = degraded
        engine.last_bar_idx = last_bar_idx
        return engine


def _pack(sides: list[np.ndarray]) -> np.ndarray:
    """One float64 array of the snapshots' bands, in order. Snapshot holds native float64
    C-contiguous arrays (its __post_init__), whose bytes join at a fraction of np.concatenate's
    per-array cost; np.concatenate covers anything unexpected."""
    try:
        return np.frombuffer(b"".join(sides), dtype=np.float64)  # type: ignore[arg-type]  # ndarrays are bytes-like
    except (TypeError, BufferError, ValueError):  # not a buffer, a strided view, not whole float64s
        return np.concatenate(sides).astype(np.float64, copy=False)


_SEQ_TYPES = frozenset((int, type(None)))


def _empty_columns() -> dict[str, Any]:
    """The per-asset part of a bar without assets: every column empty."""
    return {"symbols": [], "ts": [], "age_ms": [], "seq": [],
            "placement": {f: [] for f in PLACEMENT_FIELDS}, "signal": {f: [] for f in SIGNAL_FIELDS},
            "state": {f: [] for f in STATE_FIELDS}}


def _record_column(record: Mapping[str, Any], group: str, name: str, n: int) -> np.ndarray:
    """``record[group][name]`` as float64[n] of finite numbers; ValueError otherwise."""
    block = record.get(group)
    values = block.get(name) if isinstance(block, Mapping) else None
    try:
        # len() of a number (a malformed record's column) is a TypeError: still a refusal.
        if values is None or isinstance(values, (str, bytes, Mapping)) or len(values) != n:
            raise ValueError
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"record {group}.{name} must be a list of {n} numbers") from None
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise ValueError(f"record {group}.{name} must be {n} finite numbers")
    return arr


def _record_number(block: Mapping[str, Any], name: str) -> float:
    value = block.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"record macro.{name} must be a finite number, got {value!r}")
    return float(value)


def normalise_universe(universe: Iterable[str] | None) -> tuple[str, ...] | None:
    """The configured universe as sorted distinct valid symbols (None stays None); ValueError if bad."""
    if universe is None:
        return None
    if isinstance(universe, str):
        raise ValueError("universe must be a collection of symbols, not a string")
    members = tuple(sorted(set(universe)))
    if not members:
        raise ValueError("universe must name at least one symbol (or be None for every asset seen)")
    for sym in members:
        if type(sym) is not str or SYMBOL_RE.fullmatch(sym) is None:
            raise ValueError(f"invalid symbol {sym!r} in universe")
    return members


def _universe_text(universe: Any) -> str:
    if universe is None:
        return "(every asset seen)"
    if isinstance(universe, (list, tuple)):
        return f"of {len(universe)} assets ({universe_hash([str(s) for s in universe])})"
    return repr(universe)[:60]


def _float_array(values: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise StateMismatch(f"state {name} must be numbers")
    arr = np.asarray(values)
    if arr.size == 0 and arr.shape[:1] == shape[:1]:  # no assets yet: [] for any row width
        return np.zeros(shape, dtype=np.float64)
    if arr.shape != shape or arr.dtype.kind not in "if":
        raise StateMismatch(f"state {name} has shape {arr.shape} / dtype {arr.dtype}, expected {shape} numbers")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise StateMismatch(f"state {name} holds non-finite values")
    return arr


def _int_array(values: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise StateMismatch(f"state {name} must be integers")
    arr = np.asarray(values)
    if arr.size == 0 and arr.shape == shape:
        return np.zeros(shape, dtype=np.int64)
    if arr.shape != shape or arr.dtype.kind != "i":
        raise StateMismatch(f"state {name} has shape {arr.shape} / dtype {arr.dtype}, expected {shape} ints")
    if (arr < 0).any():
        raise StateMismatch(f"state {name} holds negative counts")
    return arr.astype(np.int64)

