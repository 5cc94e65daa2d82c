"""A trader stand-in for the benchmarks: one ``HazelcastOBEngine`` (its own client, as a trader
process would run it) stepping every bar and reading every asset, nothing else.

Run by ``bench_memory.py`` as a subprocess so that its RSS is the adapter's alone (no numpy, no
worker modules); by hand: ``.venv/bin/python bench/trader_process.py --members 127.0.0.1:5701
--cluster dev --map DOLPHIN_OBF_FEATURES --assets 400 --duration 60``.

Progress goes to stdout as JSON lines: first ``{"baseline_rss": bytes}`` (the process with the
client connected, before the adapter exists), then one line per bar:
``{"t", "bar", "kind", "cached", "rss"}``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hazelcast  # noqa: E402
import orjson  # noqa: E402
from hazelcast.config import IntType  # noqa: E402

from engine_adapter import AdapterConfig, HazelcastOBEngine  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


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
    ap.add_argument("--duration", type=float, default=60.0)
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
    with HazelcastOBEngine(cfg, client=client) as ob:
        while not stop.is_set() and time.time() < end:
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
