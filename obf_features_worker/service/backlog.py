"""The worker's write backlog: bar records not yet known to be in the features map.

Pure data (no grid, no lease): bounded to ``retain_bars`` entries (the oldest dropped first),
sorted by bar, one entry per bar (a newer entry for a bar replaces the older). The worker's
write cycle (``service.worker``) writes it oldest first and pops what it wrote; a checkpoint
written while entries remain (their writes failed) carries their payloads, so whoever leads next
writes them if absent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from obf_contract.record import dumps_record


@dataclass(slots=True)
class PendingRecord:
    """A bar record not yet known to be in the features map.

    record: the record as computed here (None for one taken from another writer's checkpoint,
    whose ``payload`` is then fixed). term: my lease epoch when I computed it (None: not leading,
    or no lease); a record of my current term is written with ``set``, any other only if the key
    is absent. payload / epoch: the JSON text, serialised with ``producer.epoch = epoch``.
    attempted: a write of it failed, and may still have been applied (a timeout while partitions
    migrate): the next attempt must not write it a second time.
    """

    record: dict[str, Any] | None
    term: int | None
    payload: str | None = None
    epoch: int | None = None
    attempted: bool = False

    def payload_for(self, epoch: int | None) -> str:
        """The JSON text to write under lease ``epoch`` (None: no lease); cached per epoch. A
        record from another writer's checkpoint keeps its own text."""
        if self.record is None:
            assert self.payload is not None  # noqa: S101 - narrows the type; holds by construction
            return self.payload
        if self.payload is None or self.epoch != epoch:
            self.record["producer"]["epoch"] = epoch
            self.payload = dumps_record(self.record).decode()
            self.epoch = epoch
        return self.payload


class WriteBacklog:
    """Pending records by bar, oldest first, at most ``limit`` (>= 1) of them."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"backlog limit must be >= 1, got {limit}")
        self.limit = limit
        self.dropped = 0  # entries dropped because the backlog was full, ever
        self._q: deque[tuple[int, PendingRecord]] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    def __iter__(self) -> Iterator[tuple[int, PendingRecord]]:
        return iter(list(self._q))

    def bars(self) -> list[int]:
        """The bars waiting, oldest first."""
        return [b for b, _ in self._q]

    def add(self, bar_idx: int, entry: PendingRecord) -> int | None:
        """Queue ``entry`` for ``bar_idx``; returns the bar dropped to make room (the oldest), if any.
        An entry for a bar at or below the newest (from another writer's checkpoint) is put in
        order, replacing an entry of the same bar."""
        dropped: int | None = None
        if len(self._q) >= self.limit:
            dropped, _ = self._q.popleft()
            self.dropped += 1
        if self._q and self._q[-1][0] >= bar_idx:
            entries = dict(self._q)
            entries[bar_idx] = entry
            self._q = deque(sorted(entries.items()))
        else:
            self._q.append((bar_idx, entry))
        return dropped

    def first(self) -> tuple[int, PendingRecord]:
        """The oldest entry (IndexError if empty)."""
        return self._q[0]

    def pop_first(self) -> None:
        self._q.popleft()

    def drop_covered(self, bar_idx: int) -> None:
        """Forget my own records of bars up to ``bar_idx`` (an adopted checkpoint's: they are its
        writer's to write, or written); records taken from a checkpoint stay until written."""
        if self._q and self._q[0][0] <= bar_idx:
            self._q = deque((b, e) for b, e in self._q if b > bar_idx or e.record is None)

    def payloads(self, epoch: int | None) -> dict[int, str]:
        """bar -> JSON text of every entry, as written under ``epoch`` (for the checkpoint)."""
        return {b: e.payload_for(epoch) for b, e in self._q}
