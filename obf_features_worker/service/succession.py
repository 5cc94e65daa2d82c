"""Succession: who writes, and from which state (docs/reliability.md).

The leader lease (its epochs continue from the checkpoint's), the term this worker holds, the
adoption decision before a bar (the warm-restart decision at the first bar; a standby following
its leader afterwards: the leader's checkpoint, then its records applied bar by bar,
``service.changelog``) and the records a previous leader left unconfirmed (the back-fill at a
takeover). This module reads the grid and decides; the worker applies the
decisions (engine, backlog, health) and does every write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from obf_features_worker.engine import checkpoint
from obf_features_worker.engine.checkpoint import Checkpoint, CheckpointRejected
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.service import changelog
from obf_features_worker.service.bars import ScanRejected, scan_bar_idx
from obf_features_worker.service.config import WorkerConfig
from obf_features_worker.service.grid import GridError, WorkerGrid, json_text
from obf_features_worker.service.lease import LeaderLease

log = logging.getLogger(__name__)

# The age limit of the checkpoint a starting worker restores: none (any int would do; decode wants one).
WARM_RESTART_MAX_AGE_BARS = 2**62
# Health cold_start_reason when the checkpoint could not even be read at the first bar.
COLD_UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Adopt:
    """Continue from the leader's state before stepping the bar; ``first``: the warm restart.

    engine: the state after ``bar_idx`` (closing at ``bar_ts``, unix s), the worker's own copy:
    ``checkpoint`` plus the ``replayed`` records written after it (``service.changelog``).
    seqs: the last ``_push_seq`` per symbol of that state."""

    checkpoint: Checkpoint
    first: bool
    engine: FeatureEngine
    bar_idx: int
    bar_ts: float
    seqs: dict[str, int]
    replayed: int


@dataclass(frozen=True, slots=True)
class StartCold:
    """The first bar starts from a fresh engine: ``reason`` (health ``cold_start_reason``)."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class TermChange:
    """What a lease sync saw: ``lost`` my previous epoch (now standby), ``acquired`` a new one."""

    lost: int | None
    acquired: int | None
    holder: str | None


class Succession:
    """One worker's lease and checkpoint reads. ``begin()`` once connected; then ``tick()`` /
    ``sync_term()`` follow the term, ``adoption()`` decides before a bar, and
    ``previous_records()`` is read when a term begins."""

    def __init__(self, grid: WorkerGrid, config: WorkerConfig, make_lease: Callable[[int], LeaderLease]) -> None:
        self.grid = grid
        self.config = config
        self._make_lease = make_lease
        self.lease: LeaderLease | None = None
        self.epoch: int | None = None  # my writable epoch at the last sync
        self.restore_pending = False  # the first bar still has to decide: warm or cold
        self.startup_checkpoint: Checkpoint | None = None
        self._last_cp_text: str | None = None
        self._cp_refusal: str | None = None
        # The leader's state as this worker follows it: the checkpoint read last plus the records
        # applied since (None until one is adopted). _broken: its chain broke; the next
        # checkpoint (another text) restarts it.
        self._follow: FeatureEngine | None = None
        self._follow_cp: Checkpoint | None = None
        self._follow_ts = 0.0
        self._follow_seqs: dict[str, int] = {}
        self._follow_replayed = 0
        self._broken: str | None = None
        # Where a broken chain stopped: (last bar applied, key of the record it stopped at). While
        # the keys up to it and the checkpoint stay the same, the records are not read again.
        self._stuck: tuple[int, int] | None = None
        self._prepared_text: str | None = None
        # Catch-ups that stopped before the bar asked for, by reason (changelog.STOP_*; health).
        self.catchup_stops: dict[str, int] = {}

    def begin(self) -> LeaderLease:
        """Contend for the lease (epochs above the newest valid checkpoint's) and arm the
        warm-restart decision of the first bar."""
        self.startup_checkpoint = self.peek_checkpoint()
        cp = self.startup_checkpoint
        min_epoch = (cp.epoch or 0) if cp is not None else 0
        self.lease = self._make_lease(min_epoch)
        self.restore_pending = True
        log.info("contending for the leader lease worker_id=%s ttl_s=%g min_epoch=%d", self.config.worker_id,
                 self.lease.settings.ttl_s, min_epoch)
        return self.lease

    def may_write(self) -> bool:
        """Holding the lease, or no lease at all (a sole writer)."""
        return self.lease is None or self.lease.may_write()

    def current_epoch(self) -> int | None:
        """The lease's epoch now (None without a lease, or while not leading)."""
        return self.lease.epoch if self.lease is not None else None

    def tick(self) -> TermChange:
        """Tick the lease (never raises) and follow the term."""
        assert self.lease is not None  # noqa: S101 - narrows the type; holds once begun
        self.lease.tick()
        return self.sync_term()

    def sync_term(self) -> TermChange:
        """Follow the lease's writable epoch. A term can become writable between ticks (a
        settling term, see lease.decide), so every write cycle checks."""
        assert self.lease is not None  # noqa: S101 - narrows the type; holds once begun
        status = self.lease.status()
        prev, self.epoch = self.epoch, status.epoch
        lost = prev if prev is not None and status.epoch != prev else None
        acquired = status.epoch if status.epoch is not None and status.epoch != prev else None
        if acquired is not None:
            self._follow = None  # I write now; should I follow again, it restarts from the checkpoint
        return TermChange(lost, acquired, status.holder)

    def peek_checkpoint(self) -> Checkpoint | None:
        """Any valid checkpoint of my parameters, whatever its age (its epoch seeds the lease)."""
        try:
            raw = self.grid.get_checkpoint()
            return None if raw is None else checkpoint.decode(raw, params=self.config.params, now_bar_idx=None,
                                                              max_age_bars=0, universe=self.config.assets)
        except (GridError, CheckpointRejected):
            return None

    def previous_records(self, epoch: int) -> Checkpoint | None:
        """At the start of my term ``epoch``: the last leader's checkpoint, whose records it may
        never have confirmed written (it died between its checkpoint and its records)."""
        try:
            raw = self.grid.get_checkpoint()
        except GridError as exc:
            log.warning("leader: previous checkpoint unreadable error=%s", exc)
            return None
        if raw is None:
            return None
        try:
            return checkpoint.decode(raw, params=self.config.params, now_bar_idx=None, max_age_bars=0,
                                     universe=self.config.assets)
        except CheckpointRejected as exc:
            log.warning("leader epoch=%d: previous checkpoint not used reason=%s detail=%s", epoch, exc.reason,
                        exc.detail)
            return None

    def scan_to_catch_up(self) -> Any:
        """Scan clock with a field: the current scan value if the previous process's state (its
        checkpoint plus its records since) ends at the bar before it (it died while closing it),
        else None."""
        cfg = self.config
        cp = self.startup_checkpoint
        if cfg.scan_field is None or cp is None:
            return None
        try:
            value = self.grid.get_scan_value()
            idx = scan_bar_idx(value, cfg.scan_field) if value is not None else None
        except (GridError, ScanRejected):
            return None
        if idx is None or idx <= cp.bar_idx:
            return None
        try:
            raw = self.grid.get_checkpoint()
        except GridError:
            return None
        text = json_text(raw)
        self._start_following(cp, text)
        try:
            self._catch_up(idx + 1)  # the records up to the scan's bar: its own, if it was written
        except GridError as exc:
            # A transient read failure at start-up: not fatal. The first bar's adoption reads on
            # from the state followed so far (the checkpoint is the same text).
            log.warning("records unreadable at start-up, not closing the current scan state_bar=%s error=%s",
                        self._follow_last(), exc)
            return None
        last = self._follow_last()
        if last is not None and last < idx <= last + cfg.checkpoint_max_age_bars:
            log.info("closing the current scan the previous process did not finish bar_idx=%d state_bar=%d "
                     "checkpoint_bar=%d", idx, last, cp.bar_idx)
            return value
        return None

    def adoption(self, bar_idx: int, own_last_bar: int | None) -> Adopt | StartCold | None:
        """Before stepping ``bar_idx``: continue from the leader's state (its checkpoint plus the
        records written since, followed bar by bar) if it is at least as new as my own state
        (``own_last_bar``). At the first bar this is the warm-restart decision (``Adopt(first=True)``
        or ``StartCold``); None: keep my state. The checkpoint is read at the first bar and again
        only while the records do not continue the state followed (a break: its next version
        restarts it), so a standby's steady cost is one ``get_all`` of the leader's last record."""
        first = self.restore_pending
        self.restore_pending = False
        if first or self._follow is None or self._broken is not None:
            try:
                raw = self.grid.get_checkpoint()
            except GridError as exc:
                return StartCold(COLD_UNAVAILABLE, str(exc)) if first else None
            text = json_text(raw)
            if first or text != self._last_cp_text:
                refused = self._read_checkpoint(raw, text, bar_idx, first)
                if refused is not None:
                    return refused if first else None
        if self._follow is None:
            return None
        try:
            self._catch_up(bar_idx)
        except GridError as exc:
            # The state stays where the records read so far took it; the next bar reads on.
            log.warning("leader records unreadable, state at bar=%s error=%s", self._follow_last(), exc)
        last = self._follow_last()
        assert self._follow_cp is not None and last is not None  # noqa: S101 - narrows the type; holds with _follow
        if last > bar_idx:
            # A state of another numbering (the scan count restarted at midnight): never adopted;
            # the leader's next checkpoint, of the new numbering, restarts the state followed.
            # (A checkpoint of this very bar is the leader's being faster: adopted, the bar skipped.)
            log.info("leader state bar=%d is after bar=%d (bar numbering restarted): not followed", last, bar_idx)
            self._follow = None
            return None
        if own_last_bar is not None and last < own_last_bar:
            return None  # my own state is newer (the leader is behind or gone)
        return Adopt(self._follow_cp, first, self._follow.copy(), last, self._follow_ts, dict(self._follow_seqs),
                     self._follow_replayed)

    def _read_checkpoint(self, raw: Any, text: str | None, bar_idx: int, first: bool) -> StartCold | None:
        """Decode the checkpoint and follow it from its bar (a StartCold if refused)."""
        self._last_cp_text = text
        try:
            # A (re)starting worker continues from the newest state whatever its age (the bars it
            # missed are missing; cold only without state, or under other parameters / schema).
            cp = checkpoint.decode(raw, params=self.config.params, now_bar_idx=bar_idx,
                                   max_age_bars=WARM_RESTART_MAX_AGE_BARS, universe=self.config.assets)
        except CheckpointRejected as exc:
            refused_before, self._cp_refusal = self._cp_refusal, exc.reason
            if not first and exc.reason != refused_before:
                log.info("standby: leader checkpoint not adopted reason=%s detail=%s", exc.reason, exc.detail)
            return StartCold(exc.reason, exc.detail)
        self._cp_refusal = None
        if self._follow_cp is not None and self._follow is not None and text == self._prepared_text \
                and self._follow_cp.bar_idx == cp.bar_idx:
            return None  # already followed from this very checkpoint (scan catch-up at start)
        self._start_following(cp, text)
        return None

    def _start_following(self, cp: Checkpoint, text: str | None) -> None:
        self._follow = cp.restore_engine()
        self._follow_cp = cp
        self._follow_ts = cp.bar_ts
        self._follow_seqs = dict(cp.seqs)
        self._follow_replayed = 0
        self._broken = None
        self._stuck = None
        self._prepared_text = text
        self._last_cp_text = text

    def _catch_up(self, bar_idx: int) -> None:
        """Apply the leader's records after the followed state and before ``bar_idx``."""
        assert self._follow is not None  # noqa: S101 - narrows the type; callers check
        if self._stuck is not None and self._still_stuck(*self._stuck):
            return
        self._stuck = None
        result = changelog.catch_up(self._follow, self.grid, before_bar=bar_idx, seqs=self._follow_seqs,
                                    max_records=self.config.changelog_max_bars)
        if result.applied:
            self._follow_replayed += result.applied
            assert result.bar_ts is not None  # noqa: S101 - holds when a record was applied
            self._follow_ts = result.bar_ts
        if result.stopped is not None:
            self.catchup_stops[result.stopped] = self.catchup_stops.get(result.stopped, 0) + 1
            if result.stopped != self._broken:
                log.warning("changelog catch-up stopped reason=%s state_bar=%s detail=%s: the bars after it are a "
                            "restore gap until the next checkpoint", result.stopped, self._follow_last(),
                            result.detail)
        last = self._follow_last()
        if result.stop_key is not None and last is not None:
            self._stuck = (last, result.stop_key)
        self._broken = result.stopped

    def _still_stuck(self, last: int, stop_key: int) -> bool:
        """The chain broken at ``stop_key`` after bar ``last`` cannot continue yet: the keys in
        between are still just ``stop_key`` (no missing record written since, the record not
        removed). One key query instead of re-reading the records every bar; a record replaced
        under the same key is seen with the next checkpoint, which restarts the state followed.
        A failed query (GridError) propagates like a failed read."""
        return self._follow_last() == last and self.grid.bar_keys_between(last, stop_key + 1) == [stop_key]

    def _follow_last(self) -> int | None:
        return None if self._follow is None else self._follow.last_bar_idx

    def wrote_checkpoint(self, text: str) -> None:
        """My own checkpoint is in the map: the next adoption look sees it as unchanged."""
        self._last_cp_text = text
