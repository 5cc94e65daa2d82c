"""A trader stand-in for the benchmarks: one ``HazelcastOBEngine`` (its own client, as a trader
process would run it) and nothing else, so that its RSS, its garbage collections and its
listener thread are the adapter's alone (no numpy, no numba, no worker modules).

Three modes (by hand: ``.venv/bin/python bench/trader_process.py --members 127.0.0.1:5701
--cluster dev --map DOLPHIN_OBF_FEATURES --assets 400 --duration 60 [--watch-bars 30]``):

* scan (``bench_memory.py``): every bar ``step_live`` then ``get_placement`` / ``get_signal``
  for every asset, ``get_market``, ``get_macro``; one line per bar
  ``{"t", "bar", "kind", "cached", "rss"}``;
* ``--watch-bars K`` (``bench_freshness.py``): from two bars after the worker's first record,
  block in ``wait_for_bar`` for each of K bars (woken by the listener inserting it) and emit
  ``{"bar", "visible", "bar_ts", "computed_at", "ages_ms"}`` (``ages_ms``: visible time minus
  each asset's snapshot time), then ``{"gc_ms": [...], "tracked": n}``: the collections of
  generation 1 and 2 this process ran meanwhile (ms each) and its tracked objects.

* ``--cache-probe`` (``bench_memory.py``): the adapter with ``--cache-bars`` and no stepping;
  ``{"ready": true}`` once it listens, then, once its cache holds ``--cache-bars`` bars (the
  benchmark writes them), ``{"cache": {...}}``: the memory the cache holds (``tracemalloc``:
  traced bytes with the cache full minus before the adapter existed, after a full collection;
  and the RSS delta), the full ``gc.collect()`` pause (7 of them, wall and CPU ms each,
  tracemalloc stopped) with the cache full and before the adapter existed, and the tracked objects.

Output: JSON lines on stdout, the first ``{"baseline_rss": bytes}`` (the process with the client
connected, before the adapter exists), the last ``{"done": true}``.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import signal
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

# The adapter under test: the tree bench/previous.py names (OBF_BENCH_TREE), else this checkout.
sys.path.insert(0, os.environ.get("OBF_BENCH_TREE") or str(Path(__file__).resolve().parents[1]))

import hazelcast
import orjson
from hazelcast.config import IntType

from engine_adapter import AdapterConfig, HazelcastOBEngine

PAGE = os.sysconf("SC_PAGE_SIZE")


class GcWatch:
    """Durations (ms) of this process's collections of generation 1 and 2, via ``gc.callbacks``."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if info.get("generation", 0) < 1:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._t0) * 1000.0)

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--map", required=True, help="the worker's bar map (suffix included)")
    ap.add_argument("--assets", type=int, required=True, help="symbols P00000USDT.. as bench/publisher.py names them")
    ap.add_argument("--cache-bars", type=int, default=500)
    ap.add_argument("--bar-seconds", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=60.0, help="scan mode: seconds to run")
    ap.add_argument("--watch-bars", type=int, default=0, help="measure when K bars become visible, then exit")
    ap.add_argument("--cache-probe", action="store_true", help="measure the full cache's memory and GC pause, exit")
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    assets = [f"P{i:05d}USDT" for i in range(args.assets)]
    out = sys.stdout

    def emit(obj: dict) -> None:
        out.write(orjson.dumps(obj).decode() + "\n")
        out.flush()

    client = hazelcast.HazelcastClient(cluster_name=args.cluster, cluster_members=args.members.split(","),
                                       default_int_type=IntType.LONG)
    emit({"baseline_rss": rss()})
    cfg = AdapterConfig(cluster_name=args.cluster, members=tuple(args.members.split(",")), map_name=args.map,
                        cache_bars=args.cache_bars, max_wait_ms=200)
    end = time.time() + args.duration
    if args.cache_probe:
        cache_probe(cfg, client, args.cache_bars, end, stop, emit)
        client.shutdown()
        emit({"done": True})
        return 0
    with HazelcastOBEngine(cfg, client=client) as ob:
        if args.watch_bars > 0:
            watch(ob, args.watch_bars, args.bar_seconds, stop, emit)
        while args.watch_bars <= 0 and not stop.is_set() and time.time() < end:
            bar_idx = math.floor(time.time() / args.bar_seconds)
            res = ob.step_live(assets, bar_idx)
            for a in assets:
                ob.get_placement(a, bar_idx)
                ob.get_signal(a, bar_idx)
            ob.get_market(bar_idx)
            ob.get_macro(bar_idx)
            emit({"t": time.time(), "bar": bar_idx, "kind": res.kind, "cached": ob.stats().cache.bars, "rss": rss()})
            stop.wait(max(0.0, (bar_idx + 1) * args.bar_seconds + 0.05 - time.time()))
    client.shutdown()
    emit({"done": True})
    return 0


def full_gc_ms(reps: int = 7) -> dict[str, list[float]]:
    """``reps`` full collections, one after the other: wall ms and CPU ms of this thread each (on a
    shared machine the wall time also holds the time other processes had the core)."""
    wall, cpu = [], []
    for _ in range(reps):
        c, t = time.thread_time(), time.perf_counter()
        gc.collect()
        wall.append((time.perf_counter() - t) * 1000.0)
        cpu.append((time.thread_time() - c) * 1000.0)
    return {"wall": wall, "cpu": cpu}


def cache_probe(cfg: AdapterConfig, client: Any, bars: int, end: float, stop: threading.Event, emit: Any) -> None:
    gc.collect()
    gc_before = full_gc_ms()
    rss0 = rss()
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    with HazelcastOBEngine(cfg, client=client) as ob:
        emit({"ready": True})
        cached = 0
        while not stop.is_set() and time.time() < end:
            cached = ob.stats().cache.bars
            if cached >= bars:
                break
            emit({"cached": cached})
            stop.wait(0.25)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced0
        tracemalloc.stop()
        gc_full = full_gc_ms()
        emit({"cache": {"bars": ob.stats().cache.bars, "traced_bytes": traced, "rss_delta": rss() - rss0,
                        "gc_ms": gc_full, "gc_before_ms": gc_before, "tracked": len(gc.get_objects()),
                        "complete": cached >= bars}})


def watch(ob: HazelcastOBEngine, n_bars: int, bar_seconds: float, stop: threading.Event, emit: Any) -> None:
    # The worker writes once it holds the leader lease (a few bars after it starts).
    while ob.stats().cache.newest_idx is None and not stop.wait(0.05):
        pass
    first = math.floor(time.time() / bar_seconds) + 2  # two bars of warm-up
    with GcWatch() as gcw:
        for k in range(first, first + n_bars):
            if stop.is_set():
                break
            if not ob.wait_for_bar(k, (k + 1) * bar_seconds - time.time() + 5.0):
                continue  # never written: the bench counts it
            visible = time.time()
            bar = ob.get_bar(k)
            assert bar is not None and bar.bar_idx == k
            try:  # the per-asset view of the bar (a tree whose bar has none: no put->visible figures)
                ages = [(visible - a.ts) * 1000.0 for a in bar.assets.values()]
            except (AttributeError, TypeError):
                ages = []
            emit({"bar": k, "visible": visible, "bar_ts": bar.bar_ts, "computed_at": getattr(bar, "computed_at", None),
                  "ages_ms": ages})
    emit({"gc_ms": gcw.pauses_ms, "tracked": len(gc.get_objects())})


if __name__ == "__main__":
    raise SystemExit(main())
