"""Run every benchmark on this checkout and on the previous design, then print one summary of the
issue-14 targets (met / not met, with the previous design beside it): ``make bench``
(``BENCH_ARGS=--quick`` for short windows).

Run: ``.venv/bin/python bench/run_all.py [--quick] [--only engine,trader_path,...]
[--previous REF | --no-previous] [--markdown FILE] [--members host:port --cluster NAME]``

The previous design (default commit 44f6ba9, main before issue 14) is materialised once into
``.bench-previous/`` (``bench/previous.py``). One local member (on a free port, stopped at the
end) is shared by the benchmarks that need a cluster, unless ``--members`` names one. The
benchmarks run one after the other (they measure CPU and latency: never in parallel); each
measures each tree in a subprocess of its own and prints its tables as it goes, then returns
its target rows (``bench/targets.py``). ``--markdown FILE`` also writes the summary as a
markdown table (with the machine's load at start and end) for docs/performance.md.
Exit status: the number of benchmarks that failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import harness as H
import previous as P
import targets as T

BENCH_DIR = Path(__file__).resolve().parent
# name -> module (each has run(args) -> rows; bench_overload.py is the overload engineer's)
BENCHMARKS = {
    "startup": "bench_startup",
    "engine": "bench_engine",
    "trader_path": "bench_trader_path",
    "ingest": "bench_ingest",
    "freshness": "bench_freshness",
    "memory": "bench_memory",
    "overload": "bench_overload",
}
# The overload target, shown as n/a when bench/bench_overload.py is absent or failed.
OVERLOAD_TARGET = ("offered load at twice the ingest ceiling for a minute: bars keep their cadence (close->write "
                   "p99 under one bar), health never expires, no takeover, surplus coalesced and counted, memory flat")
WARM_RESTART = T.Row("restart", "warm restart bit-identical after a SIGKILL anywhere on the bar path, checkpoint off "
                     "the close->record path", "", math.nan, "", None, None,
                     "not a benchmark: tests/integration/test_warm_restart.py and the crash model test (make test)",
                     judged=(None, None), shown=("see tests", "-"))


def bench_args(mod: Any, common: dict[str, Any]) -> argparse.Namespace:
    """The module's own options at their defaults, overridden by the run's common ones."""
    ap = argparse.ArgumentParser(add_help=False)
    if hasattr(mod, "configure"):
        mod.configure(ap)
    elif hasattr(mod, "add_args"):
        mod.add_args(ap)
    ns = vars(ap.parse_args([]))
    ns.update(common)
    return argparse.Namespace(**ns)


def run_overload(mod: Any, common: dict[str, Any], subjects: list[P.Subject]) -> list[T.Row]:
    """bench_overload.py: with ``configure`` it follows the bench contract (both trees in one call,
    rows as ``T.Row``); otherwise it measures the tree at ``args.previous`` (a path; None = this
    checkout) and returns ``{"target", "current", "met", "note"}`` dicts: one call per tree, merged."""
    if hasattr(mod, "configure"):
        return [r if isinstance(r, T.Row) else T.Row.from_json(r) for r in mod.run(bench_args(mod, common))]
    per_tree: dict[str, list[dict[str, Any]]] = {}
    for subj in subjects:
        c = dict(common, previous=None if subj.name == "current" else str(subj.root))
        print(f"--- overload on the {subj.label} tree", flush=True)
        per_tree[subj.name] = list(mod.run(bench_args(mod, c)))
    prev = {r["target"]: r for r in per_tree.get("previous", [])}
    out = []
    for r in per_tree["current"]:
        p = prev.get(r["target"])
        out.append(T.Row("overload", r["target"], "", math.nan, "", None, None, r.get("note", ""),
                         judged=(r.get("met"), None if p is None else p.get("met")),
                         shown=(str(r.get("current", "")), "-" if p is None else str(p.get("current", "")))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    H.add_cluster_args(ap)
    P.add_args(ap)
    ap.add_argument("--quick", action="store_true", help="short runs (~10 min in all, both trees)")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of {', '.join(BENCHMARKS)}")
    ap.add_argument("--markdown", metavar="FILE", default=None, help="also write the summary as markdown")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")

    subjects = P.subjects(args)  # materialises the previous tree first: a bad --previous fails here
    failed: list[str] = []
    rows: list[T.Row] = []
    t_all = time.monotonic()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine_start = H.machine_line()
    print(machine_start, flush=True)
    print("trees: " + "; ".join(f"{s.label} = {s.root}" for s in subjects), flush=True)
    with H.cluster_from_args(args) as cluster:
        common = {"quick": args.quick, "members": ",".join(cluster.members), "cluster": cluster.name,
                  "member_pid": cluster.member_pid, "previous": args.previous, "no_previous": args.no_previous}
        for name in names:
            print(f"\n=== {name} ({H.machine_line()})", flush=True)
            t0 = time.monotonic()
            try:
                try:
                    mod = importlib.import_module(BENCHMARKS[name])
                except ModuleNotFoundError as exc:
                    if name != "overload" or exc.name != BENCHMARKS[name]:
                        raise
                    print("bench/bench_overload.py is not in this checkout: its target is shown as n/a", flush=True)
                    rows.append(T.Row("overload", OVERLOAD_TARGET, "", math.nan, "", None, None,
                                      "bench/bench_overload.py absent", judged=(None, None), shown=("-", "-")))
                    continue
                got = run_overload(mod, common, subjects) if name == "overload" else mod.run(bench_args(mod, common))
                rows.extend(got)
                print(f"=== {name}: ok in {time.monotonic() - t0:.0f} s", flush=True)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                print(f"=== {name}: FAILED in {time.monotonic() - t0:.0f} s", flush=True)
                if name == "overload":
                    rows.append(T.Row("overload", OVERLOAD_TARGET, "", math.nan, "", None, None,
                                      "bench_overload failed: see its output", judged=(None, None), shown=("-", "-")))
    rows.append(WARM_RESTART)
    elapsed = time.monotonic() - t_all
    machine_end = H.machine_line()
    print()
    title = (f"issue-14 targets, {started}, {'--quick, ' if args.quick else ''}{elapsed / 60:.0f} min; current = "
             f"{subjects[0].ref or 'this checkout'}"
             + (f", previous design = {subjects[1].ref}" if len(subjects) > 1 else ""))
    T.print_rows(rows, title)
    print(f"start: {machine_start}\nend:   {machine_end}")
    print(f"all benchmarks: {elapsed:.0f} s" + (f", failed: {', '.join(failed)}" if failed else ""))
    if args.markdown:
        md = T.markdown(rows)
        Path(args.markdown).write_text(
            f"{title}\n\n{md}\nAt the start: {machine_start}.  \nAt the end: {machine_end}.  \n"
            f"Command: `bench/run_all.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
            + (f"; failed: {', '.join(failed)}" if failed else "") + "\n")
        print(f"markdown summary written to {args.markdown}")
    return len(failed)


if __name__ == "__main__":
    raise SystemExit(main())
