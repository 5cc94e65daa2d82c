"""The same OBFeaturesActor over the live adapter: a real member, a running worker, and the
features it publishes equal the records the worker wrote to DOLPHIN_OBF_FEATURES.

The worker (2 s interval bars) computes from a test feeder; the HazelcastOBEngine receives the
bars through its entry listener. The actor runs (1) in a live Nautilus TradingNode, on the real
clock, while the worker writes, and (2) in a BacktestEngine whose simulated clock walks over every
bar the worker wrote (deterministic: no bar can be missed to timing).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nautilus_trader")

from nautilus_trader.config import LoggingConfig, TradingNodeConfig  # noqa: E402
from nautilus_trader.live.node import TradingNode  # noqa: E402
from nautilus_trader.model.identifiers import TraderId  # noqa: E402

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

BARS = 4
BAR_SECONDS = 2.0  # the shortest interval bar whose bar_idx stays below 1e9 (a bar_idx, not a timestamp)


class Live:
    """A running feeder + worker on their own maps, and a live adapter listening to the bar map."""

    def __init__(self, cluster: HzCluster, client: Any, tmp: Path) -> None:
        suffix = "_N" + uuid.uuid4().hex[:10].upper()
        self.features = client.get_map("DOLPHIN_OBF_FEATURES" + suffix).blocking()
        self.feeder_client = cluster.client()
        self.feeder = TestFeeder(self.feeder_client, "DOLPHIN_FEATURES" + suffix).start()
        self.client = client
        self.config = AdapterConfig(cluster_name=cluster.cluster_name, members=tuple(cluster.members),
                                    map_name="DOLPHIN_OBF_FEATURES" + suffix, cache_bars=1000, max_wait_ms=1000)
        self.adapter = HazelcastOBEngine(self.config, client=client)
        env = {"HZ_MEMBERS": ",".join(cluster.members), "HZ_CLUSTER": cluster.cluster_name, "OBF_MAP_SUFFIX": suffix}
        self.worker = WorkerProcess(["--bar-seconds", str(BAR_SECONDS), "--worker-id", "nautilus" + suffix,
                                     "--retain-bars", "1000"], env, tmp)

    def records(self) -> dict[int, dict[str, Any]]:
        """Every record in the map, without the producer block (it is not a feature)."""
        recs = {k: json_value(v) for k, v in self.features.entry_set()}
        for rec in recs.values():
            rec.pop("producer")
        return recs

    def full_bars(self) -> int:
        if self.worker.proc.poll() is not None:
            raise AssertionError(self.worker.log_text()[-2000:])
        return sum(1 for r in self.records().values() if len(r["symbols"]) == len(DEFAULT_SYMBOLS))

    def close(self) -> None:
        self.worker.stop()
        self.adapter.close()
        self.feeder.stop()
        self.feeder_client.shutdown()


@pytest.fixture(scope="module")
def live(hz_cluster: HzCluster, hz_client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = Live(hz_cluster, hz_client, tmp_path_factory.mktemp("worker"))
    try:
        yield env
    finally:
        env.close()


def check_published(recorder: FeatureRecorder, recs: dict[int, dict[str, Any]], idx: int) -> None:
    rec = recs[idx]
    assert_bar_equals_record(recorder.bars[idx], rec)
    assert recorder.bars[idx].ts_event == bar_ns(rec["bar_ts"])
    # The actor publishes the configured assets; those absent from a bar come neutral, present=False.
    assert_assets_equal_record({(idx, sym): recorder.assets[idx, sym] for sym in rec["symbols"]}, rec)
    for sym in set(DEFAULT_SYMBOLS) - set(rec["symbols"]):
        assert not recorder.assets[idx, sym].present and recorder.assets[idx, sym].signal_imbalance == 0.0


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def test_actor_in_a_live_trading_node_publishes_the_records_in_the_map(live: Live) -> None:
    node = TradingNode(TradingNodeConfig(trader_id=TraderId("OBF-LIVE-001"), logging=LoggingConfig(log_level="ERROR")))
    # Fire 0.5 s after each close: the worker has written the bar by then (step_live waits up to 1 s more).
    actor = OBFeaturesActor(live.adapter, OBFeaturesActorConfig(bar_seconds=BAR_SECONDS, assets=DEFAULT_SYMBOLS,
                                                                publish_delay_ms=500))
    recorder = FeatureRecorder()
    node.trader.add_actor(actor)
    node.trader.add_strategy(recorder)
    node.build()
    runner = threading.Thread(target=node.run, name="nautilus-node", daemon=True)
    runner.start()
    try:
        wait_for(lambda: sum(b.resolution == "exact" and b.n_present == len(DEFAULT_SYMBOLS)
                             for b in list(recorder.bars.values())) >= BARS or live.worker.proc.poll() is not None,
                 90, f"{BARS} exact full bars published live")
    finally:
        # The node's loop runs on `runner`: stop it from there (thread-safe), then dispose here.
        loop = node.get_event_loop()
        asyncio.run_coroutine_threadsafe(node.stop_async(), loop).result(60)
        runner.join(60)
        _cancel_pending(loop)  # the actors' executor workers, which the node's dispose leaves pending
        node.dispose()
    assert not runner.is_alive()
    recs = live.records()
    exact = [idx for idx, b in sorted(recorder.bars.items()) if b.resolution == "exact"]
    assert len(exact) >= BARS and actor.errors == 0 and recorder.duplicates == 0 and recorder.order_errors == 0
    for idx in exact:
        check_published(recorder, recs, idx)
    for idx, b in recorder.bars.items():  # before the worker's first bar: neutral, never a future bar
        assert b.resolution == "exact" or b.used_bar_idx < idx


def test_actor_over_every_bar_the_worker_wrote(live: Live) -> None:
    wait_for(live.full_bars, 60, "full bars written")
    recs = live.records()
    lo, hi = min(recs), max(recs)
    assert sorted(recs) == list(range(lo, hi + 1))
    # A fresh adapter (seeded from the map, then its listener): the trader's bar numbering only goes
    # forward, and the node of the test before has already stepped past these bars.
    with HazelcastOBEngine(live.config, client=live.client) as adapter:
        wait_for(lambda: all(adapter.wait_for_bar(k, 0) for k in recs), 30, "the adapter has the bars")
        step = bar_ns(BAR_SECONDS)
        engine = new_engine()
        actor = OBFeaturesActor(adapter, OBFeaturesActorConfig(bar_seconds=BAR_SECONDS, assets=DEFAULT_SYMBOLS))
        recorder = FeatureRecorder()
        try:
            engine.add_data(clock_ticks(bar_ns(recs[lo]["bar_ts"]) - step, bar_ns(recs[hi]["bar_ts"]) + step,
                                        step // 4), client_id=CLOCK_CLIENT)
            engine.add_actor(actor)
            engine.add_strategy(recorder)
            engine.run()
        finally:
            engine.dispose()
        assert adapter.stats().steps["exact"] >= len(recs)
    assert actor.errors == 0 and recorder.duplicates == 0 and recorder.order_errors == 0
    assert set(recs) <= set(recorder.bars)
    for idx in recs:
        check_published(recorder, recs, idx)
