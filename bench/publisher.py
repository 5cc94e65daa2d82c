"""A lean upstream stand-in for the benchmarks: N assets' snapshots into the input map, at a fixed
rate per asset or as fast as it can.

Run by the benchmarks as a subprocess (``bench.harness.publisher_process``); by hand:
``.venv/bin/python bench/publisher.py --members 127.0.0.1:5701 --cluster dev --map DOLPHIN_FEATURES
--assets 400 --rate 10 --duration 30``.

Payloads are the exact upstream format (JSON strings, ``_push_seq`` increasing per asset, the
timestamp = the time the tick is published), built from pre-encoded band arrays (8 variants per
asset) so that publishing, not building, is what costs. One ``put_all`` per tick (all assets).
``--rate 0`` publishes tick after tick without pause. A tick that falls behind its schedule is
published at once (never skipped), so the achieved rate shows what the publisher managed.

Progress goes to stdout as JSON lines every 0.25 s: ``{"t", "published", "ticks", "late_s",
"ready", "done"}`` (``late_s``: how far behind schedule the last tick went out).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hazelcast
from hazelcast.config import IntType

from obf_contract.timestamps import format_timestamp

VARIANTS = 8  # pre-built books per asset, cycled


def symbols(n: int, first: int = 0) -> list[str]:
    return [f"P{i:05d}USDT" for i in range(first, first + n)]


def book_fragments(n_assets: int, levels: int, seed: int = 11) -> list[list[str]]:
    """Per asset, VARIANTS JSON fragments ``"bid_notional":[..],...,"ask_depth":[..]``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_assets):
        scale = rng.lognormal(11.0, 1.0)
        frags = []
        for _ in range(VARIANTS):
            bid = rng.gamma(2.0, scale / 2, levels)
            ask = rng.gamma(2.0, scale / 2, levels)
            obj = {"bid_notional": bid.tolist(), "ask_notional": ask.tolist(),
                   "bid_depth": (bid / 100.0).tolist(), "ask_depth": (ask / 100.0).tolist()}
            frags.append(orjson.dumps(obj).decode()[1:-1])
        out.append(frags)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--map", required=True, help="input map name (suffix included)")
    ap.add_argument("--assets", type=int, required=True)
    ap.add_argument("--first", type=int, default=0,
                    help="index of the first asset (P{first:05d}USDT): publishers sharing a universe take a range each")
    ap.add_argument("--rate", type=float, default=10.0, help="ticks (snapshots per asset) per second; 0 = max")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    ap.add_argument("--levels", type=int, default=10, help="bands per side")
    ap.add_argument("--seq-base", type=int, default=None,
                    help="first _push_seq - 1 (default: unix microseconds, so runs one after the other keep "
                         "increasing)")
    args = ap.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    keys = [f"asset_{s}_ob" for s in symbols(args.assets, args.first)]
    frags = book_fragments(args.assets, args.levels, seed=11 + args.first)
    client = hazelcast.HazelcastClient(cluster_name=args.cluster, cluster_members=args.members.split(","),
                                       default_int_type=IntType.LONG)
    m = client.get_map(args.map).blocking()
    seq_base = int(time.time() * 1e6) if args.seq_base is None else args.seq_base
    published = ticks = 0
    late = 0.0
    out = sys.stdout

    def report(**extra: object) -> None:
        out.write(orjson.dumps({"t": time.time(), "published": published, "ticks": ticks, "late_s": late,
                                **extra}).decode() + "\n")
        out.flush()

    report(ready=True)
    start = time.time()
    next_report = start
    end = start + args.duration
    try:
        while not stop.is_set():
            now = time.time()
            if now >= end:
                break
            if args.rate > 0:
                due = start + ticks / args.rate
                if due > now:
                    stop.wait(due - now)
                    continue
                late = now - due
            iso = format_timestamp(time.time())
            seq = seq_base + ticks + 1
            v = ticks % VARIANTS
            entries = {key: f'{{"timestamp":"{iso}",{fr[v]},"_pushed_at":"{iso}","_push_seq":{seq}}}'
                       for key, fr in zip(keys, frags)}
            m.put_all(entries)
            published += len(entries)
            ticks += 1
            if time.time() >= next_report:
                next_report += 0.25
                report()
    finally:
        report(done=True)
        client.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
