"""Re-publish after grid data loss: the worker's own copy of the records it wrote last.

A single member restarted empty (or maps cleared under the worker) loses every bar record and the
checkpoint. The worker still holds the records it wrote, so it puts them back: ``RecentRecords``
remembers the last ``max_bars`` record texts written (bounded also by ``max_bytes``), and
``check_and_repair`` looks for the oldest remembered record in the map (one ``has_bar`` call) after
every reconnect and every ``check_every_bars`` bars; when it is gone, every remembered record is
written back where its key is absent (never overwriting a newer writer's record). The caller then
marks its checkpoint due, so the checkpoint is back with the next bar too.

Pure bookkeeping plus two grid calls through the worker's ``Grid`` (``has_bar``, ``put_bar_if_absent``);
``GridError`` propagates to the caller, which counts and retries at the next check.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 2**20  # the copy's memory bound (record texts), whatever retain_bars is
DEFAULT_CHECK_EVERY_BARS = 10


class RepairGrid(Protocol):
    """What the repair needs of the worker's grid."""

    def has_bar(self, bar_idx: int) -> bool: ...

    def put_bar_if_absent(self, bar_idx: int, record_json: str) -> bool: ...


class RecentRecords:
    """The last records written, oldest first: at most ``max_bars`` (>= 1) and ``max_bytes`` (>= 1)
    of text (the newest one is always kept). Main thread only."""

    def __init__(self, max_bars: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bars < 1 or max_bytes < 1:
            raise ValueError(f"max_bars and max_bytes must be >= 1, got {max_bars!r}, {max_bytes!r}")
        self.max_bars = int(max_bars)
        self.max_bytes = int(max_bytes)
        self._records: deque[tuple[int, str]] = deque()
        self.bytes = 0

    def add(self, bar_idx: int, payload: str) -> None:
        """Remember the record of ``bar_idx`` just written (replaces an older copy of the same bar)."""
        if self._records and bar_idx <= self._records[-1][0]:
            # a back-fill or a numbering restart: keep the copy sorted and unique
            kept = [(b, p) for b, p in self._records if b != bar_idx]
            kept.append((bar_idx, payload))
            kept.sort(key=lambda item: item[0])
            self._records = deque(kept)
            self.bytes = sum(len(p) for _, p in kept)
        else:
            self._records.append((bar_idx, payload))
            self.bytes += len(payload)
        # Retention removes bars <= newest - retain_bars (= max_bars): those are not lost, just old.
        newest = self._records[-1][0]
        while len(self._records) > 1 and (len(self._records) > self.max_bars or self.bytes > self.max_bytes
                                          or self._records[0][0] <= newest - self.max_bars):
            _, old = self._records.popleft()
            self.bytes -= len(old)

    def newest(self) -> int | None:
        """bar_idx of the newest record remembered, or None."""
        return self._records[-1][0] if self._records else None

    def items(self) -> list[tuple[int, str]]:
        """(bar_idx, record text), oldest first."""
        return list(self._records)

    def forget_from(self, bar_idx: int) -> None:
        """Drop every record at or above ``bar_idx`` (the bar numbering restarted below them)."""
        self._records = deque((b, p) for b, p in self._records if b < bar_idx)
        self.bytes = sum(len(p) for _, p in self._records)

    def __len__(self) -> int:
        return len(self._records)


class Republisher:
    """When to look for a loss, and the repair. ``check_every_bars`` >= 1."""

    def __init__(self, records: RecentRecords, check_every_bars: int = DEFAULT_CHECK_EVERY_BARS) -> None:
        if check_every_bars < 1:
            raise ValueError(f"check_every_bars must be >= 1, got {check_every_bars!r}")
        self.records = records
        self.check_every_bars = int(check_every_bars)
        self._bars_since_check = 0
        self._disconnects_seen = 0
        self.losses = 0  # losses detected
        self.republished = 0  # records written back

    def due(self, disconnects: int) -> bool:
        """Called once per bar written: True after a reconnect (``disconnects`` grew) or every
        ``check_every_bars`` bars."""
        self._bars_since_check += 1
        if disconnects != self._disconnects_seen or self._bars_since_check >= self.check_every_bars:
            self._disconnects_seen = disconnects
            self._bars_since_check = 0
            return True
        return False

    def check_and_repair(self, grid: RepairGrid, *, skip: int | None = None) -> int:
        """If the oldest remembered record (other than ``skip``, the bar just written, which proves
        nothing) is missing from the map, write back every remembered record whose key is absent.
        The oldest, because a loss before the bars written since is still visible there. Returns
        the records written back (0 when nothing was lost). Raises GridError."""
        probe = next((b for b, _ in self.records.items() if b != skip), None)
        if probe is None or grid.has_bar(probe):
            return 0
        self.losses += 1
        n = 0
        for bar_idx, payload in self.records.items():
            if grid.put_bar_if_absent(bar_idx, payload):
                n += 1
        self.republished += n
        log.warning("grid lost bar records: re-published records=%d bars=%s..%s losses=%d", n,
                    probe, self.records.newest(), self.losses)
        return n
