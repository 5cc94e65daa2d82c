"""The same OBFeaturesActor over the live adapter: a real member, a running worker, and the
features it publishes equal the records the worker wrote to DOLPHIN_OBF_FEATURES.

The worker (2 s interval bars) computes from a test feeder; the HazelcastOBEngine receives the
bars through its entry listener. The actor then runs inside a Nautilus BacktestEngine whose
simulated clock walks over those bar closes (a live TradingNode needs a venue; the actor's code
path, the adapter and its listener are the live ones).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("nautilus_trader")

from engine_adapter.adapter import AdapterConfig, HazelcastOBEngine  # noqa: E402
from obf_nautilus.actor import OBFeaturesActor, OBFeaturesActorConfig  # noqa: E402
from obf_nautilus.data import bar_ns  # noqa: E402
from tests.cluster import HzCluster  # noqa: E402
from tests.integration.feeder import DEFAULT_SYMBOLS, TestFeeder, WorkerProcess, json_value, wait_for  # noqa: E402
from tests.nautilus.harness import (  # noqa: E402
    CLOCK_CLIENT,
    FeatureRecorder,
    assert_assets_equal_record,
    assert_bar_equals_record,
    clock_ticks,
    new_engine,
)

pytestmark = pytest.mark.integration

BARS = 5
BAR_SECONDS = 2.0  # the shortest interval bar whose bar_idx stays below 1e9 (a bar_idx, not a timestamp)


def test_actor_over_the_live_adapter_publishes_the_records_in_the_map(hz_cluster: HzCluster, hz_client,
                                                                      map_suffix: str, tmp_path: Path) -> None:
    features = hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking()
    env = {"HZ_MEMBERS": ",".join(hz_cluster.members), "HZ_CLUSTER": hz_cluster.cluster_name,
           "OBF_MAP_SUFFIX": map_suffix}
    feeder_client = hz_cluster.client()
    feeder = TestFeeder(feeder_client, "DOLPHIN_FEATURES" + map_suffix).start()
    cfg = AdapterConfig(cluster_name=hz_cluster.cluster_name, members=tuple(hz_cluster.members),
                        map_name="DOLPHIN_OBF_FEATURES" + map_suffix, cache_bars=1000, max_wait_ms=0)
    try:
        with HazelcastOBEngine(cfg, client=hz_client) as live, \
                WorkerProcess(["--bar-seconds", str(BAR_SECONDS), "--worker-id", "nautilus" + map_suffix,
                               "--retain-bars", "1000"], env, tmp_path) as worker:
            # Bars with every asset present (the first ones may precede the feeder's first ticks).
            wait_for(lambda: sum(1 for v in features.values() if len(json_value(v)["assets"]) == len(DEFAULT_SYMBOLS))
                     >= BARS or worker.proc.poll() is not None, 60, f"{BARS} full bars written")
            assert worker.proc.poll() is None, worker.log_text()[-2000:]
            recs = {k: json_value(v) for k, v in features.entry_set()}
            for rec in recs.values():
                rec.pop("producer")
            wait_for(lambda: all(live.wait_for_bar(k, 0) for k in recs), 30,
                     "the adapter's listener received the bars")
            lo, hi = min(recs), max(recs)
            assert sorted(recs) == list(range(lo, hi + 1))
            step = bar_ns(BAR_SECONDS)
            engine = new_engine()
            actor = OBFeaturesActor(live, OBFeaturesActorConfig(bar_seconds=BAR_SECONDS, assets=DEFAULT_SYMBOLS))
            recorder = FeatureRecorder()
            try:
                engine.add_data(clock_ticks(bar_ns(recs[lo]["bar_ts"]) - step, bar_ns(recs[hi]["bar_ts"]) + step,
                                            step // 4), client_id=CLOCK_CLIENT)
                engine.add_actor(actor)
                engine.add_strategy(recorder)
                engine.run()
            finally:
                engine.dispose()
            assert live.stats().grid.decoded >= len(recs)  # they came through the listener
    finally:
        feeder.stop()
        feeder_client.shutdown()
    assert actor.errors == 0 and recorder.duplicates == 0 and recorder.order_errors == 0
    assert set(recs) <= set(recorder.bars)
    for idx, rec in recs.items():
        assert_bar_equals_record(recorder.bars[idx], rec)
        assert recorder.bars[idx].ts_event == bar_ns(rec["bar_ts"])
        # The actor publishes the configured assets; those absent from a bar come as neutral, present=False.
        present = {(idx, sym): recorder.assets[idx, sym] for sym in rec["assets"]}
        assert_assets_equal_record(present, rec)
        for sym in set(DEFAULT_SYMBOLS) - set(rec["assets"]):
            assert not recorder.assets[idx, sym].present and recorder.assets[idx, sym].signal_imbalance == 0.0
