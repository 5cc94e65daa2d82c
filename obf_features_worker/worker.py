"""The long-running worker service: entry events -> SnapshotBook -> bar close -> engine -> grid.

Threads: the client's reactor thread runs the listener callbacks, which only call
``SnapshotBook.offer`` (asset events) or ``ScanClock.trigger`` (scan clock). The main thread
runs the bar loop: wait for the clock, re-read stale assets, ``FeatureEngine.step``, write.
SIGTERM/SIGINT set a stop event (from a helper thread, so the handler never contends for a
lock the interrupted main thread holds); the bar in progress is finished, health says
``stopping``, the client disconnects and the process exits 0.

Writes that fail (cluster away) never stop the worker: records wait in a bounded backlog
(``retain_bars``) and are written in bar order once the cluster answers again.

Seams for later work (checkpoints, leader lease): ``make_engine()`` builds the engine,
``before_first_bar()`` runs once connected, ``may_write(tick)`` gates every write of a bar,
``role`` goes into health, and ``after_bar(tick, record, written)`` runs after each bar.
Subclass ``Worker`` to override them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson

from obf_features_worker import __version__
from obf_features_worker.bars import BarClock, BarTick, IntervalClock, ScanClock
from obf_features_worker.config import ConfigError, WorkerConfig, load_config
from obf_features_worker.engine import FeatureEngine
from obf_features_worker.grid import Grid, GridClosed, GridError
from obf_features_worker.health import HealthStats
from obf_features_worker.ingest import SnapshotBook
from obf_features_worker.logs import RateLimiter, setup_logging
from obf_features_worker.metrics import WorkerMetrics
from obf_features_worker.record import dumps_record
from obf_features_worker.snapshot import Snapshot, SnapshotRejected, asset_key, parse_snapshot

log = logging.getLogger(__name__)

# Flat per-symbol fields of DOLPHIN_OBF_LATEST, from the record's placement / signal blocks.
LATEST_PLACEMENT = ("depth_1pct_usd", "depth_quality", "fill_probability", "spread_proxy_bps")
LATEST_SIGNAL = ("imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry", "withdrawal_velocity")
_RETRY_SUBSCRIBE_S = 1.0


def make_clock(config: WorkerConfig) -> BarClock:
    """The bar clock the configuration asks for."""
    if config.clock == "scan":
        return ScanClock(config.scan_field)
    return IntervalClock(config.bar_seconds, max_catchup_bars=config.max_catchup_bars)


def latest_entry(symbol: str, record: dict[str, Any]) -> dict[str, Any]:
    """The flat ``DOLPHIN_OBF_LATEST[symbol]`` document of one asset of a bar record."""
    a = record["assets"][symbol]
    out: dict[str, Any] = {"symbol": symbol, "bar_idx": record["bar_idx"], "bar_ts": record["bar_ts"],
                           "age_ms": a["age_ms"], "seq": a["seq"]}
    for name in LATEST_PLACEMENT:
        out[name] = a["placement"][name]
    for name in LATEST_SIGNAL:
        out[name] = a["signal"][name]
    return out


class Worker:
    """One worker process. ``run()`` blocks until ``request_stop()`` (or a fatal error)."""

    def __init__(self, config: WorkerConfig, *, grid: Grid | None = None,
                 clock: BarClock | None = None) -> None:
        self.config = config
        self.grid = grid if grid is not None else Grid(config)
        self.book = SnapshotBook(assets=config.assets, max_future_skew_s=config.max_future_skew_s,
                                 max_payload_bytes=config.max_payload_bytes)
        self.clock = clock if clock is not None else make_clock(config)
        self.engine = self.make_engine()
        self.stop_event = threading.Event()
        self.stop_reason: str | None = None
        self.health = HealthStats(
            worker_id=config.worker_id, host=socket.gethostname(), pid=os.getpid(), version=__version__,
            clock=config.clock, bar_seconds=config.bar_seconds, started_at=time.time(), role=self.role,
        )
        self._backlog: deque[tuple[int, str]] = deque()
        self.backlog_dropped = 0
        self._write_outage = False
        self._limiter = RateLimiter(30.0)
        self._last_written: int | None = None
        self.metrics = WorkerMetrics(config.worker_id) if config.metrics_port is not None else None

    # --- seams ------------------------------------------------------------------------

    def make_engine(self) -> FeatureEngine:
        """The engine at start (override to restore a checkpoint)."""
        return FeatureEngine(self.config.params)

    @property
    def role(self) -> str:
        """``leader`` or ``standby`` (health); a worker without a lease always leads."""
        return "leader"

    def may_write(self, tick: BarTick) -> bool:
        """Gate of every write of bar ``tick`` (override with a leader-lease check)."""
        return True

    def before_first_bar(self) -> None:
        """Called once connected and subscribed, before the first bar (override to restore a
        checkpoint into ``self.engine`` / ``self.book`` or to contend for the lease)."""

    def after_bar(self, tick: BarTick, record: dict[str, Any], written: bool) -> None:
        """Called after each bar, written or not (override to checkpoint)."""

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
            self._put_health()
            self._loop()
        except GridClosed as exc:
            log.error("worker exiting: cluster connection given up reason=%s", exc)
            rc = 1
        except Exception as exc:  # noqa: BLE001 - log the reason, exit non-zero
            log.exception("worker crashed reason=%s: %s", type(exc).__name__, exc)
            rc = 1
        finally:
            self._shutdown(rc)
        return rc

    def _loop(self) -> None:
        heartbeat = min(self.config.bar_seconds, self.config.health_ttl_s / 3.0)
        while not self.stop_event.is_set():
            tick = self.clock.wait_tick(self.stop_event, heartbeat)
            if self.grid.closed:
                raise GridClosed("client", "the client shut down (connect timeout ran out?)")
            if tick is None:
                if not self.stop_event.is_set():
                    self._put_health()  # scan clock idle: stay visible
                continue
            self.process_bar(tick)

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
                    assert isinstance(self.clock, ScanClock)
                    self.grid.add_scan_listener(self.clock.trigger)
                steps.pop(0)
            except GridError as exc:
                log.warning("subscribe step=%s failed, retrying error=%s", step, exc)
                self.stop_event.wait(_RETRY_SUBSCRIBE_S)
        return True

    def _on_asset_event(self, key: Any, value: Any, received_at: float) -> None:
        # Reactor thread: offer() validates and stores, never raises, never blocks on I/O.
        self.book.offer(key, value, received_at=received_at)

    def _shutdown(self, rc: int) -> None:
        self.health.state = "stopping"
        if self.grid.connected:
            if self._backlog:
                self._flush()
            self._put_health()
        self.grid.shutdown()
        if self.metrics is not None:
            self.metrics.stop()
        log.info("worker stopped rc=%d reason=%s bars_written=%d write_failures=%d backlog=%d", rc,
                 self.stop_reason or ("error" if rc else "-"), self.health.bars_written,
                 self.health.write_failures, len(self._backlog))

    # --- one bar ----------------------------------------------------------------------

    def process_bar(self, tick: BarTick) -> dict[str, Any]:
        """Close bar ``tick``: refresh stale assets, compute, write (if allowed), update health."""
        cfg = self.config
        if tick.new_epoch:
            self._restart_bar_numbering(tick)
        self._reread_stale(tick.bar_ts)
        latest = self.book.latest()
        present = {s: snap for s, snap in latest.items() if tick.bar_ts - snap.ts <= cfg.max_age_s}
        known = set(cfg.assets) if cfg.assets is not None else set(latest)
        stale = sorted(known - present.keys())

        c0 = time.perf_counter()
        record: dict[str, Any] = self.engine.step(tick.bar_idx, tick.bar_ts, present)  # type: ignore[assignment]
        compute_ms = (time.perf_counter() - c0) * 1000.0
        record["producer"] = {"worker_id": cfg.worker_id, "computed_at": time.time(),
                              "stale_assets": stale, "degraded": bool(self.engine.degraded)}

        written = False
        if self.may_write(tick):
            self._enqueue(tick.bar_idx, dumps_record(record).decode())
            written = self._flush() == tick.bar_idx
            if written:
                done = time.time()
                self.health.bar_to_write_ms.add((done - tick.triggered_at) * 1000.0)
                event_to_write = [done - at for at in map(self.book.last_received_at, present) if at is not None]
                for latency in event_to_write:
                    self.health.event_to_write_ms.add(latency * 1000.0)
                if self.metrics is not None:
                    self.metrics.observe_bar(
                        compute_seconds=compute_ms / 1000.0, event_to_write_seconds=event_to_write,
                        bar_to_write_seconds=done - tick.triggered_at, degraded=bool(self.engine.degraded),
                        bar_idx=tick.bar_idx, bar_ts=tick.bar_ts)
                if cfg.write_latest:
                    self._put_latest(record)

        h = self.health
        h.compute_ms.add(compute_ms)
        h.role = self.role
        h.state = "degraded" if self.engine.degraded else "running"
        h.last_bar_idx = tick.bar_idx
        h.last_bar_ts = tick.bar_ts
        h.n_assets = len(known)
        h.n_present = len(present)
        h.stale_assets = stale
        self._put_health()
        log.debug("bar closed bar_idx=%d n_present=%d stale=%d compute_ms=%.3f written=%s", tick.bar_idx,
                  len(present), len(stale), compute_ms, written)
        self.after_bar(tick, record, written)
        return record

    def _restart_bar_numbering(self, tick: BarTick) -> None:
        # The scan count restarted at UTC midnight: bar_idx goes back to 0 while the feature
        # histories must carry on, so the engine keeps its state and forgets only its last bar.
        state = self.engine.export_state()
        state["last_bar_idx"] = None
        self.engine = FeatureEngine.from_state(state, self.config.params)
        log.info("bar numbering restarted bar_idx=%d", tick.bar_idx)

    def _reread_stale(self, bar_ts: float) -> None:
        """Re-read (one get_all) every known asset whose snapshot would be absent this bar, so a
        dropped event does not make an asset look stale while its entry is fresh."""
        cfg = self.config
        latest = self.book.latest()
        symbols = cfg.assets if cfg.assets is not None else tuple(latest)
        stale = [s for s in symbols if s not in latest or bar_ts - latest[s].ts > cfg.max_age_s]
        if not stale:
            return
        try:
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
        (offering it again would count a stale_seq reject). A malformed entry is offered (so
        counted by reason) only if ``count_invalid`` (the initial read); on a re-read its event
        was already counted. Returns the symbols refreshed."""
        cfg = self.config
        now = time.time()
        refreshed = []
        for key, value in entries.items():
            try:
                snap = parse_snapshot(key, value, now=now, max_future_skew_s=cfg.max_future_skew_s,
                                      max_payload_bytes=cfg.max_payload_bytes)
            except SnapshotRejected:
                if count_invalid:
                    self.book.offer(key, value, received_at=now)
                continue
            if cfg.assets is not None and snap.symbol not in cfg.assets:
                continue
            current: Snapshot | None = self.book.get(snap.symbol)
            if (current is None or snap.ts > current.ts) and self.book.offer(key, value, received_at=now):
                refreshed.append(snap.symbol)
        return refreshed

    # --- writes -----------------------------------------------------------------------

    def _enqueue(self, bar_idx: int, payload: str) -> None:
        if len(self._backlog) >= self.config.retain_bars:
            dropped_idx, _ = self._backlog.popleft()
            self.backlog_dropped += 1
            self._warn("backlog", "write backlog full, dropping oldest bar_idx=%d dropped_total=%d",
                       dropped_idx, self.backlog_dropped)
        self._backlog.append((bar_idx, payload))

    def _flush(self) -> int | None:
        """Write the backlog oldest first, one call per bar; returns the newest bar written now."""
        newest: int | None = None
        flushed = 0
        while self._backlog:
            bar_idx, payload = self._backlog[0]
            try:
                self.grid.write_bar(bar_idx, payload)
            except GridError as exc:
                self.health.write_failures += 1
                if not self._write_outage:
                    self._write_outage = True
                    self._limiter.reset("write")
                    log.warning("bar write failed, keeping records in backlog bar_idx=%d backlog=%d error=%s",
                                bar_idx, len(self._backlog), exc)
                else:
                    self._warn("write", "bar writes still failing backlog=%d failures=%d error=%s",
                               len(self._backlog), self.health.write_failures, exc)
                break
            self._backlog.popleft()
            self.health.bars_written += 1
            self._last_written = newest = bar_idx
            flushed += 1
        if newest is not None:
            if self._write_outage and not self._backlog:
                self._write_outage = False
                log.warning("bar writes resumed flushed=%d last_bar_idx=%d write_failures=%d", flushed, newest,
                            self.health.write_failures)
            self._retain(newest)
        return newest

    def _retain(self, newest: int) -> None:
        # Keys above the newest bar can only be left from another numbering (a scan count that
        # restarted at midnight, an earlier run with another clock); a reader must not see them.
        try:
            self.grid.remove_bars_outside(newest - self.config.retain_bars, newest)
        except GridError as exc:
            self._warn("retention", "retention failed error=%s", exc)

    def _put_latest(self, record: dict[str, Any]) -> None:
        entries = {s: orjson.dumps(latest_entry(s, record)).decode() for s in record["assets"]}
        try:
            self.grid.put_latest(entries)
        except GridError as exc:
            self._warn("latest", "latest write failed error=%s", exc)

    def _put_health(self) -> None:
        doc = self.health.document(time.time(), self.book.stats(), self.grid.listener_errors)
        if self.metrics is not None:
            self.metrics.update_from_health(doc)
        try:
            self.grid.put_health(orjson.dumps(doc).decode())
        except GridError as exc:
            self._warn("health", "health write failed error=%s", exc)

    def _warn(self, key: str, msg: str, *args: Any, level: int = logging.WARNING) -> None:
        suppressed = self._limiter.allow(key)
        if suppressed is not None:
            log.log(level, msg + " suppressed_since_last=%d", *args, suppressed)


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM/SIGINT -> ``worker.request_stop``; a second signal exits at once (code 1)."""

    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        received.append(signum)
        if len(received) > 1:
            log.warning("second %s while stopping: exiting now", name)
            os._exit(1)
        # Set the stop event from another thread: the interrupted main thread may hold the
        # event's internal lock at this very moment.
        threading.Thread(target=worker.request_stop, args=(name,), name="stop-request", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """``obf-features-worker``: 0 = stopped by a signal, 1 = fatal error, 2 = bad configuration."""
    try:
        config, args = load_config(argv)
    except ConfigError as exc:
        print(f"obf-features-worker: error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(orjson.dumps(config.summary(), default=str, option=orjson.OPT_INDENT_2).decode())
        return 0
    setup_logging(config.log_level, config.log_format)
    worker = Worker(config)
    install_signal_handlers(worker)
    return worker.run()


if __name__ == "__main__":  # pragma: no cover - `python -m obf_features_worker.worker`
    # Run the module under its package name so its loggers are named obf_features_worker.worker.
    from obf_features_worker.worker import main as _main

    sys.exit(_main())
