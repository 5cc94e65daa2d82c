"""Memory: resident set size of the worker and of a trader process running the adapter.

Run: ``.venv/bin/python bench/bench_memory.py [--quick] [--members host:port --cluster NAME]``
(without ``--members`` a local member is started on a free port and stopped at the end).

Per asset count: a real worker (2 s bars) on maps of its own, ``bench/publisher.py`` at 10 Hz
per asset, and ``bench/trader_process.py`` (only the adapter, its own client, stepping every
bar and reading every asset; default ``cache_bars`` = 500). After a warm-up the table shows:

* ``worker``: worker RSS; ``trader``: trader RSS and, in brackets, the same process with only
  the Hazelcast client connected (its baseline), so the difference is the adapter and its cache;
* ``bar kB``: memory of one decoded bar in the adapter's cache (``tracemalloc`` of
  ``decode_bar`` on the worker's real record, in this process) and ``cache@500``: that times the
  default ``cache_bars`` = 500, the adapter's steady state once its cache is full;
* ``GC@500 ms``: one full garbage collection (``gc.collect()``, which holds the GIL: every
  thread of the trader stops) with 500 such bars alive, measured in this process with
  ``--gc-bars`` decoded copies (500; 100 with ``--quick``, scaled linearly to 500). Python runs
  one whenever the tracked heap has grown by a quarter, i.e. about every 100 bars once the
  cache is full.

Then a longer run at 400 assets (``--long-s``, default 300 s, 60 s with ``--quick``) with a
small adapter cache (10 bars, full after 20 s) samples both RSS every 5 s: ``growth`` is last
minus first sample after the cache filled, ``slope`` the least-squares trend over that span.
Warm-up and long run start once the trader sees its first exact bar (the worker writes once it
holds the leader lease, a few bars after it starts).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any

import harness as H

from engine_adapter.features import decode_bar

BAR_SECONDS = 2.0  # bar_idx = unix s / 2 stays < 1e9, which the adapter reads as a bar_idx (1 s bars: >= 1e9)
RATE_HZ = 10.0
MB = 1024 * 1024
LONG_CACHE = 10  # adapter cache_bars in the long run: full after 10 bars, then flat unless something leaks


def run_size(cluster: H.Cluster, client: Any, n: int, duration_s: float, log_dir: Path, *,
             cache_bars: int = 500, sample_every_s: float | None = None,
             experiment: H.Experiment = H.Experiment()) -> dict[str, Any]:  # noqa: B008 - a frozen dataclass: one shared default is fine
    suffix = H.map_suffix()
    features_map = "DOLPHIN_OBF_FEATURES" + suffix
    out: dict[str, Any] = {"n": n, "samples": []}
    with H.worker_process(cluster, suffix, log_dir, experiment=experiment, bar_seconds=BAR_SECONDS) as worker:
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
                    time.sleep(sample_every_s or 0.5)
                hist = trader.history()
                out["worker_rss"] = H.rss_bytes(worker.pid)
                out["trader_rss"] = H.rss_bytes(trader.proc.pid)
                out["trader_baseline"] = next(x["baseline_rss"] for x in hist if "baseline_rss" in x)
                out["cached"] = hist[-1].get("cached", 0)
                kinds = [x["kind"] for x in hist if "kind" in x]
                kinds = kinds[kinds.index("exact"):]
                out["exact"] = f"{kinds.count('exact')}/{len(kinds)}"
                newest = (H.read_health(client, suffix) or {}).get("last_bar_idx")
                raw = client.get_map(features_map).blocking().get(newest) if newest is not None else None
    if raw is not None:
        text = raw.to_string()
        decode_bar(text)  # warm: first-call allocations are not the bar's
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        bar = decode_bar(text)
        out["bar_bytes"] = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del bar
        out["text"] = text
    H.destroy_maps(client, suffix)
    return out


def gc_pause_ms(text: str, bars: int) -> float:
    """Median time of a full collection with ``bars`` decoded copies of ``text`` alive, scaled to 500."""
    gc.collect()
    base = _full_gc_ms()
    cache = [decode_bar(text) for _ in range(bars)]
    pause = _full_gc_ms()
    del cache
    gc.collect()
    return base + (pause - base) * 500 / bars


def _full_gc_ms() -> float:
    times = []
    for _ in range(3):
        t = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t) * 1000.0)
    return H.median(times)


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t s, y) in y per minute."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 60.0 * sum((t - mt) * (y - my) for t, y in points) / var if var > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    H.add_cluster_args(ap, worker=True)
    ap.add_argument("--quick", action="store_true", help="short warm-up and long run (~2 min)")
    ap.add_argument("--sizes", default="4,400,2000", help="asset counts (default 4,400,2000)")
    ap.add_argument("--long-s", type=float, default=None, help="length of the long run at 400 assets, s")
    ap.add_argument("--gc-bars", type=int, default=None, help="decoded bars alive for the GC pause (default 500)")
    args = ap.parse_args(argv)
    gc_bars = args.gc_bars or (100 if args.quick else 500)
    experiment = H.experiment_from_args(args)
    warm_s = 6.0 if args.quick else 30.0
    long_s = args.long_s if args.long_s is not None else (60.0 if args.quick else 300.0)
    sizes = []
    with H.scratch_dir("obf-bench-mem-") as log_dir, H.cluster_from_args(args) as cluster:
        client = cluster.client()
        try:
            for n in (int(x) for x in args.sizes.split(",")):
                sizes.append(run_size(cluster, client, n, warm_s, log_dir, experiment=experiment))
            long_run = None
            if long_s > 0:
                long_run = run_size(cluster, client, 400, long_s, log_dir, cache_bars=LONG_CACHE, sample_every_s=5.0,
                                    experiment=experiment)
        finally:
            client.shutdown()

    rows = []
    for r in sizes:
        bar_kb = r.get("bar_bytes", float("nan")) / 1000.0
        pause = gc_pause_ms(r["text"], gc_bars) if "text" in r else float("nan")
        rows.append([r["n"], f"{r['worker_rss'] / MB:.0f}",
                     f"{r['trader_rss'] / MB:.0f} ({r['trader_baseline'] / MB:.0f})", r["cached"], r["exact"],
                     f"{bar_kb:.0f}", f"{bar_kb * 500 / 1000:.0f} MB", f"{pause:.0f}"])
    exp = experiment.label()
    H.print_table(f"memory {warm_s:g} s after the first bar (RSS MB; publisher {RATE_HZ:g} Hz, {BAR_SECONDS:g} s bars"
                  f"{', ' + exp if exp else ''}; {H.machine_line()})",
                  ["assets", "worker", "trader (baseline)", "bars cached", "exact steps", "bar kB", "cache@500",
                   "GC@500 ms"], rows,
                  "bar kB x 500: what a full default cache costs the trader (AdapterConfig.cache_bars)")
    if long_run is not None and long_run["samples"]:
        full = [s for s in long_run["samples"] if s[3] >= LONG_CACHE] or long_run["samples"]
        t0 = full[0][0]
        w = [(t - t0, wr / MB) for t, wr, _, _ in full]
        a = [(t - t0, ar / MB) for t, _, ar, _ in full]
        span_min = (full[-1][0] - full[0][0]) / 60.0
        lrows = []
        for name, pts in (("worker", w), (f"trader ({LONG_CACHE}-bar cache)", a)):
            half = len(pts) // 2
            quarters = " ".join(f"{pts[min(len(pts) - 1, k * (len(pts) - 1) // 4)][1]:.1f}" for k in range(5))
            lrows.append([name, quarters, f"{pts[-1][1] - pts[0][1]:+.1f}", f"{slope_per_min(pts):+.2f}",
                          f"{slope_per_min(pts[:half]):+.2f} / {slope_per_min(pts[half:]):+.2f}"])
        H.print_table(f"growth over {span_min:.1f} min at 400 assets (after the adapter cache filled; MB)",
                      ["process", "RSS at 0/25/50/75/100 %", "growth", "slope MB/min", "1st / 2nd half"], lrows,
                      "a leak keeps its slope; allocator warm-up flattens in the 2nd half")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
