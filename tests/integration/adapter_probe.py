"""A trader loop over ``HazelcastOBEngine`` in a process of its own, so a test can read the
adapter's resident memory from /proc (used by the soak test through ``fault_tools.AdapterProbe``).

For each bar from ``--start-bar`` on: wait for it (woken by its arrival), ``step_live`` over the
assets, then every per-asset and cross-asset lookup, as a trader does once per scan. A bar that
never arrives while later ones do is skipped and counted. Prints one JSON line after each bar
whose bar_idx is a multiple of ``--report-every``, and a final line (``"final": true``) on SIGTERM.

Run: ``python -m tests.integration.adapter_probe --cluster C --members H:P --map M --assets A,B``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from engine_adapter import AdapterConfig, HazelcastOBEngine

WAIT_S = 0.2  # one wait for the next bar before checking whether it was skipped


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _report(eng: HazelcastOBEngine, bar: int | None, stepped: int, skipped: int, final: bool = False) -> None:
    s = eng.stats()
    line: dict[str, Any] = {
        "bar": bar, "stepped": stepped, "skipped": skipped, "final": final, "rss_kb": _rss_kb(),
        "steps": s.steps, "asset_defaults": s.asset_defaults, "cache_bars": s.cache.bars,
        "cache_capacity": s.cache.capacity, "evicted": s.cache.evicted, "listener_errors": s.grid.listener_errors,
        "rejected": s.grid.rejected, "reconnects": s.grid.reconnects, "lag_bars": s.lag_bars,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cluster", required=True)
    p.add_argument("--members", required=True)
    p.add_argument("--map", required=True)
    p.add_argument("--assets", required=True)
    p.add_argument("--start-bar", type=int, default=0)
    p.add_argument("--cache-bars", type=int, default=500)
    p.add_argument("--report-every", type=int, default=100)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    assets = [a for a in args.assets.split(",") if a]
    cfg = AdapterConfig(cluster_name=args.cluster, members=tuple(args.members.split(",")), map_name=args.map,
                        cache_bars=args.cache_bars, max_wait_ms=0)
    eng = HazelcastOBEngine(cfg)
    nxt, stepped, skipped, last = args.start_bar, 0, 0, None
    try:
        _report(eng, None, 0, 0)  # ready: connected and seeded
        while not stop.is_set():
            if not eng.wait_for_bar(nxt, WAIT_S):
                newest = eng.stats().cache.newest_idx
                if newest is not None and newest > nxt:
                    later = [i for i in eng._cache.cached_indices() if i > nxt]
                    skipped += later[0] - nxt
                    nxt = later[0]
                continue
            eng.step_live(assets, nxt)
            for a in assets:
                eng.get_placement(a)
                eng.get_signal(a)
            eng.get_market()
            eng.get_macro()
            stepped += 1
            last = nxt
            if nxt % args.report_every == 0:
                _report(eng, last, stepped, skipped)
            nxt += 1
        _report(eng, last, stepped, skipped, final=True)
    finally:
        eng.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
