"""Run every benchmark and print their tables: ``make bench`` (``BENCH_ARGS="--quick"`` for a
few minutes instead of ~15).

Run: ``.venv/bin/python bench/run_all.py [--quick] [--only engine,trader_path,...]
[--members host:port --cluster NAME]``

One local member (on a free port, stopped at the end) is shared by the benchmarks that need a
cluster, unless ``--members`` names one. Each benchmark runs as its own process, one after the
other (they measure CPU and latency: never in parallel), and its output is printed as it comes.
Exit status: the number of benchmarks that failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import harness as H

BENCH_DIR = Path(__file__).resolve().parent
# name -> (script, needs a cluster)
BENCHMARKS = {
    "startup": ("bench_startup.py", False),
    "engine": ("bench_engine.py", False),
    "trader_path": ("bench_trader_path.py", True),
    "ingest": ("bench_ingest.py", True),
    "freshness": ("bench_freshness.py", True),
    "memory": ("bench_memory.py", True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    H.add_cluster_args(ap)
    ap.add_argument("--quick", action="store_true", help="short runs (a few minutes in all)")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of {', '.join(BENCHMARKS)}")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")

    failed = []
    t_all = time.monotonic()
    print(H.machine_line(), flush=True)
    with H.cluster_from_args(args) as cluster:
        for name in names:
            script, needs_cluster = BENCHMARKS[name]
            cmd = [sys.executable, str(BENCH_DIR / script)]
            if args.quick:
                cmd.append("--quick")
            if needs_cluster:
                cmd += ["--members", ",".join(cluster.members), "--cluster", cluster.name]
                if cluster.member_pid is not None and name != "trader_path":
                    cmd += ["--member-pid", str(cluster.member_pid)]
            print(f"\n=== {name}: {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}", flush=True)
            t0 = time.monotonic()
            rc = subprocess.run(cmd, cwd=BENCH_DIR.parent).returncode
            print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.monotonic() - t0:.0f} s",
                  flush=True)
            if rc != 0:
                failed.append(name)
    print(f"\nall benchmarks: {time.monotonic() - t_all:.0f} s" + (f", failed: {', '.join(failed)}" if failed else ""))
    return len(failed)


if __name__ == "__main__":
    raise SystemExit(main())
