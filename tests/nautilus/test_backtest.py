"""Backtest and paper see exactly the replay output of the real recordings.

../shared/data/binance-hftbacktest -> import-binance -> replay --by-date (day files across a UTC
midnight) -> (a) a ParquetDataCatalog streamed into a real Nautilus BacktestEngine, and (b) the
OfflineOBEngine (preload per day) driven by OBFeaturesActor inside a BacktestEngine. A strategy
subscribing to the custom data must receive every bar once, with values equal to the records.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("nautilus_trader")

from engine_adapter.offline import OfflineOBEngine  # noqa: E402
from obf_contract import dayfiles  # noqa: E402
from obf_features_worker.engine.params import FeatureParams  # noqa: E402
from obf_features_worker.offline import import_binance as binance  # noqa: E402
from obf_features_worker.offline import replay  # noqa: E402
from obf_nautilus.actor import OBFeaturesActor, OBFeaturesActorConfig  # noqa: E402
from obf_nautilus.catalog import CLIENT_ID, load_catalog, write_catalog  # noqa: E402
from obf_nautilus.data import bar_ns  # noqa: E402
from tests.nautilus.harness import (  # noqa: E402
    CLOCK_CLIENT,
    FeatureRecorder,
    assert_assets_equal_record,
    assert_bar_equals_record,
    clock_ticks,
    new_engine,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "binance-hftbacktest"
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not DATA.is_dir(), reason=f"recordings not found at {DATA}")]

FILES = ("spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz", "spot/ethusdt_20240808.gz",
         "spot/ethusdt_20240809.gz", "usdm/btcusdt_20240808.gz", "usdm/ethusdt_20240808.gz")
BAND_SPAN_BPS = 25.0
BAR_SECONDS = 5.0


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The day folder replay --by-date wrote, and the records it holds (parsed from its files)."""
    buf = io.BytesIO()
    binance.import_binance([DATA / f for f in FILES], buf, binance.BandSpec(BAND_SPAN_BPS, 10), every_ms=100)
    folder = tmp_path_factory.mktemp("days")
    written = replay.write_by_date(
        replay.replay_records(buf.getvalue().splitlines(), BAR_SECONDS,
                              params=FeatureParams(band_span_bps=BAND_SPAN_BPS)), folder)
    assert [d.isoformat() for d in written] == ["2024-08-08", "2024-08-09"]  # the recordings span midnight
    recs = [orjson.loads(line) for d in written for line in dayfiles.day_file(folder, d).read_bytes().splitlines()]
    assert len(recs) > 100 and all(r["market"] is not None for r in recs)
    return folder, recs


def test_day_files_split_at_utc_midnight(days) -> None:
    folder, recs = days
    for day in dayfiles.days_in(folder):
        lo, hi = dayfiles.day_bounds(day)
        lines = dayfiles.day_file(folder, day).read_bytes().splitlines()
        assert lines and all(lo <= orjson.loads(x)["bar_ts"] < hi for x in lines)
    idx = [r["bar_idx"] for r in recs]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)


def test_backtest_from_the_catalog_receives_every_bar_equal_to_the_records(days, tmp_path: Path) -> None:
    folder, recs = days
    assert write_catalog([folder], tmp_path / "catalog") == len(recs)
    data = load_catalog(tmp_path / "catalog")
    engine = new_engine()
    recorder = FeatureRecorder(client_id=CLIENT_ID)
    try:
        engine.add_data(data, client_id=CLIENT_ID)
        engine.add_strategy(recorder)
        engine.run()
    finally:
        engine.dispose()
    assert sorted(recorder.bars) == [r["bar_idx"] for r in recs]  # every bar, once, nothing else
    assert recorder.duplicates == 0 and recorder.order_errors == 0
    assert len(recorder.assets) == sum(len(r["symbols"]) for r in recs)
    for rec in recs:
        assert_bar_equals_record(recorder.bars[rec["bar_idx"]], rec)
        assert recorder.bars[rec["bar_idx"]].ts_event == bar_ns(rec["bar_ts"])
        assert_assets_equal_record(recorder.assets, rec)


def test_actor_over_the_offline_engine_publishes_every_bar_equal_to_the_records(days) -> None:
    folder, recs = days
    offline = OfflineOBEngine(folder)
    # Paper mode: the day is preloaded up front. The backtest spans two days, so load both.
    first, last = dayfiles.days_in(folder)[0], dayfiles.days_in(folder)[-1]
    assert offline.preload(first, dayfiles.day_bounds(last)[1]) == len(recs)
    bar_step = bar_ns(BAR_SECONDS)
    start, end = bar_ns(recs[0]["bar_ts"]) - 2 * bar_step, bar_ns(recs[-1]["bar_ts"]) + 2 * bar_step
    engine = new_engine()
    actor = OBFeaturesActor(offline, OBFeaturesActorConfig(bar_seconds=BAR_SECONDS))
    recorder = FeatureRecorder()
    try:
        engine.add_data(clock_ticks(start, end, bar_step // 5), client_id=CLOCK_CLIENT)
        engine.add_actor(actor)
        engine.add_strategy(recorder)
        engine.run()
    finally:
        engine.dispose()
    assert actor.errors == 0
    assert recorder.duplicates == 0 and recorder.order_errors == 0
    by_idx = {r["bar_idx"]: r for r in recs}
    assert set(by_idx) <= set(recorder.bars)  # every bar of the recordings was published
    for idx, bar in recorder.bars.items():
        if idx in by_idx:
            assert_bar_equals_record(bar, by_idx[idx])
            assert bar.ts_event == bar_ns(by_idx[idx]["bar_ts"])
            assert_assets_equal_record(recorder.assets, by_idx[idx])
        elif idx < recs[0]["bar_idx"] or idx - recs[-1]["bar_idx"] > offline.stale_after_bars:
            # Before the first record nothing earlier exists (never a future bar); long after the
            # last the newest is too old: neutral defaults.
            assert bar.resolution == "default" and bar.used_bar_idx == -1, idx
            assert (bar.market_median_imbalance, bar.market_agreement_pct, bar.macro_cascade_regime) == \
                (0.0, 50.0, "CALM")
        else:  # just after the last record: it is the fallback, with its values
            assert (bar.resolution, bar.used_bar_idx, bar.age_bars) == ("fallback", recs[-1]["bar_idx"],
                                                                         idx - recs[-1]["bar_idx"])
            assert {k: getattr(bar, f"market_{k}") for k in recs[-1]["market"]} == recs[-1]["market"]
    assert min(recorder.bars) < recs[0]["bar_idx"] and max(recorder.bars) > recs[-1]["bar_idx"]
    assert offline.stats().steps["exact"] == len(recs)
