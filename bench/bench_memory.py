"""Memory: the trader's adapter cache (size and full-GC pause) and the worker's RSS, on this
checkout and on the previous design side by side.

Run: ``.venv/bin/python bench/bench_memory.py [--quick] [--members host:port --cluster NAME]
[--previous REF | --no-previous]`` (without ``--members`` a local member is started on a free
port and stopped at the end).

Each tree is measured in its own subprocess (``bench/previous.py``) with its own engine, worker
and adapter:

* **trader cache** (the issue-14 targets): ``bench/trader_process.py --cache-probe`` runs only
  the tree's ``HazelcastOBEngine`` (``cache_bars`` = 500, its own client, no numpy) while this
  benchmark writes 500 records of 400 assets made by the tree's ``FeatureEngine`` and
  ``dumps_record``. Once the cache holds them all: ``cache MB`` = ``tracemalloc``'s traced
  bytes with the full cache minus before the adapter existed (after a full collection), ``RSS
  delta`` the same as resident memory (tracemalloc's own tables included), ``full GC ms`` the
  median of 7 ``gc.collect()`` calls with tracemalloc stopped (a full collection holds the GIL:
  every trader thread stops), as CPU time of the collecting thread (the target row's figure:
  on a shared machine the wall time also counts the time other processes had the core) and as
  wall time (with the max),
  ``before`` the same in that process before the adapter existed, ``tracked`` the objects the
  collector scans.
* **live** (per asset count): the tree's worker (2 s bars) on maps of its own,
  ``bench/publisher.py`` at 10 Hz per asset and ``bench/trader_process.py`` stepping every bar
  and reading every asset; after a warm-up the worker's and the trader's RSS (and, in brackets,
  the trader process with only its client connected).
* **growth** (this checkout only, ``--long-s``, 300 s, 30 s with ``--quick``, 0 = skip): at 400
  assets with a 10-bar adapter cache, both RSS every 5 s: ``growth`` = last minus first sample
  after the cache filled, ``slope`` the least-squares trend.

Targets (issue 14): trader with ``cache_bars=500`` at 400 assets: full GC < 5 ms, cache < 20 MB.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import harness as H
import numpy as np
import previous as P
import targets as T
from hazelcast.core import HazelcastJsonValue

BAR_SECONDS = 2.0  # bar_idx = unix s / 2 stays < 1e9, which the adapter reads as a bar_idx (1 s bars: >= 1e9)
RATE_HZ = 10.0
MB = 1024 * 1024
LONG_CACHE = 10  # adapter cache_bars in the long run: full after 10 bars, then flat unless something leaks
CACHE_ASSETS = 400
CACHE_BARS = 500
T0 = 1_723_161_000.0


# -- in a tree's process ---------------------------------------------------------------------------


def records(n: int, bars: int, seed: int = 5, levels: int = 20) -> list[str]:
    """``bars`` consecutive records of ``n`` assets from the tree's engine and codec."""
    from obf_contract.record import dumps_record
    from obf_features_worker.engine.feature_engine import FeatureEngine
    from obf_features_worker.engine.snapshot import Snapshot

    rng = np.random.default_rng(seed)
    symbols = [f"P{i:05d}USDT" for i in range(n)]
    engine = FeatureEngine()
    out = []
    for b in range(1, bars + 1):
        bid = rng.gamma(2.0, 5_000.0, (n, levels))
        ask = rng.gamma(2.0, 5_000.0, (n, levels))
        snaps = {s: Snapshot(s, T0 + BAR_SECONDS * b - 0.1, bid[i], ask[i], seq=b) for i, s in enumerate(symbols)}
        out.append(dumps_record(engine.step(b, T0 + BAR_SECONDS * b, snaps)).decode())
    return out


def cache_probe(cluster: str, members: list[str], n: int, cache_bars: int) -> dict[str, Any]:
    """The trader stand-in's cache figures once ``cache_bars`` records of ``n`` assets are cached."""
    cl = H.Cluster(cluster, members, None)
    client = cl.client()
    suffix = H.map_suffix()
    features_map = "DOLPHIN_OBF_FEATURES" + suffix
    try:
        recs = records(n, cache_bars)
        with H.scratch_dir("obf-bench-cache-") as log_dir:
            args = ["--members", ",".join(members), "--cluster", cluster, "--map", features_map, "--assets", str(n),
                    "--cache-bars", str(cache_bars), "--duration", "600", "--cache-probe"]
            with H.progress_process("trader_process.py", args, log_dir) as trader:
                H.wait_until(lambda: any("ready" in x for x in trader.history()), 120, "the trader's adapter")
                bars_map = client.get_map(features_map).blocking()
                t0 = time.monotonic()
                for b, text in enumerate(recs, start=1):
                    bars_map.set(b, HazelcastJsonValue(text))
                write_s = time.monotonic() - t0
                done = H.wait_until(lambda: next((x for x in trader.history() if "cache" in x), None), 600,
                                    "the trader's cache figures")
        out = dict(done["cache"])
        out["record_kB"] = sum(len(r) for r in recs) / len(recs) / 1000.0
        out["write_s"] = write_s
        return out
    finally:
        client.get_map(features_map).blocking().destroy()
        client.shutdown()


def run_size(cluster: H.Cluster, client: Any, n: int, duration_s: float, log_dir: Path, *,
             cache_bars: int = 500, sample_every_s: float | None = None) -> dict[str, Any]:
    suffix = H.map_suffix()
    features_map = "DOLPHIN_OBF_FEATURES" + suffix
    out: dict[str, Any] = {"n": n, "samples": []}
    with H.worker_process(cluster, suffix, log_dir, bar_seconds=BAR_SECONDS) as worker:
        H.wait_for_worker(client, suffix, worker, log_dir)
        with H.publisher_process(cluster, "DOLPHIN_FEATURES" + suffix, n, RATE_HZ, duration_s + 30, log_dir=log_dir):
            trader_args = ["--members", ",".join(cluster.members), "--cluster", cluster.name, "--map", features_map,
                           "--assets", str(n), "--cache-bars", str(cache_bars), "--bar-seconds", str(BAR_SECONDS),
                           "--duration", str(duration_s + 30)]
            with H.progress_process("trader_process.py", trader_args, log_dir) as trader:
                # The worker writes once it holds the leader lease (a few bars after start).
                H.wait_until(lambda: any(x.get("kind") == "exact" for x in trader.history()), 120,
                             "the trader's first exact bar")
                end = time.time() + duration_s
                while time.time() < end:
                    if sample_every_s is not None:
                        last = trader.history()[-1]
                        out["samples"].append((time.time(), H.rss_bytes(worker.pid), H.rss_bytes(trader.proc.pid),
                                               last.get("cached", 0)))
                    time.sleep(sample_every_s or 0.5)  # the sampling period, not a synchronisation
                hist = trader.history()
                out["worker_rss"] = H.rss_bytes(worker.pid)
                out["trader_rss"] = H.rss_bytes(trader.proc.pid)
                out["trader_baseline"] = next(x["baseline_rss"] for x in hist if "baseline_rss" in x)
                out["cached"] = hist[-1].get("cached", 0)
                kinds = [x["kind"] for x in hist if "kind" in x]
                kinds = kinds[kinds.index("exact"):]
                out["exact"] = f"{kinds.count('exact')}/{len(kinds)}"
    H.destroy_maps(client, suffix)
    return out


def live(cluster: str, members: list[str], sizes: list[int], warm_s: float, long_s: float) -> dict[str, Any]:
    """The tree's worker and trader RSS per asset count; with ``long_s`` > 0 the growth run."""
    cl = H.Cluster(cluster, members, None)
    client = cl.client()
    out: dict[str, Any] = {"sizes": [], "long": None}
    try:
        with H.scratch_dir("obf-bench-mem-") as log_dir:
            for n in sizes:
                out["sizes"].append(run_size(cl, client, n, warm_s, log_dir))
                print(f"  memory: live {n} assets measured", file=sys.stderr, flush=True)
            if long_s > 0:
                out["long"] = run_size(cl, client, 400, long_s, log_dir, cache_bars=LONG_CACHE, sample_every_s=5.0)
    finally:
        client.shutdown()
    return out


# -- the harness -----------------------------------------------------------------------------------


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t s, y) in y per minute."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 60.0 * sum((t - mt) * (y - my) for t, y in points) / var if var > 0 else float("nan")


def configure(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--memory-sizes", default=None, help="asset counts of the live runs (default 400,2000; "
                    "--quick 400)")
    ap.add_argument("--long-s", type=float, default=None, help="growth run at 400 assets, s (0 = skip)")
    ap.add_argument("--cache-bars", type=int, default=CACHE_BARS, help=f"trader cache probe bars ({CACHE_BARS})")


def run(args: argparse.Namespace) -> list[T.Row]:
    sizes = [int(x) for x in (args.memory_sizes or ("400" if args.quick else "400,2000")).split(",") if x]
    warm_s = 6.0 if args.quick else 30.0
    long_s = args.long_s if args.long_s is not None else (30.0 if args.quick else 300.0)
    res: dict[str, Any] = {}
    with H.cluster_from_args(args) as cl:
        for subj in P.subjects(args):
            cache = P.run_in(subj, "bench_memory", "cache_probe", cluster=cl.name, members=cl.members,
                             n=CACHE_ASSETS, cache_bars=args.cache_bars)
            lv = P.run_in(subj, "bench_memory", "live", cluster=cl.name, members=cl.members, sizes=sizes,
                          warm_s=warm_s, long_s=long_s if subj.name == "current" else 0.0)
            res[subj.name] = (subj, cache, lv)

    crow = []
    for subj, c, _ in res.values():
        g, g0 = c["gc_ms"], c["gc_before_ms"]
        crow.append([subj.label, f"{c['bars']}{'' if c['complete'] else ' (incomplete)'}", f"{c['record_kB']:.0f}",
                     f"{c['traced_bytes'] / MB:.1f}", f"{c['rss_delta'] / MB:.1f}",
                     f"{H.median(g['cpu']):.1f} / {H.median(g['wall']):.1f} ({max(g['wall']):.1f})",
                     f"{H.median(g0['cpu']):.1f} / {H.median(g0['wall']):.1f}", f"{c['tracked']:,}"])
    H.print_table(f"trader cache at {CACHE_ASSETS} assets, cache_bars={args.cache_bars} ({H.machine_line()})",
                  ["tree", "bars cached", "record kB", "cache MB (tracemalloc)", "RSS delta MB (tracemalloc on)",
                   "full GC ms CPU / wall (max)", "GC before adapter CPU / wall", "tracked objects"], crow,
                  "full GC: median of 7 gc.collect(); CPU = the collecting thread's CPU time (wall also counts "
                  "the time other processes had the core)")
    lrows = []
    for subj, _, lv in res.values():
        for r in lv["sizes"]:
            lrows.append([r["n"], subj.label, f"{r['worker_rss'] / MB:.0f}",
                          f"{r['trader_rss'] / MB:.0f} ({r['trader_baseline'] / MB:.0f})", r["cached"], r["exact"]])
    H.print_table(f"live RSS MB {warm_s:g} s after the first bar (publisher {RATE_HZ:g} Hz, {BAR_SECONDS:g} s bars)",
                  ["assets", "tree", "worker", "trader (client only)", "bars cached", "exact steps"], lrows)
    long_run = res["current"][2]["long"]
    if long_run is not None and long_run["samples"]:
        full = [s for s in long_run["samples"] if s[3] >= LONG_CACHE] or long_run["samples"]
        t0 = full[0][0]
        w = [(t - t0, wr / MB) for t, wr, _, _ in full]
        a = [(t - t0, ar / MB) for t, _, ar, _ in full]
        span_min = (full[-1][0] - full[0][0]) / 60.0
        grows = []
        for name, pts in (("worker", w), (f"trader ({LONG_CACHE}-bar cache)", a)):
            half = len(pts) // 2
            quarters = " ".join(f"{pts[min(len(pts) - 1, k * (len(pts) - 1) // 4)][1]:.1f}" for k in range(5))
            grows.append([name, quarters, f"{pts[-1][1] - pts[0][1]:+.1f}", f"{slope_per_min(pts):+.2f}",
                          f"{slope_per_min(pts[:half]):+.2f} / {slope_per_min(pts[half:]):+.2f}"])
        H.print_table(f"growth over {span_min:.1f} min at 400 assets, this checkout (after the cache filled; MB)",
                      ["process", "RSS at 0/25/50/75/100 %", "growth", "slope MB/min", "1st / 2nd half"], grows,
                      "a leak keeps its slope; allocator warm-up flattens in the 2nd half")

    def fig(name: str, f: Any) -> float | None:
        r = res.get(name)
        return None if r is None else float(f(r[1]))

    def complete(name: str) -> bool:
        return name in res and bool(res[name][1]["complete"])

    note = f"{args.cache_bars} bars of {CACHE_ASSETS} assets in the trader stand-in"
    if not complete("current"):
        note += "; the current tree's cache did not fill"
    return [
        T.Row("memory", f"trader cache, cache_bars={args.cache_bars}, {CACHE_ASSETS} assets (tracemalloc)", "<", 20.0,
              "MB", fig("current", lambda c: c["traced_bytes"] / MB), fig("previous", lambda c: c["traced_bytes"] / MB),
              note),
        T.Row("memory", f"trader full gc.collect() pause, cache_bars={args.cache_bars}, {CACHE_ASSETS} assets", "<",
              5.0, "ms", fig("current", lambda c: H.median(c["gc_ms"]["cpu"])),
              fig("previous", lambda c: H.median(c["gc_ms"]["cpu"])),
              "median of 7, CPU time of the collecting thread (wall: "
              + ", ".join(f"{n} {H.median(r[1]['gc_ms']['wall']):.1f} ms" for n, r in res.items())
              + "); the same process before its adapter existed: "
              + ", ".join(f"{n} {H.median(r[1]['gc_before_ms']['cpu']):.1f} ms" for n, r in res.items())),
    ]


def main(argv: list[str] | None = None) -> int:
    return P.bench_main(argv, __doc__, configure, run, quick_help="short warm-up and long run (~2 min)")


if __name__ == "__main__":
    raise SystemExit(main())
