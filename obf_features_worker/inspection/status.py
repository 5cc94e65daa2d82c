"""``obf-features status``: one screen on the pipeline's health, with a monitoring exit code.

Reads the workers' health documents (``DOLPHIN_OBF_HEALTH``), the newest bar record and the
per-asset latest docs, and judges them with ``evaluate`` (pure, testable without a grid).

Exit codes follow the Nagios/monitoring-plugin convention, so the command works as-is in
monitoring scripts and supervisord event listeners:
  0 OK        a healthy leader: state running, health fresh, last bar recent
  1 WARNING   workers alive but none healthy (degraded, starting, stopping, lagging, standby only)
  2 CRITICAL  no live worker (no health document)
  3 UNKNOWN   the cluster is unreachable
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from obf_contract.record import check_columns
from obf_features_worker.engine.producer_clock import describe_offset
from obf_features_worker.inspection import cluster_args
from obf_features_worker.logs import setup_logging
from obf_features_worker.service import grid
from obf_features_worker.service.health import stale_after_s

log = logging.getLogger(__name__)



class Verdict(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    state: str
    role: str
    host: str
    pid: int | None
    version: str
    last_bar_idx: int | None
    lag_s: float | None  # now - last_bar_ts (s)
    health_age_s: float | None  # now - updated_at (s)
    bars_written: int
    events_received: int
    events_accepted: int
    rejected: dict[str, int]
    write_failures: int
    event_to_write_p99_ms: float | None
    stale_assets: list[str]
    healthy: bool
    problems: list[str]
    # producer clocks (health ``producer_clock``): median offset (s) of the flagged assets, and
    # the assets whose every recent push was rejected, with the reason in words
    clock_flagged: dict[str, float] = field(default_factory=dict)
    all_rejected: dict[str, str] = field(default_factory=dict)
    # catch-ups from the leader's records that stopped, by reason (health ``changelog_stops``)
    changelog_stops: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AssetStatus:
    symbol: str
    bar_idx: int | None  # the asset's latest bar
    bar_age_s: float | None  # now - that bar's bar_ts
    snapshot_age_ms: float | None  # snapshot age at that bar
    in_newest_bar: bool
    stale: bool  # absent from the newest bar or named stale by a worker
    note: str = ""  # a worker's word on its producer: clock off, every push rejected


@dataclass(frozen=True)
class BarStatus:
    bar_idx: int
    bar_ts: float
    age_s: float
    n_present: int | None
    n_assets: int | None
    regime: str | None
    agreement_pct: float | None
    degraded: bool
    worker_id: str | None
    stale_assets: list[str]


@dataclass(frozen=True)
class StatusReport:
    cluster_name: str
    members: list[str]
    reachable: bool
    verdict: Verdict
    reasons: list[str]
    workers: list[WorkerStatus] = field(default_factory=list)
    newest_bar: BarStatus | None = None
    assets: list[AssetStatus] = field(default_factory=list)
    checked_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["verdict"] = self.verdict.name
        d["exit_code"] = int(self.verdict)
        return d


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(x: Any) -> int | None:
    return int(x) if isinstance(x, int) and not isinstance(x, bool) else None


def worker_status(doc: Mapping[str, Any], now: float) -> WorkerStatus:
    """Judge one health document at ``now`` (unix s)."""
    state = str(doc.get("state") or "unknown")
    role = str(doc.get("role") or "leader")  # workers without hot standby are leaders
    stale_after = stale_after_s(_num(doc.get("bar_seconds")))
    updated = _num(doc.get("updated_at"))
    last_ts = _num(doc.get("last_bar_ts"))
    # Hosts' clocks differ a little: a timestamp from the "future" counts as age 0.
    health_age = None if updated is None else max(0.0, now - updated)
    lag = None if last_ts is None else max(0.0, now - last_ts)
    problems = []
    if state != "running":
        problems.append(f"state {state}")
    if role == "standby":
        problems.append("standby (not writing bars)")
    if health_age is None or health_age > stale_after:
        problems.append("health not refreshed" if health_age is None else f"health {health_age:.0f}s old")
    if role != "standby":
        if lag is None:
            problems.append("no bar written yet")
        elif lag > stale_after:
            problems.append(f"last bar {lag:.0f}s ago")
    events = _mapping(doc.get("events"))
    rejected = _mapping(events.get("rejected"))
    e2w = _mapping(doc.get("event_to_write_ms"))
    stale_raw = doc.get("stale_assets")
    stale = stale_raw if isinstance(stale_raw, list) else []
    clock = _mapping(doc.get("producer_clock"))
    flagged = _mapping(clock.get("flagged"))
    rejected_assets = _mapping(clock.get("all_rejected"))
    stops = _mapping(doc.get("changelog_stops"))
    return WorkerStatus(
        worker_id=str(doc.get("worker_id", "?")), state=state, role=role, host=str(doc.get("host") or ""),
        pid=_int(doc.get("pid")), version=str(doc.get("version") or ""),
        last_bar_idx=_int(doc.get("last_bar_idx")), lag_s=lag, health_age_s=health_age,
        bars_written=_int(doc.get("bars_written")) or 0,
        events_received=_int(events.get("received")) or 0, events_accepted=_int(events.get("accepted")) or 0,
        rejected={str(k): int(v) for k, v in rejected.items() if _int(v) is not None},
        write_failures=_int(doc.get("write_failures")) or 0,
        event_to_write_p99_ms=_num(e2w.get("p99")), stale_assets=[str(s) for s in stale],
        healthy=not problems, problems=problems,
        clock_flagged={str(k): float(v) for k, v in flagged.items() if _num(v) is not None},
        all_rejected={str(k): str(v.get("note") or v.get("reason") or "all pushes rejected")
                      for k, v in rejected_assets.items() if isinstance(v, Mapping)},
        changelog_stops={str(k): int(v) for k, v in stops.items() if _int(v) is not None},
    )


def evaluate(health_docs: Sequence[Mapping[str, Any]], newest_bar: Mapping[str, Any] | None,
             latest_docs: Mapping[str, Mapping[str, Any]], now: float, *,
             cluster_name: str = "", members: Sequence[str] = ()) -> StatusReport:
    """The status verdict from what the grid holds at ``now`` (unix s); pure."""
    workers = [worker_status(d, now) for d in health_docs]
    bar = None
    if newest_bar is not None and _int(newest_bar.get("bar_idx")) is not None:
        macro = newest_bar.get("macro") or {}
        market = newest_bar.get("market") or {}
        producer = newest_bar.get("producer") or {}
        bar_ts = _num(newest_bar.get("bar_ts")) or 0.0
        bar = BarStatus(
            bar_idx=int(newest_bar["bar_idx"]), bar_ts=bar_ts, age_s=max(0.0, now - bar_ts),
            n_present=_int(newest_bar.get("n_present")), n_assets=_int(newest_bar.get("n_assets")),
            regime=macro.get("cascade_regime"), agreement_pct=_num(market.get("agreement_pct")),
            degraded=bool(newest_bar.get("degraded") or producer.get("degraded")),
            worker_id=producer.get("worker_id"),
            stale_assets=[str(s) for s in producer.get("stale_assets") or []],
        )
    assets = _asset_statuses(newest_bar, latest_docs, workers, bar, now)

    reasons = []
    healthy = [w for w in workers if w.healthy]
    if healthy:
        verdict = Verdict.OK
        reasons.append(f"{len(healthy)} healthy worker(s): {', '.join(w.worker_id for w in healthy)}")
    elif workers:
        verdict = Verdict.WARNING
        reasons.extend(f"worker {w.worker_id}: {'; '.join(w.problems)}" for w in workers)
    else:
        verdict = Verdict.CRITICAL
        reasons.append("no live worker (no health document)")
    if bar is not None and bar.degraded:
        reasons.append(f"newest bar {bar.bar_idx} is degraded")
    n_stale = sum(1 for a in assets if a.stale)
    if n_stale:
        reasons.append(f"{n_stale} stale asset(s)")
    rejecting = sorted({s for w in workers for s in w.all_rejected})
    if rejecting:
        reasons.append(f"{len(rejecting)} asset(s) with every push rejected: {', '.join(rejecting[:10])}")
    off = sorted({s for w in workers for s in w.clock_flagged} - set(rejecting))
    if off:
        reasons.append(f"{len(off)} producer clock(s) off: {', '.join(off[:10])}")
    return StatusReport(cluster_name, list(members), True, verdict, reasons, workers, bar, assets, now)


def _asset_statuses(newest_bar: Mapping[str, Any] | None, latest_docs: Mapping[str, Mapping[str, Any]],
                    workers: Sequence[WorkerStatus], bar: BarStatus | None, now: float) -> list[AssetStatus]:
    in_bar = _bar_ages(newest_bar)
    named_stale = set(bar.stale_assets if bar else [])
    for w in workers:
        named_stale.update(w.stale_assets)
    notes: dict[str, str] = {}
    for w in workers:
        for sym, offset in w.clock_flagged.items():
            notes.setdefault(sym, describe_offset(offset))
    for w in workers:  # the stronger word wins: no push of the asset is used at all
        notes.update(w.all_rejected)
    symbols = set(latest_docs) | set(in_bar) | named_stale | set(notes)
    out = []
    for sym in sorted(symbols):
        doc = latest_docs.get(sym)
        if doc is not None:
            idx, ts, age_ms = _int(doc.get("bar_idx")), _num(doc.get("bar_ts")), _num(doc.get("age_ms"))
        elif sym in in_bar and bar is not None:
            idx, ts, age_ms = bar.bar_idx, bar.bar_ts, _num(in_bar[sym])
        else:
            idx = ts = age_ms = None
        present = sym in in_bar
        out.append(AssetStatus(sym, idx, None if ts is None else max(0.0, now - ts), age_ms, present,
                               stale=(bar is not None and not present) or sym in named_stale or
                               sym in {s for w in workers for s in w.all_rejected},
                               note=notes.get(sym, "")))
    return out


def _bar_ages(rec: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{symbol: age_ms}`` of a columnar bar record's present assets; {} if it is malformed."""
    if rec is None:
        return {}
    try:
        check_columns(rec)
    except ValueError:
        return {}
    return dict(zip(rec["symbols"], rec["age_ms"]))


def unreachable_report(cluster_name: str, members: Sequence[str], error: str, now: float) -> StatusReport:
    return StatusReport(cluster_name, list(members), False, Verdict.UNKNOWN, [error], checked_at=now)


# --- rendering -----------------------------------------------------------------


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def render(report: StatusReport, max_assets: int = 40) -> Any:
    """The rich renderable for a report (one screen)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    style = {Verdict.OK: "bold green", Verdict.WARNING: "bold yellow",
             Verdict.CRITICAL: "bold red", Verdict.UNKNOWN: "bold red"}[report.verdict]
    parts: list[Any] = [
        Text.assemble((f"{report.verdict.name}", style),
                      f"  cluster {report.cluster_name!r} at {','.join(report.members)}: ",
                      "reachable" if report.reachable else ("UNREACHABLE", "bold red")),
    ]
    parts.extend(Text(f"  - {r}") for r in report.reasons)
    if not report.reachable:
        return Group(*parts)

    parts.append(Text("workers (DOLPHIN_OBF_HEALTH)", style="bold"))
    for w in report.workers:
        rej = ", ".join(f"{k}={v}" for k, v in sorted(w.rejected.items())) or "none"
        e2w = "-" if w.event_to_write_p99_ms is None else f"{w.event_to_write_p99_ms:.0f} ms"
        parts.append(Text.assemble(
            f"  {w.worker_id}  ", (w.state, "green" if w.state == "running" else "yellow"),
            f"  {w.role}  {w.host}:{w.pid}  v{w.version}  ",
            ("healthy" if w.healthy else "; ".join(w.problems), "green" if w.healthy else "yellow")))
        parts.append(Text(f"    last bar {w.last_bar_idx if w.last_bar_idx is not None else '-'} "
                          f"(lag {_age(w.lag_s)})  health {_age(w.health_age_s)} old  bars "
                          f"{w.bars_written}  write failures {w.write_failures}"))
        parts.append(Text(f"    events accepted {w.events_accepted}/{w.events_received}  rejected: {rej}  "
                          f"event-to-write p99 {e2w}"
                          + (f"  stale: {','.join(w.stale_assets)}" if w.stale_assets else "")))
        if w.changelog_stops:
            stops = ", ".join(f"{k}={v}" for k, v in sorted(w.changelog_stops.items()))
            parts.append(Text(f"    changelog catch-up stopped: {stops}", style="yellow"))
        for sym, note in sorted(w.all_rejected.items()):
            parts.append(Text(f"    {sym}: {note}", style="yellow"))
        for sym, offset in sorted(w.clock_flagged.items()):
            if sym not in w.all_rejected:
                parts.append(Text(f"    {sym}: producer {describe_offset(offset)}", style="yellow"))
    if not report.workers:
        parts.append(Text("  (none)", style="red"))

    b = report.newest_bar
    if b is None:
        parts.append(Text("newest bar: none in the features map"))
    else:
        flags = " DEGRADED" if b.degraded else ""
        parts.append(Text(f"newest bar: {b.bar_idx}  age {_age(b.age_s)}  regime {b.regime or '-'}  agreement "
                          f"{'-' if b.agreement_pct is None else f'{b.agreement_pct:.1f}%'}  present "
                          f"{b.n_present}/{b.n_assets}  by {b.worker_id or '-'}{flags}"))

    at = Table(title="assets (latest bar per asset)", title_justify="left", box=None, header_style="bold")
    for col in ("symbol", "bar", "bar age", "snapshot age ms", "in newest bar", "flag", "note"):
        at.add_column(col, no_wrap=True)
    ordered = sorted(report.assets, key=lambda a: (not a.stale, a.symbol))  # stale first: that is what matters
    for a in ordered[:max_assets]:
        at.add_row(a.symbol, "-" if a.bar_idx is None else str(a.bar_idx), _age(a.bar_age_s),
                   "-" if a.snapshot_age_ms is None else f"{a.snapshot_age_ms:.0f}",
                   "yes" if a.in_newest_bar else "no", Text("STALE", style="yellow") if a.stale else "", a.note)
    parts.append(at)
    if len(ordered) > max_assets:
        parts.append(Text(f"... {len(ordered) - max_assets} more assets (--max-assets)"))
    return Group(*parts)


# --- `obf-features status` ------------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    """The `obf-features status` options on the parser the CLI made for it."""
    p.description = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[2]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--json", action="store_true", help="print the report as one JSON object (for scripts)")
    p.add_argument("--max-assets", type=int, default=40, help="asset rows shown (default 40; stale ones first)")
    cluster_args.add_cluster_options(p, maps=("features", "health", "latest"))
    p.set_defaults(func=run)


def collect(args: argparse.Namespace, now: float | None = None) -> StatusReport:
    """Read the grid and evaluate; an unreachable cluster or failed read gives an UNKNOWN report."""
    target = cluster_args.target_from_args(args)
    try:
        client = grid.connect(target)
    except grid.ClusterUnreachable as exc:
        return unreachable_report(target.cluster_name, list(target.members), str(exc), now or time.time())
    try:
        reader = grid.InspectionReader(client)
        health = reader.health_docs(cluster_args.map_name(args, "health"))
        newest = reader.newest_bar(cluster_args.map_name(args, "features"))
        latest = reader.latest_docs(cluster_args.map_name(args, "latest"))
    except grid.GRID_ERRORS as exc:
        return unreachable_report(target.cluster_name, list(target.members), f"grid read failed: {exc}",
                                  now or time.time())
    finally:
        client.shutdown()
    return evaluate(health, newest, latest, now or time.time(),
                    cluster_name=target.cluster_name, members=list(target.members))


def run(args: argparse.Namespace) -> int:
    setup_logging("ERROR")
    try:
        report = collect(args)
    except ValueError as exc:
        print(f"bad settings: {exc}")
        return int(Verdict.UNKNOWN)
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    else:
        from rich.console import Console

        Console().print(render(report, max_assets=args.max_assets))
    return int(report.verdict)
