"""BarCache: the adapter's bounded, thread-safe store of decoded bars and its resolution rules.

Pure (no I/O): the grid listener thread inserts ``BarFeatures``, the trader thread resolves
lookups. Every operation holds one short lock; lookups are a dict get (exact bar) or a bisect
(fallback), so they cost microseconds. Cached bars hold their assets as columns (no per-asset
object, see ``engine_adapter.features``); the newest bar alone is *prepared* (its trader-facing
objects built), on the inserting thread before the lock (``insert``, and ``insert_many`` which
seeds and fetches use), and a bar stops being prepared once a newer one is.
``version`` changes whenever the contents do and the ``on_change`` hook is called, so a caller
may memoise a resolution and re-use it lock-free until then (the adapter does this for the
trader's current bar).

Resolution of a lookup key (``timestamp_or_idx``):

* a number >= 1e12 is a unix timestamp in milliseconds, a number >= 1e9 one in seconds; either
  selects the newest bar with ``bar_ts <= timestamp``;
* a number below 1e9 is a ``bar_idx``; a non-integral one is truncated like the in-process
  engine's ``int()`` (counted in ``stats().truncated_keys``, logged once), never refused;
* **exact**: the requested bar is cached;
* **fallback**: the newest cached bar *not after* the requested one, at most
  ``stale_after_bars`` bars older (a future bar is never used);
* **default**: no such bar, or it is older than that: callers answer with neutral features.

Numbering restarts (the worker's scan count restarts at UTC midnight, or the upstream scan
number goes back): the newest numbering wins. A bar whose ``bar_ts`` is newer than every cached
bar but whose ``bar_idx`` is lower starts a new numbering: every cached bar (the previous
numbering's) is dropped and bars older than the new numbering's first one are refused
(``ignored["old_numbering"]``). The worker's removal of its keys of the previous numbering is
followed too (``key_removed``): a removed bar is dropped once no newer cached bar remains.
Only the worker's restart drops bars. When the trader's own numbering goes back (its count
restarted before or after the worker's, or it re-steps an older scan), ``trader_restarted``
drops nothing: it sets a floor, the ``bar_ts`` of the trader's previous bar, and until it is
lifted a ``bar_idx`` lookup resolves only to a bar not older than that floor (else default). So a
new number never resolves to the previous numbering's bar of the same number, the new
numbering's bars that arrived first still resolve exact, and a future bar is never used. The
floor itself is allowed: the bar the trader used, e.g. a fallback to the bar it steps back to.
The floor is lifted by the worker's restart (every bar left is newer) or by ``lift_trader_floor``
(the adapter calls it once the trader passes the number it went back from).
"""

from __future__ import annotations

import bisect
import logging
import math
import numbers
import operator
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from engine_adapter.features import AssetColumns, BarFeatures
from obf_contract.timestamps import BadTimestamp, parse_timestamp

log = logging.getLogger(__name__)

TIMESTAMP_MIN = 1e9  # keys at or above this are unix seconds (2001-09-09), below are bar indices
TIMESTAMP_MS_MIN = 1e12  # keys at or above this are unix milliseconds (1e12 s is year 33658)

ResolutionKind = Literal["exact", "fallback", "default"]
EXACT: ResolutionKind = "exact"
FALLBACK: ResolutionKind = "fallback"
DEFAULT: ResolutionKind = "default"


@dataclass(frozen=True, slots=True)
class Resolution:
    """Which bar answers a lookup.

    kind: "exact" | "fallback" | "default". bar_idx / bar_ts: the bar whose features are used
    (None for "default"). requested_idx: the bar asked for; for a timestamp, the bar it falls in
    (estimated from the spacing of the neighbouring cached bars), None if no bar is at or before
    it. age_bars: requested_idx - newest usable bar (0 when exact; set for a stale default too).
    """

    kind: ResolutionKind
    bar_idx: int | None
    requested_idx: int | None
    age_bars: int | None
    bar_ts: float | None = None


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A consistent snapshot of the cache's contents and counters."""

    bars: int
    capacity: int
    oldest_idx: int | None
    newest_idx: int | None
    newest_bar_ts: float | None
    last_insert_at: float | None  # unix s (wall clock) of the last bar inserted
    lookups: dict[str, int]  # resolution kind -> count
    inserted: dict[str, int]  # source ("listener", "seed", "reseed", ...) -> bars newly inserted
    replaced: int  # a cached bar overwritten by a newer write of the same bar_idx
    evicted: int  # dropped to keep at most `capacity` bars
    ignored: dict[str, int] = field(default_factory=dict)  # reason -> bars not inserted
    numbering_restarts: int = 0  # times a newer numbering replaced the cached bars
    removed: int = 0  # cached bars dropped after the worker removed their key
    truncated_keys: int = 0  # non-integral bar_idx lookup keys truncated to an int


def parse_key(timestamp_or_idx: object) -> tuple[bool, int | float]:
    """Classify a lookup key: ``(False, bar_idx)`` or ``(True, unix_seconds)``.

    Accepts ints (numpy ints too), floats (numpy floats too), datetimes (as their POSIX
    timestamp) and ISO-8601 strings (the trader's switchover list names "ISO and float
    timestamps"; a string without a UTC offset is read as UTC; parsed on every call, a rare key
    type). A number >= 1e12 is unix milliseconds, >= 1e9 unix seconds; a non-integral number
    below 1e9 is truncated to its ``int()`` (as the in-process engine does). Raises TypeError for
    other types (bool included) and ValueError for negative or non-finite values or a string that
    is not ISO-8601. The adapter's getters catch both (they never raise on the trader's thread).
    """
    key = cast(Any, timestamp_or_idx)  # narrowed by the type checks below (kept cheap: type() is)
    t = type(key)
    if t is int:
        if key < 0:
            raise ValueError(f"bar_idx must be >= 0, got {key}")
        if key < TIMESTAMP_MIN:
            return False, key
        return True, (key / 1000.0 if key >= TIMESTAMP_MS_MIN else float(key))
    if t is float or isinstance(key, float):
        if not math.isfinite(key):
            raise ValueError(f"timestamp_or_idx must be finite, got {key!r}")
        if key >= TIMESTAMP_MIN:
            return True, (key / 1000.0 if key >= TIMESTAMP_MS_MIN else float(key))
        if key < 0:
            raise ValueError(f"{key!r} is neither a unix timestamp (>= 1e9) nor a bar_idx >= 0")
        return False, int(key)
    if isinstance(key, bool):
        raise TypeError("timestamp_or_idx must be a number, not a bool")
    if isinstance(key, datetime):
        return True, key.timestamp()
    if isinstance(key, str):
        return True, _iso_seconds(key)
    try:
        as_int = operator.index(key)  # numpy integers and friends
    except TypeError:
        if isinstance(key, numbers.Real):  # numpy floats (float32 is not a float subclass)
            return parse_key(float(key))
        raise TypeError(f"timestamp_or_idx must be an int, float, datetime or ISO-8601 str, "
                        f"got {type(key).__name__}") from None
    return parse_key(int(as_int))


def _iso_seconds(text: str) -> float:
    """Unix seconds of an ISO-8601 key: the upstream timestamp rules (``obf_contract.timestamps``),
    with a lower-case ``z`` accepted as UTC too; ValueError otherwise."""
    raw = text.strip()
    try:
        return parse_timestamp(raw[:-1] + "Z" if raw.endswith("z") else raw)
    except BadTimestamp as exc:  # a plain ValueError, as for every other bad key (stats().bad_keys)
        raise ValueError(f"timestamp_or_idx string {text[:40]!r}: {exc}") from None


def _prepare(bar: BarFeatures) -> None:
    assets = bar.assets
    if isinstance(assets, AssetColumns):
        assets.prepare()


def _release(bar: BarFeatures) -> object:
    assets = bar.assets
    return assets.release() if isinstance(assets, AssetColumns) else None


def _is_prepared(bar: BarFeatures) -> bool:
    # A hand-built bar (assets a mapping of AssetFeatures) has its objects already.
    assets = bar.assets
    return not isinstance(assets, AssetColumns) or assets.prepared is not None


class BarCache:
    """The newest ``capacity`` bars by bar_idx, plus lookup counters and arrival notification.

    on_change: called after every insert, replace or eviction, with the lock held and on the
    inserting thread (the client's reactor thread): it must be trivial and must not raise.
    """

    def __init__(self, capacity: int, stale_after_bars: int, *,
                 on_change: Callable[[], None] | None = None) -> None:
        if type(capacity) is not int or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        if type(stale_after_bars) is not int or stale_after_bars < 0:
            raise ValueError(f"stale_after_bars must be an int >= 0, got {stale_after_bars!r}")
        self.capacity = capacity
        self.stale_after_bars = stale_after_bars
        self._cond = threading.Condition(threading.Lock())
        self._bars: dict[int, BarFeatures] = {}
        self._order: list[int] = []  # cached bar_idx, ascending
        self._ts: list[float] = []  # bar_ts aligned with _order (non-decreasing)
        self._lookups = {EXACT: 0, FALLBACK: 0, DEFAULT: 0}
        self._inserted: Counter[str] = Counter()
        self._ignored: Counter[str] = Counter()
        self._replaced = 0
        self._evicted = 0
        self._last_insert_at: float | None = None
        self._numbering_start_ts: float | None = None  # bar_ts of the current numbering's first bar
        self._numbering_restarts = 0
        self._removed_marks: dict[int, None] = {}  # cached bars whose key the worker removed
        self._removed = 0
        self._truncated = 0
        # bar_idx lookups resolve only to bars with a newer bar_ts (the trader's numbering went back)
        self._trader_floor: float | None = None
        self._prepared: BarFeatures | None = None  # the newest bar, when its objects are built
        self._retired: object = None  # the objects of the bar prepared before it (see _track_prepared_locked)
        # Bumped (under the lock) by every insert, replace and eviction. Read without the lock:
        # an int attribute read is atomic, and a reader that sees an old value only re-resolves.
        self.version = 0
        self._on_change = on_change

    # -- writers (listener / seed threads) -------------------------------------------------

    def insert(self, bar: BarFeatures, source: str = "listener", *, replace: bool = True) -> bool:
        """Insert or (if ``replace``) overwrite one bar; True if the cache changed. Never raises.

        A bar that will be the newest is prepared first, on the calling thread outside the lock
        (the listener's: the trader then finds its objects ready)."""
        with self._cond:
            newest = (self._order[-1], self._ts[-1]) if self._order else None
        if newest is None or bar.bar_idx >= newest[0] or bar.bar_ts > newest[1]:
            _prepare(bar)
        with self._cond:
            changed = self._insert_locked(bar, source, replace)
            self._track_prepared_locked()
            if bar is not self._prepared:
                _release(bar)  # not (or no longer) the newest
            if changed:
                self._changed_locked()
        return changed

    def insert_many(self, bars: list[BarFeatures], source: str) -> int:
        """Insert the bars not cached yet (seeding never overwrites a listener update); count
        inserted. The one that will be the newest is prepared first, on the calling thread outside
        the lock (as ``insert`` does), so a reader woken by the insert finds its objects ready."""
        first = self._newest_of(bars)
        if first is not None:
            _prepare(first)
        n = 0
        with self._cond:
            for bar in bars:
                n += self._insert_locked(bar, source, False)
            self._track_prepared_locked()
            if first is not None and first is not self._prepared:
                _release(first)  # not cached, or no longer the newest (a concurrent insert)
            if n:
                self._changed_locked()
        if n:
            self.prepare_newest()  # only if the newest is still unprepared (a rare race): then late
        return n

    def _newest_of(self, bars: list[BarFeatures]) -> BarFeatures | None:
        # The bar of ``bars`` that will be the newest cached one if inserted: the latest in time
        # (a numbering restart drops every bar before it), if it is not cached already (seeding
        # never overwrites) and is newer than the current newest. None if there is none.
        if not bars:
            return None
        bar = max(bars, key=lambda b: (b.bar_ts, b.bar_idx))
        with self._cond:
            if bar.bar_idx in self._bars:
                return None
            newest = (self._order[-1], self._ts[-1]) if self._order else None
        return bar if newest is None or bar.bar_idx > newest[0] or bar.bar_ts > newest[1] else None

    def prepare_newest(self) -> bool:
        """Prepare the newest bar if it is not (outside the lock, on the calling thread; never the
        trader's); True if it was. A memo of the current bar made meanwhile is dropped (version)."""
        with self._cond:
            bar = self._bars[self._order[-1]] if self._order else None
            if bar is None or bar is self._prepared:
                return False
        _prepare(bar)
        with self._cond:
            if not self._order or self._bars[self._order[-1]] is not bar:
                if bar is not self._prepared:
                    _release(bar)
                return False
            self._track_prepared_locked()
            self.version += 1
            self._changed_locked()
        return True

    def _track_prepared_locked(self) -> None:
        # Only the newest bar keeps its prepared objects: every other bar is columns only.
        bar = self._bars[self._order[-1]] if self._order else None
        old = self._prepared
        if bar is old:
            return
        if old is not None:
            # The trader's memo may still hold the released objects and would free them (~1,200
            # objects, tens of us) on its thread when it moves to the new bar. Kept here until the
            # next release instead, so they are freed on an inserting thread.
            self._retired = _release(old)
        self._prepared = bar if bar is not None and _is_prepared(bar) else None

    def _changed_locked(self) -> None:
        # version was bumped by _insert_locked before the hook runs: a reader that installs a
        # memo and then re-checks version cannot miss this change (see the adapter's _memoise).
        self._cond.notify_all()
        if self._on_change is not None:
            self._on_change()

    def _insert_locked(self, bar: BarFeatures, source: str, replace: bool) -> bool:
        idx = bar.bar_idx
        order = self._order
        start = self._numbering_start_ts
        if start is not None and bar.bar_ts < start:
            self._ignored["old_numbering"] += 1
            return False
        if order and idx < order[-1] and bar.bar_ts > self._ts[-1]:
            self._restart_numbering_locked(bar)
        if idx in self._bars:
            if not replace:
                self._ignored["duplicate"] += 1
                return False
            pos = bisect.bisect_left(order, idx)
            if not self._ts_fits(pos, pos + 1, bar.bar_ts):
                return False
            self._bars[idx] = bar
            self._ts[pos] = bar.bar_ts
            self._replaced += 1
            self._last_insert_at = time.time()
            self.version += 1
            return True
        if len(order) >= self.capacity and idx < order[0]:
            self._ignored["too_old"] += 1
            return False
        pos = bisect.bisect_left(order, idx)
        if not self._ts_fits(pos, pos, bar.bar_ts):
            return False
        order.insert(pos, idx)
        self._ts.insert(pos, bar.bar_ts)
        self._bars[idx] = bar
        self._inserted[source] += 1
        self._last_insert_at = time.time()
        while len(order) > self.capacity:
            gone = order.pop(0)
            del self._bars[gone]
            self._removed_marks.pop(gone, None)
            self._ts.pop(0)
            self._evicted += 1
        self.version += 1
        return True

    def _restart_numbering_locked(self, bar: BarFeatures) -> None:
        # Newer in time, lower in number: the worker's numbering restarted. The cached bars are
        # the previous numbering's: their numbers now mean other bars, so they must all go.
        dropped = len(self._order)
        log.info("bar numbering restarted: newest numbering wins bar_idx=%d bar_ts=%.3f previous_newest=%d "
                 "dropped=%d", bar.bar_idx, bar.bar_ts, self._order[-1], dropped)
        # In place (del [:]) or rebound: other methods hold no reference across the lock.
        self._bars = {}
        del self._order[:]
        del self._ts[:]
        self._removed_marks = {}
        self._numbering_start_ts = bar.bar_ts
        self._numbering_restarts += 1
        # Every bar cached from now on is newer than this one, so newer than any trader floor.
        self._trader_floor = None

    def trader_restarted(self, bar_idx: int, previous_bar_ts: float | None = None) -> bool:
        """The trader's numbering went back to ``bar_idx``; nothing is dropped (the worker's restart
        does that). From now on a bar_idx lookup resolves only to a bar whose ``bar_ts`` is at or after
        ``previous_bar_ts`` (unix s: the bar the trader used before going back), until the worker's
        restart or ``lift_trader_floor``. Without ``previous_bar_ts``: the newest cached bar's, if
        its number is above ``bar_idx`` (else nothing to guard). True if the floor changed. Never raises."""
        with self._cond:
            floor = previous_bar_ts
            if floor is None:
                if not self._order or self._order[-1] <= bar_idx:
                    return False
                floor = self._ts[-1]
            if not math.isfinite(floor) or (self._trader_floor is not None and floor <= self._trader_floor):
                return False
            log.info("trader bar numbering went back: bar_idx lookups resolve only to bars after bar_ts=%.3f "
                     "bar_idx=%d", floor, bar_idx)
            self._trader_floor = floor
            self.version += 1
            self._changed_locked()
        return True

    def lift_trader_floor(self) -> bool:
        """Lift the floor set by ``trader_restarted``; True if there was one. Never raises."""
        with self._cond:
            if self._trader_floor is None:
                return False
            self._trader_floor = None
            self.version += 1
            self._changed_locked()
        return True

    @property
    def trader_floor(self) -> float | None:
        """The bar_ts floor of bar_idx lookups set by ``trader_restarted`` (None: none)."""
        return self._trader_floor

    def key_removed(self, bar_idx: int) -> bool:
        """The worker removed key ``bar_idx``: drop it, and every removed bar below it, once no
        newer cached bar remains (its retention of old bars is ignored: the cache keeps more bars
        than the worker). True if the cache changed. Never raises."""
        with self._cond:
            if bar_idx not in self._bars:
                return False
            self._removed_marks[bar_idx] = None
            order = self._order
            dropped = 0
            while order and order[-1] in self._removed_marks:
                gone = order.pop()
                self._ts.pop()
                del self._bars[gone]
                self._removed_marks.pop(gone, None)
                dropped += 1
            if not dropped:
                return False
            self._removed += dropped
            self._track_prepared_locked()
            self.version += 1
            self._changed_locked()
        return True
    def _ts_fits(self, before: int, after: int, bar_ts: float) -> bool:
        # Timestamp lookups bisect on bar_ts, so it must not decrease with bar_idx.
        ts = self._ts
        if (before > 0 and ts[before - 1] > bar_ts) or (after < len(ts) and ts[after] < bar_ts):
            self._ignored["bar_ts_order"] += 1
            return False
        return True

    # -- readers (trader thread) -----------------------------------------------------------

    def get(self, bar_idx: int) -> BarFeatures | None:
        """The cached bar ``bar_idx`` or None (no counters touched)."""
        with self._cond:
            return self._bars.get(bar_idx)

    def __contains__(self, bar_idx: object) -> bool:
        with self._cond:
            return bar_idx in self._bars

    def __len__(self) -> int:
        with self._cond:
            return len(self._order)

    def cached_indices(self) -> list[int]:
        """Every cached bar_idx, ascending."""
        with self._cond:
            return list(self._order)

    def newest(self) -> BarFeatures | None:
        with self._cond:
            return self._bars[self._order[-1]] if self._order else None

    def resolve(self, timestamp_or_idx: object, *, count: bool = True) -> tuple[Resolution, BarFeatures | None]:
        """Apply the resolution rules to a lookup key (see module doc); ``count`` it in ``lookups``."""
        is_ts, key = parse_key(timestamp_or_idx)
        if not is_ts and key != timestamp_or_idx:  # a non-integral number (numpy floats too)
            self.note_truncated(float(cast(Any, timestamp_or_idx)))
        with self._cond:
            if is_ts:
                res, bar = self._resolve_ts(key)
            else:
                res, bar = self._resolve_idx(key)  # type: ignore[arg-type]
            if count:
                self._lookups[res.kind] += 1
        return res, bar

    def note_truncated(self, key: float) -> None:
        """Count a non-integral bar_idx key that was truncated (logged the first time only)."""
        with self._cond:
            self._truncated += 1
            first = self._truncated == 1
        if first:
            log.warning("non-integral bar_idx lookup key %r truncated to %d (as the in-process engine's int()); "
                        "further ones are only counted in stats().cache.truncated_keys", key, int(key))

    def _resolve_idx(self, idx: int) -> tuple[Resolution, BarFeatures | None]:
        bar = self._bars.get(idx)
        floor = self._trader_floor
        if bar is not None and (floor is None or bar.bar_ts >= floor):
            return Resolution(EXACT, idx, idx, 0, bar.bar_ts), bar
        pos = bisect.bisect_right(self._order, idx) - 1
        # bar_ts does not decrease with bar_idx: if this bar is before the floor, so is every one below.
        if pos < 0 or (floor is not None and self._ts[pos] < floor):
            return Resolution(DEFAULT, None, idx, None), None
        return self._fallback(idx, pos)

    def _resolve_ts(self, ts: float) -> tuple[Resolution, BarFeatures | None]:
        order, tss = self._order, self._ts
        pos = bisect.bisect_right(tss, ts) - 1
        if pos < 0:
            return Resolution(DEFAULT, None, None, None), None
        idx = order[pos]
        requested = idx
        # The timestamp may lie beyond bar idx's successor's close: estimate which bar it falls
        # in from the local bar spacing, so a stopped worker makes timestamps go stale too.
        if pos + 1 < len(order):
            spacing = (tss[pos + 1] - tss[pos]) / (order[pos + 1] - idx)
            if spacing > 0:
                requested = min(idx + int((ts - tss[pos]) // spacing), order[pos + 1] - 1)
        elif pos > 0:
            spacing = (tss[pos] - tss[pos - 1]) / (idx - order[pos - 1])
            if spacing > 0:
                requested = idx + int((ts - tss[pos]) // spacing)
        if requested == idx:
            bar = self._bars[idx]
            return Resolution(EXACT, idx, idx, 0, bar.bar_ts), bar
        return self._fallback(requested, pos)

    def _fallback(self, requested: int, pos: int) -> tuple[Resolution, BarFeatures | None]:
        idx = self._order[pos]
        age = requested - idx
        if age > self.stale_after_bars:
            return Resolution(DEFAULT, None, requested, age), None
        bar = self._bars[idx]
        return Resolution(FALLBACK, idx, requested, age, bar.bar_ts), bar

    def has_exact(self, bar_idx: int) -> bool:
        """True if a lookup of ``bar_idx`` resolves exact now (cached, and above the trader floor)."""
        with self._cond:
            return self._exact_locked(bar_idx)

    def _exact_locked(self, bar_idx: int) -> bool:
        bar = self._bars.get(bar_idx)
        floor = self._trader_floor
        return bar is not None and (floor is None or bar.bar_ts >= floor)

    def wait_for(self, bar_idx: int, timeout_s: float) -> bool:
        """Block until bar ``bar_idx`` resolves exact (woken by its arrival) or ``timeout_s`` passes.

        After the trader's numbering went back, the previous numbering's bar of that number does
        not count: this waits for the new one."""
        with self._cond:
            if self._exact_locked(bar_idx):
                return True
            if timeout_s <= 0:
                return False
            return self._cond.wait_for(lambda: self._exact_locked(bar_idx), timeout_s)

    def stats(self, extra_lookups: Mapping[str, int] | None = None) -> CacheStats:
        """Contents and counters; ``extra_lookups`` (kind -> n) are added to ``lookups``: lookups a
        caller answered from a memoised resolution without asking the cache."""
        extra = dict(extra_lookups) if extra_lookups else {}
        with self._cond:
            newest = self._order[-1] if self._order else None
            return CacheStats(
                bars=len(self._order),
                capacity=self.capacity,
                oldest_idx=self._order[0] if self._order else None,
                newest_idx=newest,
                newest_bar_ts=self._ts[-1] if self._ts else None,
                last_insert_at=self._last_insert_at,
                lookups={k: n + extra.get(k, 0) for k, n in self._lookups.items()},
                inserted=dict(self._inserted),
                replaced=self._replaced,
                evicted=self._evicted,
                ignored=dict(self._ignored),
                numbering_restarts=self._numbering_restarts,
                removed=self._removed,
                truncated_keys=self._truncated,
            )
