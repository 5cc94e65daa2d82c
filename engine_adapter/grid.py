"""All Hazelcast I/O of the adapter: READ operations and listener registration only.

``FeatureMapReader`` keeps a ``BarCache`` filled from the bar map (``DOLPHIN_OBF_FEATURES``):

* an entry listener (added + updated, values included) decodes each record once, on arrival,
  into ``BarFeatures`` (columns); it runs on the client's reactor thread, so it only decodes and
  inserts (the insert of a new newest bar builds the trader's objects of that bar first, so
  ``step_live`` finds them ready), never blocks and never lets an exception escape; removals are passed on to
  ``BarCache.key_removed`` (the worker removes the keys of a previous bar numbering);
* a seed at start reads the newest ``seed_bars`` bars already in the map;
* after a reconnect (lifecycle CONNECTED following DISCONNECTED) a worker thread re-seeds the
  bars missed while disconnected; the reactor thread only signals it.

Reads use predicates on ``__key`` rather than ``get_all`` so they also work through a client
the trader built with another ``default_int_type`` (the member converts predicate values to
the key's type; a ``get_all`` with Integer keys would miss Long keys).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hazelcast import aggregator as agg
from hazelcast import predicate as pred
from hazelcast.client import HazelcastClient
from hazelcast.core import HazelcastJsonValue
from hazelcast.future import Future
from hazelcast.lifecycle import LifecycleState
from hazelcast.proxy.map import Map

from engine_adapter.cache import BarCache
from engine_adapter.features import BarFeatures, RecordRejected, decode_bar

log = logging.getLogger(__name__)

FETCH_CHUNK = 64  # bars per read when (re-)seeding: bounds one response to ~64 records
RESEED_SETTLE_S = 1.0  # second re-seed pass: catches bars put while the listener re-registered
RESEED_RETRY_S = 2.0  # wait before retrying a failed re-seed while still connected
FETCH_TIMEOUT_S = 1.0  # longest wait for one direct read of a missed bar (fetch thread, never the trader's)


@dataclass(frozen=True, slots=True)
class GridStats:
    """Connection and read counters of the reader."""

    connected: bool
    disconnects: int
    reconnects: int
    events: int  # listener events received (removals included)
    decoded: int  # listener events decoded into a bar
    rejected: dict[str, int]  # reason -> records that failed to decode (listener and seeds)
    listener_errors: int  # unexpected exceptions caught in the listener
    seeds: int  # completed seed / re-seed passes
    seeded_bars: int  # bars read by seeds that were not cached yet
    seed_failures: int
    reseed_pending: bool
    fetched: int = 0  # bars the trader waited for whose event never came, read directly (see request_bar)
    fetch_failures: int = 0


class FeatureMapReader:
    """Listener + seed/re-seed reads of one bar map into a ``BarCache`` (read-only)."""

    def __init__(self, client: HazelcastClient, map_name: str, cache: BarCache, seed_bars: int) -> None:
        self._client = client
        self._map_name = map_name
        self._cache = cache
        self._seed_bars = seed_bars
        self._map: Map[Any, Any] = client.get_map(map_name)
        self._lock = threading.Lock()
        self._connected = True
        self._disconnects = 0
        self._reconnects = 0
        self._events = 0
        self._decoded = 0
        self._rejected: Counter[str] = Counter()
        self._listener_errors = 0
        self._seeds = 0
        self._seeded_bars = 0
        self._seed_failures = 0
        self._reseed_wanted = threading.Event()
        self._closed = threading.Event()
        self._listener_id: str | None = None
        self._lifecycle_id: str | None = None
        self._thread: threading.Thread | None = None
        # Fetch on miss: the newest bar the trader waits for, read directly if its event is late.
        self._fetch_wanted = threading.Event()
        self._wanted: tuple[int, float] | None = None
        self._fetched = 0
        self._fetch_failures = 0
        self._fetch_thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Register the listeners, seed the newest bars (blocking, caller's thread), start re-seeding."""
        self._lifecycle_id = self._client.lifecycle_service.add_listener(self._on_lifecycle)
        # Listener before seed: a bar put in between is then delivered at least once.
        self._listener_id = self._map.add_entry_listener(
            include_value=True, added_func=self._on_entry, updated_func=self._on_entry,
            removed_func=self._on_removed,
        ).result()
        try:
            self.seed("seed")
        except Exception as exc:  # noqa: BLE001 - the trader starts anyway; defaults until a re-seed works
            log.warning("initial seed failed map=%s error=%r; retrying in background", self._map_name, exc)
            self._reseed_wanted.set()
        self._thread = threading.Thread(target=self._reseed_loop, name="obf-adapter-reseed", daemon=True)
        self._thread.start()
        self._fetch_thread = threading.Thread(target=self._fetch_loop, name="obf-adapter-fetch", daemon=True)
        self._fetch_thread.start()
        log.info("adapter reader started map=%s bars=%d seed_bars=%d",
                 self._map_name, len(self._cache), self._seed_bars)

    def close(self, timeout_s: float = 5.0) -> None:
        """Remove the listeners and stop the re-seed thread. Idempotent; never raises."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._reseed_wanted.set()
        self._fetch_wanted.set()
        if self._lifecycle_id is not None:
            self._client.lifecycle_service.remove_listener(self._lifecycle_id)
        if self._listener_id is not None and self._client.lifecycle_service.is_running():
            try:
                _result_within(self._map.remove_entry_listener(self._listener_id), timeout_s)
            except Exception as exc:  # noqa: BLE001 - e.g. cluster gone: the registration dies with the client
                log.warning("entry listener removal failed map=%s error=%r", self._map_name, exc)
        for thread in (self._thread, self._fetch_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout_s)

    # -- reads -------------------------------------------------------------------------------

    def seed(self, source: str = "seed") -> int:
        """Read the newest ``seed_bars`` bars of the map that are not cached; returns bars inserted.

        Blocking: never call it on the reactor thread. Raises on grid errors.
        """
        m = self._map.blocking()
        newest: Any = m.aggregate(agg.max_("__key"))
        inserted = 0
        if newest is not None:
            floor = max(0, int(newest) - self._seed_bars + 1)
            keys = m.key_set(pred.greater_or_equal("__key", floor))
            cached = set(self._cache.cached_indices())
            missing = sorted(k for k in keys if type(k) is int and k not in cached)
            for i in range(0, len(missing), FETCH_CHUNK):
                entries = m.entry_set(pred.in_("__key", *missing[i:i + FETCH_CHUNK]))
                bars = [bar for key, value in entries if (bar := self._decode(key, value)) is not None]
                inserted += self._cache.insert_many(bars, source)
        with self._lock:
            self._seeds += 1
            self._seeded_bars += inserted
        log.info("seed done map=%s source=%s newest=%s inserted=%d", self._map_name, source, newest, inserted)
        return inserted

    def request_bar(self, bar_idx: int, grace_s: float) -> None:
        """Ask the fetch thread to read bar ``bar_idx`` directly if its entry event has not come
        ``grace_s`` s from now. Non-blocking (the trader's thread calls it); only the newest request
        is kept. Entry events are best effort (lost while partitions migrate in a member restart,
        or during a reconnect): this is how a record that is in the map reaches a waiting trader."""
        with self._lock:
            self._wanted = (bar_idx, grace_s)
        self._fetch_wanted.set()

    def _fetch_loop(self) -> None:
        while True:
            self._fetch_wanted.wait()
            if self._closed.is_set():
                return
            self._fetch_wanted.clear()
            with self._lock:
                wanted, self._wanted = self._wanted, None
            if wanted is None or self._cache.wait_for(wanted[0], wanted[1]):
                continue  # delivered by its event (the usual case): no read
            bar_idx = wanted[0]
            try:
                value = _result_within(self._map.get(bar_idx), FETCH_TIMEOUT_S)
                bar = None if value is None else self._decode(bar_idx, value)
                # Never over a listener update that came meanwhile (it is at least as new).
                if bar is not None and self._cache.insert_many([bar], "fetch"):
                    with self._lock:
                        self._fetched += 1
            except Exception as exc:  # noqa: BLE001 - never raise out of here: count and log instead
                with self._lock:
                    self._fetch_failures += 1
                log.debug("fetch of bar %s failed map=%s error=%r", bar_idx, self._map_name, exc)

    def request_reseed(self) -> None:
        """Ask the background thread for a re-seed pass (non-blocking)."""
        self._reseed_wanted.set()

    def _reseed_loop(self) -> None:
        while True:
            self._reseed_wanted.wait()
            if self._closed.is_set():
                return
            self._reseed_wanted.clear()
            try:
                self.seed("reseed")
                # A second, cheap pass: keys only, unless something was missed meanwhile.
                if not self._closed.wait(RESEED_SETTLE_S):
                    self.seed("reseed")
            except Exception as exc:  # noqa: BLE001 - never raise out of here: count and log instead
                with self._lock:
                    self._seed_failures += 1
                    retry = self._connected
                log.warning("re-seed failed map=%s error=%r retry=%s", self._map_name, exc, retry)
                # Disconnected: the next CONNECTED event asks again. Connected: retry shortly.
                if retry and not self._closed.wait(RESEED_RETRY_S):
                    self._reseed_wanted.set()

    # -- callbacks (reactor thread: no blocking, no exceptions out) ----------------------------

    def _on_entry(self, event: Any) -> None:
        if self._closed.is_set():
            return  # an event already in flight when close() removed the listener
        try:
            with self._lock:
                self._events += 1
            bar = self._decode(event.key, event.value)
            if bar is not None:
                self._cache.insert(bar, "listener")
                with self._lock:
                    self._decoded += 1
        except Exception:
            with self._lock:
                self._listener_errors += 1
            log.exception("listener error map=%s key=%r", self._map_name, getattr(event, "key", None))

    def _on_removed(self, event: Any) -> None:
        if self._closed.is_set():
            return
        try:
            with self._lock:
                self._events += 1
            key = event.key
            if type(key) is int:
                self._cache.key_removed(key)
        except Exception:
            with self._lock:
                self._listener_errors += 1
            log.exception("listener error (removal) map=%s key=%r", self._map_name, getattr(event, "key", None))

    def _on_lifecycle(self, state: str) -> None:
        try:
            if state == LifecycleState.DISCONNECTED:
                with self._lock:
                    self._connected = False
                    self._disconnects += 1
                log.warning("adapter disconnected map=%s: answering from cache", self._map_name)
            elif state == LifecycleState.CONNECTED:
                with self._lock:
                    was_down = not self._connected
                    self._connected = True
                    if was_down:
                        self._reconnects += 1
                if was_down:
                    log.info("adapter reconnected map=%s: re-seeding missed bars", self._map_name)
                    self._reseed_wanted.set()
        except Exception:
            log.exception("lifecycle listener error state=%s", state)

    def _decode(self, key: Any, value: Any) -> BarFeatures | None:
        """Decode one map value; counts and returns None when it is unusable (never raises)."""
        if isinstance(value, HazelcastJsonValue):
            data: Any = value.to_string()
        elif isinstance(value, (str, bytes, bytearray)):
            data = value
        else:
            self._reject("value_type", key)
            return None
        try:
            bar = decode_bar(data)
        except RecordRejected as exc:
            self._reject(exc.reason, key, exc)
            return None
        if bar.bar_idx != key:
            self._reject("key_mismatch", key)
            return None
        return bar

    def _reject(self, reason: str, key: Any, exc: Exception | None = None) -> None:
        with self._lock:
            self._rejected[reason] += 1
        log.warning("record rejected reason=%s key=%r map=%s detail=%s", reason, key, self._map_name, exc)

    def stats(self) -> GridStats:
        with self._lock:
            return GridStats(
                connected=self._connected,
                disconnects=self._disconnects,
                reconnects=self._reconnects,
                events=self._events,
                decoded=self._decoded,
                rejected=dict(self._rejected),
                listener_errors=self._listener_errors,
                seeds=self._seeds,
                seeded_bars=self._seeded_bars,
                seed_failures=self._seed_failures,
                reseed_pending=self._reseed_wanted.is_set(),
                fetched=self._fetched,
                fetch_failures=self._fetch_failures,
            )


def _result_within(future: Future[Any], timeout_s: float) -> Any:
    """``future.result()`` but giving up after ``timeout_s`` (hazelcast futures have no timeout)."""
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    if not done.wait(timeout_s):
        raise TimeoutError(f"no answer within {timeout_s:g}s")
    return future.result()
