"""Producer clocks: per asset, how far the snapshot timestamps are from the worker's clock.

The offset of one event is ``received_at - snapshot ts`` (s): the push's latency plus the
producer's clock error. A producer whose clock runs 10 s ahead has offsets near -10 s (and every
push is rejected as ``future_timestamp``); one running behind, or delivering late, has large
positive offsets. The running median over the last ``window`` events is robust to a single odd
message. Memory: one bounded window per asset. ``observe()`` runs on the listener thread: O(1),
no sort (the median is computed when the health document asks for it).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

DEFAULT_WINDOW = 31  # events per asset; odd, so the median is one sample
DEFAULT_THRESHOLD_S = 2.0
MAX_LISTED = 50  # assets listed by name in the health document (largest offsets first)
# An asset is "all rejected" once this many events in a row were rejected with none accepted.
REJECT_STREAK = 3


def median(values: list[float]) -> float:
    """Median of a non-empty list (mean of the two middle values for an even length)."""
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def describe_offset(offset_s: float) -> str:
    """``-10.2`` -> ``"clock 10.2 s ahead"``; ``3.0`` -> ``"clock 3.0 s behind (or pushes delayed)"``."""
    if offset_s < 0:
        return f"clock {-offset_s:.1f} s ahead"
    return f"clock {offset_s:.1f} s behind (or pushes delayed)"


@dataclass
class _AssetClock:
    offsets: deque[float]
    reject_streak: int = 0
    last_reject: str | None = None


class ProducerClocks:
    """Thread-safe per-asset offset windows and reject streaks.

    window: events kept per asset (>= 1). threshold_s: an asset whose median offset is beyond
    +-threshold_s (> 0) is flagged.
    """

    def __init__(self, *, window: int = DEFAULT_WINDOW, threshold_s: float = DEFAULT_THRESHOLD_S) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        if not (math.isfinite(threshold_s) and threshold_s > 0):
            raise ValueError(f"threshold_s must be a finite number > 0, got {threshold_s!r}")
        self.window = int(window)
        self.threshold_s = float(threshold_s)
        self._lock = threading.Lock()
        self._assets: dict[str, _AssetClock] = {}

    def _get(self, symbol: str) -> _AssetClock:
        entry = self._assets.get(symbol)
        if entry is None:
            entry = self._assets[symbol] = _AssetClock(deque(maxlen=self.window))
        return entry

    def observe(self, symbol: str, offset_s: float, *, accepted: bool, reject_reason: str | None = None) -> None:
        """One event of ``symbol`` with a parsable timestamp: ``offset_s`` = receive time - ts (s)."""
        with self._lock:
            entry = self._get(symbol)
            if math.isfinite(offset_s):
                entry.offsets.append(float(offset_s))
            self._count(entry, accepted, reject_reason)

    def rejected(self, symbol: str, reason: str) -> None:
        """An event of ``symbol`` rejected before its timestamp was known (bad payload)."""
        with self._lock:
            self._count(self._get(symbol), False, reason)

    @staticmethod
    def _count(entry: _AssetClock, accepted: bool, reason: str | None) -> None:
        if accepted:
            entry.reject_streak = 0
        else:
            entry.reject_streak += 1
            entry.last_reject = reason

    def offsets(self) -> dict[str, float]:
        """Median offset (s) per asset with at least one sample."""
        with self._lock:
            windows = {s: list(e.offsets) for s, e in self._assets.items() if e.offsets}
        return {s: median(w) for s, w in windows.items()}

    def summary(self) -> dict[str, object]:
        """The health document's ``producer_clock`` section::

            {"threshold_s", "assets": n with samples, "min_s", "p50_s", "max_s" (over the assets' medians),
             "n_flagged", "flagged": {symbol: median offset s} (largest |offset| first, at most 50),
             "all_rejected": {symbol: {"reason", "rejects", "note"}} (at most 50)}
        """
        offsets = self.offsets()
        with self._lock:
            streaks = {s: (e.reject_streak, e.last_reject) for s, e in self._assets.items()
                       if e.reject_streak >= REJECT_STREAK}
        flagged = sorted(((s, o) for s, o in offsets.items() if abs(o) > self.threshold_s),
                         key=lambda item: -abs(item[1]))
        all_rejected: dict[str, dict[str, object]] = {}
        for symbol, (streak, reason) in sorted(streaks.items(), key=lambda item: -item[1][0])[:MAX_LISTED]:
            note = f"all pushes rejected ({reason})"
            offset = offsets.get(symbol)
            if reason == "future_timestamp" and offset is not None:
                note = f"{describe_offset(offset)}, all pushes rejected"
            all_rejected[symbol] = {"reason": reason, "rejects": streak, "note": note}
        medians = sorted(offsets.values())
        return {
            "threshold_s": self.threshold_s,
            "assets": len(medians),
            "min_s": round(medians[0], 3) if medians else None,
            "p50_s": round(median(medians), 3) if medians else None,
            "max_s": round(medians[-1], 3) if medians else None,
            "n_flagged": len(flagged),
            "flagged": {s: round(o, 3) for s, o in flagged[:MAX_LISTED]},
            "all_rejected": all_rejected,
        }
