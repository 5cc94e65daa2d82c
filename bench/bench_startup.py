"""Start-up cost of the command line: the lazy CLI against the eager one it replaced.

Run: ``.venv/bin/python bench/bench_startup.py [--quick] [--previous REF | --no-previous]``

This checkout and the previous design (``bench/previous.py``) are each timed from a subprocess
whose cwd and PYTHONPATH are that tree, so each fresh interpreter imports that tree's code.

Each row is the median wall time of a fresh interpreter running the command until it exits
(``--help`` prints and exits, so this is import + argument parsing). ``lazy`` is the command as
shipped (only the chosen command's module is imported); ``eager`` is the same command with every
command module imported first, as the CLI did before (matplotlib, numba, rich all loaded).
Target (issue 12): ``obf-features status --help`` and ``obf-features-worker --help`` start in well
under half a second; we print met / not met against 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Any

import previous as P
import targets as T

TARGET_S = 0.5

LAZY = {
    "obf-features status --help": "from obf_features_worker.cli import main; main(['status', '--help'])",
    "obf-features-worker --help": "from obf_features_worker.cli import worker_main; worker_main(['--help'])",
    "import engine_adapter": "import engine_adapter",
}
EAGER_PRELUDE = ("import importlib; from obf_features_worker.cli import COMMANDS; "
                 "[importlib.import_module(c.module) for c in COMMANDS.values()]; "
                 "import obf_features_worker.service.worker; ")


def run_once(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def median_of(code: str, n: int) -> float:
    run_once(code)  # warm the OS file cache and numba's on-disk cache
    return statistics.median(run_once(code) for _ in range(n))


def measure(n: int) -> dict[str, Any]:
    """In a tree's process: {command: [lazy s, eager s]} (medians of ``n`` fresh interpreters)."""
    return {name: [median_of(code, n), median_of(EAGER_PRELUDE + code, n)] for name, code in LAZY.items()}


def run(args: argparse.Namespace) -> list[T.Row]:
    n = 3 if args.quick else 9
    res = {s.name: (s, P.run_in(s, "bench_startup", "measure", n=n)) for s in P.subjects(args)}
    print(f"{'command':30} {'tree':>24} {'lazy s':>8} {'eager s':>8} {'eager/lazy':>10}  target < {TARGET_S} s")
    for name in LAZY:
        for subj, r in res.values():
            lazy, eager = r[name]
            verdict = "met" if lazy < TARGET_S else "NOT met"
            print(f"{name:30} {subj.label:>24} {lazy:8.3f} {eager:8.3f} {eager / lazy:10.1f}  {verdict}")
    print(flush=True)

    def fig(tree: str, cmd: str) -> float | None:
        return float(res[tree][1][cmd][0]) if tree in res else None

    return [T.Row("startup", f"`{cmd}` (issue 12)", "<", TARGET_S, "s", fig("current", cmd), fig("previous", cmd),
                  f"median of {n} fresh interpreters")
            for cmd in ("obf-features status --help", "obf-features-worker --help")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 runs per row instead of 9")
    P.add_args(ap)
    rows = run(ap.parse_args(argv))
    T.print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
