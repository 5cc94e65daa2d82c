"""``obf-features plot``: a PNG of the last N bars, from the features map or a replay output file.

Four panels sharing a UTC time axis: per-asset imbalance ([-1, 1]), per-asset depth_quality
(ratio, 1 = usual depth), market agreement_pct ([0, 100] %) and macro depth_velocity (change
of the aggregate depth ``depth_ref_usd`` per bar, as a fraction), with the cascade regime
shaded on every panel (STRESS amber, CASCADE red). matplotlib's Agg canvas without pyplot: no
display, no global backend switch.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from obf_contract.record import loads_record
from obf_features_worker.inspection import cluster_args
from obf_features_worker.logs import setup_logging
from obf_features_worker.service import grid
from obf_features_worker.service.config import comma_list

log = logging.getLogger(__name__)

REGIME_COLOURS = {"STRESS": "#f5b041", "CASCADE": "#e74c3c"}


@dataclass(frozen=True)
class RegimeBand:
    """A run of consecutive bars in one non-CALM regime: [start_ts, end_ts] in unix s (bar closes)."""

    regime: str
    first_bar_idx: int
    last_bar_idx: int
    start_ts: float
    end_ts: float


@dataclass(frozen=True)
class PlotSummary:
    path: Path
    n_bars: int
    first_bar_idx: int
    last_bar_idx: int
    assets: tuple[str, ...]
    bands: tuple[RegimeBand, ...]


def load_records(path: Path | str, last: int | None = None) -> list[dict[str, Any]]:
    """BarRecords from a JSONL file (replay output), the last ``last`` of them; ValueError on a bad line."""
    keep: deque[dict[str, Any]] = deque(maxlen=last if last and last > 0 else None)
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                keep.append(loads_record(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not a bar record: {exc}") from exc
    return list(keep)


def choose_assets(records: Sequence[Mapping[str, Any]], wanted: Sequence[str] | None = None,
                  max_assets: int = 8) -> tuple[str, ...]:
    """The assets to draw: ``wanted`` (in that order) or the ``max_assets`` present in most bars (ties by name)."""
    if wanted:
        return tuple(wanted)
    counts: Counter[str] = Counter()
    for rec in records:
        counts.update(list(_symbol_index(rec)))  # the symbols, each counted once per bar
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return tuple(sym for sym, _ in ranked[:max(0, max_assets)])


def regime_bands(records: Sequence[Mapping[str, Any]]) -> list[RegimeBand]:
    """Runs of consecutive records (in the given order) whose cascade_regime is STRESS or CASCADE."""
    bands: list[RegimeBand] = []
    run: list[Mapping[str, Any]] = []
    run_regime: str | None = None

    def close() -> None:
        if run and run_regime:
            bands.append(RegimeBand(run_regime, int(run[0]["bar_idx"]), int(run[-1]["bar_idx"]),
                                    float(run[0]["bar_ts"]), float(run[-1]["bar_ts"])))

    for rec in records:
        regime = (rec.get("macro") or {}).get("cascade_regime")
        regime = regime if regime in REGIME_COLOURS else None
        if regime != run_regime:
            close()
            run, run_regime = [], regime
        if regime:
            run.append(rec)
    close()
    return bands


def _series(records: Sequence[Mapping[str, Any]], *path: str) -> list[float]:
    out = []
    for rec in records:
        node: Any = rec
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        out.append(float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else math.nan)
    return out


def _symbol_index(rec: Mapping[str, Any]) -> dict[str, int]:
    """``{symbol: position}`` of a columnar record's present assets ({} if it has none)."""
    symbols = rec.get("symbols")
    return {s: i for i, s in enumerate(symbols) if type(s) is str} if isinstance(symbols, list) else {}


def _asset_series(records: Sequence[Mapping[str, Any]], indexes: Sequence[Mapping[str, int]], symbol: str,
                  group: str, name: str) -> list[float]:
    """One asset's ``group.name`` column value in every record; NaN where absent or not a number."""
    out = []
    for rec, index in zip(records, indexes, strict=True):
        i = index.get(symbol)
        col = (rec.get(group) or {}).get(name) if i is not None else None
        v = col[i] if isinstance(col, list) and i is not None and i < len(col) else None
        out.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan)
    return out


def _bar_seconds(ts: Sequence[float]) -> float:
    steps = sorted(b - a for a, b in zip(ts, ts[1:], strict=False) if b > a)
    return steps[len(steps) // 2] if steps else 1.0


def build_figure(records: Sequence[Mapping[str, Any]], assets: Sequence[str], *,
                 title: str | None = None, width_in: float = 12.0, height_in: float = 10.0) -> Figure:
    """The four-panel figure for ``records`` (ascending bar_idx). ValueError if there are none."""
    if not records:
        raise ValueError("no bar records to plot")
    ts = [float(r["bar_ts"]) for r in records]
    times = [datetime.fromtimestamp(t, UTC) for t in ts]
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)  # Agg renders the PNG; pyplot (and a display) is never involved
    ax_imb, ax_dq, ax_agree, ax_vel = fig.subplots(4, 1, sharex=True)

    indexes = [_symbol_index(r) for r in records]
    for sym in assets:
        ax_imb.plot(times, _asset_series(records, indexes, sym, "signal", "imbalance"), lw=1.0, label=sym,
                    gid=f"imb:{sym}")
        ax_dq.plot(times, _asset_series(records, indexes, sym, "placement", "depth_quality"), lw=1.0, label=sym,
                   gid=f"dq:{sym}")
    ax_agree.plot(times, _series(records, "market", "agreement_pct"), lw=1.0, color="#2e86c1", gid="agreement_pct")
    ax_vel.plot(times, _series(records, "macro", "depth_velocity"), lw=1.0, color="#7d3c98", gid="depth_velocity")

    ax_imb.set_ylabel("imbalance")
    ax_imb.set_ylim(-1.05, 1.05)
    ax_imb.axhline(0.0, color="grey", lw=0.5)
    ax_dq.set_ylabel("depth_quality")
    ax_dq.axhline(1.0, color="grey", lw=0.5)
    ax_agree.set_ylabel("agreement %")
    ax_agree.set_ylim(-2, 102)
    ax_vel.set_ylabel("depth_velocity")
    ax_vel.axhline(0.0, color="grey", lw=0.5)
    if assets:
        ax_imb.legend(loc="upper left", fontsize="small", ncol=min(4, len(assets)))

    half = _bar_seconds(ts) / 2.0
    for band in regime_bands(records):
        start = datetime.fromtimestamp(band.start_ts - half, UTC)
        end = datetime.fromtimestamp(band.end_ts + half, UTC)
        for ax in (ax_imb, ax_dq, ax_agree, ax_vel):
            ax.axvspan(start, end, color=REGIME_COLOURS[band.regime], alpha=0.3, lw=0, gid=f"band:{band.regime}")
    handles = [Patch(color=c, alpha=0.3, label=r) for r, c in REGIME_COLOURS.items()]
    ax_agree.legend(handles=handles, loc="lower left", fontsize="small", title="cascade regime")

    ax_vel.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))  # type: ignore[no-untyped-call]  # matplotlib leaves it unannotated
    ax_vel.set_xlabel("bar close (UTC)")
    first, last = records[0], records[-1]
    fig.suptitle(title or f"obf-features bars {first['bar_idx']}..{last['bar_idx']} "
                          f"({len(records)} bars, {times[0]:%Y-%m-%d %H:%M:%S} .. {times[-1]:%H:%M:%S} UTC)")
    return fig


def plot_records(records: Sequence[Mapping[str, Any]], output: Path | str, *,
                 assets: Sequence[str] | None = None, max_assets: int = 8, title: str | None = None,
                 dpi: int = 100) -> PlotSummary:
    """Write the PNG for ``records`` (sorted here by bar_idx) to ``output``; ValueError if empty."""
    ordered = sorted(records, key=lambda r: int(r["bar_idx"]))
    chosen = choose_assets(ordered, assets, max_assets)
    fig = build_figure(ordered, chosen, title=title)
    out = Path(output)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    log.info("plot written path=%s bars=%d assets=%d", out, len(ordered), len(chosen))
    return PlotSummary(out, len(ordered), int(ordered[0]["bar_idx"]), int(ordered[-1]["bar_idx"]), chosen,
                       tuple(regime_bands(ordered)))


# --- `obf-features plot` -------------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    """The `obf-features plot` options on the parser the CLI made for it."""
    p.description = __doc__.split("\n\n")[1]
    p.add_argument("--last", type=int, default=300, metavar="N", help="number of bars (default 300)")
    p.add_argument("--from-file", type=Path, default=None, metavar="REPLAY.jsonl",
                   help="read BarRecord JSONL (obf-features replay output) instead of the map")
    p.add_argument("--output", "-o", type=Path, default=Path("obf-features.png"), help="PNG path")
    p.add_argument("--assets", default=None, help="comma-separated symbols to draw (default: the most present)")
    p.add_argument("--max-assets", type=int, default=8, help="assets drawn when --assets is not given (default 8)")
    p.add_argument("--title", default=None, help="figure title")
    cluster_args.add_cluster_options(p, maps=("features",))
    p.set_defaults(func=run)


def _records_from_map(args: argparse.Namespace) -> Iterable[dict[str, Any]]:
    client = cluster_args.connect_from_args(args)
    try:
        return grid.InspectionReader(client).last_bars(cluster_args.map_name(args, "features"), args.last)
    finally:
        client.shutdown()


def run(args: argparse.Namespace) -> int:
    """Exit 0 with the PNG written, 1 if there is nothing to plot, 2 on bad arguments/input, 3 if unreachable."""
    setup_logging("WARNING")
    if args.last <= 0:
        print(f"--last must be > 0, got {args.last}")
        return 2
    try:
        if args.from_file is not None:
            records = load_records(args.from_file, args.last)
            source = str(args.from_file)
        else:
            records = list(_records_from_map(args))
            source = f"map {cluster_args.map_name(args, 'features')}"
    except cluster_args.ConnectFailed as exc:
        print(str(exc))
        return exc.exit_code
    except (OSError, ValueError) as exc:
        print(f"plot: {exc}")
        return 2
    if not records:
        print(f"plot: no bar records in {source}")
        return 1
    wanted = list(comma_list(args.assets)) if args.assets else None
    summary = plot_records(records, args.output, assets=wanted, max_assets=args.max_assets, title=args.title)
    bands = Counter(b.regime for b in summary.bands)
    print(f"plot written: {summary.path}  bars={summary.n_bars} ({summary.first_bar_idx}..{summary.last_bar_idx}) "
          f"assets={','.join(summary.assets) or '-'} regime_bands="
          f"{', '.join(f'{k}={v}' for k, v in sorted(bands.items())) or 'none'} source={source}")
    return 0
