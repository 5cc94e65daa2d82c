"""Bar clocks: when a bar closes and which ``bar_idx`` it has. Pure logic, no grid.

``IntervalClock``: bars close at every multiple of ``bar_seconds`` of unix time and
``bar_idx = close_time / bar_seconds`` (the rule of the offline replay).

``ScanClock``: each update of one key in a map (wired by ``grid.Grid.add_scan_listener``)
closes a bar. ``bar_idx`` is an integer JSON field of the value, or, without a field, a count
from 0 that restarts at UTC midnight. The listener thread only enqueues (``trigger``); the bar
loop thread dequeues (``wait_tick``), so a close arriving while the previous bar is still being
processed is queued, never dropped (up to ``max_queue``) and never computed twice: a field
``bar_idx`` not greater than the last closed one is ignored and counted, unless it is a restart.

Repeat or restart (scan clock with a field): a scan whose field is *lower* than the last closed
scan's is an upstream restart (the numbering starts again: ``BarTick.new_epoch``) when the scan's
own time, its ``timestamp`` field (ISO-8601 or unix s/ms, as a snapshot's), is later than the
newest known ``timestamp`` of a closed scan (a closed scan without one keeps the previous
one). Otherwise it is a repeat or an out-of-order scan and is ignored, as before; when either
time is unknown it cannot be classified: ignored too, counted (``unclassified``) and logged as
a rate-limited WARNING. Receipt times
cannot tell the two apart: a repeat is received later too.

Both clocks are driven by one thread (the worker's bar loop) through ``wait_tick(stop, timeout)``,
which returns early when ``stop`` is set.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from obf_contract.timestamps import BadTimestamp, parse_timestamp
from obf_features_worker.logs import RateLimiter

log = logging.getLogger(__name__)

# The scan value's own time: tells an upstream restart (later) from a repeat (not later).
SCAN_TIME_FIELD = "timestamp"

# Longest single wait, so a wall-clock step (NTP) is noticed within this many seconds.
_MAX_WAIT_S = 1.0

# Trader-side lookups read an integer below this as a bar_idx and anything larger as a unix
# timestamp (engine_adapter.cache.parse_key, issue contract): every bar_idx we write stays below.
BAR_IDX_LIMIT = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BarTick:
    """One bar close.

    bar_ts: unix s of the close (interval: ``bar_idx * bar_seconds``; scan: receipt of the update).
    triggered_at: unix s at which the close happened (interval: the close time; scan: receipt).
    skipped: bars skipped just before this one (interval clock after a long stall).
    new_epoch: the bar numbering restarted (scan clock without a field at UTC midnight, or a
        scan field that went back with a later scan time).
    """

    bar_idx: int
    bar_ts: float
    triggered_at: float
    skipped: int = 0
    new_epoch: bool = False


class BarClock(Protocol):
    kind: str

    def wait_tick(self, stop: threading.Event, timeout: float) -> BarTick | None: ...

    def interrupt(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def floor_index(t: float, bar_seconds: float) -> int:
    """Largest k with ``k * bar_seconds <= t`` (the last close at or before t)."""
    k = math.floor(t / bar_seconds)
    # t / s can round across an exact multiple; the product decides, as in replay.
    if k * bar_seconds > t:
        k -= 1
    elif (k + 1) * bar_seconds <= t:
        k += 1
    return int(k)


class IntervalClock:
    """Closes bar k at unix time ``k * bar_seconds``, for every k after ``start``.

    max_catchup_bars: after a stall (e.g. the process was suspended), at most this many missed
    bars are still closed, in order; older missed bars are skipped and reported in
    ``BarTick.skipped``. now: the wall clock (unix s), injectable for tests.
    """

    kind = "interval"

    def __init__(self, bar_seconds: float, *, max_catchup_bars: int = 10,
                 now: Callable[[], float] = time.time) -> None:
        if not (math.isfinite(bar_seconds) and bar_seconds > 0):
            raise ValueError(f"bar_seconds must be a finite number > 0, got {bar_seconds!r}")
        if max_catchup_bars < 0:
            raise ValueError(f"max_catchup_bars must be >= 0, got {max_catchup_bars!r}")
        self.bar_seconds = float(bar_seconds)
        self.max_catchup_bars = int(max_catchup_bars)
        self._now = now
        self._last: int | None = None
        self._skipped_total = 0
        self._ticks = 0

    def start(self, now: float | None = None) -> None:
        """Bars closing at or before ``now`` are in the past: the first tick is the next close."""
        self._last = floor_index(self._now() if now is None else now, self.bar_seconds)

    def close_time(self, bar_idx: int) -> float:
        """Unix s at which ``bar_idx`` closes."""
        return bar_idx * self.bar_seconds

    def seconds_until_next(self, now: float) -> float:
        """Seconds from ``now`` to the next close (0 if a close is already due)."""
        if self._last is None:
            self.start(now)
        assert self._last is not None  # noqa: S101 - narrows the type; holds by construction
        return max(0.0, self.close_time(self._last + 1) - now)

    def poll(self, now: float) -> BarTick | None:
        """The next bar if its close time has come, else None. Advances the clock."""
        if self._last is None:
            self.start(now)
        assert self._last is not None  # noqa: S101 - narrows the type; holds by construction
        due = floor_index(now, self.bar_seconds)
        if due <= self._last:
            return None
        nxt = self._last + 1
        skipped = 0
        if due - nxt > self.max_catchup_bars:
            skipped = due - self.max_catchup_bars - nxt
            nxt = due - self.max_catchup_bars
            self._skipped_total += skipped
            log.warning("bar clock stalled: skipping bars from=%d to=%d skipped=%d", nxt - skipped, nxt - 1,
                        skipped)
        self._last = nxt
        self._ticks += 1
        close = self.close_time(nxt)
        return BarTick(nxt, close, close, skipped=skipped)

    def wait_tick(self, stop: threading.Event, timeout: float) -> BarTick | None:
        """Block until the next close (-> its tick), ``stop`` is set or ``timeout`` s pass (-> None)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not stop.is_set():
            now = self._now()
            tick = self.poll(now)
            if tick is not None:
                return tick
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            stop.wait(min(self.seconds_until_next(now), left, _MAX_WAIT_S))
        return None

    def interrupt(self) -> None:
        """Nothing to do: ``wait_tick`` wakes on the ``stop`` event itself."""

    def stats(self) -> dict[str, Any]:
        return {"ticks": self._ticks, "skipped": self._skipped_total}


# Reasons a scan update is not a bar close (counted in ScanClock.stats()["rejected"]).
SCAN_BAD_JSON = "bad_json"
SCAN_MISSING_FIELD = "missing_field"
SCAN_BAD_FIELD = "bad_field"


def _decode_scan_value(value: object) -> Any:
    if isinstance(value, dict):
        return value
    to_string = getattr(value, "to_string", None)
    raw = to_string() if to_string is not None else value
    if not isinstance(raw, (str, bytes, bytearray)):
        raise ValueError(f"value of type {type(value).__name__}")
    return orjson.loads(raw)


def scan_bar_idx(value: object, field: str) -> int:
    """The bar_idx in a scan value: the integer ``field`` of its JSON object (>= 0).

    Raises ``ScanRejected`` with one of SCAN_BAD_JSON / SCAN_MISSING_FIELD / SCAN_BAD_FIELD.
    An integral float (``12.0``) is accepted; booleans are not numbers.
    """
    return _field_of(_scan_object(value), field)


def _scan_object(value: object) -> dict[str, Any]:
    try:
        obj = _decode_scan_value(value)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise ScanRejected(SCAN_BAD_JSON, str(exc)[:120]) from None
    if type(obj) is not dict:
        raise ScanRejected(SCAN_BAD_JSON, f"scan value is a JSON {type(obj).__name__}, not an object")
    return obj


def scan_time(obj: dict[str, Any]) -> float | None:
    """The scan's own time (unix s) from its ``timestamp`` field, None if absent or unreadable."""
    raw = obj.get(SCAN_TIME_FIELD)
    if raw is None:
        return None
    try:
        return parse_timestamp(raw)
    except BadTimestamp:
        return None


def _field_of(obj: dict[str, Any], field: str) -> int:
    if field not in obj:
        raise ScanRejected(SCAN_MISSING_FIELD, f"no field {field!r}")
    v = obj[field]
    if type(v) is float and math.isfinite(v) and v.is_integer():
        v = int(v)
    if type(v) is not int or not 0 <= v < 2**63:
        raise ScanRejected(SCAN_BAD_FIELD, f"field {field!r} is not an integer >= 0: {v!r:.60}")
    return v


class ScanRejected(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ScanClock:
    """Closes a bar on each update of the scan key (see the module docstring).

    field: JSON field holding bar_idx, or None to count bars from 0 per UTC day.
    max_queue: pending updates kept while the bar loop is busy; beyond it the oldest is dropped
    (counted). now: wall clock (unix s) for ``trigger`` calls without a receipt time.
    log_interval_s: at most one WARNING per this many s for a lower-numbered scan that cannot be
    classified (either scan without a readable time); all are counted (``unclassified``).
    """

    kind = "scan"

    def __init__(self, field: str | None, *, max_queue: int = 10_000,
                 now: Callable[[], float] = time.time, log_interval_s: float = 60.0) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue!r}")
        self.field = field
        self.max_queue = int(max_queue)
        self._now = now
        self._lock = threading.Lock()
        self._queue: deque[tuple[object, float]] = deque()
        self._wake = threading.Event()
        self._last: int | None = None
        self._day: str | None = None
        self._count = 0
        self._triggers = 0
        self._ticks = 0
        self._ignored = 0
        self._restarts = 0
        self._last_time: float | None = None  # newest known scan time of a closed scan (field mode)
        self._unclassified = 0  # lower-numbered scans ignored for want of a scan time
        self._limiter = RateLimiter(log_interval_s)
        self._dropped = 0
        self._rejected: dict[str, int] = {}

    def trigger(self, value: object, received_at: float | None = None) -> None:
        """Enqueue one scan update (listener thread). Never blocks on the bar loop, never raises."""
        try:
            at = self._now() if received_at is None else float(received_at)
            with self._lock:
                self._triggers += 1
                if len(self._queue) >= self.max_queue:
                    self._queue.popleft()
                    self._dropped += 1
                self._queue.append((value, at))
            self._wake.set()
        except Exception:
            log.exception("scan trigger failed")

    def poll(self) -> BarTick | None:
        """The next queued update that closes a bar, or None if none is queued (bar loop thread)."""
        while True:
            with self._lock:
                if not self._queue:
                    return None
                value, at = self._queue.popleft()
            tick = self._to_tick(value, at)
            if tick is not None:
                self._ticks += 1
                return tick

    def _to_tick(self, value: object, at: float) -> BarTick | None:
        if self.field is None:
            day = datetime.fromtimestamp(at, UTC).date().isoformat()
            new_epoch = self._day is not None and day != self._day
            if day != self._day:
                if new_epoch:
                    log.info("scan bar count restarts at UTC midnight day=%s last_bar_idx=%s", day, self._last)
                self._day = day
                self._count = 0
            idx = self._count
            self._count += 1
            self._last = idx
            return BarTick(idx, at, at, new_epoch=new_epoch)
        try:
            obj = _scan_object(value)
            idx = _field_of(obj, self.field)
        except ScanRejected as exc:
            self._rejected[exc.reason] = self._rejected.get(exc.reason, 0) + 1
            log.warning("scan update rejected reason=%s detail=%s", exc.reason, exc.detail)
            return None
        when = scan_time(obj)
        new_epoch = False
        if self._last is not None and idx <= self._last:
            last_time = self._last_time
            if idx < self._last and (when is None or last_time is None):
                # Cannot tell a repeat from a restart: ignored, but loudly (a restart taken for
                # repeats means no bars until the numbers catch up).
                self._ignored += 1
                self._unclassified += 1
                suppressed = self._limiter.allow("unclassified")
                if suppressed is not None:
                    log.warning("scan update with a lower number ignored: no readable scan time to tell a repeat "
                                "from an upstream restart bar_idx=%d last_bar_idx=%d scan_time=%s "
                                "last_scan_time=%s suppressed=%d", idx, self._last, when, last_time, suppressed)
                return None
            if idx == self._last or when is None or last_time is None or when <= last_time:
                self._ignored += 1
                log.debug("scan update ignored bar_idx=%d last_bar_idx=%d", idx, self._last)
                return None
            # Lower number, later scan time: the upstream numbering restarted.
            self._restarts += 1
            new_epoch = True
            log.info("scan numbering restarted upstream bar_idx=%d last_bar_idx=%d scan_time=%.3f "
                     "last_scan_time=%.3f", idx, self._last, when, last_time)
        self._last = idx
        if when is not None:  # keep the last known scan time: a later restart can still be told
            self._last_time = when
        return BarTick(idx, at, at, new_epoch=new_epoch)

    def wait_tick(self, stop: threading.Event, timeout: float) -> BarTick | None:
        """Block until a queued update closes a bar, ``stop`` is set (after ``interrupt``) or timeout."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not stop.is_set():
            # Clear before polling: an update enqueued after the poll sets the flag again.
            self._wake.clear()
            tick = self.poll()
            if tick is not None:
                return tick
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._wake.wait(min(left, _MAX_WAIT_S))
        return None

    def interrupt(self) -> None:
        """Wake ``wait_tick`` (call after setting its stop event)."""
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"triggers": self._triggers, "ticks": self._ticks, "ignored": self._ignored,
                    "restarts": self._restarts, "unclassified": self._unclassified,
                    "dropped": self._dropped, "rejected": dict(self._rejected), "pending": len(self._queue)}
