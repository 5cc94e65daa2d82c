"""Freshness: how old the features are when the trader's adapter can first see them.

Run: ``.venv/bin/python bench/bench_freshness.py [--quick] [--members host:port --cluster NAME]
[--previous REF | --no-previous]`` (without ``--members`` a local member is started on a free port
and stopped at the end).

This checkout and the previous design (``bench/previous.py``) are measured one after the other
against the same member, each in a subprocess running its own worker, engine and adapter (the
publisher is the harness's, the same for both).

For each asset count a real worker (2 s bars, interval clock) runs on maps of its own while
``bench/publisher.py`` publishes every asset at 10 Hz (the upstream rate), each snapshot stamped
with the time it is put. ``bench/trader_process.py --watch-bars`` runs the trader's
``HazelcastOBEngine`` (its own client, in a process with nothing else, like a trader) and, for
every bar, blocks in ``wait_for_bar`` (woken by the listener inserting the decoded bar, the
moment ``step_live``/``get_*`` could use it). From its report:

* ``close->visible``: visible time minus the bar's close (``bar_ts``): the worker's timer wake-up,
  gathering, ``FeatureEngine.step``, encoding, the write round trip, the event to the adapter,
  its decode and insert; split at the record's ``producer.computed_at`` (stamped right after
  ``FeatureEngine.step``) into ``close->computed`` (wake-up, gather, compute) and
  ``computed->visible`` (encode, checkpoint, writes, event, decode);
* ``put->visible``: visible time minus the timestamp of each asset's snapshot used in the bar
  (one value per asset and bar): the above plus the snapshot's age at the close (~50 ms on
  average at 10 Hz: the bar takes the newest snapshot, at most one publish interval old);
* the worker's own ``compute`` and ``close->write`` percentiles (its health document), the
  ``decode`` time of one record (in this process, unloaded; paid on the adapter's listener
  thread), and the garbage collections (generations 1 and 2) the trader process ran while
  measuring: how many and the longest, in ms (a collection holds the GIL: the listener's
  decode waits for it);
* ``>= 10 ms``: bars whose close->visible reached 10 ms.

Times in ms, p50 / p99 over the measured bars (p99 of a few dozen bars is close to the max).
Targets (issue 14): close->visible p99 < 10 ms and p50 < 5 ms at 400 assets, p99 < 50 ms at
2,000 assets, on loopback.

A second table is the budget of that path measured piece by piece in this process, without
load (median of a few repetitions): ``FeatureEngine.step``, ``dumps_record``, the worker's
checkpoint (capture + encode; written before the record in the previous design), one ``set``
round trip of a record-sized and of a checkpoint-sized value, and ``decode_bar`` (NaN where the
tree's API differs from what this harness knows).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness as H
import numpy as np
import previous as P
import targets as T
from bench_engine import make_bars
from hazelcast.core import HazelcastJsonValue

BAR_SECONDS = 2.0  # bar_idx = unix s / 2 stays < 1e9, which the adapter reads as a bar_idx (1 s bars: >= 1e9)
RATE_HZ = 10.0


@dataclass
class Fresh:
    n: int
    bars: int
    close_ms: list[float]
    put_ms: list[float]
    computed_ms: list[float]
    after_ms: list[float]
    compute: dict[str, float]
    close_write: dict[str, float]
    decode_ms: float
    exact: int
    gc_ms: list[float]


def measure(cluster: H.Cluster, client: Any, n: int, n_bars: int, log_dir: Path,
            experiment: H.Experiment) -> Fresh:
    suffix = H.map_suffix()
    features_map = "DOLPHIN_OBF_FEATURES" + suffix
    with H.worker_process(cluster, suffix, log_dir, experiment=experiment, bar_seconds=BAR_SECONDS) as worker:
        H.wait_for_worker(client, suffix, worker, log_dir)
        run_s = (n_bars + 4) * BAR_SECONDS + 120.0  # stopped once measured
        with H.publisher_process(cluster, "DOLPHIN_FEATURES" + suffix, n, RATE_HZ, run_s, log_dir=log_dir) as pub:
            H.wait_until(lambda: (pub.progress() or {}).get("published", 0) > 0, 60, "the publisher's first tick")
            trader_args = ["--members", ",".join(cluster.members), "--cluster", cluster.name, "--map", features_map,
                           "--assets", str(n), "--cache-bars", str(max(10, n_bars + 5)),
                           "--bar-seconds", str(BAR_SECONDS), "--watch-bars", str(n_bars)]
            with H.progress_process("trader_process.py", trader_args, log_dir) as trader:
                H.wait_until(lambda: any("done" in x for x in trader.history()), n_bars * BAR_SECONDS + 180,
                             "the trader's measurement")
                lines = trader.history()
            doc = H.read_health(client, suffix) or {}
            last_record = max((x["bar"] for x in lines if "visible" in x), default=None)
            raw = client.get_map(features_map).blocking().get(last_record) if last_record is not None else None
    bars = [x for x in lines if "visible" in x]
    close_ms = [(x["visible"] - x["bar_ts"]) * 1000.0 for x in bars]
    computed_ms = [(x["computed_at"] - x["bar_ts"]) * 1000.0 for x in bars if x["computed_at"] is not None]
    after_ms = [(x["visible"] - x["computed_at"]) * 1000.0 for x in bars if x["computed_at"] is not None]
    put_ms = [age for x in bars for age in x["ages_ms"]]
    gc_ms = next((x["gc_ms"] for x in lines if "gc_ms" in x), [])
    decode_ms = float("nan")
    try:
        from engine_adapter.features import decode_bar

        if raw is not None:
            text = raw.to_string()
            decode_bar(text)
            t0 = time.perf_counter()
            for _ in range(5):
                decode_bar(text)
            decode_ms = (time.perf_counter() - t0) / 5 * 1000.0
    except Exception as exc:  # the tree's decoder differs from what this harness knows
        print(f"  decode not measured on this tree: {exc!r}", file=sys.stderr)
    H.destroy_maps(client, suffix)
    return Fresh(n, n_bars, close_ms, put_ms, computed_ms, after_ms, doc.get("compute_ms", {}),
               doc.get("bar_to_write_ms", {}), decode_ms, len(bars), gc_ms)


def budget(client: Any, n: int, reps: int = 7) -> dict[str, float]:
    """Median ms of each step of the bar-close path for ``n`` assets, measured in this process
    (NaN for a step whose API in this tree differs from what the harness knows)."""
    from obf_contract.record import dumps_record
    from obf_features_worker.engine.feature_engine import FeatureEngine

    bars = make_bars(n, 8, np.random.default_rng(n))
    engine = FeatureEngine()
    t0 = 1_723_161_000.0
    for i, bar in enumerate(bars[:-1]):
        engine.step(i, t0 + i, bar)

    def timed(fn: Any) -> float:
        fn()
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1000.0)
        return H.median(out)

    last = {"rec": None}

    def step() -> None:
        e = FeatureEngine.from_state(engine.export_state(), engine.params)
        last["rec"] = e.step(len(bars) - 1, t0 + len(bars) - 1, bars[-1])

    # from_state is part of this timing only to step the same bar again: subtract it.
    restore = timed(lambda: FeatureEngine.from_state(engine.export_state(), engine.params))
    out = {"compute": max(0.0, timed(step) - restore)}
    rec = last["rec"]
    rec["producer"] = {"worker_id": "bench", "computed_at": time.time(), "stale_assets": [], "degraded": False}
    out["encode"] = timed(lambda: dumps_record(rec))
    text = dumps_record(rec).decode()
    seqs = {s: 1 for s in bars[-1]}
    nan = float("nan")
    cp_text = ""
    try:
        from obf_features_worker.engine import checkpoint

        def capture() -> bytes:
            return checkpoint.encode(checkpoint.capture(engine, seqs=seqs, bar_ts=t0, worker_id="bench",
                                                        written_at=t0, epoch=1, records={rec["bar_idx"]: text}))

        cp_text = capture().decode()
        out["checkpoint"] = timed(capture)
    except Exception as exc:  # the tree's checkpoint API differs from what this harness knows
        print(f"  checkpoint budget not measured on this tree: {exc!r}", file=sys.stderr)
        out["checkpoint"] = nan
    scratch = client.get_map("OBF_BENCH_SCRATCH" + H.map_suffix()).blocking()
    out["put record"] = timed(lambda: scratch.set(1, HazelcastJsonValue(text)))
    out["put checkpoint"] = timed(lambda: scratch.set(2, HazelcastJsonValue(cp_text))) if cp_text else nan
    scratch.destroy()
    try:
        from engine_adapter.features import decode_bar

        out["decode"] = timed(lambda: decode_bar(text))
    except Exception as exc:  # the tree's decoder differs
        print(f"  decode budget not measured on this tree: {exc!r}", file=sys.stderr)
        out["decode"] = nan
    out["record kB"] = len(text) / 1000.0
    out["checkpoint kB"] = len(cp_text) / 1000.0 if cp_text else nan
    return out


def measure_tree(cluster: str, members: list[str], member_pid: int | None, sizes: list[int], n_bars: int,
                 experiment: dict[str, Any]) -> dict[str, Any]:
    """In a tree's process: every size's freshness and its in-process budget."""
    cl = H.Cluster(cluster, members, member_pid)
    client = cl.client()
    out: dict[str, Any] = {"rows": [], "budgets": {}}
    try:
        with H.scratch_dir("obf-bench-fresh-") as log_dir:
            for n in sizes:
                out["rows"].append(asdict(measure(cl, client, n, n_bars, log_dir, H.Experiment(**experiment))))
                try:
                    out["budgets"][str(n)] = budget(client, n)
                except Exception as exc:  # the tree's engine API differs from what this harness knows
                    print(f"  budget not measured on this tree: {exc!r}", file=sys.stderr)
                print(f"  freshness {n} assets measured", file=sys.stderr, flush=True)
    finally:
        client.shutdown()
    return out


def p50_p99(xs: list[float]) -> str:
    return f"{H.pct(xs, 0.5):7.2f} / {H.pct(xs, 0.99):7.2f}"


def _num(d: dict[str, float], k: str) -> str:
    return f"{d.get(k, float('nan')):.2f}"


def configure(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--fresh-sizes", default=None, help="asset counts (default 4,50,400,2000; --quick 400,2000)")
    ap.add_argument("--bars", type=int, default=None, help="bars measured per size (default 30, 6 with --quick)")


def run(args: argparse.Namespace) -> list[T.Row]:
    n_bars = args.bars if getattr(args, "bars", None) is not None else (6 if args.quick else 30)
    sizes = [int(x) for x in (args.fresh_sizes or ("400,2000" if args.quick else "4,50,400,2000")).split(",")]
    experiment = H.experiment_from_args(args) if hasattr(args, "no_lease") else H.Experiment()
    res: dict[str, Any] = {}
    with H.cluster_from_args(args) as cl:
        for subj in P.subjects(args):
            r = P.run_in(subj, "bench_freshness", "measure_tree", cluster=cl.name, members=cl.members,
                         member_pid=cl.member_pid, sizes=sizes, n_bars=n_bars, experiment=asdict(experiment))
            res[subj.name] = (subj, [Fresh(**x) for x in r["rows"]], r["budgets"])

    table = []
    for n in sizes:
        for subj, rows, _ in res.values():
            for r in (x for x in rows if x.n == n):
                slow = sum(1 for x in r.close_ms if x >= 10.0)
                table.append([r.n, subj.label, f"{r.exact}/{r.bars}", p50_p99(r.close_ms), f"{slow}/{len(r.close_ms)}",
                              p50_p99(r.computed_ms), p50_p99(r.after_ms), p50_p99(r.put_ms),
                              f"{len(r.gc_ms)} / {max(r.gc_ms, default=0.0):.0f}",
                              f"{_num(r.compute, 'p50')} / {_num(r.compute, 'p99')}",
                              f"{_num(r.close_write, 'p50')} / {_num(r.close_write, 'p99')}", f"{r.decode_ms:.2f}"])
    si = experiment.label()
    si = f", {si}" if si else ""
    H.print_table(f"freshness, ms p50 / p99 (publisher {RATE_HZ:g} Hz per asset, {BAR_SECONDS:g} s bars{si}; "
                  f"{H.machine_line()})",
                  ["assets", "tree", "bars", "close->visible", ">= 10 ms", "close->computed", "computed->visible",
                   "put->visible", "adapter GCs / max ms", "worker compute", "worker close->write",
                   "decode (1 bar)"], table)
    cols = ["compute", "encode", "checkpoint", "put record", "put checkpoint", "decode"]
    brows = []
    for n in sizes:
        for subj, _, budgets in res.values():
            b = budgets.get(str(n))
            if b is None:
                continue
            brows.append([n, subj.label] + [f"{b[c]:.2f}" for c in cols]
                         + [f"{b['record kB']:.0f} / {b['checkpoint kB']:.0f}"])
    H.print_table("bar-close path budget, ms (in-process, no load, median)",
                  ["assets", "tree", *cols, "kB record / checkpoint"], brows,
                  "the previous design writes the checkpoint before the record (both puts on the path); issue 14 "
                  "moves it off the path")

    def fig(name: str, n: int, q: float) -> float | None:
        if name not in res:
            return None
        r = next((x for x in res[name][1] if x.n == n), None)
        return None if r is None else H.pct(r.close_ms, q)

    def note(n: int) -> str:
        got = {name: next((f"{x.exact}/{x.bars} bars" for x in rows if x.n == n), "") for name, (_, rows, _) in
               res.items()}
        return ", ".join(f"{k} {v}" for k, v in got.items() if v)

    out = []
    if 400 in sizes:
        out.append(T.Row("freshness", "bar close -> visible in adapter, p99, 400 assets", "<", 10.0, "ms",
                         fig("current", 400, 0.99), fig("previous", 400, 0.99), note(400)))
        out.append(T.Row("freshness", "bar close -> visible in adapter, p50, 400 assets", "<", 5.0, "ms",
                         fig("current", 400, 0.5), fig("previous", 400, 0.5), note(400)))
    if 2000 in sizes:
        out.append(T.Row("freshness", "bar close -> visible in adapter, p99, 2,000 assets", "<", 50.0, "ms",
                         fig("current", 2000, 0.99), fig("previous", 2000, 0.99), note(2000)))
    return out


def main(argv: list[str] | None = None) -> int:
    def old_spelling(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--sizes", dest="fresh_sizes", default=None, help=argparse.SUPPRESS)

    return P.bench_main(argv, __doc__, configure, run, quick_help="fewer bars per size (~1 min per tree)",
                        worker=True, extra=old_spelling)


if __name__ == "__main__":
    raise SystemExit(main())
