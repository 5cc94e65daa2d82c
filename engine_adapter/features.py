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

Records (schema 3, columnar) are decoded once, on arrival, by ``decode_bar`` into a
``BarFeatures`` whose assets are columns (``AssetColumns``: a few arrays, no per-asset object,
so a cache of many bars costs little memory and gives the garbage collector almost nothing to
scan). A bar's present symbols are ids into one shared table of every symbol seen
(``SymbolTable`` over ``SymbolUniverse``): two small int arrays a bar, however often the list
changes (illiquid assets drifting in and out of ``max_age_s`` change it almost every bar).
The dataclasses the trader reads are made only for the bar being read: prepared for the
newest bar by the cache on the inserting thread, made on demand (one asset) for others. Decoded
bars are immutable and shared by every reader thread. This module imports only the stdlib,
orjson and obf_contract.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import chain, repeat
from sys import intern
from typing import Any, Literal, TypeGuard, TypeVar

import orjson

# The record schema this adapter reads, and its columnar shape check.
from obf_contract.record import PLACEMENT_FIELDS, SCHEMA_VERSION, SIGNAL_FIELDS, check_columns

CascadeRegime = Literal["CALM", "STRESS", "CASCADE"]
_T = TypeVar("_T")
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


class SymbolUniverse:
    """Every symbol the decoder has seen (the superset of the bars' symbol lists), each with a
    fixed id: ``names[id]`` (interned str) and ``ids`` (symbol -> id). Append-only (ids never
    change, so a bar's ids stay valid while the universe grows), shared by every bar decoded
    while it is current; at most ``UNIVERSE_MAX`` symbols, then the decoder starts a new one."""

    __slots__ = ("names", "ids", "recent", "wanted_memo")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        # Recently built tables by their id bytes: bars with the same symbol list share one.
        self.recent: dict[bytes, SymbolTable] = {}
        # The trader's last wanted set -> (universe size then, the ids of its known symbols).
        self.wanted_memo: tuple[AbstractSet[str] | None, int, frozenset[int]] = (None, -1, frozenset())

    def add(self, symbols: Iterable[str]) -> None:
        """Give each symbol not known yet the next id (callers hold the decoder's lock)."""
        for s in symbols:
            if s not in self.ids:
                s = intern(s)
                self.ids[s] = len(self.names)
                self.names.append(s)


class SymbolTable(AbstractSet[str]):
    """The present symbols of one bar, as ids into the shared ``SymbolUniverse``: no per-symbol
    object (no str, dict or set of its own), two small int arrays. ``order[i]`` is the id of the
    bar's i-th symbol (the record's sorted order); ``slot[id]`` is that symbol's position, -1 when
    absent (ids beyond ``len(slot)`` are absent too): a presence mask that also indexes the
    columns. 2 B an asset plus 2 B a symbol of the superset (1.7 kB at 400 of 440, int16 while
    ids and positions fit), no per-symbol reference for the garbage collector to visit; bars with
    one of the last few lists share its table. A set of symbols (``in``, iteration in the
    record's order, ``==`` and hash as a frozenset's); set operations return frozensets."""

    __slots__ = ("universe", "order", "slot")

    def __init__(self, universe: SymbolUniverse, order: array[int], slot: array[int]) -> None:
        self.universe = universe
        self.order = order
        self.slot = slot

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> frozenset[Any]:
        return frozenset(it)

    def position(self, symbol: str) -> int:
        """The symbol's position in the bar's columns; KeyError if absent."""
        i = self.universe.ids[symbol]
        slot = self.slot
        if i < len(slot):
            i = slot[i]
            if i >= 0:
                return i
        raise KeyError(symbol)

    def __contains__(self, symbol: object) -> bool:
        i = self.universe.ids.get(symbol)  # type: ignore[call-overload]
        slot = self.slot
        return i is not None and i < len(slot) and slot[i] >= 0

    def __iter__(self) -> Iterator[str]:
        return map(self.universe.names.__getitem__, self.order)

    def __len__(self) -> int:
        return len(self.order)

    def __hash__(self) -> int:  # hashable like the frozenset it replaces (equal sets, equal hash)
        return self._hash()

    @property
    def names(self) -> tuple[str, ...]:
        """The bar's symbols in the record's (sorted) order (a new tuple)."""
        return tuple(self)

    def count_absent(self, wanted: AbstractSet[str]) -> int:
        """How many of ``wanted`` are absent from the bar: one C-level set intersection with the
        bar's ids (~10 us at 400 assets); the ids of ``wanted`` are memoised on the universe for
        the same set object until the universe grows."""
        u = self.universe
        known, size, ids = u.wanted_memo
        if known is not wanted or size != len(u.names):
            size = len(u.names)
            ids = frozenset(u.ids[s] for s in wanted if s in u.ids)
            u.wanted_memo = (wanted, size, ids)
        return len(wanted) - len(ids.intersection(self.order))


# Column order of ``AssetColumns.values``: ts, then the placement fields, then the signal fields,
# each a block of n values (n = the bar's present assets).
_P0, _S0, _NCOL = 1, 1 + len(PLACEMENT_FIELDS), 1 + len(PLACEMENT_FIELDS) + len(SIGNAL_FIELDS)
NO_SEQ = -(2 ** 63)  # the seq column's "None" (a record's null or non-int seq)


class AssetColumns(Mapping[str, AssetFeatures]):
    """A decoded bar's assets as columns: the read-only ``BarFeatures.assets`` of a decoded bar.

    Holds no per-asset object: one ``array('d')`` of ts + the nine features (8 B a value), the
    seq column (``array('q')``, or None when every seq is null) and the age_ms column only when it
    is not ``(bar_ts - ts) * 1000`` exactly (it is, from the worker). ``self[symbol]`` builds that
    asset's ``AssetFeatures``; ``placement(symbol)`` / ``signal(symbol)`` one dataclass. For the
    newest bar the cache ``prepare()``s the trader's dicts (symbol -> placement / signal /
    AssetFeatures) on the inserting thread, so the trader's getters and ``self[symbol]`` are one
    dict hit; ``release()`` drops them once a newer bar is prepared.
    """

    __slots__ = ("_table", "_values", "_age", "_seq", "_bar_ts", "_prepared")

    def __init__(self, table: SymbolTable, values: array[float], age: array[float] | None,
                 seq: array[int] | tuple[int | None, ...] | None, bar_ts: float) -> None:
        self._table = table
        self._values = values
        self._age = age
        self._seq = seq
        self._bar_ts = bar_ts
        self._prepared: tuple[dict[str, OBPlacementFeatures], dict[str, OBSignalFeatures],
                              dict[str, AssetFeatures]] | None = None

    @property
    def table(self) -> SymbolTable:
        return self._table

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._table

    def __getitem__(self, symbol: str) -> AssetFeatures:
        prepared = self._prepared
        if prepared is not None:
            return prepared[2][symbol]
        i = self._table.position(symbol)
        n = len(self._table)
        v = self._values
        ts = v[i]
        seq = self._seq
        s = None if seq is None else seq[i]
        return AssetFeatures(
            ts, (self._bar_ts - ts) * 1000.0 if self._age is None else self._age[i],
            None if s == NO_SEQ else s,
            OBPlacementFeatures(*v[_P0 * n + i:_S0 * n:n]), OBSignalFeatures(*v[_S0 * n + i::n]))

    def placement(self, symbol: str) -> OBPlacementFeatures:
        """``symbol``'s placement features; KeyError if absent."""
        prepared = self._prepared
        if prepared is not None:
            return prepared[0][symbol]
        i = self._table.position(symbol)
        n = len(self._table)
        return OBPlacementFeatures(*self._values[_P0 * n + i:_S0 * n:n])

    def signal(self, symbol: str) -> OBSignalFeatures:
        """``symbol``'s signal features; KeyError if absent."""
        prepared = self._prepared
        if prepared is not None:
            return prepared[1][symbol]
        i = self._table.position(symbol)
        n = len(self._table)
        return OBSignalFeatures(*self._values[_S0 * n + i::n])

    def prepare(self) -> None:
        """Build the trader's symbol -> placement / signal / AssetFeatures dicts (~1 us an asset;
        not on the trader's thread). Idempotent."""
        if self._prepared is not None:
            return
        names, v, n = self._table.names, self._values, len(self._table)
        placement = _build(OBPlacementFeatures, n, (v[k * n:(k + 1) * n] for k in range(_P0, _S0)))
        signal = _build(OBSignalFeatures, n, (v[k * n:(k + 1) * n] for k in range(_S0, _NCOL)))
        ts = v[:n]
        age = [(self._bar_ts - t) * 1000.0 for t in ts] if self._age is None else self._age
        seq = self._seq
        seqs: Iterable[int | None] = repeat(None, n) if seq is None else \
            [None if s == NO_SEQ else s for s in seq]
        assets = _build(AssetFeatures, n, (ts, age, seqs, placement, signal))
        self._prepared = (dict(zip(names, placement, strict=True)), dict(zip(names, signal, strict=True)),
                          dict(zip(names, assets, strict=True)))

    def release(self) -> object:
        """Drop the prepared dicts (a reader holding them keeps a consistent copy); returns them
        (None if there were none), so the caller chooses the thread that frees them."""
        prepared, self._prepared = self._prepared, None
        return prepared

    @property
    def prepared(self) -> tuple[Mapping[str, OBPlacementFeatures], Mapping[str, OBSignalFeatures]] | None:
        """The prepared (placement, signal) dicts, or None."""
        prepared = self._prepared
        return None if prepared is None else (prepared[0], prepared[1])

    def nbytes(self) -> int:
        """Bytes of the column buffers (for tests and measurements)."""
        total = self._values.itemsize * len(self._values)
        for col in (self._age, self._seq):
            if isinstance(col, array):
                total += col.itemsize * len(col)
        return total


def _build(cls: type[_T], n: int, columns: Iterable[Iterable[Any]]) -> list[_T]:
    """``n`` objects of the frozen slotted dataclass ``cls``, field k of object i = ``columns[k][i]``.
    Column by column through the slot descriptors (C-level loops) rather than ``n`` calls of the
    frozen ``__init__`` (one ``object.__setattr__`` a field): the same objects (equal, same
    hash) in about a third of the time."""
    objs = list(map(object.__new__, repeat(cls, n)))
    slots = vars(cls)
    for name, col in zip(slots["__slots__"], columns, strict=True):
        deque(map(slots[name].__set__, objs, col), maxlen=0)
    return objs


@dataclass(frozen=True, slots=True, eq=False)
class BarFeatures:
    """A decoded bar record: every asset present in bar ``bar_idx`` plus the market/macro view.

    bar_ts: unix s (bar close). ``market`` / ``macro`` are None when no asset was present.
    ``assets`` is read-only (for a decoded bar an ``AssetColumns``: each lookup builds that
    asset's ``AssetFeatures``). ``degraded``: the worker flagged its input as degraded.
    ``symbols``: the keys of ``assets`` as a set (for a decoded bar its ``SymbolTable``; a frozenset
    otherwise); consecutive bars with the same assets share one object.
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
    symbols: AbstractSet[str] = frozenset()
    universe_size: int | None = None  # the worker's universe of the cross-asset depth (record "universe")
    universe_hash: str | None = None  # obf_contract.record.universe_hash of its symbols

    def __post_init__(self) -> None:
        if len(self.symbols) != len(self.assets):  # built without symbols (decode_bar always sets them)
            object.__setattr__(self, "symbols", frozenset(self.assets))


def placement_of(bar: BarFeatures, symbol: str) -> OBPlacementFeatures | None:
    """``symbol``'s placement features in ``bar``, or None if absent (one object made, at most)."""
    assets = bar.assets
    try:
        if isinstance(assets, AssetColumns):
            return assets.placement(symbol)
        return assets[symbol].placement
    except KeyError:
        return None


def signal_of(bar: BarFeatures, symbol: str) -> OBSignalFeatures | None:
    """``symbol``'s signal features in ``bar``, or None if absent (one object made, at most)."""
    assets = bar.assets
    try:
        if isinstance(assets, AssetColumns):
            return assets.signal(symbol)
        return assets[symbol].signal
    except KeyError:
        return None


class _FieldView(Mapping[str, Any]):
    """symbol -> one feature group of a bar, made on lookup (a bar without prepared dicts)."""

    __slots__ = ("_get", "_keys")

    def __init__(self, get: Callable[[str], Any], keys: Mapping[str, Any] | AbstractSet[str]) -> None:
        self._get = get
        self._keys = keys

    def __getitem__(self, symbol: str) -> Any:
        return self._get(symbol)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._keys


def trader_maps(bar: BarFeatures) -> tuple[Mapping[str, OBPlacementFeatures], Mapping[str, OBSignalFeatures], bool]:
    """What the trader's getters read for ``bar``: (symbol -> placement, symbol -> signal, prepared).
    The bar's prepared dicts (one dict hit a lookup) when it has them, else views that make one
    asset's object per lookup. KeyError for an absent symbol either way."""
    assets = bar.assets
    if isinstance(assets, AssetColumns):
        prepared = assets.prepared
        if prepared is not None:
            return prepared[0], prepared[1], True
        table = assets.table
        return _FieldView(assets.placement, table), _FieldView(assets.signal, table), False
    return (_FieldView(lambda s: assets[s].placement, assets),
            _FieldView(lambda s: assets[s].signal, assets), False)


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
    """Build ``BarFeatures`` from a decoded record dict (schema 3, docs/contract.md); RecordRejected
    if malformed. Every per-asset problem (the columnar shape, a value that is not a finite
    number) is reason "assets"."""
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
    bar_ts = float(bar_ts)
    try:
        check_columns(rec, state=False)  # only what the adapter reads: never the worker's state block
        assets = _columns(rec, bar_ts)
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
    n_present = len(assets)
    return BarFeatures(
        bar_idx=bar_idx,
        bar_ts=bar_ts,
        n_assets=n_assets if type(n_assets) is int else n_present,
        n_present=n_present,
        assets=assets,
        market=market,
        macro=macro,
        degraded=bool(rec.get("degraded")) or bool(producer.get("degraded")),
        worker_id=intern(worker_id) if type(worker_id) is str else None,
        computed_at=float(computed_at) if _is_number(computed_at) else None,
        symbols=assets.table,
        universe_size=u_size if type(u_size) is int else None,
        universe_hash=intern(u_hash) if type(u_hash) is str else None,
    )


# The current superset of every decoded symbol list, and the lock of its growth and table memo
# (the listener, fetch and seed threads decode concurrently; readers look ids up without it).
UNIVERSE_MAX = 1 << 14  # symbols; then a new universe starts (bars keep theirs), so memory stays bounded
_RECENT_MAX = 8  # tables remembered per universe: a few lists cover seeds decoding older bars meanwhile
_universe = SymbolUniverse()
_universe_lock = threading.Lock()


def symbol_table(symbols: list[str] | tuple[str, ...]) -> SymbolTable:
    """The table of a (sorted, distinct) symbol list: the same object as the previous bar's when
    the list is one of the last few decoded."""
    global _universe
    u = _universe
    try:
        ids = list(map(u.ids.__getitem__, symbols))
    except KeyError:  # a new symbol: grow the universe (or start a new one once it is full)
        with _universe_lock:
            u = _universe
            if len(u.names) + sum(s not in u.ids for s in symbols) > UNIVERSE_MAX:
                u = _universe = SymbolUniverse()
            u.add(symbols)
        ids = list(map(u.ids.__getitem__, symbols))
    n = len(ids)
    top = max(ids, default=-1)
    order = array("h" if top < 1 << 15 else "i", ids)
    key = order.typecode.encode() + order.tobytes()
    with _universe_lock:
        table = u.recent.pop(key, None)
        if table is None:
            slot = array("h" if n < 1 << 15 else "i", [-1]) * (top + 1)
            deque(map(slot.__setitem__, ids, range(n)), maxlen=0)
            table = SymbolTable(u, order, slot)
            while len(u.recent) >= _RECENT_MAX:
                del u.recent[next(iter(u.recent))]
        u.recent[key] = table  # re-inserted: the most recently used is the last one evicted
    return table


def _is_number(x: object) -> TypeGuard[int | float]:
    """An int or float, not a bool (``type`` rather than isinstance: no subclasses either)."""
    return type(x) in (int, float)


_FLOAT_ONLY = frozenset({float})


def _columns(rec: dict[str, Any], bar_ts: float) -> AssetColumns:
    """The per-asset columns of a record that passed ``check_columns``; TypeError/ValueError
    naming the first value that is not a finite number."""
    placement, signal = rec["placement"], rec["signal"]
    names = ["ts", *(f"placement.{f}" for f in PLACEMENT_FIELDS), *(f"signal.{f}" for f in SIGNAL_FIELDS), "age_ms"]
    cols: list[list[Any]] = [rec["ts"], *(placement[f] for f in PLACEMENT_FIELDS),
                             *(signal[f] for f in SIGNAL_FIELDS), rec["age_ms"]]
    types: set[type] = set()
    for col in cols:
        types.update(map(type, col))
    # What the worker writes: all floats, all finite (a NaN or inf anywhere makes a column sum
    # non-finite; so may an overflow, then the per-value check below accepts the record).
    if not types <= _FLOAT_ONLY or any(t - t != 0.0 for t in map(sum, cols)):
        symbols = rec["symbols"]
        for name, col in zip(names, cols, strict=True):
            for sym, v in zip(symbols, col, strict=True):
                # bool is an int subclass: refuse it explicitly, it is never a feature value.
                if type(v) is not float and type(v) is not int:
                    raise TypeError(f"{name} of {sym} is {v!r}, not a number")
                if not math.isfinite(v):
                    raise ValueError(f"{name} of {sym} is not finite")
    table = symbol_table(rec["symbols"])
    # From one list: array() then sizes its buffer exactly (fromlist/extend over-allocate).
    values = array("d", list(chain.from_iterable(cols[:_NCOL])))  # ints become floats here
    n = len(table)
    raw_age = cols[_NCOL]
    # age_ms is (bar_ts - ts) * 1000 from the worker: then it is not stored (1/11 of the bar).
    derived = [(bar_ts - t) * 1000.0 for t in values[:n]]
    age = None if derived == raw_age else array("d", raw_age)
    return AssetColumns(table, values, age, _seq_column(rec["seq"]), bar_ts)


def _seq_column(seq: list[Any]) -> array[int] | tuple[int | None, ...] | None:
    """The seq column: None if no seq is an int, else ``array('q')`` with ``NO_SEQ`` for the
    others (a non-int seq reads as None, as before); a tuple if one does not fit in 64 bits."""
    kinds = set(map(type, seq))
    if int not in kinds:
        return None
    if kinds != {int}:
        seq = [s if type(s) is int else None for s in seq]
    try:
        return array("q", seq if kinds == {int} else [NO_SEQ if s is None else s for s in seq])
    except OverflowError:
        return tuple(seq)


def _num(obj: Mapping[str, Any], name: str) -> float:
    v = obj[name]
    # bool is an int subclass: refuse it explicitly, it is never a feature value.
    if type(v) is not float and type(v) is not int:
        raise TypeError(f"{name} is {v!r}, not a number")
    v = float(v)
    if v - v != 0.0:  # NaN or inf (cannot come from JSON, but from a hand-built dict)
        raise ValueError(f"{name} is not finite")
    return v


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
