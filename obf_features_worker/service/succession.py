"""Succession: who writes, and from which state (docs/reliability.md).

The leader lease (its epochs continue from the checkpoint's), the term this worker holds, the
checkpoint-adoption decision before a bar (the warm-restart decision at the first bar; a standby
following its leader afterwards) and the records a previous leader left unconfirmed (the
back-fill at a takeover). This module reads the grid and decides; the worker applies the
decisions (engine, backlog, health) and does every write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from obf_features_worker.engine import checkpoint
from obf_features_worker.engine.checkpoint import Checkpoint, CheckpointRejected
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
    """Continue from ``checkpoint`` before stepping the bar; ``first``: the warm restart."""

    checkpoint: Checkpoint
    first: bool


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
        """Scan clock with a field: the current scan value if the previous process checkpointed
        the bar before it but not it (it died while closing it), else None."""
        cfg = self.config
        cp = self.startup_checkpoint
        if cfg.scan_field is None or cp is None:
            return None
        try:
            value = self.grid.get_scan_value()
            idx = scan_bar_idx(value, cfg.scan_field) if value is not None else None
        except (GridError, ScanRejected):
            return None
        if idx is not None and cp.bar_idx < idx <= cp.bar_idx + cfg.checkpoint_max_age_bars:
            log.info("closing the current scan the previous process did not checkpoint bar_idx=%d checkpoint_bar=%d",
                     idx, cp.bar_idx)
            return value
        return None

    def adoption(self, bar_idx: int, own_last_bar: int | None) -> Adopt | StartCold | None:
        """Before stepping ``bar_idx``: continue from the checkpoint in the state map if it is at
        least as new as my state (``own_last_bar``) and recent. At the first bar this is the
        warm-restart decision (``Adopt(first=True)`` or ``StartCold``); None: keep my state."""
        cfg = self.config
        first = self.restore_pending
        self.restore_pending = False
        try:
            raw = self.grid.get_checkpoint()
        except GridError as exc:
            return StartCold(COLD_UNAVAILABLE, str(exc)) if first else None
        text = json_text(raw)
        if not first and text is not None and text == self._last_cp_text:
            return None  # unchanged since the last look
        self._last_cp_text = text
        # A (re)starting worker continues from the newest state whatever its age: the bars it
        # missed are missing, the histories and EMA references go on (cold only without state, or
        # under other parameters / schema). A standby adopts only recent checkpoints.
        max_age = WARM_RESTART_MAX_AGE_BARS if first else cfg.checkpoint_max_age_bars
        try:
            cp = checkpoint.decode(raw, params=cfg.params, now_bar_idx=bar_idx, max_age_bars=max_age,
                                   universe=cfg.assets)
        except CheckpointRejected as exc:
            refused_before, self._cp_refusal = self._cp_refusal, exc.reason
            if first:
                return StartCold(exc.reason, exc.detail)
            if exc.reason != refused_before:
                log.info("standby: leader checkpoint not adopted reason=%s detail=%s", exc.reason, exc.detail)
            return None
        self._cp_refusal = None
        if own_last_bar is not None and cp.bar_idx < own_last_bar:
            return None  # my own state is newer (the leader is behind or gone)
        return Adopt(cp, first)

    def wrote_checkpoint(self, text: str) -> None:
        """My own checkpoint is in the map: the next adoption look sees it as unchanged."""
        self._last_cp_text = text
