"""Overload: offered load at twice the ingest ceiling; do the bars keep their cadence?

Run: ``.venv/bin/python bench/bench_overload.py [--quick | --seconds 60] [--assets 3000] [--rate 20]
[--publishers 3] [--previous PATH] [--members host:port --cluster NAME]``
(without ``--members`` a local member, 512 MiB heap, deploy/hazelcast/hazelcast.yaml, is started
on a free port and stopped at the end; its log is then checked for OutOfMemoryError and for
event-queue overload warnings).

A leader worker and a standby worker (2 s bars, defaults otherwise, each its own process) run
against this run's maps while ``--publishers`` publisher processes (``bench/publisher.py --first``,
each a share of the assets) offer ``assets x rate`` snapshot events per
second (default 3,000 x 20 Hz = 60,000/s, twice the ceiling measured in bench_ingest) for
``--seconds`` after a warm-up. Everything shares this machine's cores. Measured over the window:

* offered: events per second the publishers got acknowledged (what the member took); accepted:
  events the leader's listener took in (health ``events.received``);
* coalesced: snapshots replaced before a bar took them (health ``events.superseded``), and
  snapshots the bar-close re-read took because their event never came (``events.read_refreshed``);
* close -> write: bar close to the record being visible to a reader (an entry listener in this
  process: an upper bound of close -> write), p50 / p99 against the bar length; and the worker's
  own ``bar_to_write_ms`` p99; bars missing from the window (cadence);
* health entry expiries (expired/removed events of the health map, and gaps between a worker's
  health updates longer than the entry's TTL) and takeovers (the standby turning leader, or
  records of the window written by another worker than the leader);
* RSS of the leader (start and end of the window) and of the member.

``--previous PATH``: the workers run the code of another checkout (e.g. ``git archive 44f6ba9``
unpacked there): the same load and measurements, the design before (one client connection).

``run(args) -> list[dict]`` prints the table and gives its rows (``{"target", "current", "met",
"note"}``, ``met``: True / False / None) to a caller (``run_all``, with ``add_args`` for the options;
it calls ``run`` once per tree, ``previous`` = that tree's path).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness as H

BAR_SECONDS = 2.0
CEILING_EVENTS_S = 30_000  # the highest sustained ingest rate measured (docs/performance.md, bench_ingest)
RSS_FLAT_LIMIT_MB = 32.0  # worker RSS growth over the window that still counts as flat
HEAP_FULL_MB = 460.0  # member heap used above this (90 % of 512 MiB): collecting without end, OOM next
WARM_S = 6.0  # publishing before the window opens (the workers see every asset, numba compiled)

TargetRow = dict[str, Any]  # {"target": str, "current": str, "met": bool | None, "note": str}


def row(target: str, current: str, met: bool | None, note: str = "") -> TargetRow:
    return {"target": target, "current": current, "met": met, "note": note}


# -- processes ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def member_or_given(args: argparse.Namespace) -> Iterator[tuple[H.Cluster, Any]]:
    """The cluster of ``--members``, or a local member started here (returned too, for its log)."""
    if args.members:
        with H.cluster_from_args(args) as cluster:
            yield cluster, None
        return
    from obf_features_worker.dev.member import LocalMember, free_port

    name = "obf-bench-" + uuid.uuid4().hex[:6]
    with H.scratch_dir("obf-bench-hz-") as workdir:
        member = LocalMember(port=free_port(), cluster_name=name, workdir=workdir)
        member.start()
        try:
            yield H.Cluster(name, [member.address], member.pid()), member
        finally:
            member.stop()


@contextlib.contextmanager
def worker(cluster: H.Cluster, suffix: str, log_dir: Path, worker_id: str, repo: Path) -> Iterator[subprocess.Popen]:
    """A worker process running the code of ``repo`` (this checkout, or --previous)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBF_", "HZ_"))}
    env.update(HZ_CLUSTER=cluster.name, HZ_MEMBERS=",".join(cluster.members), OBF_MAP_SUFFIX=suffix,
               OBF_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1", PYTHONPATH=str(repo), OBF_WORKER_ID=worker_id,
               OBF_BAR_SECONDS=str(BAR_SECONDS))
    cmd = [sys.executable, "-m", "obf_features_worker.service.worker"]
    with open(log_dir / f"{worker_id}.log", "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            H.stop_process(proc)


def member_heap_mb(pid: int | None) -> float | None:
    """The member JVM's used heap (MB, all generations; ``jstat -gc``), None if unknown. Spawns a JVM
    (~0.3 s of CPU): sampled a few times per run only."""
    if pid is None or shutil.which("jstat") is None:
        return None
    try:
        out = subprocess.run(["jstat", "-gc", str(pid)], capture_output=True, text=True, timeout=20).stdout.split("\n")
        cols = dict(zip(out[0].split(), out[1].split(), strict=False))
        return sum(float(cols[c]) for c in ("S0U", "S1U", "EU", "OU")) / 1024.0
    except (OSError, subprocess.SubprocessError, IndexError, KeyError, ValueError):
        return None


def health_docs(client: Any, suffix: str) -> dict[str, dict[str, Any]]:
    """worker_id -> health document (present entries only)."""
    out = {}
    for k, v in client.get_map("DOLPHIN_OBF_HEALTH" + suffix).blocking().entry_set():
        out[str(k)] = json.loads(v.to_string() if hasattr(v, "to_string") else v)
    return out


# -- the run --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[TargetRow]:
    """Run the overload once (member, two workers, publishers), print its table, return its rows.

    ``args``: ``add_args``' options (``quick``, ``seconds``, ``assets``, ``rate``, ``publishers``,
    ``previous``: a checkout's path or None = this one, ``members``, ``cluster``, ``member_pid``)."""
    machine = H.machine_line()
    rows = _run(args)
    design = f"previous design ({args.previous})" if args.previous else "this design"
    print_rows(f"overload, {design}: leader + standby, {args.assets} assets x {args.rate:g} Hz, "
               f"{BAR_SECONDS:g} s bars (start: {machine}; end: {H.machine_line()})", rows)
    return rows


def _run(args: argparse.Namespace) -> list[TargetRow]:
    repo = Path(args.previous).resolve() if args.previous else H.REPO
    n, rate = args.assets, args.rate
    offered_target = n * rate
    window_s = 12.0 if args.quick and args.seconds is None else float(args.seconds or 60.0)
    leader_id, standby_id = "ovl-leader", "ovl-standby"
    suffix = H.map_suffix()
    samples: list[dict[str, Any]] = []  # per 0.5 s: t, docs, rss
    arrivals: dict[int, float] = {}
    expiries: list[tuple[str, float, str]] = []
    lock = threading.Lock()

    with H.scratch_dir("obf-bench-overload-") as log_dir, member_or_given(args) as (cluster, member):
        client = cluster.client()
        try:
            def on_record(e: Any) -> None:
                with lock:
                    arrivals.setdefault(int(e.key), time.time())

            def on_health_gone(kind: str) -> Any:
                def f(e: Any) -> None:
                    with lock:
                        expiries.append((str(e.key), time.time(), kind))
                return f

            client.get_map("DOLPHIN_OBF_FEATURES" + suffix).add_entry_listener(
                include_value=False, added_func=on_record, updated_func=on_record).result()
            client.get_map("DOLPHIN_OBF_HEALTH" + suffix).add_entry_listener(
                include_value=False, expired_func=on_health_gone("expired"),
                removed_func=on_health_gone("removed")).result()
            with worker(cluster, suffix, log_dir, leader_id, repo) as lead:
                H.wait_until(lambda: leader_id in health_docs(client, suffix) or lead.poll() is not None, 90,
                             "the leader's first health document")
                if lead.poll() is not None:
                    raise RuntimeError("leader exited: " + (log_dir / f"{leader_id}.log").read_text()[-3000:])
                with worker(cluster, suffix, log_dir, standby_id, repo) as standby, contextlib.ExitStack() as pubs:
                    H.wait_until(lambda: standby_id in health_docs(client, suffix), 90,
                                 "the standby's first health document")
                    share = math.ceil(n / args.publishers)
                    procs = []
                    for p in range(args.publishers):
                        first, count = p * share, min(share, n - p * share)
                        if count <= 0:
                            break
                        procs.append(pubs.enter_context(H.progress_process("publisher.py", [
                            "--members", ",".join(cluster.members), "--cluster", cluster.name,
                            "--map", "DOLPHIN_FEATURES" + suffix, "--first", str(first), "--assets", str(count),
                            "--rate", str(rate), "--duration", str(WARM_S + window_s)], log_dir)))
                    H.wait_until(lambda: all((q.progress() or {}).get("published", 0) > 0 for q in procs), 60,
                                 "every publisher's first tick")
                    time.sleep(WARM_S)
                    t0 = time.time()
                    meters = {"leader": H.CpuMeter(lead.pid), "standby": H.CpuMeter(standby.pid)}
                    for i, q in enumerate(procs):
                        meters[f"pub{i}"] = H.CpuMeter(q.proc.pid)
                    if cluster.member_pid is not None:
                        meters["member"] = H.CpuMeter(cluster.member_pid)
                    for mt in meters.values():
                        mt.start()
                    heap = [member_heap_mb(cluster.member_pid)]
                    next_heap = t0 + window_s / 3
                    while time.time() < t0 + window_s:
                        s: dict[str, Any] = {"t": time.time(), "docs": health_docs(client, suffix),
                                             "rss": H.rss_bytes(lead.pid)}
                        if cluster.member_pid is not None:
                            s["member_rss"] = H.rss_bytes(cluster.member_pid)
                        samples.append(s)
                        if time.time() >= next_heap:
                            next_heap += window_s / 3
                            heap.append(member_heap_mb(cluster.member_pid))
                        time.sleep(0.5)
                    t1 = time.time()
                    heap.append(member_heap_mb(cluster.member_pid))
                    cpu = {k: mt.share() for k, mt in meters.items()}
                    offered = sum(_published_between(q, t0, t1) for q in procs) / (t1 - t0)
                    late = max((x.get("late_s", 0.0) for q in procs for x in q.history()), default=0.0)
                    # the window's last bars: wait up to two bars for their records
                    last_bar = math.floor(t1 / BAR_SECONDS)
                    end = time.time() + 3 * BAR_SECONDS
                    while time.time() < end and last_bar not in arrivals:
                        time.sleep(0.1)
                    standby_alive = standby.poll() is None
                leader_alive = lead.poll() is None
            first_bar = math.ceil(t0 / BAR_SECONDS)
            bars = list(range(first_bar, last_bar + 1))
            recs = client.get_map("DOLPHIN_OBF_FEATURES" + suffix).blocking().get_all(bars)
            writers = {}
            for k, v in recs.items():
                rec = json.loads(v.to_string())
                writers[int(k)] = (rec.get("producer") or {}).get("worker_id")
            H.destroy_maps(client, suffix)
        finally:
            client.shutdown()
        member_log = member.log_file.read_text(errors="replace") if member is not None else None
        member_alive = cluster.member_pid is not None and Path(f"/proc/{cluster.member_pid}").exists()

    return _rows(args, repo, n, rate, offered_target, window_s, offered, late, cpu, samples, arrivals, expiries,
                 bars, writers, leader_id, standby_id, leader_alive, standby_alive, member_log, heap, member_alive)


def _published_between(q: H.ProgressProcess, t0: float, t1: float) -> float:
    a, b = q.published_at(t0), q.published_at(t1)
    return 0.0 if a is None or b is None else b - a


def _rows(args: argparse.Namespace, repo: Path, n: int, rate: float, offered_target: float, window_s: float,
          offered: float, late: float, cpu: dict[str, float], samples: list[dict[str, Any]],
          arrivals: dict[int, float], expiries: list[tuple[str, float, str]], bars: list[int],
          writers: dict[int, Any], leader_id: str, standby_id: str, leader_alive: bool, standby_alive: bool,
          member_log: str | None, heap: list[float | None], member_alive: bool) -> list[TargetRow]:
    rows: list[TargetRow] = []
    lead_docs = [s["docs"][leader_id] for s in samples if leader_id in s["docs"]]
    first, last = (lead_docs[0], lead_docs[-1]) if lead_docs else ({}, {})
    span = max(1e-9, last.get("updated_at", 0.0) - first.get("updated_at", 0.0))

    def delta(key: str) -> int | None:
        a, b = (first.get("events") or {}).get(key), (last.get("events") or {}).get(key)
        return None if a is None or b is None else int(b) - int(a)

    received, accepted, superseded, reread = delta("received"), delta("accepted"), delta("superseded"), \
        delta("read_refreshed")
    events_rate = received / span if received is not None else math.nan
    taken_rate = accepted / span if accepted is not None else math.nan
    rows.append(row(f"offered load >= 2x the ingest ceiling ({2 * CEILING_EVENTS_S:,}/s; asked {n:,} x {rate:g} Hz "
                    f"= {offered_target:,.0f}/s)",
                    f"offered {offered:,.0f}/s; offered to the book {events_rate:,.0f}/s (events + bar-close "
                    f"reads), taken {taken_rate:,.0f}/s",
                    offered >= 2 * CEILING_EVENTS_S,
                    f"{args.publishers} publishers, max tick lateness {late:.1f} s; cpu (cores): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())))

    lat = sorted((arrivals[b] - b * BAR_SECONDS) * 1000.0 for b in bars if b in arrivals)
    missing = [b for b in bars if b not in writers]
    p50, p99 = H.pct(lat, 0.5), H.pct(lat, 0.99)
    own = (last.get("bar_to_write_ms") or {}).get("p99")
    rows.append(row(f"bars keep their cadence: close -> write p99 < one bar ({BAR_SECONDS * 1000:.0f} ms)",
                    f"close -> visible p50 {p50:.0f} ms, p99 {p99:.0f} ms; {len(bars) - len(missing)}/{len(bars)} bars",
                    bool(lat) and p99 < BAR_SECONDS * 1000.0 and not missing,
                    f"worker's own bar_to_write p99 {own} ms (last 500 bars)"
                    + (f"; missing bars {missing[:5]}" if missing else "")))

    gaps: dict[str, float] = {}
    for wid in (leader_id, standby_id):
        stamps = [samples[0]["t"]] + [s["docs"][wid]["updated_at"] for s in samples if wid in s["docs"]] \
            + [samples[-1]["t"]] if samples else []
        gaps[wid] = max((b - a for a, b in zip(stamps, stamps[1:])), default=math.nan)
    ttl = max(3 * BAR_SECONDS, 15.0)
    gone = [e for e in expiries if e[2] == "expired"]
    absent = sum(1 for s in samples for wid in (leader_id, standby_id) if wid not in s["docs"])
    rows.append(row("the health entry never expires",
                    f"{len(gone)} expired, {absent} polls without an entry; longest update gap leader "
                    f"{gaps[leader_id]:.1f} s, standby {gaps[standby_id]:.1f} s (ttl {ttl:g} s)",
                    not gone and absent == 0 and all(g < ttl for g in gaps.values())))

    roles = {s["docs"][standby_id].get("role") for s in samples if standby_id in s["docs"]}
    others = sorted({w for w in writers.values() if w != leader_id}, key=str)
    takeovers = int("leader" in roles) + len(others)
    rows.append(row("no standby takes over", f"{takeovers} takeovers (standby roles seen: {sorted(roles)}; "
                    f"records by others: {others})", takeovers == 0 and leader_alive and standby_alive,
                    "" if leader_alive and standby_alive else "a worker exited"))

    ev_conn = (last.get("connections") or {}).get("events") or {}
    sheds = ev_conn.get("sheds")
    lags = [((s["docs"][leader_id].get("connections") or {}).get("events") or {}).get("lag_s")
            for s in samples if leader_id in s["docs"]]
    lags = [x for x in lags if isinstance(x, (int, float))]
    rows.append(row("events backlog bounded (the events connection shed past one bar of backlog)",
                    f"sheds {sheds}, events lag max {max(lags, default=math.nan):.1f} s" if sheds is not None
                    else "no shedding in this design", None,
                    "while shed, every asset is re-read at bar close (pull)" if sheds is not None else ""))
    if superseded is None or accepted is None:
        rows.append(row("the surplus is coalesced and counted", "not counted (no events.superseded in health)",
                        False, f"accepted {accepted}; this worker's health has no coalescing counters"))
    else:
        used = accepted - superseded
        bars_n = max(1, len(bars))
        rows.append(row("the surplus is coalesced and counted",
                        f"accepted {accepted:,}, superseded {superseded:,} ({superseded / max(1, accepted):.1%}), "
                        f"re-read refreshed {reread:,}", used <= (bars_n + 2) * n,
                        f"snapshots used by bars {used:,} <= (bars + 2) x assets = {(bars_n + 2) * n:,}; "
                        f"events received - accepted = {received - accepted:,} (echoes, rejects)"
                        if received is not None else ""))

    rss = [s["rss"] for s in samples]
    mid = rss[len(rss) // 2] if rss else 0
    growth = (rss[-1] - mid) / 2**20 if rss else math.nan
    rows.append(row(f"worker memory flat (growth over the window's second half < {RSS_FLAT_LIMIT_MB:g} MB)",
                    f"RSS start {rss[0] / 2**20:.0f} MB, middle {mid / 2**20:.0f} MB, end {rss[-1] / 2**20:.0f} MB, "
                    f"peak {max(rss) / 2**20:.0f} MB" if rss else "-", bool(rss) and growth < RSS_FLAT_LIMIT_MB,
                    "the first half includes the first bars at this many assets (engine state, buffers)"))

    mrss = [s["member_rss"] for s in samples if "member_rss" in s]
    if mrss:
        # A member started here: its log says OutOfMemoryError; one given by --member-pid: alive or not.
        oom = "OutOfMemoryError" in member_log if member_log is not None else not member_alive
        overloaded = len(re.findall(r"(?i)event ?queue .*(overloaded|full)", member_log or ""))
        heap_text = ", ".join("?" if h is None else f"{h:.0f}" for h in heap)
        rows.append(row(f"the member survives (512 MiB heap: no OutOfMemoryError, used < {HEAP_FULL_MB:g} MB)",
                        f"member heap used {heap_text} MB (start .. end); RSS start {mrss[0] / 2**20:.0f} MB, "
                        f"end {mrss[-1] / 2**20:.0f} MB; OutOfMemoryError {'yes' if oom else 'no'}; "
                        f"event-queue overload warnings {overloaded}",
                        not oom and all(h is None or h < HEAP_FULL_MB for h in heap),
                        "events the member drops (event queue full) are covered by the bar-close re-read"))
    return rows


def print_rows(title: str, rows: list[TargetRow]) -> None:
    H.print_table(title, ["target", "current", "met", "note"],
                  [[r["target"], r["current"], "-" if r["met"] is None else ("met" if r["met"] else "NOT met"),
                    r["note"]] for r in rows])


def add_args(ap: argparse.ArgumentParser) -> None:
    H.add_cluster_args(ap)
    ap.add_argument("--quick", action="store_true", help="a 12 s window instead of 60 s")
    ap.add_argument("--seconds", type=float, default=None, help="window length, s (default 60; 12 with --quick)")
    ap.add_argument("--assets", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=20.0, help="snapshots per asset per second")
    ap.add_argument("--publishers", type=int, default=3, help="publisher processes (each a share of the assets)")
    ap.add_argument("--previous", default=None, metavar="PATH",
                    help="run the workers from this checkout (the design before), same load and measurements")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    run(ap.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
