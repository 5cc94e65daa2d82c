"""OfflineOBEngine on record files and day folders (no member): loading, filtering, bad records,
and the resolution rules it shares with the live adapter (exact / fallback / default, never a
future bar); the day-file layout and the --by-date writer."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine_adapter.features import NEUTRAL_MARKET, NEUTRAL_PLACEMENT, OBMarketFeatures
from engine_adapter.offline import DayFolderSource, OfflineOBEngine, RecordFileSource
from obf_contract import dayfiles
from obf_contract.record import SCHEMA_VERSION
from obf_features_worker import cli
from obf_features_worker.offline.replay import write_by_date
from tests.factories import columns

MIDNIGHT = 1_723_161_600.0  # 2024-08-09 00:00:00 UTC
SPACING = 5.0


def rec(idx: int, ts: float | None = None, assets: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")) -> dict[str, Any]:
    a = {s: {"ts": 1.0e9, "age_ms": 1.0, "seq": idx,
             "placement": {"depth_1pct_usd": float(idx), "depth_quality": 1.5, "fill_probability": 0.6,
                           "spread_proxy_bps": 1.0 + k},
             "signal": {"imbalance": 0.1 * k, "imbalance_ma5": 0.0, "imbalance_persistence": 0.0,
                        "depth_asymmetry": 0.0, "withdrawal_velocity": 0.0}} for k, s in enumerate(assets)}
    return {"schema": SCHEMA_VERSION, "bar_idx": idx, "bar_ts": MIDNIGHT + (idx - 100) * SPACING if ts is None else ts,
            "n_assets": 2, "n_present": len(a), **columns(a),
            "market": {"median_imbalance": idx / 1000, "agreement_pct": 75.0, "depth_pressure": 0.0,
                       "notional_pressure": 0.0},
            "macro": {"cascade_count": 0, "cascade_regime": "CALM", "depth_velocity": 0.0, "acceleration": 0.0,
                      "depth_ref_usd": 1000.0},
            "degraded": False}


def write(path: Path, recs: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in recs))
    return path


@pytest.fixture
def engine(tmp_path: Path) -> OfflineOBEngine:
    # bars 90..110 around midnight (bar 100 closes at 00:00:00 of 2024-08-09), 104 missing
    return OfflineOBEngine(write(tmp_path / "bars.jsonl", [rec(i) for i in range(90, 111) if i != 104]))


def test_preload_date_loads_the_utc_day_only(engine: OfflineOBEngine) -> None:
    assert isinstance(engine.source, RecordFileSource)
    assert engine.preload_date("2024-08-09") == 10  # 100..110 without 104
    assert engine.loaded_indices() == [i for i in range(100, 111) if i != 104]
    assert engine.preload_date(date(2024, 8, 8)) == 10  # 90..99: replaces the loaded bars
    assert engine.loaded_indices() == list(range(90, 100))
    assert engine.preload(datetime(2024, 8, 8, 23, 59, 50), MIDNIGHT + 5) == 3  # naive = UTC; end excluded
    assert engine.loaded_indices() == [98, 99, 100]


def test_resolution_exact_fallback_default_never_future(engine: OfflineOBEngine) -> None:
    engine.preload(MIDNIGHT - 3600, MIDNIGHT + 3600)
    assert engine.resolve().kind == "default"  # before step_live: no "now", the day may be ahead
    assert engine.get_market() == NEUTRAL_MARKET
    assert engine.step_live(["BTCUSDT"], 89).kind == "default"  # the first loaded bar is in its future
    assert engine.get_placement("BTCUSDT") == NEUTRAL_PLACEMENT
    assert engine.step_live(["BTCUSDT", "XRPUSDT"], 103).kind == "exact"
    assert engine.get_market() == OBMarketFeatures(**rec(103)["market"])
    assert engine.get_placement("BTCUSDT").depth_1pct_usd == 103.0
    res = engine.step_live(None, 104)
    assert (res.kind, res.bar_idx, res.age_bars) == ("fallback", 103, 1)
    assert engine.get_placement("ETHUSDT").depth_1pct_usd == 103.0
    assert engine.resolve(113).kind == "default"  # 3 bars past the last: stale
    assert engine.resolve(MIDNIGHT + 3 * SPACING + 1).bar_idx == 103  # a timestamp: the bar at or before
    stats = engine.stats()
    assert stats.steps == {"exact": 1, "fallback": 1, "default": 1} and stats.asset_defaults == 1
    assert stats.current_bar_idx == 104 and stats.cache.bars == 20
    with pytest.raises(ValueError):
        engine.step_live(None, MIDNIGHT)  # a timestamp is not a bar_idx


def test_bad_records_are_counted_and_skipped(tmp_path: Path) -> None:
    bad_schema = dict(rec(101), schema=SCHEMA_VERSION + 99)
    out_of_order = rec(103, ts=MIDNIGHT - 100)  # bar_ts decreasing with bar_idx
    eng = OfflineOBEngine(write(tmp_path / "x.jsonl", [rec(100), b"{not json", bad_schema, rec(102), out_of_order]))
    assert eng.preload_date("2024-08-09") == 2
    assert eng.stats().grid.rejected == {"not_json": 1, "schema": 1}
    eng.preload(MIDNIGHT - 1000, MIDNIGHT + 1000)
    assert eng.stats().grid.rejected["bar_ts_order"] == 1


def test_bad_arguments_fail_fast(engine: OfflineOBEngine, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stale_after_bars"):
        OfflineOBEngine(tmp_path / "x.jsonl", stale_after_bars=-1)
    with pytest.raises(ValueError, match="after start"):
        engine.preload(MIDNIGHT, MIDNIGHT)
    with pytest.raises(TypeError):
        engine.preload(True, MIDNIGHT)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        engine.preload_date("2024-13-01")


def test_write_by_date_and_the_day_folder_source(tmp_path: Path) -> None:
    recs = [rec(i) for i in range(95, 106)]
    days = write_by_date(recs, tmp_path / "days")
    assert days == [date(2024, 8, 8), date(2024, 8, 9)]
    assert dayfiles.days_in(tmp_path / "days") == days
    assert sorted(p.name for p in (tmp_path / "days").iterdir()) == ["2024-08-08.jsonl", "2024-08-09.jsonl"]
    day9 = [orjson.loads(x) for x in dayfiles.day_file(tmp_path / "days", "2024-08-09").read_bytes().splitlines()]
    assert [r["bar_idx"] for r in day9] == list(range(100, 106))  # the bar closing at midnight opens the day
    eng = OfflineOBEngine(tmp_path / "days")
    assert isinstance(eng.source, DayFolderSource)
    assert eng.preload_date("2024-08-09") == 6 and eng.preload_date("2024-08-10") == 0  # no file: no bars
    assert eng.preload(MIDNIGHT - 10, MIDNIGHT + 10) == 4  # across the two files
    with pytest.raises(ValueError, match="bar_ts order"):
        write_by_date([rec(100), rec(99)], tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []  # no day was complete, nothing left behind


def test_dayfiles_layout() -> None:
    assert dayfiles.day_of(MIDNIGHT) == date(2024, 8, 9) and dayfiles.day_of(MIDNIGHT - 0.001) == date(2024, 8, 8)
    assert dayfiles.day_bounds("2024-08-09") == (MIDNIGHT, MIDNIGHT + 86400)
    assert dayfiles.as_date(datetime(2024, 8, 9, 1, tzinfo=UTC)) == date(2024, 8, 9)
    assert dayfiles.day_file("d", date(2024, 8, 9)) == Path("d/2024-08-09.jsonl")


def test_replay_cli_by_date_and_output_are_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["replay", "in.jsonl", "--bar-seconds", "5", "-o", "x", "--by-date", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["replay", "in.jsonl", "--bar-seconds", "5"])
