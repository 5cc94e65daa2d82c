"""The long-running worker service: entry events -> SnapshotBook -> bar close -> engine -> grid.

Threads: the client's reactor thread runs the listener callbacks, which only call
``SnapshotBook.offer`` (asset events) or ``ScanClock.trigger`` (scan clock). The main thread
runs the bar loop: wait for the clock, re-read stale assets, ``FeatureEngine.step``, write.
SIGTERM/SIGINT/SIGHUP (``lifecycle.capture_signals``) and a closed log output set a stop event
(from a helper thread, so the handler never contends for a lock the interrupted main thread
holds); the bar in progress is finished, health says ``stopping``, the client disconnects and
the process exits 0 (141 if its output closed).

Writes that fail (cluster away) never stop the worker: records wait in a bounded backlog
(``retain_bars``, ``service.backlog``) and are written in bar order once the cluster answers again.

Warm restart and hot standby (docs/reliability.md). Once connected (``before_first_bar``) the
worker contends for the leader lease in the state map; every shared write (records, LATEST,
retention, checkpoint) is gated on ``may_write`` = holding the lease; health is always written.
Per bar, the leader writes the record (and LATEST) first; the checkpoint comes after, every
``checkpoint_every_bars`` bars (snapshot + changelog): a successor restores the checkpoint and
applies the records written since (``service.changelog``), so a crash anywhere loses no state.
A record whose write failed is carried by the next checkpoint (taken at once then). Before
stepping a bar, a standby (and every worker at its first bar) takes the leader's state (its
checkpoint once, then its records bar by bar, ``service.succession``) when it is at least as new
as its own, so its histories are the leader's; it steps the bar itself and keeps its own records
in the backlog until the leader's records cover them. On taking the lease it writes the previous
leader's unconfirmed records and back-fills its own (``put_if_absent``: never over another
writer's bar).
A ``Worker`` driven through ``process_bar`` alone (unit tests) has no lease: a sole writer. The
lease, the term and the adoption decisions are ``service.succession``'s; this module applies them.

Parts: this module is the bar loop and its wiring; ``service.backlog`` (the write backlog) and
``service.succession`` (lease, checkpoint adoption, back-fill) are tested alone. The grid is any
``service.grid.WorkerGrid`` (the real ``Grid``, or ``tests/fakes.py``'s). ``close()`` releases
in order: lease, client, metrics.

Seams: constructor parameters ``grid``, ``clock`` (the bar clock) and ``monotonic`` (schedules
idle lease ticks and health writes); ``make_engine()`` builds the engine, ``make_lease()`` the
lease, ``before_first_bar()`` runs once connected, ``may_write(tick)`` gates every write of a bar,
``role`` goes into health, and ``after_bar(tick, record, written)`` runs after each bar. Subclass
``Worker`` to override them.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from obf_contract.keys import asset_key
from obf_features_worker import __version__, lifecycle
from obf_features_worker.engine import checkpoint
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.ingest import SnapshotBook, present_at
from obf_features_worker.engine.snapshot import Snapshot, SnapshotRejected, parse_snapshot
from obf_features_worker.logs import RateLimiter, setup_logging
from obf_features_worker.service.backlog import PendingRecord, WriteBacklog
from obf_features_worker.service.bars import BarClock, BarTick, IntervalClock, ScanClock
from obf_features_worker.service.config import WorkerConfig
from obf_features_worker.service.grid import Grid, GridClosed, GridError, UnreadableValue, WorkerGrid, json_text
from obf_features_worker.service.health import HealthStats
from obf_features_worker.service.lease import LeaderLease
from obf_features_worker.service.metrics import WorkerMetrics
from obf_features_worker.service.republish import RecentRecords, Republisher
from obf_features_worker.service.succession import StartCold, Succession, TermChange

log = logging.getLogger(__name__)

# Flat per-symbol fields of DOLPHIN_OBF_LATEST, from the record's placement / signal blocks.
LATEST_PLACEMENT = ("depth_1pct_usd", "depth_quality", "fill_probability", "spread_proxy_bps")
LATEST_SIGNAL = ("imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry", "withdrawal_velocity")
_RETRY_SUBSCRIBE_S = 1.0
# A periodic action is due once this fraction of its interval has passed: the wait that ends on
# its deadline may wake a hair early, and running it a little early beats a whole period late.
_DUE_TOLERANCE = 0.95


def make_clock(config: WorkerConfig) -> BarClock:
    """The bar clock the configuration asks for."""
    if config.clock == "scan":
        return ScanClock(config.scan_field)
    return IntervalClock(config.bar_seconds, max_catchup_bars=config.max_catchup_bars)


def latest_entries(record: Mapping[str, Any]) -> dict[str, str]:
    """``{symbol: flat DOLPHIN_OBF_LATEST JSON}`` for every present asset of a (columnar) bar
    record: symbol, bar_idx, bar_ts, age_ms, seq, then the placement and signal fields.
    The record was encoded (and its floats checked finite) before it was written."""
    placement, signal = record["placement"], record["signal"]
    names = ("age_ms", "seq", *LATEST_PLACEMENT, *LATEST_SIGNAL)
    columns = (record["age_ms"], record["seq"], *(placement[n] for n in LATEST_PLACEMENT),
               *(signal[n] for n in LATEST_SIGNAL))
    bar_idx, bar_ts = record["bar_idx"], record["bar_ts"]
    out: dict[str, str] = {}
    for symbol, row in zip(record["symbols"], zip(*columns)):
        doc: dict[str, Any] = {"symbol": symbol, "bar_idx": bar_idx, "bar_ts": bar_ts}
        doc.update(zip(names, row))
        out[symbol] = orjson.dumps(doc).decode()
    return out


class Worker:
    """One worker process. ``run()`` blocks until ``request_stop()`` (or a fatal error)."""

    def __init__(self, config: WorkerConfig, *, grid: WorkerGrid | None = None,
                 clock: BarClock | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        """``grid``: the cluster (default: a ``Grid`` of ``config``); ``clock``: the bar clock
        (default: ``make_clock(config)``); ``monotonic``: seconds, schedules the idle lease ticks
        and health writes (tests pass a fake clock)."""
        self.config = config
        self.grid: WorkerGrid = grid if grid is not None else Grid(config)
        self.book = SnapshotBook(assets=config.assets, max_future_skew_s=config.max_future_skew_s,
                                 max_payload_bytes=config.max_payload_bytes,
                                 clock_offset_threshold_s=config.clock_offset_warn_s)
        self.clock = clock if clock is not None else make_clock(config)
        self.engine = self.make_engine()
        # Warm restart / hot standby; the lease exists once run() is connected (before_first_bar).
        self.succession = Succession(self.grid, config, self.make_lease)
        self.stop_event = threading.Event()
        self.stop_reason: str | None = None
        self.health = HealthStats(
            worker_id=config.worker_id, host=socket.gethostname(), pid=os.getpid(), version=__version__,
            clock=config.clock, bar_seconds=config.bar_seconds, started_at=time.time(), role=self.role,
        )
        self.backlog = WriteBacklog(config.retain_bars)
        self._write_outage = False
        self._limiter = RateLimiter(30.0)
        self.metrics = WorkerMetrics(config.worker_id) if config.metrics_port is not None else None
        # Checkpoint cadence (docs/reliability.md): every checkpoint_every_bars bars stepped (at
        # most changelog_max_bars: retention keeps the records after the last checkpoint only
        # that long), and at once after a takeover, a re-publish, or a bar whose record is still
        # in the backlog.
        self._checkpoint_every = min(config.checkpoint_every_bars, config.changelog_max_bars)
        self._bars_since_checkpoint = 0
        self._checkpoint_now = False
        # The bar of the newest checkpoint in the map of my numbering (mine, or the one I adopted):
        # retention keeps the records after it (_retain). None: none known.
        self._last_checkpoint_bar: int | None = None
        self._engine_bar_ts: float | None = None
        self._numbering_restarted = False
        self._unreadable: set[Any] = set()  # input keys whose value the client cannot deserialise
        self.checkpoint_failures = 0
        self.backfill_present = 0  # back-filled records whose key another writer had written
        # my copy of the records I wrote last, written back if the grid loses them (republish.py)
        self.republisher = Republisher(RecentRecords(config.retain_bars))
        self._monotonic = monotonic
        self._closed = False
        self._last_lease_tick = -math.inf  # self._monotonic() s
        self._last_health_put = -math.inf

    # --- seams ------------------------------------------------------------------------

    def make_engine(self) -> FeatureEngine:
        """The engine at start: cold; a checkpoint is adopted at the first bar (``process_bar``)."""
        return FeatureEngine(self.config.params, universe=self.config.assets)

    @property
    def lease(self) -> LeaderLease | None:
        """The leader lease (None until ``before_first_bar``, or for a worker driven by
        ``process_bar`` alone: a sole writer)."""
        return self.succession.lease

    @property
    def role(self) -> str:
        """``leader`` or ``standby`` (health); a worker without a lease always leads."""
        return "leader" if self.lease is None or self.lease.may_write() else "standby"

    def may_write(self, tick: BarTick | None) -> bool:
        """Gate of every shared write (checked right before each one): holding the lease, or no
        lease at all. ``tick`` is None outside a bar (idle lease tick, shutdown)."""
        return self.lease is None or self.lease.may_write()

    def make_lease(self, min_epoch: int) -> LeaderLease:
        """The leader lease in the state map (override to inject clocks in tests)."""
        return LeaderLease(self.grid.lease_map(), self.config.worker_id, self.config.lease_settings(),
                           min_epoch=min_epoch)

    def before_first_bar(self) -> None:
        """Called once connected and subscribed, before the first bar: contend for the lease
        (its epochs continue from the checkpoint's) and arm the warm-restart decision."""
        self.succession.begin()
        if self._tick_lease():  # start the lease's clock now, not at the first bar
            self._write_cycle(None)
            self._checkpoint_if_due(None)
        if isinstance(self.clock, ScanClock) and (value := self.succession.scan_to_catch_up()) is not None:
            self.clock.trigger(value)

    def after_bar(self, tick: BarTick, record: dict[str, Any], written: bool) -> None:
        """Called after each bar this worker stepped, written or not (``written``: by me, now)."""

    # --- lifecycle --------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Ask the bar loop to finish the bar in progress and stop. Thread-safe."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("stop requested reason=%s", reason)
        self.stop_event.set()
        self.clock.interrupt()

    def run(self) -> int:
        """Connect, subscribe, run bars until stopped. 0 = stopped, 1 = fatal error (logged)."""
        cfg = self.config
        log.info("worker starting version=%s worker_id=%s config=%s", __version__, cfg.worker_id,
                 orjson.dumps(cfg.summary(), default=str).decode())
        rc = 0
        try:
            if not self.grid.connect(self.stop_event):
                log.info("stopped before connecting")
                return 0
            if not self._subscribe():
                return 0
            if self.metrics is not None:
                self.metrics.start(cfg.metrics_port or 0)
            self.before_first_bar()
            if isinstance(self.clock, IntervalClock):
                self.clock.start()
            self.put_health()
            self._loop()
        except GridClosed as exc:
            log.error("worker exiting: cluster connection given up reason=%s", exc)
            rc = 1
        except Exception as exc:
            log.exception("worker crashed reason=%s: %s", type(exc).__name__, exc)
            rc = 1
        finally:
            self._shutdown(rc)
        return rc

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            tick = self.clock.wait_tick(self.stop_event, self.idle_due_in())
            if self.grid.closed:
                raise GridClosed("client", "the client shut down (connect timeout ran out?)")
            if tick is None:
                if not self.stop_event.is_set():
                    self.idle()  # between bars: keep (or watch) the lease and stay visible
                continue
            self.process_bar(tick)

    def idle_due_in(self) -> float:
        """Seconds until the next lease tick or health write is due (>= 0)."""
        now = self._monotonic()
        due = self._last_health_put + self.config.health_interval_s
        if self.lease is not None:
            due = min(due, self._last_lease_tick + self._lease_interval())
        return max(0.0, due - now)

    def _lease_interval(self) -> float:
        """Seconds between lease ticks outside bar closes. A worker that may not write (standby,
        or a term still settling) reads the lease every ``lease_tick_s`` (a quarter bar): it sees a
        dead leader's last refresh within a quarter bar and takes over within ttl + half a bar of
        the crash. A leader refreshes once per bar (at each close; between closes only if none
        came, e.g. the scan clock): refreshing more often would not move the takeover bound, which
        counts from the leader's last refresh, and would only add grid calls to the writer's loop."""
        assert self.lease is not None  # noqa: S101 - narrows the type; holds by construction
        return self.config.bar_seconds if self.lease.may_write() else self.config.lease_tick_s

    def _subscribe(self) -> bool:
        """Initial read, asset listener, scan listener; retried until done or stopped.

        Read before listening: an entry read after the listener is up may be newer than the
        events delivered so far, and its own event, arriving next, would then be rejected as a
        duplicate (stale_seq). Read first, an update made between the read and the registration
        is only late (the next event or the stale re-read at bar close brings it)."""
        steps = ["initial read", "asset listener"] + (["scan listener"] if isinstance(self.clock, ScanClock) else [])
        while steps:
            if self.stop_event.is_set():
                return False
            step = steps[0]
            try:
                if step == "asset listener":
                    self.grid.add_asset_listener(self._on_asset_event)
                elif step == "initial read":
                    entries = self.grid.read_assets()
                    self._offer_read(entries, count_invalid=True)
                    log.info("initial read entries=%d accepted_assets=%d", len(entries), len(self.book.latest()))
                else:
                    assert isinstance(self.clock, ScanClock)  # noqa: S101 - narrows the type; holds by construction
                    self.grid.add_scan_listener(self.clock.trigger)
                steps.pop(0)
            except GridError as exc:
                log.warning("subscribe step=%s failed, retrying error=%s", step, exc)
                self.stop_event.wait(_RETRY_SUBSCRIBE_S)
        return True

    def _on_asset_event(self, key: Any, value: Any, received_at: float) -> None:
        # Reactor thread: offer() validates and stores, never raises, never blocks on I/O.
        self.book.offer(key, value, received_at=received_at)

    def idle(self) -> None:
        """Between bars: tick the lease when due (``_lease_interval``: a quarter bar for a
        standby) and keep the health entry fresh."""
        now = self._monotonic()
        role = self.role
        if self.lease is not None and now - self._last_lease_tick >= self._lease_interval() * _DUE_TOLERANCE:
            if self._tick_lease():
                self._write_cycle(None)
                self._checkpoint_if_due(None)
        if self.role != role or now - self._last_health_put >= self.config.health_interval_s * _DUE_TOLERANCE:
            self.put_health()

    def _shutdown(self, rc: int) -> None:
        self.health.state = "stopping"
        if self.grid.connected:
            if self.backlog:
                self._write_cycle(None)
            # A clean stop leaves the newest state: the next process has no record to replay.
            self._checkpoint_now = self._bars_since_checkpoint > 0 or self._checkpoint_now
            self._checkpoint_if_due(None)
            self.put_health()  # the role this worker stopped in, state "stopping"
        self.close()
        log.info("worker stopped rc=%d reason=%s bars_written=%d write_failures=%d backlog=%d", rc,
                 self.stop_reason or ("error" if rc else "-"), self.health.bars_written,
                 self.health.write_failures, len(self.backlog))

    def close(self) -> None:
        """Release what the worker holds, in order: the lease (after the last write, so a
        standby takes over at its next tick), the cluster client, the metrics endpoint.
        Idempotent; ``run()`` ends with it, and a worker driven by ``process_bar`` alone (tests)
        is closed with it."""
        if self._closed:
            return
        self._closed = True
        if self.lease is not None and self.grid.connected:
            self.lease.release()
        self.grid.shutdown()
        if self.metrics is not None:
            self.metrics.stop()

    # --- one bar ----------------------------------------------------------------------

    def process_bar(self, tick: BarTick) -> dict[str, Any] | None:
        """Close bar ``tick``: adopt the leader's checkpoint (standby / first bar), refresh stale
        assets, compute, write (if allowed), tick the lease, update health. Returns the record,
        or None when the bar was already covered by an adopted checkpoint."""
        cfg = self.config
        if tick.new_epoch:
            self._restart_bar_numbering(tick)
        if self.lease is not None and (self.succession.restore_pending or not self.may_write(tick)):
            self._adopt_checkpoint(tick)
        last = self.engine.last_bar_idx
        if last is not None and tick.bar_idx <= last:
            # The checkpoint's writer already stepped this bar; its record is the leader's.
            log.debug("bar already covered by the adopted checkpoint bar_idx=%d checkpoint_bar=%d", tick.bar_idx, last)
            self._finish_bar(tick, None, self._write_cycle(tick), 0.0, {}, [], set())
            return None
        self._reread_stale(tick.bar_ts)
        latest = self.book.latest(bar_close=True)
        present = present_at(latest, tick.bar_ts, cfg.max_age_s)
        known = set(cfg.assets) if cfg.assets is not None else set(latest)
        stale = sorted(known - present.keys())

        c0 = time.perf_counter()
        record: dict[str, Any] = self.engine.step(tick.bar_idx, tick.bar_ts, present)  # type: ignore[assignment]
        compute_ms = (time.perf_counter() - c0) * 1000.0
        record["producer"] = {"worker_id": cfg.worker_id, "computed_at": time.time(),
                              "stale_assets": stale, "degraded": bool(self.engine.degraded), "epoch": None}
        self._engine_bar_ts = tick.bar_ts
        self._enqueue(tick.bar_idx, PendingRecord(record, self._epoch_now()))
        self._bars_since_checkpoint += 1
        self.health.compute_ms.add(compute_ms)
        if tick.new_epoch:
            # The first bar of a new numbering: its checkpoint goes BEFORE its record (once a day,
            # on the bar path). The checkpoint in the map is of the old numbering, which a
            # successor refuses (from_future) and which no record of the new numbering follows:
            # a crash between this record and a later checkpoint would be a cold start. This
            # checkpoint carries the bar's record (unconfirmed) for the next leader to write.
            self._checkpoint_now = True
            self._checkpoint_if_due(tick)
        written = self._write_cycle(tick)
        self._finish_bar(tick, record, written, compute_ms, present, stale, known)
        return record

    def _finish_bar(self, tick: BarTick, record: dict[str, Any] | None, written: list[int], compute_ms: float,
                    present: dict[str, Snapshot], stale: list[str], known: set[str]) -> None:
        """After the bar's first write attempt: tick the lease (a new leader writes at once),
        latency metrics and LATEST for the bar if its record was written, health, after_bar."""
        if self.lease is not None and self._tick_lease():
            written = written + self._write_cycle(tick)
        done = time.time()
        mine = record is not None and tick.bar_idx in written
        if mine:
            assert record is not None  # noqa: S101 - narrows the type; holds by construction
            self.health.bar_to_write_ms.add((done - tick.triggered_at) * 1000.0)
            event_to_write = [done - at for at in map(self.book.last_received_at, present) if at is not None]
            for latency in event_to_write:
                self.health.event_to_write_ms.add(latency * 1000.0)
            if self.metrics is not None:
                self.metrics.observe_bar(
                    compute_seconds=compute_ms / 1000.0, event_to_write_seconds=event_to_write,
                    bar_to_write_seconds=done - tick.triggered_at, degraded=bool(self.engine.degraded),
                    bar_idx=tick.bar_idx, bar_ts=tick.bar_ts)
            if self.config.write_latest and self.may_write(tick):
                self._put_latest(record)
        self._checkpoint_if_due(tick)

        h = self.health
        h.state = "degraded" if self.engine.degraded else "running"
        h.last_bar_idx = tick.bar_idx
        h.last_bar_ts = tick.bar_ts
        if record is not None:
            h.n_assets = len(known)
            h.n_present = len(present)
            h.stale_assets = stale
        self.put_health()
        log.debug("bar closed bar_idx=%d n_present=%d stale=%d compute_ms=%.3f written=%s role=%s", tick.bar_idx,
                  len(present), len(stale), compute_ms, mine, h.role)
        if record is not None:
            self.after_bar(tick, record, mine)

    def _restart_bar_numbering(self, tick: BarTick) -> None:
        # The scan count restarted at UTC midnight: bar_idx goes back to 0 while the feature
        # histories must carry on, so the engine keeps its state and forgets only its last bar.
        self.engine.last_bar_idx = None
        self._last_checkpoint_bar = None  # of the old numbering: no floor for the new one's retention
        self.republisher.records.forget_from(tick.bar_idx)
        self._numbering_restarted = True  # the next retention removes every key above the new bar
        log.info("bar numbering restarted bar_idx=%d", tick.bar_idx)

    def _reread_stale(self, bar_ts: float) -> None:
        """Re-read (one get_all) every known asset whose snapshot would be absent this bar, so a
        dropped event does not make an asset look stale while its entry is fresh. While the grid
        has shed its events (overload), pull instead: every asset of ``--assets``, or every
        ``asset_*_ob`` entry without one (new assets too)."""
        cfg = self.config
        latest = self.book.latest()
        symbols = cfg.assets if cfg.assets is not None else tuple(latest)
        pull_all = not self.grid.events_live()
        present = {} if pull_all else present_at(latest, bar_ts, cfg.max_age_s)
        stale = [s for s in symbols if s not in present]
        if not stale and not pull_all:
            return
        try:
            if pull_all and cfg.assets is None:
                entries = self.grid.read_assets()
            else:
                entries = self.grid.get_assets([asset_key(s) for s in stale])
        except GridError as exc:
            self._warn("reread", "stale re-read failed error=%s", exc)
            return
        refreshed = self._offer_read(entries)
        if refreshed:
            self._warn("reread-hit", "re-read refreshed assets whose events were missed symbols=%s",
                       ",".join(refreshed), level=logging.INFO)

    def _offer_read(self, entries: dict[Any, Any], *, count_invalid: bool = False) -> list[str]:
        """Offer entries read from the map (not events) to the book, only where they are newer
        than what the book holds: an entry the listener already delivered is not a new event
        (offering it again would count a stale_seq reject), and the event of an entry read here
        that arrives afterwards is a ``read_echo``, not a reject. A malformed entry is offered (so
        counted by reason) only if ``count_invalid`` (the initial read); on a re-read its event
        was already counted. Returns the symbols refreshed."""
        cfg = self.config
        now = time.time()
        refreshed = []
        for key, value in entries.items():
            if isinstance(value, UnreadableValue):
                # The client drops the entry events of such values, so this read is the only
                # place it is seen: counted once (bad_json) like an event, never fatal.
                if key not in self._unreadable:
                    self._unreadable.add(key)
                    self.book.offer(key, value, received_at=now, from_read=True)
                self._warn("unreadable", "unreadable input value key=%s detail=%s", key, value.detail)
                continue
            self._unreadable.discard(key)
            try:
                snap = parse_snapshot(key, value, now=now, max_future_skew_s=cfg.max_future_skew_s,
                                      max_payload_bytes=cfg.max_payload_bytes)
            except SnapshotRejected:
                if count_invalid:
                    self.book.offer(key, value, received_at=now, from_read=True)
                continue
            if cfg.assets is not None and snap.symbol not in cfg.assets:
                continue
            current: Snapshot | None = self.book.get(snap.symbol)
            if (current is None or snap.ts > current.ts) and self.book.offer(key, value, received_at=now,
                                                                             from_read=True, parsed=snap):
                refreshed.append(snap.symbol)
        return refreshed

    # --- writes -----------------------------------------------------------------------

    @property
    def backlog_dropped(self) -> int:
        """Records dropped because the backlog was full (``retain_bars``), since start."""
        return self.backlog.dropped

    def _epoch_now(self) -> int | None:
        return self.succession.current_epoch()

    def _enqueue(self, bar_idx: int, entry: PendingRecord) -> None:
        dropped = self.backlog.add(bar_idx, entry)
        if dropped is not None and self.may_write(None):  # a standby's backlog overflowing is routine
            self._warn("backlog", "write backlog full, dropping oldest bar_idx=%d dropped_total=%d",
                       dropped, self.backlog.dropped)

    def _write_cycle(self, tick: BarTick | None) -> list[int]:
        """As leader: the backlog oldest first, then retention. Returns the bars written now.
        The checkpoint is not part of it: it comes after the records (``_checkpoint_if_due``)."""
        if self.lease is not None:
            self._sync_term()
        if not self.backlog or not self.may_write(tick):
            return []
        written = self._flush(tick, self._epoch_now())
        if self.backlog:
            # A record is still not written: the next checkpoint carries it (whoever leads next
            # writes it if absent), so take that checkpoint now rather than in k bars.
            self._checkpoint_now = True
        if written:
            self._retain(max(written))
            self._repair_lost_records(max(written))
        return written

    @property
    def checkpoint_due(self) -> bool:
        """A checkpoint is due: ``checkpoint_every_bars`` bars stepped since the last (or
        ``changelog_max_bars``, if fewer), or at once (new term, re-publish, a record left in the backlog)."""
        return self.engine.last_bar_idx is not None and (
            self._checkpoint_now or self._bars_since_checkpoint >= self._checkpoint_every)

    def _checkpoint_if_due(self, tick: BarTick | None) -> None:
        """As leader with a lease, after the bar's record and LATEST: the checkpoint, when due. Off
        the path from bar close to record; a crash before it leaves the records since the last
        checkpoint, which a successor applies (``service.changelog``)."""
        if self.lease is None or not self.checkpoint_due or not self.may_write(tick):
            return
        self._write_checkpoint(self._epoch_now())

    def _repair_lost_records(self, just_written: int) -> None:
        """After a reconnect and every few bars: if the grid lost my records (a single member
        restarted empty), write them back where absent, and the checkpoint with the next bar."""
        if not self.republisher.due(self.grid.disconnects):
            return
        try:
            if self.republisher.check_and_repair(self.grid, skip=just_written):
                self._checkpoint_now = True
                self.health.republished_records = self.republisher.republished
        except GridError as exc:
            self._warn("republish", "lost-record check failed error=%s", exc)

    def _write_checkpoint(self, epoch: int | None) -> bool:
        cfg = self.config
        try:
            records = self.backlog.payloads(epoch)
            cp = checkpoint.capture(self.engine, seqs=self.book.export_seqs(), bar_ts=self._engine_bar_ts or 0.0,
                                    worker_id=cfg.worker_id, written_at=time.time(), epoch=epoch, records=records)
            text = checkpoint.encode(cp).decode()
        except ValueError as exc:  # a bug, not an outage: the records still go out
            self.checkpoint_failures += 1
            self._warn("checkpoint-build", "checkpoint not built error=%s", exc, level=logging.ERROR)
            return False
        if not self.may_write(None):
            return False
        try:
            self.grid.put_checkpoint(text)
        except GridError as exc:
            # Records are written anyway: the features come first. A restart before the next
            # successful checkpoint continues from an older one (docs/reliability.md).
            self.checkpoint_failures += 1
            self._warn("checkpoint", "checkpoint write failed failures=%d error=%s", self.checkpoint_failures, exc)
            return False
        self._checkpoint_now = False
        self._bars_since_checkpoint = 0
        self._last_checkpoint_bar = cp.bar_idx
        self.succession.wrote_checkpoint(text)
        return True

    def _flush(self, tick: BarTick | None = None, epoch: int | None = None) -> list[int]:
        """Write the backlog oldest first, one call per bar, each gated on ``may_write``; returns
        the bars written now. My current term's records are ``set``; others (computed as standby,
        in an earlier term, or another writer's) are written only if the key is absent."""
        written: list[int] = []
        flushed = 0
        while self.backlog:
            if not self.may_write(tick):
                break
            bar_idx, entry = self.backlog.first()
            payload = entry.payload_for(epoch)
            overwrite = self.lease is None or (entry.term is not None and entry.term == epoch)
            try:
                if overwrite and entry.attempted:
                    ok = self._write_again(bar_idx, payload)
                elif overwrite:
                    self.grid.write_bar(bar_idx, payload)
                    ok = True
                else:
                    ok = self.grid.put_bar_if_absent(bar_idx, payload)
            except GridError as exc:
                entry.attempted = True
                self.health.write_failures += 1
                if not self._write_outage:
                    self._write_outage = True
                    self._limiter.reset("write")
                    log.warning("bar write failed, keeping records in backlog bar_idx=%d backlog=%d error=%s",
                                bar_idx, len(self.backlog), exc)
                else:
                    self._warn("write", "bar writes still failing backlog=%d failures=%d error=%s",
                               len(self.backlog), self.health.write_failures, exc)
                break
            self.backlog.pop_first()
            flushed += 1
            if ok:
                self.health.bars_written += 1
                written.append(bar_idx)
                self.republisher.records.add(bar_idx, payload)
            else:
                self.backfill_present += 1
                log.debug("back-fill skipped, bar already written bar_idx=%d", bar_idx)
        if flushed and self._write_outage and not self.backlog:
            self._write_outage = False
            log.warning("bar writes resumed flushed=%d last_bar_idx=%s write_failures=%d", flushed,
                        written[-1] if written else None, self.health.write_failures)
        return written

    def _write_again(self, bar_idx: int, payload: str) -> bool:
        """Write a record of my term whose earlier write failed but may have been applied: only if
        absent, or if what the key holds is not this record (another numbering's bar), so readers
        never see my bar written twice. Raises GridError."""
        if self.grid.put_bar_if_absent(bar_idx, payload):
            return True
        if json_text(self.grid.get_records([bar_idx]).get(bar_idx)) != payload:
            self.grid.write_bar(bar_idx, payload)
        return True

    def _retain(self, newest: int) -> None:
        # Below: older than retain_bars. Above: keys left from another numbering (a scan count
        # that restarted at midnight, an earlier run with another clock) must not look newest to
        # a reader. With a lease, keys up to a margin above the newest bar are kept: they may be
        # a previous leader's newest bars (its clock ahead of mine), docs/reliability.md.
        margin = 0 if self.lease is None or self._numbering_restarted else self._future_margin_bars()
        try:
            self.grid.remove_bars_outside(self.retention_floor(newest), newest + margin)
            self._numbering_restarted = False
        except GridError as exc:
            self._warn("retention", "retention failed error=%s", exc)

    def retention_floor(self, newest: int) -> int:
        """Retention removes the bar keys ``<=`` this: older than ``retain_bars`` bar numbers,
        but never a record after the last checkpoint in the map, which a successor applies to it
        (bar numbers can jump: a scan clock skipping, checkpoints failing while records succeed).
        Bounded: that floor holds only while at most ``changelog_max_bars`` bars were stepped since
        the checkpoint (checkpoint writes failing for longer), so the map keeps at most
        max(retain_bars, changelog_max_bars) records of mine whatever happens."""
        cfg = self.config
        floor = newest - cfg.retain_bars
        cp_bar = self._last_checkpoint_bar
        if cp_bar is not None and cp_bar < floor and self._bars_since_checkpoint <= cfg.changelog_max_bars:
            return cp_bar
        return floor

    def _future_margin_bars(self) -> int:
        """Bars above my newest that retention never removes while a lease is in use: another
        host's interval clock may run ahead of mine by up to ``max_future_skew_s``."""
        cfg = self.config
        return math.ceil(cfg.max_future_skew_s / cfg.bar_seconds) + 1

    # --- lease and checkpoints ------------------------------------------------------------

    def _tick_lease(self) -> bool:
        """Tick the lease (never raises); True if a new term of mine began."""
        self._last_lease_tick = self._monotonic()
        return self._follow_term(self.succession.tick())

    def _sync_term(self) -> bool:
        """Follow the lease's writable epoch; True if a new term of mine began."""
        return self._follow_term(self.succession.sync_term())

    def _follow_term(self, change: TermChange) -> bool:
        self.health.epoch = self.succession.epoch
        if change.lost is not None:
            # The backlog is kept: its records now go out only where no other writer put a bar.
            log.info("standby now worker_id=%s lost_epoch=%d holder=%s backlog_kept=%d", self.config.worker_id,
                     change.lost, change.holder, len(self.backlog))
        if change.acquired is not None:
            self._on_acquired(change.acquired)
            return True
        return False

    def _on_acquired(self, epoch: int) -> None:
        """A new term: the last leader's checkpoint may hold records it never confirmed written
        (its writes failed before it died); they join the backlog, written if absent. My first
        checkpoint is due at once: it carries my epoch for the next leader's seed."""
        self._checkpoint_now = True
        cp = self.succession.previous_records(epoch)
        if cp is None:
            log.info("leader epoch=%d: no previous checkpoint; back-filling backlog=%d", epoch, len(self.backlog))
            return
        mine = set(self.backlog.bars())
        for bar_idx, text in sorted(cp.records.items()):
            # Prefer the previous writer's record: my state continues from its checkpoint.
            self._enqueue(bar_idx, PendingRecord(None, None, payload=text))
        log.info("leader epoch=%d: previous checkpoint bar=%d writer=%s epoch=%s unconfirmed_records=%d "
                 "back-fill=%d", epoch, cp.bar_idx, cp.worker_id, cp.epoch, len(cp.records),
                 len(mine - set(cp.records)))

    def _adopt_checkpoint(self, tick: BarTick) -> None:
        """Before stepping ``tick``: apply the succession's decision (warm restart at the first
        bar, a standby following its leader afterwards): the leader's checkpoint plus its records
        since (``service.changelog``)."""
        decision = self.succession.adoption(tick.bar_idx, self.engine.last_bar_idx)
        if isinstance(decision, StartCold):
            self.health.cold_start_reason = decision.reason
            self.health.restored_from_bar = None
            self.health.restore_gap_bars = None
            log.warning("starting cold reason=%s detail=%s", decision.reason, decision.detail[:300])
            return
        if decision is None:
            return
        cp = decision.checkpoint
        self.engine = decision.engine
        self._engine_bar_ts = decision.bar_ts
        self._bars_since_checkpoint = decision.bar_idx - cp.bar_idx  # bars the checkpoint in the map lags
        self._last_checkpoint_bar = cp.bar_idx
        # My records of bars up to the adopted state's are the leader's, in the map (read back) or in
        # its checkpoint; records taken from a checkpoint at a takeover stay until written.
        self.backlog.drop_covered(decision.bar_idx)
        if decision.first:
            self.book.import_seqs(decision.seqs)
            self.health.restored_from_bar = decision.bar_idx
            self.health.restore_gap_bars = max(0, tick.bar_idx - decision.bar_idx - 1)
            self.health.restore_replayed_records = decision.replayed
            self.health.cold_start_reason = None
            log.info("warm restart from_bar=%d checkpoint_bar=%d replayed_records=%d writer=%s epoch=%s "
                     "next_bar=%d gap_bars=%d", decision.bar_idx, cp.bar_idx, decision.replayed, cp.worker_id,
                     cp.epoch, tick.bar_idx, self.health.restore_gap_bars)
        else:
            log.debug("standby follows the leader state_bar=%d checkpoint_bar=%d writer=%s epoch=%s",
                      decision.bar_idx, cp.bar_idx, cp.worker_id, cp.epoch)

    def _put_latest(self, record: dict[str, Any]) -> None:
        try:
            self.grid.put_latest(latest_entries(record))
        except GridError as exc:
            self._warn("latest", "latest write failed error=%s", exc)

    def put_health(self) -> None:
        """Write the health document now (after every bar, between bars when due, on stop)."""
        self._last_health_put = self._monotonic()
        self.health.role = self.role  # every document shows the role of its moment
        self.health.changelog_stops = dict(self.succession.catchup_stops)
        doc = self.health.document(time.time(), self.book.stats(), self.grid.listener_errors,
                                   self.grid.connection_states())
        if self.metrics is not None:
            self.metrics.update_from_health(doc)
        try:
            self.grid.put_health(orjson.dumps(doc).decode(), doc["updated_at"])
        except GridError as exc:
            self._warn("health", "health write failed error=%s", exc)

    def _warn(self, key: str, msg: str, *args: Any, level: int = logging.WARNING) -> None:
        suppressed = self._limiter.allow(key)
        if suppressed is not None:
            log.log(level, msg + " suppressed_since_last=%d", *args, suppressed)


def serve(config: WorkerConfig) -> int:
    """Run a worker until asked to stop (``obf_features_worker.lifecycle``): 0 = stopped by
    SIGTERM/SIGINT/SIGHUP, 1 = fatal error (or a second signal while stopping), 141 = its log
    output closed (broken pipe), after the same clean stop."""
    workers: list[Worker] = []

    def output_closed() -> None:
        for w in workers:
            w.request_stop(lifecycle.OUTPUT_CLOSED)

    setup_logging(config.log_level, config.log_format, on_output_closed=output_closed)
    worker = Worker(config)
    workers.append(worker)
    with lifecycle.capture_signals(worker.request_stop):
        rc = worker.run()
    if rc == lifecycle.EXIT_OK and worker.stop_reason == lifecycle.OUTPUT_CLOSED:
        return lifecycle.EXIT_OUTPUT_CLOSED
    return rc


if __name__ == "__main__":  # pragma: no cover - `python -m obf_features_worker.service.worker`
    # Run under the package's name so the loggers are named obf_features_worker.service.worker.
    from obf_features_worker.cli import worker_main

    sys.exit(worker_main())
