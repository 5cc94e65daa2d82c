"""Optional Prometheus endpoint of the worker (``--metrics-port``).

``WorkerMetrics`` holds the worker's metrics in its own registry and serves them over
HTTP (``start(port)``). The worker calls it once per bar, off the listener hot path:

    metrics = WorkerMetrics(worker_id=cfg.worker_id); metrics.start(cfg.metrics_port)
    metrics.observe_bar(compute_seconds=..., event_to_write_seconds=..., degraded=...)
    metrics.update_from_health(health_doc)      # event totals, rejects by reason, state

Event counters are exported from the totals the ingest path already keeps (so the
listener callback does no metrics work); bar timings are histograms observed per bar.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from obf_features_worker.service.health import STATES

log = logging.getLogger(__name__)

WORKER_STATES = STATES  # the health document's states, one gauge label each

# Seconds. Bar compute is sub-millisecond to tens of ms; event-to-write spans one bar (~1 s).
COMPUTE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class _TotalsCollector(Collector):
    """Exports cumulative totals set from the worker's own counters (monotonic per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.accepted = 0
        self.ignored = 0
        self.read_echoes = 0
        self.superseded = 0
        self.read_refreshed = 0
        self.connections: dict[str, Any] = {}  # the health document's connections section
        self.seq_resets = 0
        self.seq_jumps = 0
        self.listener_errors = 0
        self.write_failures = 0
        self.rejected: dict[str, int] = {}
        self.state: str | None = None
        self.n_assets: int | None = None
        self.n_present: int | None = None
        self.clock: dict[str, Any] = {}  # the health document's producer_clock section

    def update(self, **values: Any) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self, key, value)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            yield CounterMetricFamily("obf_events_received", "Snapshot events received by the listener",
                                      value=self.received)
            yield CounterMetricFamily("obf_events_accepted", "Snapshot events accepted (valid and newest)",
                                      value=self.accepted)
            yield CounterMetricFamily("obf_events_ignored", "Snapshot events ignored (symbols outside --assets)",
                                      value=self.ignored)
            yield CounterMetricFamily("obf_events_read_echoes",
                                      "Snapshots not taken because a map read and the listener delivered "
                                      "the same or an older push (not rejects)", value=self.read_echoes)
            yield CounterMetricFamily("obf_events_superseded",
                                      "Snapshots coalesced away: replaced by a newer one before a bar took them",
                                      value=self.superseded)
            yield CounterMetricFamily("obf_events_read_refreshed",
                                      "Snapshots taken from a map read, not an event (initial read; bar-close "
                                      "re-read of stale assets: events never delivered or late)",
                                      value=self.read_refreshed)
            connected = GaugeMetricFamily("obf_connection_up", "1 while the client connection is up (or dropped "
                                          "on purpose: obf_connection_shed)", labels=["connection"])
            shed = GaugeMetricFamily("obf_connection_shed", "1 while the connection is dropped on purpose "
                                     "(events overload: every asset re-read at bar close)", labels=["connection"])
            lost = CounterMetricFamily("obf_connection_disconnects", "Client connections lost since start",
                                       labels=["connection"])
            for name, conn in sorted(self.connections.items()):
                connected.add_metric([name], 1.0 if conn.get("connected") else 0.0)
                shed.add_metric([name], 1.0 if conn.get("shed") else 0.0)
                lost.add_metric([name], int(conn.get("disconnects", 0) or 0))
            yield connected
            yield shed
            yield lost
            rejected = CounterMetricFamily("obf_events_rejected", "Snapshot events rejected, by reason",
                                           labels=["reason"])
            for reason, n in sorted(self.rejected.items()):
                rejected.add_metric([reason], n)
            yield rejected
            yield CounterMetricFamily("obf_events_seq_resets", "Snapshots accepted whose _push_seq went back "
                                      "under a newer timestamp (upstream restart)", value=self.seq_resets)
            yield CounterMetricFamily("obf_events_seq_jumps", "Snapshots accepted whose _push_seq jumped "
                                      "by more than 2^20", value=self.seq_jumps)
            yield from self._clock_metrics()
            yield CounterMetricFamily("obf_listener_errors", "Exceptions caught in the entry listener",
                                      value=self.listener_errors)
            yield CounterMetricFamily("obf_write_failures", "Bar writes that failed",
                                      value=self.write_failures)
            state = GaugeMetricFamily("obf_worker_state", "1 for the worker's current state", labels=["state"])
            for name in WORKER_STATES:
                state.add_metric([name], 1.0 if self.state == name else 0.0)
            yield state
            assets = GaugeMetricFamily("obf_assets", "Assets known to the engine / present in the last bar",
                                       labels=["kind"])
            if self.n_assets is not None:
                assets.add_metric(["known"], self.n_assets)
            if self.n_present is not None:
                assets.add_metric(["present"], self.n_present)
            yield assets

    def _clock_metrics(self) -> Iterator[Any]:
        # Called with the lock held. Per asset only for the flagged ones (at most 50), so the
        # label set stays small with thousands of assets.
        clock = self.clock
        offset = GaugeMetricFamily("obf_producer_clock_offset_seconds",
                                   "Median of receive time - snapshot timestamp (s): _min/_p50/_max over the "
                                   "assets, and per flagged asset", labels=["asset"])
        for stat in ("min", "p50", "max"):
            value = clock.get(f"{stat}_s")
            if isinstance(value, (int, float)):
                offset.add_metric([f"_{stat}"], float(value))
        flagged = clock.get("flagged")
        flagged = flagged if isinstance(flagged, Mapping) else {}
        for symbol, value in sorted(flagged.items()):
            if isinstance(value, (int, float)):
                offset.add_metric([str(symbol)], float(value))
        yield offset
        n_flagged = clock.get("n_flagged")
        yield GaugeMetricFamily("obf_producer_clock_flagged_assets",
                                "Assets whose producer clock offset is beyond --clock-offset-warn-s",
                                value=float(n_flagged) if isinstance(n_flagged, int) else 0.0)
        rejected = clock.get("all_rejected")
        yield GaugeMetricFamily("obf_assets_all_rejected", "Assets whose recent pushes were all rejected",
                                value=float(len(rejected) if isinstance(rejected, Mapping) else 0))


class WorkerMetrics:
    """The worker's Prometheus metrics (own registry, so several can coexist in one process)."""

    def __init__(self, worker_id: str = "", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._totals = _TotalsCollector()
        self.registry.register(self._totals)
        self._info = Info("obf_worker", "Worker identity", registry=self.registry)
        self._info.info({"worker_id": worker_id})
        self._bars = Counter("obf_bars_written", "Bar records written", registry=self.registry)
        self._compute = Histogram("obf_bar_compute_seconds", "Feature computation time per bar (s)",
                                  buckets=COMPUTE_BUCKETS, registry=self.registry)
        self._event_to_write = Histogram(
            "obf_event_to_write_seconds",
            "Snapshot receipt to its bar record written (s), one observation per asset per bar",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self._bar_to_write = Histogram("obf_bar_to_write_seconds", "Bar close to bar record written (s)",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self._degraded = Gauge("obf_degraded", "1 if the last bar written was degraded", registry=self.registry)
        self._last_bar_idx = Gauge("obf_last_bar_idx", "bar_idx of the last bar written", registry=self.registry)
        self._last_bar_ts = Gauge("obf_last_bar_timestamp_seconds", "bar_ts (unix s) of the last bar written",
                                  registry=self.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # --- serving -------------------------------------------------------------

    def start(self, port: int, addr: str = "0.0.0.0") -> int:  # noqa: S104 - the metrics endpoint is opt-in and meant to be scraped
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns the bound port (0 = any free)."""
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be in [0, 65535], got {port}")
        if self._server is not None:
            raise RuntimeError("metrics endpoint already started")
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("metrics endpoint started addr=%s port=%d", addr, bound)
        return bound

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._server = self._thread = None

    # --- what the worker reports ----------------------------------------------

    def observe_bar(self, *, compute_seconds: float, event_to_write_seconds: Iterable[float] = (),
                    bar_to_write_seconds: float | None = None, degraded: bool = False,
                    bar_idx: int | None = None, bar_ts: float | None = None) -> None:
        """One bar record written: its compute time (s), per-asset event-to-write latencies (s), flags."""
        self._bars.inc()
        self._compute.observe(max(0.0, float(compute_seconds)))
        for latency in event_to_write_seconds:
            self._event_to_write.observe(max(0.0, float(latency)))
        if bar_to_write_seconds is not None:
            self._bar_to_write.observe(max(0.0, float(bar_to_write_seconds)))
        self._degraded.set(1.0 if degraded else 0.0)
        if bar_idx is not None:
            self._last_bar_idx.set(bar_idx)
        if bar_ts is not None:
            self._last_bar_ts.set(bar_ts)

    def set_event_totals(self, *, received: int, accepted: int, ignored: int = 0, read_echoes: int = 0,
                         rejected: Mapping[str, int] | None = None, listener_errors: int = 0) -> None:
        """The ingest path's cumulative event counts (since process start)."""
        self._totals.update(received=int(received), accepted=int(accepted), ignored=int(ignored),
                            read_echoes=int(read_echoes),
                            rejected={str(k): int(v) for k, v in (rejected or {}).items()},
                            listener_errors=int(listener_errors))

    def update_from_health(self, doc: Mapping[str, Any]) -> None:
        """Event totals, rejects by reason, write failures, state and asset counts from a health doc.

        Missing or malformed fields are skipped: metrics must never break the worker.
        """
        try:
            events = doc.get("events") or {}
            rejected = events.get("rejected") or {}
            self.set_event_totals(
                received=events.get("received", 0), accepted=events.get("accepted", 0),
                ignored=events.get("ignored", 0), read_echoes=events.get("read_echoes", 0), rejected=rejected,
                listener_errors=events.get("listener_errors", 0),
            )
            clock = doc.get("producer_clock")
            conns = doc.get("connections")
            values: dict[str, Any] = {"write_failures": int(doc.get("write_failures", 0) or 0),
                                      "superseded": int(events.get("superseded", 0) or 0),
                                      "read_refreshed": int(events.get("read_refreshed", 0) or 0),
                                      "connections": ({str(k): dict(v) for k, v in conns.items()
                                                       if isinstance(v, Mapping)}
                                                      if isinstance(conns, Mapping) else {}),
                                      "seq_resets": int(events.get("seq_resets", 0) or 0),
                                      "seq_jumps": int(events.get("seq_jumps", 0) or 0),
                                      "clock": dict(clock) if isinstance(clock, Mapping) else {}}
            if doc.get("state") is not None:
                values["state"] = str(doc["state"])
            for key in ("n_assets", "n_present"):
                if doc.get(key) is not None:
                    values[key] = int(doc[key])
            self._totals.update(**values)
            if doc.get("last_bar_idx") is not None:
                self._last_bar_idx.set(int(doc["last_bar_idx"]))
            if doc.get("last_bar_ts") is not None:
                self._last_bar_ts.set(float(doc["last_bar_ts"]))
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("metrics update from health doc skipped error=%s", exc)
