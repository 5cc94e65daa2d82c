"""``obf-features feed``: publish order-book snapshots to the input map like the upstream flow.

Two sources:
- synthetic (default): ``synthetic.SyntheticMarket`` books for several assets at ``--hz``
  (default 10) per asset, deterministic for ``--seed``, with optional liquidity-drain
  episodes (``--drain-at``, ``--drain-every``);
- ``--input REPLAY.jsonl``: a recorded replay input (``{"key", "value"}`` lines, e.g. from
  ``import-binance``) published at recorded speed times ``--speed``. Timestamps are shifted so
  the first snapshot is "now" (otherwise every snapshot would be stale for a live worker);
  band values and ``_push_seq`` are kept (``--loop`` offsets seqs so they keep increasing).

Values are written exactly in the upstream format, as JSON *strings* (``snapshot.payload_json``),
one ``put_all`` per tick. Runs until SIGINT/SIGTERM/SIGHUP or ``--duration`` (``lifecycle``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from obf_contract.cluster import DEFAULT_CLUSTER_NAME
from obf_contract.keys import asset_key
from obf_contract.timestamps import format_timestamp
from obf_features_worker import lifecycle
from obf_features_worker.engine import snapshot
from obf_features_worker.logs import RateLimiter, setup_logging
from obf_features_worker.offline.synthetic import DEFAULT_SYMBOLS, DrainSchedule, SyntheticMarket
from obf_features_worker.service.config import comma_list
from obf_features_worker.service.grid import GridClosed, GridError, Publisher

log = logging.getLogger(__name__)

_STATUS_EVERY_S = 10.0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def synthetic_payloads(market: SyntheticMarket, ts: float, seq: int) -> dict[str, str]:
    """One tick of ``market`` as ``{asset key: payload JSON string}`` stamped ``ts`` / ``seq``."""
    pushed = _now_iso()
    return {
        asset_key(b.symbol): snapshot.payload_json(
            ts, b.bid_notional, b.ask_notional, b.bid_depth, b.ask_depth, seq=seq, pushed_at=pushed)
        for b in market.step()
    }


@dataclass(frozen=True, slots=True)
class RecordedSnapshot:
    """One replay-input line: the snapshot's own time (unix s) and its payload object."""

    ts: float
    key: str
    payload: dict[str, Any]


def read_recording(lines: Iterable[bytes | str]) -> tuple[list[RecordedSnapshot], int]:
    """Parse replay-input lines, sorted by snapshot time (stable); returns (snapshots, bad lines).

    A line is bad if it is not ``{"key": asset key, "value": payload object or JSON string}``
    with a valid timestamp; the payload itself is published as recorded (the worker validates).
    """
    out: list[RecordedSnapshot] = []
    bad = 0
    for raw in lines:
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
            key, value = obj["key"], obj["value"]
            snapshot.symbol_from_key(key)
            payload = orjson.loads(value) if isinstance(value, (str, bytes)) else value
            if type(payload) is not dict:
                raise ValueError("payload is not an object")
            ts = snapshot.parse_timestamp(payload.get("timestamp"))
        except (ValueError, TypeError, KeyError, snapshot.SnapshotRejected):
            bad += 1
            continue
        out.append(RecordedSnapshot(ts, key, payload))
    out.sort(key=lambda r: r.ts)
    return out, bad


def restamp(rec: RecordedSnapshot, ts: float, seq_offset: int) -> str:
    """The recorded payload with timestamp ``ts`` (unix s), ``_pushed_at`` now and ``_push_seq``
    shifted by ``seq_offset``; every other field as recorded."""
    p = dict(rec.payload)
    p["timestamp"] = format_timestamp(ts)
    p["_pushed_at"] = _now_iso()
    seq = p.get("_push_seq")
    if type(seq) is int:
        p["_push_seq"] = seq + seq_offset
    return orjson.dumps(p).decode()


def recorded_schedule(recs: list[RecordedSnapshot], start: float, speed: float,
                      loop: bool) -> Iterator[tuple[float, str, str]]:
    """(publish at unix s, key, payload) in order; with ``loop`` forever, seqs kept increasing."""
    if not recs:
        return
    first, last = recs[0].ts, recs[-1].ts
    span = (last - first) / speed
    max_seq = max((int(r.payload["_push_seq"]) for r in recs if type(r.payload.get("_push_seq")) is int),
                  default=0)
    n = 0
    while True:
        base = start + n * (span + 1.0 / speed)
        for r in recs:
            at = base + (r.ts - first) / speed
            yield at, r.key, restamp(r, at, n * (max_seq + 1))
        n += 1
        if not loop:
            return


class Feeder:
    """Publishes ticks until stopped; counts what it published and what failed."""

    def __init__(self, publisher: Publisher, stop: threading.Event) -> None:
        self.publisher = publisher
        self.stop = stop
        self.published = 0
        self.failures = 0
        self._limiter = RateLimiter(10.0)

    def publish(self, entries: dict[str, str]) -> None:
        try:
            self.publisher.put_payloads(entries)
            self.published += len(entries)
        except GridError as exc:
            self.failures += 1
            suppressed = self._limiter.allow("publish")
            if suppressed is not None:
                log.warning("publish failed failures=%d error=%s suppressed_since_last=%d", self.failures, exc,
                            suppressed)

    def wait_until(self, at: float) -> bool:
        """Sleep until unix time ``at``; False if stopped first."""
        while not self.stop.is_set():
            left = at - time.time()
            if left <= 0:
                return True
            self.stop.wait(min(left, 0.5))
        return False

    def run_synthetic(self, market: SyntheticMarket, duration: float | None) -> None:
        start = time.time()
        next_status = start + _STATUS_EVERY_S
        draining = False
        while not self.stop.is_set():
            at = start + market.tick / market.hz
            if duration is not None and at - start >= duration:
                return
            if not self.wait_until(at):
                return
            active = market.drain.active(market.t)
            if active != draining:
                draining = active
                if active:
                    log.info("liquidity drain started symbols=%s", ",".join(market.drained_symbols))
                else:
                    log.info("liquidity drain over")
            self.publish(synthetic_payloads(market, time.time(), market.tick + 1))
            if time.time() >= next_status:
                next_status += _STATUS_EVERY_S
                log.info("feed status ticks=%d published=%d failures=%d", market.tick, self.published,
                         self.failures)

    def run_recorded(self, schedule: Iterator[tuple[float, str, str]], duration: float | None) -> None:
        start = time.time()
        batch: dict[str, str] = {}
        batch_at: float | None = None
        for at, key, payload in schedule:
            if duration is not None and at - start >= duration:
                break
            # Snapshots due within the same 10 ms go out in one call.
            if batch and batch_at is not None and (at - batch_at > 0.01 or key in batch):
                if not self.wait_until(batch_at):
                    return
                self.publish(batch)
                batch = {}
            if not batch:
                batch_at = at
            batch[key] = payload
        if batch and batch_at is not None and self.wait_until(batch_at):
            self.publish(batch)


# --- CLI ---------------------------------------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    """The `obf-features feed` options on the parser the CLI made for it."""
    p.description = __doc__.split("\n\n")[0] + " Synthetic books by default; --input publishes a recording."
    g = p.add_argument_group("cluster")
    g.add_argument("--members", default=os.environ.get("HZ_MEMBERS", "127.0.0.1:5701"),
                   help="comma-separated host[:port] (default 127.0.0.1:5701, env HZ_MEMBERS)")
    g.add_argument("--cluster", default=os.environ.get("HZ_CLUSTER", DEFAULT_CLUSTER_NAME),
                   help=f"cluster name (default {DEFAULT_CLUSTER_NAME}, env HZ_CLUSTER)")
    g.add_argument("--map", default=os.environ.get("OBF_INPUT_MAP", "DOLPHIN_FEATURES"),
                   help="input map (default DOLPHIN_FEATURES, env OBF_INPUT_MAP)")
    g.add_argument("--map-suffix", default=os.environ.get("OBF_MAP_SUFFIX", ""),
                   help="appended to the map name, as for the worker (env OBF_MAP_SUFFIX)")
    s = p.add_argument_group("synthetic books")
    s.add_argument("--assets", default=",".join(DEFAULT_SYMBOLS), help="comma-separated symbols (default 8 majors)")
    s.add_argument("--hz", type=float, default=10.0, help="snapshots per asset per second (default 10)")
    s.add_argument("--levels", type=int, default=10, help="bands per side (default 10)")
    s.add_argument("--band-span-bps", type=float, default=100.0, help="bands cover 0..B bps from the mid (default 100)")
    s.add_argument("--seed", type=int, default=0, help="random seed: same seed, same books (default 0)")
    d = p.add_argument_group("liquidity drain (synthetic)")
    d.add_argument("--drain-at", type=float, default=None, metavar="S",
                   help="first drain starts S seconds after start (default: no drain)")
    d.add_argument("--drain-every", type=float, default=None, metavar="S", help="repeat the drain every S seconds")
    d.add_argument("--drain-ramp-s", type=float, default=10.0, help="time to fall to the floor (default 10)")
    d.add_argument("--drain-hold-s", type=float, default=10.0, help="time at the floor (default 10)")
    d.add_argument("--drain-recover-s", type=float, default=15.0, help="time to recover (default 15)")
    d.add_argument("--drain-floor", type=float, default=0.15, help="depth at the floor, fraction (default 0.15)")
    d.add_argument("--drain-share", type=float, default=0.75, help="fraction of assets drained (default 0.75)")
    r = p.add_argument_group("recorded input")
    r.add_argument("--input", metavar="REPLAY.jsonl", default=None,
                   help="publish this replay input instead of synthetic books")
    r.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1 = recorded speed)")
    r.add_argument("--loop", action="store_true", help="start the recording again at its end")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: run until stopped)")
    p.add_argument("--log-level", default=os.environ.get("OBF_LOG_LEVEL", "INFO"), help="default INFO")
    p.add_argument("--log-format", choices=("text", "json"), default=os.environ.get("OBF_LOG_FORMAT", "text"))
    p.epilog = ("Stops cleanly on SIGINT, SIGTERM, SIGHUP or a closed log output. Exit codes: 0 done or stopped by a "
                "signal, 1 cluster connection given up or a second signal forced the exit, 2 bad arguments, "
                "141 its output closed.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when done or stopped (SIGINT/SIGTERM/SIGHUP), 1 if the cluster connection was given up (or a
    second signal forced the exit), 2 on bad arguments, 141 if its log output closed (broken pipe)."""
    try:
        members = list(comma_list(args.members))
        if not members:
            raise ValueError("--members is empty")
        if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
            raise ValueError(f"--duration must be > 0, got {args.duration}")
        if not (math.isfinite(args.speed) and args.speed > 0):
            raise ValueError(f"--speed must be > 0, got {args.speed}")
        level = str(args.log_level).upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {args.log_level!r}")
        market = recs = None
        bad = 0
        if args.input is None:
            symbols = list(comma_list(args.assets))
            for sym in symbols:
                asset_key(sym)
            drain = DrainSchedule(args.drain_at, args.drain_every, args.drain_ramp_s, args.drain_hold_s,
                                  args.drain_recover_s, args.drain_floor, args.drain_share)
            market = SyntheticMarket(symbols, levels=args.levels, band_span_bps=args.band_span_bps, hz=args.hz,
                                     seed=args.seed, drain=drain)
        else:
            with open(args.input, "rb") as f:
                recs, bad = read_recording(f)
            if not recs:
                raise ValueError(f"{args.input}: no valid snapshot lines (bad lines: {bad})")
    except (OSError, ValueError) as exc:
        print(f"feed: error: {exc}")
        return 2

    request = lifecycle.StopRequest()
    setup_logging(level, args.log_format, on_output_closed=request.output_lost)
    map_name = args.map + args.map_suffix
    publisher = Publisher(args.cluster, members, map_name)
    feeder = Feeder(publisher, request.event)
    with lifecycle.capture_signals(request):
        return _feed(args, publisher, feeder, market, recs, bad, map_name, request)


def _feed(args: argparse.Namespace, publisher: Publisher, feeder: Feeder, market: SyntheticMarket | None,
          recs: list[RecordedSnapshot] | None, bad: int, map_name: str, request: lifecycle.StopRequest) -> int:
    stop = request.event
    try:
        if not publisher.connect(stop):
            return request.exit_code()  # stopped before connecting
        if market is not None:
            log.info("feeding synthetic books map=%s assets=%s hz=%g seed=%d drain_at=%s drain_every=%s", map_name,
                     ",".join(market.symbols), market.hz, args.seed, args.drain_at, args.drain_every)
            feeder.run_synthetic(market, args.duration)
        else:
            assert recs is not None  # noqa: S101 - narrows the type; holds by construction
            log.info("feeding recording file=%s snapshots=%d bad_lines=%d span_s=%.1f speed=%g loop=%s map=%s",
                     args.input, len(recs), bad, recs[-1].ts - recs[0].ts, args.speed, args.loop, map_name)
            feeder.run_recorded(recorded_schedule(recs, time.time(), args.speed, args.loop), args.duration)
    except GridClosed as exc:
        log.error("feed exiting: %s", exc)
        return lifecycle.EXIT_FAILED
    finally:
        publisher.shutdown()
        log.info("feed stopped published=%d failures=%d", feeder.published, feeder.failures)
    return request.exit_code()
