"""``obf-features watch``: a live terminal table of the features, refreshed on every bar.

Driven by an entry listener on the features map (no polling): the listener callback only
puts the bar's JSON text on a queue; this module's render loop decodes and draws. Assets
are rows, key features columns; regime, agreement and the bar's provenance are the header
line. On a terminal it uses ``rich`` Live (plain text rendering, fine over SSH); when stdout
is not a TTY it prints plain lines per bar. ``--once`` prints one frame and exits. Ctrl-C, SIGTERM,
SIGHUP and a closed stdout stop it cleanly (``lifecycle``).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import queue
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from obf_contract.record import loads_record
from obf_features_worker import lifecycle
from obf_features_worker.inspection import cluster_args
from obf_features_worker.logs import setup_logging
from obf_features_worker.service import grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    header: str
    path: tuple[str, ...]  # of the column inside the (columnar) bar record
    fmt: Callable[[float], str]
    signed: bool = False  # colour by sign


def _usd(v: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}"


COLUMNS: tuple[Column, ...] = (
    Column("imb", ("signal", "imbalance"), lambda v: f"{v:+.3f}", True),
    Column("imb_ma5", ("signal", "imbalance_ma5"), lambda v: f"{v:+.3f}", True),
    Column("persist", ("signal", "imbalance_persistence"), lambda v: f"{v:+.2f}", True),
    Column("d_asym", ("signal", "depth_asymmetry"), lambda v: f"{v:+.3f}", True),
    Column("withdr", ("signal", "withdrawal_velocity"), lambda v: f"{v:+.3f}", True),
    Column("depth_usd", ("placement", "depth_1pct_usd"), _usd),
    Column("d_qual", ("placement", "depth_quality"), lambda v: f"{v:.2f}"),
    Column("fill_p", ("placement", "fill_probability"), lambda v: f"{v:.2f}"),
    Column("spr_bps", ("placement", "spread_proxy_bps"), lambda v: f"{v:.2f}"),
    Column("age_ms", ("age_ms",), lambda v: f"{v:.0f}"),
)
SORT_KEYS = ("symbol",) + tuple(c.header for c in COLUMNS)
REGIME_STYLE = {"CALM": "green", "STRESS": "bold yellow", "CASCADE": "bold red"}


def _column(record: Mapping[str, Any], path: Sequence[str], n: int) -> list[Any] | None:
    """The column at ``path`` of a columnar record, or None if absent or not ``n`` values long."""
    node: Any = record
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node if isinstance(node, list) and len(node) == n else None


def _number(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _fmt_num(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def header_lines(record: Mapping[str, Any], now: float | None = None) -> list[str]:
    """Two lines: (1) bar, UTC time, regime, agreement, cascades, presence;
    (2) the other market/macro numbers, producer, bar age at ``now`` (unix s), degraded/stale flags."""
    market = record.get("market") or {}
    macro = record.get("macro") or {}
    producer = record.get("producer") or {}
    raw_ts = record.get("bar_ts")
    has_ts = isinstance(raw_ts, (int, float)) and not isinstance(raw_ts, bool)
    bar_ts = float(raw_ts) if isinstance(raw_ts, (int, float)) else 0.0
    when = datetime.fromtimestamp(bar_ts, UTC).strftime("%H:%M:%SZ") if has_ts else "?"
    first = [
        f"bar {record.get('bar_idx', '?')}",
        when,
        f"regime {macro.get('cascade_regime') or '-'}",
        f"agreement {_fmt_num(market.get('agreement_pct'), '.1f')}%",
        f"cascades {macro.get('cascade_count', '-')}",
        f"present {record.get('n_present', '?')}/{record.get('n_assets', '?')}",
    ]
    second = [
        f"median_imb {_fmt_num(market.get('median_imbalance'), '+.3f')}",
        f"pressure {_fmt_num(market.get('depth_pressure'), '+.3f')}",
        f"depth_vel {_fmt_num(macro.get('depth_velocity'), '+.4f')}",
    ]
    if producer.get("worker_id"):
        second.append(f"worker {producer['worker_id']}")
    if now is not None and has_ts:
        second.append(f"bar age {max(0.0, now - bar_ts):.1f}s")
    if record.get("degraded") or producer.get("degraded"):
        second.append("DEGRADED")
    stale = producer.get("stale_assets") or []
    if stale:
        second.append(f"stale {len(stale)}: {','.join(map(str, stale[:8]))}{',...' if len(stale) > 8 else ''}")
    return ["  ".join(first), "  ".join(second)]


def asset_rows(record: Mapping[str, Any], sort: str = "symbol") -> list[tuple[str, list[float | None]]]:
    """(symbol, column values) for every present asset, sorted by ``sort`` (a SORT_KEYS entry).

    Numeric sorts put the largest first and missing values last.
    """
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    symbols = record.get("symbols")
    symbols = symbols if isinstance(symbols, list) else []
    cols = [_column(record, c.path, len(symbols)) for c in COLUMNS]
    rows = [(str(sym), [None if col is None else _number(col[i]) for col in cols])
            for i, sym in enumerate(symbols)]
    if sort == "symbol":
        rows.sort(key=lambda r: r[0])
    else:
        i = SORT_KEYS.index(sort) - 1
        rows.sort(key=lambda r: (r[1][i] is None, -(r[1][i] or 0.0), r[0]))
    return rows


def frame(record: Mapping[str, Any], *, now: float | None = None, sort: str = "symbol",
          max_rows: int | None = None) -> Group:
    """The rich renderable for one bar: header line + asset table (stale assets dimmed at the end)."""
    macro = record.get("macro") or {}
    regime = macro.get("cascade_regime")
    head = Text("\n".join(header_lines(record, now)))
    if regime in REGIME_STYLE:
        head.highlight_words([f"regime {regime}"], REGIME_STYLE[regime])
    head.highlight_words(["DEGRADED"], "bold red")
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("symbol", no_wrap=True)
    for c in COLUMNS:
        table.add_column(c.header, justify="right", no_wrap=True)
    rows = asset_rows(record, sort)
    stale = [str(s) for s in ((record.get("producer") or {}).get("stale_assets") or [])]
    limit = len(rows) + len(stale) if max_rows is None else max(1, max_rows)
    shown = 0
    for sym, values in rows[:limit]:
        cells = []
        for c, v in zip(COLUMNS, values, strict=True):
            if v is None:
                cells.append(Text("-", style="dim"))
            elif c.signed and v != 0:
                cells.append(Text(c.fmt(v), style="green" if v > 0 else "red"))
            elif c.header == "d_qual" and v < 0.5:
                cells.append(Text(c.fmt(v), style="bold red"))
            else:
                cells.append(Text(c.fmt(v)))
        table.add_row(sym, *cells)
        shown += 1
    for sym in stale[: max(0, limit - shown)]:
        table.add_row(Text(sym, style="dim"), Text("stale", style="dim yellow"), *([""] * (len(COLUMNS) - 1)))
        shown += 1
    parts: list[Any] = [head, table]
    hidden = len(rows) + len(stale) - shown
    if hidden > 0:
        parts.append(Text(f"... {hidden} more assets (--max-rows, --sort)", style="dim"))
    return Group(*parts)


def plain_lines(record: Mapping[str, Any], *, now: float | None = None, sort: str = "symbol",
                max_rows: int | None = None) -> list[str]:
    """The frame as plain text lines (for pipes, logs and non-TTY terminals)."""
    lines = header_lines(record, now)
    rows = asset_rows(record, sort)
    for sym, values in rows[: len(rows) if max_rows is None else max(1, max_rows)]:
        cells = " ".join(f"{c.header}={'-' if v is None else c.fmt(v)}" for c, v in zip(COLUMNS, values, strict=True))
        lines.append(f"  {sym} {cells}")
    return lines


def render_text(record: Mapping[str, Any], *, width: int = 160, now: float | None = None, sort: str = "symbol",
                max_rows: int | None = None) -> str:
    """The rich frame rendered to plain text at ``width`` columns (no colour codes)."""
    console = Console(width=width, file=io.StringIO(), color_system=None, force_terminal=False, record=True)
    console.print(frame(record, now=now, sort=sort, max_rows=max_rows))
    return console.export_text()


class BarInbox:
    """What the listener hands over: a bounded queue of (bar_idx, JSON text); newest bar wins.

    ``offer`` is called on the client's reactor thread: it never blocks (a full queue drops
    the oldest entry, counted) and never raises.
    """

    def __init__(self, maxsize: int = 64) -> None:
        self._q: queue.Queue[tuple[int, str]] = queue.Queue(maxsize=maxsize)
        self.dropped = 0

    def offer(self, bar_idx: int, text: str) -> None:
        while True:
            try:
                self._q.put_nowait((bar_idx, text))
                return
            except queue.Full:
                try:
                    self._q.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def newest(self, timeout: float) -> tuple[int, dict[str, Any]] | None:
        """Wait up to ``timeout`` s for bars; return the newest decodable one (older ones are skipped)."""
        try:
            items = [self._q.get(timeout=timeout)]
        except queue.Empty:
            return None
        while True:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        for bar_idx, text in sorted(items, key=lambda it: it[0], reverse=True):
            try:
                return bar_idx, loads_record(text)
            except ValueError as exc:
                log.warning("undecodable bar skipped bar_idx=%s error=%s", bar_idx, exc)
        return None


# --- `obf-features watch` -----------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    """The `obf-features watch` options on the parser the CLI made for it."""
    p.description = __doc__.split("\n\n")[1]
    p.add_argument("--once", action="store_true",
                   help="print one frame (the newest bar, or the next one if the map is empty) and exit")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="with --once: how long to wait for a first bar (default 30)")
    p.add_argument("--sort", choices=SORT_KEYS, default="symbol", help="row order (numeric: largest first)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="asset rows shown (default: what fits the terminal; all when not a TTY)")
    p.add_argument("--plain", action="store_true", help="plain lines per bar even on a terminal")
    cluster_args.add_cluster_options(p, maps=("features",), connect_timeout=30.0)
    p.epilog = ("Exit codes: 0 stopped by Ctrl-C, SIGTERM or SIGHUP (or --once printed a bar), 1 --once saw no bar "
                "or a second signal forced the exit, 2 bad settings, 3 cluster unreachable, 141 stdout closed.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 on Ctrl-C/SIGTERM/SIGHUP or after --once, 1 if --once saw no bar (or a second signal
    forced the exit), 2 on bad settings, 3 if unreachable, 141 if stdout closed (``| head``)."""
    setup_logging("WARNING")
    try:
        client = cluster_args.connect_from_args(args)
    except cluster_args.ConnectFailed as exc:
        print(str(exc))
        return exc.exit_code
    features_map = cluster_args.map_name(args, "features")
    inbox = BarInbox()
    listener = grid.BarListener(client, features_map, inbox.offer)
    stop = lifecycle.StopRequest()
    # Ctrl-C, a supervisor's or the demo's SIGTERM, a closed terminal: leave cleanly.
    with lifecycle.capture_signals(stop):
        try:
            listener.start()  # before the seed read, so no bar falls between the two
            reader = grid.InspectionReader(client)
            seed = reader.newest_bar(features_map)
            if args.once:
                return _once(args, features_map, inbox, seed, stop)
            _live(args, features_map, inbox, seed, reader, stop)
            return stop.exit_code()
        except OSError as exc:
            if not lifecycle.output_gone(exc):
                raise
            stop.output_lost()  # rich's Live writing to a closed pipe or a hung-up terminal
            return stop.exit_code()
        finally:
            listener.stop()
            client.shutdown()


def _once(args: argparse.Namespace, features_map: str, inbox: BarInbox, seed: dict[str, Any] | None,
          stop: lifecycle.StopRequest) -> int:
    record = seed
    deadline = time.monotonic() + args.timeout
    while record is None and not stop.is_set() and (left := deadline - time.monotonic()) > 0:
        got = inbox.newest(timeout=min(left, 1.0))
        record = got[1] if got else None
    if stop.is_set():
        return stop.exit_code()
    if record is None:
        lifecycle.say(stop, f"no bar in {features_map} within {args.timeout:g}s")
        return 1
    if sys.stdout.isatty() and not args.plain:
        Console().print(frame(record, now=time.time(), sort=args.sort, max_rows=args.max_rows))
    else:
        lifecycle.say(stop, "\n".join(plain_lines(record, now=time.time(), sort=args.sort, max_rows=args.max_rows)))
    return stop.exit_code()


def _live(args: argparse.Namespace, features_map: str, inbox: BarInbox, seed: dict[str, Any] | None,
          reader: Any, stop: lifecycle.StopRequest) -> None:
    current = seed
    if not sys.stdout.isatty() or args.plain:
        if current is not None:
            lifecycle.say(stop, "\n".join(plain_lines(current, now=time.time(), sort=args.sort,
                                                       max_rows=args.max_rows)))
        while reader.is_alive() and not stop.is_set():
            got = inbox.newest(timeout=1.0)
            if got and (current is None or got[0] > int(current.get("bar_idx", -1))):
                current = got[1]
                lines = plain_lines(current, now=time.time(), sort=args.sort, max_rows=args.max_rows)
                lifecycle.say(stop, "\n".join(lines))
        if not stop.is_set():
            lifecycle.say(stop, "cluster connection closed")
        return

    from rich.live import Live

    console = Console()

    def draw() -> Any:
        if current is None:
            return Text(f"waiting for the first bar in {features_map} ... (Ctrl-C to exit)")
        rows = args.max_rows if args.max_rows is not None else max(3, console.size.height - 5)
        return frame(current, now=time.time(), sort=args.sort, max_rows=rows)

    # auto_refresh off: we redraw on each bar and once a second (the header's age keeps
    # ticking, so a stalled worker is visible); transient=False leaves the last frame on exit.
    with Live(draw(), console=console, auto_refresh=False, screen=False) as live:
        while reader.is_alive() and not stop.is_set():
            got = inbox.newest(timeout=1.0)
            if got and (current is None or got[0] >= int(current.get("bar_idx", -1))):
                current = got[1]
            live.update(draw(), refresh=True)
    if not stop.is_set():
        lifecycle.say(stop, "cluster connection closed")
