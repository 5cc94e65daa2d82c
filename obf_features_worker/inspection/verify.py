"""``obf-features verify``: the trader's go-live checklist as one command with an exit code.

Checks, in order, each printed as one ✓/✗ line with its reason:

  worker      a healthy worker (health map: running leader, fresh health, recent bar); with
              ``--supervisor PROGRAM`` also ``supervisorctl status PROGRAM`` says RUNNING
  input       every ``--assets`` entry of the input map is under ``--max-input-age-s`` (10) s old
  record      the features map holds a record of the newest closed bar *as the trader numbers
              it* (``--bar-seconds``: interval numbering; ``--scan-field``: the current scan's
              field; ``--bar-idx``: given), waiting up to ``--wait-s`` for it
  adapter     an adapter inside the command (the trader's ``HazelcastOBEngine``) resolves the
              last ``--bars`` (5) bars exact
  fill        every listed asset is present in the newest bar, its ``fill_probability``
              finite in [0, 1) (0.5 is a real value: an asset's first bar, an empty book)
  macro       every market/macro field is present in the newest bar's record

Exit codes: 0 every check holds, 1 some check failed, 2 bad arguments, 3 the cluster is
unreachable.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from engine_adapter.adapter import AdapterConfig, HazelcastOBEngine
from obf_contract.keys import asset_key
from obf_contract.record import SCHEMA_VERSION, MacroRecord, MarketRecord, check_columns
from obf_features_worker.engine.snapshot import SnapshotRejected, parse_timestamp
from obf_features_worker.inspection import cluster_args
from obf_features_worker.inspection.status import worker_status
from obf_features_worker.service import grid
from obf_features_worker.service.bars import ScanRejected, floor_index, scan_bar_idx
from obf_features_worker.service.config import WorkerConfig, comma_list

log = logging.getLogger(__name__)

OK_MARK = "✓"
FAIL_MARK = "✗"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
MARKET_FIELDS = tuple(MarketRecord.__annotations__)
MACRO_FIELDS = tuple(MacroRecord.__annotations__)
_DEFAULTS = {f.name: f.default for f in fields(WorkerConfig)}


@dataclass(frozen=True, slots=True)
class Check:
    """One checklist line: ``name``, whether it holds, and why (or why not)."""

    name: str
    ok: bool
    reason: str

    def line(self) -> str:
        return f"{OK_MARK if self.ok else FAIL_MARK} {self.name}: {self.reason}"


# -- pure checks (testable without a grid) ---------------------------------------------------------


def check_worker(health_docs: Sequence[Mapping[str, Any]], now: float) -> Check:
    """A healthy leader among the health documents at ``now`` (unix s)."""
    workers = [worker_status(d, now) for d in health_docs]
    healthy = [w for w in workers if w.healthy]
    if healthy:
        w = healthy[0]
        return Check("worker", True, f"{w.worker_id} running, last bar {w.last_bar_idx} "
                                     f"{w.lag_s:.1f}s ago" if w.lag_s is not None else f"{w.worker_id} running")
    if not workers:
        return Check("worker", False, "no live worker (no health document)")
    return Check("worker", False, "; ".join(f"{w.worker_id}: {', '.join(w.problems)}" for w in workers))


def check_supervisor(program: str, run: Callable[[list[str]], tuple[int, str]]) -> Check:
    """``supervisorctl status PROGRAM`` reports RUNNING (``run(argv) -> (rc, output)``)."""
    try:
        rc, out = run(["supervisorctl", "status", program])
    except OSError as exc:
        return Check("supervisor", False, f"supervisorctl failed: {exc}")
    text = out.strip()
    if "RUNNING" in text.split():
        return Check("supervisor", True, text[:160])
    return Check("supervisor", False, f"{program} not RUNNING (rc={rc}): {text[:160] or 'no output'}")


def check_input(assets: Sequence[str], values: Mapping[str, Any], now: float, max_age_s: float) -> Check:
    """Every asset's input entry exists and its ``timestamp`` is at most ``max_age_s`` old."""
    problems = []
    ages = []
    for sym in assets:
        raw = values.get(asset_key(sym))
        if raw is None:
            problems.append(f"{sym} has no input entry")
            continue
        doc = grid.decode_value(raw)
        try:
            ts = parse_timestamp(doc.get("timestamp") if doc is not None else None)
        except SnapshotRejected:
            problems.append(f"{sym} entry has no readable timestamp")
            continue
        age = now - ts
        ages.append(age)
        if age > max_age_s:
            problems.append(f"{sym} entry {age:.1f}s old (limit {max_age_s:g}s)")
    if problems:
        return Check("input", False, "; ".join(problems))
    return Check("input", True, f"{len(assets)} asset(s), oldest entry {max(ages):.1f}s old")


def check_record(expected: int | None, record: Mapping[str, Any] | None, newest_in_map: int | None,
                 numbering: str) -> Check:
    """The record of the newest closed bar ``expected`` (by the trader's ``numbering``) exists."""
    if expected is None:
        return Check("record", False, f"cannot tell the newest closed bar ({numbering})")
    if record is None:
        hint = "the features map is empty" if newest_in_map is None else \
            f"newest in the map is {newest_in_map}: the worker numbers bars differently" \
            if abs(newest_in_map - expected) > 2 else f"newest in the map is {newest_in_map}: the worker lags"
        return Check("record", False, f"no record of bar {expected} ({numbering}); {hint}")
    if record.get("schema") != SCHEMA_VERSION:
        return Check("record", False, f"bar {expected} has schema {record.get('schema')!r}, expected {SCHEMA_VERSION}")
    try:
        check_columns(record)
    except ValueError as exc:
        return Check("record", False, f"bar {expected} is malformed: {exc}")
    return Check("record", True, f"bar {expected} ({numbering}) written by "
                                 f"{(record.get('producer') or {}).get('worker_id', '?')}")


def check_macro(record: Mapping[str, Any] | None) -> Check:
    """Every market and macro field is present (non-null) in the record."""
    if record is None:
        return Check("macro", False, "no record to check")
    market = record.get("market")
    macro = record.get("macro")
    if not isinstance(market, Mapping) or not isinstance(macro, Mapping):
        return Check("macro", False, f"bar {record.get('bar_idx')} has no market/macro (no asset present)")
    missing = [f"market.{n}" for n in MARKET_FIELDS if market.get(n) is None]
    missing += [f"macro.{n}" for n in MACRO_FIELDS if macro.get(n) is None]
    if missing:
        return Check("macro", False, f"bar {record.get('bar_idx')} lacks {', '.join(missing)}")
    return Check("macro", True, f"{len(MARKET_FIELDS) + len(MACRO_FIELDS)} fields, regime {macro['cascade_regime']}")


def check_adapter(engine: Any, expected: int | None, n_bars: int) -> Check:
    """The adapter resolves the last ``n_bars`` bars up to ``expected`` exact."""
    if expected is None:
        return Check("adapter", False, "no current bar to resolve")
    bars = list(range(max(0, expected - n_bars + 1), expected + 1))
    kinds = {b: engine.resolve(b).kind for b in bars}
    bad = [f"{b}={k}" for b, k in kinds.items() if k != "exact"]
    if bad:
        return Check("adapter", False, f"not exact: {', '.join(bad)}")
    return Check("adapter", True, f"bars {bars[0]}..{bars[-1]} resolve exact")


def check_fill(engine: Any, assets: Sequence[str], expected: int | None) -> Check:
    """Every asset is present in bar ``expected`` with a finite ``fill_probability`` in [0, 1).

    Presence is the test, not the value: a real fill_probability is exactly the neutral 0.5 on an
    asset's first bar and on an empty book."""
    if expected is None:
        return Check("fill", False, "no current bar")
    bar = engine.get_bar(expected)
    if bar is None:
        return Check("fill", False, f"no bar {expected} in the adapter")
    absent = [s for s in assets if s not in bar.assets]
    if absent:
        return Check("fill", False, f"absent from bar {expected}: {', '.join(absent)}")
    bad = []
    for s in assets:
        value = bar.assets[s].placement.fill_probability
        if not (math.isfinite(value) and 0.0 <= value < 1.0):
            bad.append(f"{s}={value!r}")
    if bad:
        return Check("fill", False, f"fill_probability not finite in [0, 1) in bar {expected}: {', '.join(bad)}")
    return Check("fill", True, f"{len(assets)} asset(s) present with a fill_probability in [0, 1)")


# -- the trader's numbering ------------------------------------------------------------------------


def expected_bar(args: argparse.Namespace, reader: grid.InspectionReader, now: float) -> tuple[int | None, str]:
    """The newest closed bar as the trader numbers it, and a short description of the rule."""
    if args.bar_idx is not None:
        return args.bar_idx, "given"
    if args.bar_seconds is not None:
        return floor_index(now, args.bar_seconds), f"interval {args.bar_seconds:g}s"
    scan_map = args.scan_map + (args.map_suffix or "")
    value = reader.get_values(scan_map, [args.scan_key]).get(args.scan_key)
    if value is None:
        return None, f"no scan {args.scan_key!r} in {scan_map}"
    try:
        return scan_bar_idx(value, args.scan_field), f"scan field {args.scan_field}"
    except ScanRejected as exc:
        return None, f"scan {args.scan_key!r}: {exc}"


# -- CLI ---------------------------------------------------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    """The `obf-features verify` options on the parser the CLI made for it."""
    p.description = __doc__.split("\n\n")[0]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "\n\n".join(__doc__.split("\n\n")[1:])
    p.add_argument("--assets", required=True, metavar="SYM,SYM", help="the trader's asset list")
    numbering = p.add_mutually_exclusive_group(required=True)
    numbering.add_argument("--bar-seconds", type=float, help="interval numbering: bar k closes at k * S unix s")
    numbering.add_argument("--scan-field", help="scan numbering: the integer field of the current scan value")
    numbering.add_argument("--bar-idx", type=int, help="the trader's current bar, given")
    p.add_argument("--scan-map", default=_DEFAULTS["scan_map"], help="map of the scan key (default %(default)s)")
    p.add_argument("--scan-key", default=_DEFAULTS["scan_key"], help="the scan key (default %(default)s)")
    p.add_argument("--bars", type=int, default=5, help="bars the adapter must resolve exact (default 5)")
    p.add_argument("--max-input-age-s", type=float, default=10.0, help="input entry age limit (default 10)")
    p.add_argument("--wait-s", type=float, default=5.0,
                   help="how long to wait for the newest closed bar's record (default 5)")
    p.add_argument("--supervisor", metavar="PROGRAM", help="also require `supervisorctl status PROGRAM` RUNNING")
    cluster_args.add_cluster_options(p, maps=("features", "health", "input"))
    p.set_defaults(func=run)


def _supervisorctl(argv: list[str]) -> tuple[int, str]:
    exe = shutil.which(argv[0])
    if exe is None:
        raise OSError(f"{argv[0]} not found on PATH")
    done = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    return done.returncode, done.stdout + done.stderr


def collect(args: argparse.Namespace, client: Any, now: Callable[[], float] = time.time) -> list[Check]:
    """Run every check against a connected client; never raises on a bad grid state."""
    assets = list(dict.fromkeys(comma_list(args.assets)))
    reader = grid.InspectionReader(client)
    checks = [check_worker(reader.health_docs(cluster_args.map_name(args, "health")), now())]
    if args.supervisor:
        checks.append(check_supervisor(args.supervisor, _supervisorctl))
    inputs = reader.get_values(cluster_args.map_name(args, "input"), [asset_key(s) for s in assets])
    checks.append(check_input(assets, inputs, now(), args.max_input_age_s))

    features_map = cluster_args.map_name(args, "features")
    engine = HazelcastOBEngine(AdapterConfig(map_name=features_map, max_wait_ms=0), client=client)
    try:
        # The newest closed bar's record may still be in flight: wait for it (woken by its
        # arrival in the adapter's cache), re-reading the trader's bar in case it moves on.
        deadline = time.monotonic() + max(0.0, args.wait_s)
        while True:
            expected, numbering = expected_bar(args, reader, now())
            left = deadline - time.monotonic()
            if expected is None or engine.wait_for_bar(expected, max(0.0, min(left, 0.5))) or left <= 0:
                break
        record = reader.bar(features_map, expected) if expected is not None else None
        checks.append(check_record(expected, record, reader.newest_bar_idx(features_map), numbering))
        current = expected if record is not None else None
        checks.append(check_adapter(engine, current, args.bars))
        checks.append(check_fill(engine, assets, current))
    finally:
        engine.close()
    checks.append(check_macro(record))
    return checks


def run(args: argparse.Namespace) -> int:
    """Print one ✓/✗ line per check; exit 0 only when every check holds."""
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        assets = comma_list(args.assets)
        for sym in assets:
            asset_key(sym)
        if not assets or args.bars < 1 or not math.isfinite(args.max_input_age_s) or args.max_input_age_s < 0 \
                or (args.bar_seconds is not None and not (math.isfinite(args.bar_seconds) and args.bar_seconds > 0)):
            raise ValueError("--assets must name symbols, --bars >= 1, --max-input-age-s >= 0, --bar-seconds > 0")
        client = cluster_args.connect_from_args(args)
    except ValueError as exc:
        print(f"verify: bad arguments: {exc}")
        return EXIT_USAGE
    except cluster_args.ConnectFailed as exc:
        print(f"{FAIL_MARK} cluster: {exc}")
        return exc.exit_code
    try:
        checks = collect(args, client)
    except grid.GRID_ERRORS as exc:
        print(f"{FAIL_MARK} cluster: grid read failed: {exc}")
        return EXIT_UNREACHABLE
    finally:
        client.shutdown()
    for c in checks:
        print(c.line())
    failed = [c.name for c in checks if not c.ok]
    print(f"verify: {'all checks hold' if not failed else 'FAILED: ' + ', '.join(failed)}")
    return EXIT_OK if not failed else EXIT_FAILED
