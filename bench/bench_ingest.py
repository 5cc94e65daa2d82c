"""Ingest throughput: how many snapshot events per second one worker takes in and keeps up with.

Run: ``.venv/bin/python bench/bench_ingest.py [--quick] [--members host:port --cluster NAME] [--no-profile]
[--previous REF | --no-previous]`` (without ``--members`` a local member is started on a free port
and stopped at the end).

This checkout and the previous design (``bench/previous.py``) are measured one after the other
against the same member, each in a subprocess running its own worker (the publisher is the
harness's, the same for both). The listener profile runs on this checkout only.

For each asset count a real worker (``obf-features-worker``, 2 s bars, defaults otherwise) runs
against its own maps while ``bench/publisher.py`` (a separate process) publishes every asset at a
fixed rate per asset, then as fast as it can (``max``). Everything shares this machine's cores:
member JVM, publisher and worker. Per level, over a steady window after a warm-up:

* ``pub/s``, ``recv/s``: events the publisher got acknowledged and events the worker's listener
  took in (its health document's ``events.received``), per second over the same interval
  (between the first and last health document of the window);
* ``lag+ s``: growth of the worker's backlog over the window (published minus received, as
  seconds of input; > 0.5 s = falling behind); ``drain s``: from the publisher's last put until
  the worker has received everything (resolution: one bar, when health is written);
* ``gap s``: longest time without a health update in the window (written once per bar: a
  bar loop starved of CPU or stuck behind the event flood shows gaps well above 2 s);
* CPU shares (1.0 = one core) of the worker, the member (if started here) and the publisher;
* ``coalesced``: share of accepted snapshots that no bar used (a newer one of the same asset
  replaced it before the bar closed): ``1 - bars * n_present / accepted``.

``sustained`` = received >= 97 % of published, lag+ < 0.5 s and drain <= one bar + 1 s (the
intake keeps up); a ``gap s`` above two bars is marked ``!``: bars were late.
Then the listener path is profiled in-process (cProfile on the client's reactor thread running
the worker's callback, ``SnapshotBook.offer``; ``--no-profile`` skips it) to split its time
between the Hazelcast client and our code.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import harness as H
import previous as P
import targets as T

BAR_SECONDS = 2.0  # the worker refuses interval bars < 1.8 s (bar_idx must stay < 1e9)
DRAIN_LIMIT_S = 30.0


@dataclass
class Level:
    n: int
    rate: float  # per asset, 0 = max
    pub: float
    recv: float
    lag_growth_s: float
    drain_s: float
    gap_s: float
    worker_cpu: float
    member_cpu: float | None
    publisher_cpu: float
    coalesced: float
    late_s: float

    @property
    def sustained(self) -> bool:
        # NaN (too few health documents in the window: a stalled bar loop) compares False.
        return self.recv >= 0.97 * self.pub and self.lag_growth_s < 0.5 and self.drain_s <= BAR_SECONDS + 1.0


def run_level(cluster: H.Cluster, client: Any, suffix: str, worker_pid: int, n: int, rate: float,
              warm_s: float, window_s: float, log_dir: Path) -> Level:
    map_name = "DOLPHIN_FEATURES" + suffix
    with H.publisher_process(cluster, map_name, n, rate, warm_s + window_s, log_dir=log_dir) as pub:
        H.wait_until(lambda: (pub.progress() or {}).get("published", 0) > 0, 60, "the publisher's first tick")
        time.sleep(warm_s)
        meters = [H.CpuMeter(worker_pid), H.CpuMeter(pub.proc.pid)]
        if cluster.member_pid is not None:
            meters.append(H.CpuMeter(cluster.member_pid))
        for m in meters:
            m.start()
        docs = []  # (updated_at, received, accepted, last_bar_idx, n_present)
        t_start = time.time()
        t_end = t_start + window_s
        while time.time() < t_end:
            doc = H.read_health(client, suffix)
            if doc is not None:  # None: expired (its ttl is 15 s): the bar loop is stalled
                docs.append(_sample(doc))
            time.sleep(0.2)
        cpu = [m.share() for m in meters]
        H.wait_until(lambda: pub.proc.poll() is not None, 60, "the publisher to finish")
        hist = [x for x in pub.history() if "published" in x]
        final, t_done = hist[-1]["published"], hist[-1]["t"]
        in_window = [x for x in hist if t_start <= x["t"] <= t_end]
        pub_rate = ((in_window[-1]["published"] - in_window[0]["published"])
                    / max(1e-9, in_window[-1]["t"] - in_window[0]["t"]))
        late = max((x.get("late_s", 0.0) for x in in_window), default=0.0)
        docs = [d for d in dict.fromkeys(docs) if d[0] >= t_start - BAR_SECONDS]  # distinct, in order
        stamps = [t_start] + [d[0] for d in docs if d[0] >= t_start] + [t_end]
        gap = max(b - a for a, b in zip(stamps, stamps[1:], strict=False))
        # Input and intake over the same interval: between the first and last health document.
        recv_rate = lag_growth = coalesced = float("nan")
        if len(docs) >= 2 and docs[-1][0] > docs[0][0]:
            first, last = docs[0], docs[-1]
            span = last[0] - first[0]
            p0, p1 = pub.published_at(first[0]), pub.published_at(last[0])
            recv_rate = (last[1] - first[1]) / span
            if p0 is not None and p1 is not None:
                pub_rate = (p1 - p0) / span
                lag_growth = ((p1 - last[1]) - (p0 - first[1])) / max(1e-9, pub_rate)
            accepted = last[2] - first[2]
            if accepted > 0:
                coalesced = 1.0 - (last[3] - first[3]) * last[4] / accepted
    drain_s = float("inf")  # from the publisher's last put to the worker having received everything
    wait_end = time.time() + DRAIN_LIMIT_S
    while time.time() < wait_end:
        doc = H.read_health(client, suffix)
        if doc is not None and doc["events"]["received"] >= final:
            drain_s = max(0.0, doc["updated_at"] - t_done)
            break
        time.sleep(0.1)
    return Level(n, rate, pub_rate, recv_rate, lag_growth, drain_s, gap,
                 cpu[0], cpu[2] if len(cpu) > 2 else None, cpu[1], coalesced, late)


def _sample(doc: dict[str, Any]) -> tuple[float, int, int, int, int]:
    ev = doc["events"]
    return (doc["updated_at"], ev["received"], ev["accepted"], doc["last_bar_idx"] or 0, doc["n_present"])


def profile_listener(cluster: H.Cluster, n: int, rate: float, seconds: float, log_dir: Path) -> str:
    """cProfile of the client's reactor thread running the worker's listener callback."""
    from hazelcast import predicate as P

    from obf_features_worker.engine.ingest import SnapshotBook
    from obf_features_worker.engine.snapshot import parse_snapshot
    from obf_features_worker.service.grid import ASSET_KEY_PATTERN

    parse_snapshot("asset_BTCUSDT_ob", '{"timestamp": 1.0, "bid_notional": [1.0], "ask_notional": [1.0]}', now=2.0)
    suffix = H.map_suffix()
    client = cluster.client()
    book = SnapshotBook()
    prof = cProfile.Profile()
    state = {"until": None, "done": threading.Event(), "events": 0}

    def on_entry(event: Any) -> None:
        if state["until"] is None:
            state["until"] = time.time() + seconds
            prof.enable()  # profiles the calling thread: the reactor
        state["events"] += 1
        book.offer(event.key, event.value, received_at=time.time())
        if not state["done"].is_set() and time.time() > state["until"]:
            prof.disable()
            state["done"].set()

    m = client.get_map("DOLPHIN_FEATURES" + suffix)
    m.add_entry_listener(include_value=True, predicate=P.regex("__key", ASSET_KEY_PATTERN),
                         added_func=on_entry, updated_func=on_entry).result()
    try:
        with H.publisher_process(cluster, "DOLPHIN_FEATURES" + suffix, n, rate, seconds + 10, log_dir=log_dir):
            if not state["done"].wait(seconds + 60):
                raise TimeoutError("no events to profile")
    finally:
        m.destroy()
        client.shutdown()
    stats = pstats.Stats(prof)
    groups: dict[str, float] = {}
    idle = 0.0
    for (file, _line, name), v in stats.stats.items():
        if file == "~" and ("select" in name or "poll" in name):
            idle += v[2]  # the reactor waiting for the socket: not work
            continue
        if "/hazelcast/" in file:
            g = "hazelcast client (frames, codec, deserialise, dispatch)"
        elif "obf_features_worker" in file:
            g = "ours (SnapshotBook.offer, parse_payload)"
        elif file == "~":
            g = "builtins/C (orjson, numpy, struct, socket, ...)"
        else:
            g = "stdlib/other"
        groups[g] = groups.get(g, 0.0) + v[2]
    total = sum(groups.values())
    offer = next(((v[1], v[3]) for (f, _l, name), v in stats.stats.items() if name == "offer" and "ingest" in f),
                 (0, 0.0))
    ev, ours_cum = max(1, offer[0]), offer[1]
    out = io.StringIO()
    out.write(f"listener profile: {n} assets x {rate:g} Hz, {ev} events profiled in {seconds:g} s "
              f"(reactor thread busy {total / seconds:.0%}, idle in select {idle / seconds:.0%}; "
              "cProfile slows it ~2x)\n")
    out.write(f"  per event (profiled): {total / ev * 1e6:.1f} us of work, of which SnapshotBook.offer (cumulative) "
              f"{ours_cum / ev * 1e6:.1f} us = {ours_cum / total:.0%}\n")
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        out.write(f"  own time {g:58s} {t / total:6.1%}\n")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
    out.write("  top functions by own time:\n")
    for line in s.getvalue().splitlines():
        if line.strip() and (line.lstrip()[0].isdigit()):
            out.write("    " + line.strip()[:150] + "\n")
    return out.getvalue()


def offer_cost_us(n_payloads: int = 200, rounds: int = 20) -> float:
    """Unprofiled cost of ``SnapshotBook.offer`` per event (us) on the publisher's payloads."""
    from publisher import book_fragments

    from obf_contract.timestamps import format_timestamp
    from obf_features_worker.engine.ingest import SnapshotBook

    iso = format_timestamp(time.time())
    frags = book_fragments(n_payloads, 10)
    book = SnapshotBook()
    best = float("inf")
    for r in range(rounds):
        events = [(f"asset_P{i:05d}USDT_ob",
                   f'{{"timestamp":"{iso}",{fr[r % len(fr)]},"_pushed_at":"{iso}","_push_seq":{r + 1}}}')
                  for i, fr in enumerate(frags)]
        t = time.perf_counter()
        for key, value in events:
            book.offer(key, value)
        best = min(best, (time.perf_counter() - t) / len(events))
    assert book.stats()["accepted"] == n_payloads * rounds, book.stats()
    return best * 1e6


def measure_tree(cluster: str, members: list[str], member_pid: int | None, plan: dict[str, list[float]],
                 warm_s: float, window_s: float, profile_s: float, experiment: dict[str, Any]) -> dict[str, Any]:
    """In a tree's process: every level of ``plan`` (assets -> rates), the offer cost and, with
    ``profile_s`` > 0, the listener profile."""
    cl = H.Cluster(cluster, members, member_pid)
    client = cl.client()
    out: dict[str, Any] = {"levels": [], "profile": "", "offer_us": float("nan")}
    try:
        with H.scratch_dir("obf-bench-ingest-") as log_dir:
            for n_text, rates in plan.items():
                n = int(n_text)
                suffix = H.map_suffix()
                with H.worker_process(cl, suffix, log_dir, experiment=H.Experiment(**experiment),
                                      bar_seconds=BAR_SECONDS) as worker:
                    H.wait_for_worker(client, suffix, worker, log_dir)
                    for rate in rates:
                        out["levels"].append(asdict(run_level(cl, client, suffix, worker.pid, n, rate, warm_s,
                                                              window_s, log_dir)))
                        print(f"  ingest {n} assets x {rate:g} Hz measured", file=sys.stderr, flush=True)
                H.destroy_maps(client, suffix)
            if profile_s > 0:
                try:
                    out["profile"] = profile_listener(cl, 2000, 10.0, profile_s, log_dir)
                except Exception as exc:  # the tree's listener internals differ from what the harness knows
                    out["profile"] = f"listener profile not measured: {exc!r}"
    finally:
        client.shutdown()
    try:
        out["offer_us"] = offer_cost_us()
    except Exception as exc:  # the tree's SnapshotBook differs
        print(f"  offer cost not measured on this tree: {exc!r}", file=sys.stderr)
    return out


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def configure(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--no-profile", action="store_true", help="skip profiling the listener path")
    ap.add_argument("--plan", default=None,
                    help="levels as N:rate,rate;N:rate (rate per asset in Hz, 0 = max), e.g. '400:10,0;2000:10,15,0'")


def run(args: argparse.Namespace) -> list[T.Row]:
    if args.plan:
        plan = {a: [float(r) for r in rs.split(",")] for a, rs in (p.split(":") for p in args.plan.split(";"))}
    elif args.quick:
        plan = {"400": [10.0], "2000": [10.0, 0.0]}
    else:
        plan = {"400": [10.0, 25.0, 50.0, 0.0], "2000": [5.0, 10.0, 12.5, 15.0, 0.0]}
    warm_s, window_s = (2.0, 6.0) if args.quick else (3.0, 12.0)
    experiment = H.experiment_from_args(args) if hasattr(args, "no_lease") else H.Experiment()
    res: dict[str, Any] = {}
    with H.cluster_from_args(args) as cl:
        for subj in P.subjects(args):
            profile_s = 0.0 if args.no_profile or subj.name != "current" else (4.0 if args.quick else 8.0)
            r = P.run_in(subj, "bench_ingest", "measure_tree", cluster=cl.name, members=cl.members,
                         member_pid=cl.member_pid, plan=plan, warm_s=warm_s, window_s=window_s, profile_s=profile_s,
                         experiment=asdict(experiment))
            names = {f.name for f in fields(Level)}
            res[subj.name] = (subj, [Level(**{k: v for k, v in x.items() if k in names}) for x in r["levels"]], r)

    rows = []
    for n_text in plan:
        for subj, levels, _ in res.values():
            for lv in (x for x in levels if x.n == int(n_text)):
                offered = "max" if lv.rate == 0 else f"{lv.rate:g} Hz = {fmt_rate(lv.rate * lv.n)}/s"
                rows.append([lv.n, subj.label, offered, fmt_rate(lv.pub), fmt_rate(lv.recv),
                             f"{lv.recv / max(1e-9, lv.pub):.3f}", f"{lv.lag_growth_s:+.2f}",
                             f"{lv.drain_s:.1f}" if lv.drain_s < DRAIN_LIMIT_S else f">{DRAIN_LIMIT_S:g}",
                             f"{lv.gap_s:.1f}" + ("!" if lv.gap_s > 2 * BAR_SECONDS else ""),
                             f"{lv.worker_cpu:.2f}", "-" if lv.member_cpu is None else f"{lv.member_cpu:.2f}",
                             f"{lv.publisher_cpu:.2f}", f"{lv.coalesced:.1%}", "yes" if lv.sustained else "NO"])
    best: dict[str, float] = {}
    lines = []
    for name, (subj, levels, r) in res.items():
        sus = [lv.recv for lv in levels if lv.sustained]
        best[name] = max(sus) if sus else float("nan")
        per_event = [lv.worker_cpu / lv.recv * 1e6 for lv in levels if lv.sustained and lv.recv > 0]
        lines.append(f"{subj.label}: highest sustained {fmt_rate(best[name]) if sus else 'none'} events/s"
                     + (f"; worker CPU per event {min(per_event):.0f}..{max(per_event):.0f} us" if per_event else "")
                     + f"; SnapshotBook.offer {r['offer_us']:.1f} us (in-process, unprofiled)")
    exp = experiment.label()
    H.print_table(f"ingest throughput, one worker, {BAR_SECONDS:g} s bars{', ' + exp if exp else ''} "
                  f"({H.machine_line()})",
                  ["assets", "tree", "offered", "pub/s", "recv/s", "recv/pub", "lag+ s", "drain s", "gap s",
                   "worker cpu", "member cpu", "pub cpu", "coalesced", "sustained"], rows, "\n".join(lines))
    for _, _, r in res.values():
        if r["profile"]:
            print(r["profile"])

    def at_2000(name: str) -> float | None:
        if name not in res:
            return None
        lv = next((x for x in res[name][1] if x.n == 2000 and x.rate == 10.0), None)
        return None if lv is None else (lv.recv if lv.sustained else 0.0)

    return [T.Row("ingest", "2,000 assets x 10 Hz sustained by one worker (recv/s; 0 = not sustained)", ">=",
                  19_400.0, "events/s", at_2000("current"), at_2000("previous"),
                  "sustained = recv >= 97 % of published, no growing backlog; highest sustained: "
                  + ", ".join(f"{k} {fmt_rate(v)}/s" for k, v in best.items()))]


def main(argv: list[str] | None = None) -> int:
    return P.bench_main(argv, __doc__, configure, run, worker=True,
                        quick_help="shorter windows, fewer levels (~1 min per tree)")


if __name__ == "__main__":
    raise SystemExit(main())
