"""Bar records (replay output, day files) into a Nautilus ``ParquetDataCatalog`` and back.

A backtest then streams the same features as custom data:
``engine.add_data(load_catalog(path), client_id=CLIENT_ID)`` and, in the strategy,
``self.subscribe_data(DataType(OBBarFeatures), client_id=CLIENT_ID)``. Every record becomes the
objects ``OBFeaturesActor`` publishes for an exact bar (``obf_nautilus.data.to_nautilus``),
``ts_event = ts_init = bar_ts`` in ns.

CLI: ``python -m obf_nautilus.catalog --catalog DIR RECORDS.jsonl|DAYDIR ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nautilus_trader.model.data import CustomData, DataType
from nautilus_trader.model.identifiers import ClientId
from nautilus_trader.persistence.catalog import ParquetDataCatalog

from engine_adapter.cache import EXACT, Resolution
from engine_adapter.features import RecordRejected, decode_bar
from obf_contract.dayfiles import DAY_FILE_SUFFIX
from obf_nautilus.data import OBAssetFeatures, OBBarFeatures, bar_ns, to_nautilus

log = logging.getLogger(__name__)

CLIENT_ID = ClientId("OBF")  # the data client id a backtest adds catalog features under


def record_files(paths: Iterable[str | Path]) -> list[Path]:
    """The record files of ``paths``: a file as is, a folder's day files (``*.jsonl``) by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.glob(f"*{DAY_FILE_SUFFIX}")) if p.is_dir() else [p])
    return out


def records_to_data(lines: Iterable[bytes | str]) -> Iterator[Any]:
    """The Nautilus objects of every record line (assets of a bar first, then the bar). A line that
    does not decode is logged and skipped."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            bar = decode_bar(line)
        except RecordRejected as exc:
            log.warning("record skipped line=%d reason=%s", n, exc.reason)
            continue
        ts = bar_ns(bar.bar_ts)
        assets, bar_obj = to_nautilus(bar.bar_idx, Resolution(EXACT, bar.bar_idx, bar.bar_idx, 0, bar.bar_ts),
                                      bar, None, ts, ts)
        yield from assets
        yield bar_obj


def write_catalog(paths: Iterable[str | Path], catalog: str | Path | ParquetDataCatalog) -> int:
    """Write the records of ``paths`` (files or day folders) into ``catalog``; returns bars written."""
    cat = catalog if isinstance(catalog, ParquetDataCatalog) else ParquetDataCatalog(str(catalog))
    assets: list[Any] = []
    bars: list[Any] = []
    for path in record_files(paths):
        with open(path, "rb") as f:
            for obj in records_to_data(f):
                (bars if isinstance(obj, OBBarFeatures) else assets).append(obj)
    if bars:
        cat.write_data(assets)
        cat.write_data(bars)
    log.info("catalog written bars=%d asset_rows=%d path=%s", len(bars), len(assets), cat.path)
    return len(bars)


def load_catalog(catalog: str | Path | ParquetDataCatalog, start: Any = None, end: Any = None) -> list[Any]:
    """The features in ``catalog`` (optionally ``start``..``end``) as ``CustomData`` ordered by ts_init,
    each bar's assets before the bar: ready for ``BacktestEngine.add_data(..., client_id=CLIENT_ID)``
    (a strategy receives the ``OBAssetFeatures`` / ``OBBarFeatures`` inside)."""
    cat = catalog if isinstance(catalog, ParquetDataCatalog) else ParquetDataCatalog(str(catalog))
    rows = []
    for rank, cls in ((0, OBAssetFeatures), (1, OBBarFeatures)):
        for item in cat.query(cls, start=start, end=end):
            # The data engine routes custom data wrapped in CustomData (as the catalog returns it).
            if not isinstance(item, CustomData):
                item = CustomData(DataType(cls), item)
            obj = item.data
            rows.append((obj.ts_init, rank, getattr(obj, "symbol", ""), item))
    rows.sort(key=lambda r: r[:3])
    return [r[3] for r in rows]


def main(argv: list[str] | None = None) -> int:
    """``python -m obf_nautilus.catalog``: exit 0, or 2 on an unreadable input."""
    p = argparse.ArgumentParser(prog="python -m obf_nautilus.catalog", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="record files (replay -o) or day folders (replay --by-date)")
    p.add_argument("--catalog", required=True, help="ParquetDataCatalog root folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        n = write_catalog(args.inputs, args.catalog)
    except OSError as exc:
        print(f"catalog: error: {exc}", file=sys.stderr)
        return 2
    print(f"catalog: wrote {n} bars to {args.catalog}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
