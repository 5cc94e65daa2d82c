"""HazelcastOBEngine against a real member: records written by the test (and by the real worker).

Every test uses its own map (``map_suffix``). Waiting is event-driven (``wait_for_bar``, which
is woken by the listener) or poll-with-deadline on counters; never a bare sleep.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hazelcast.core import HazelcastJsonValue

from engine_adapter import AdapterConfig, HazelcastOBEngine
from engine_adapter.features import (
    NEUTRAL_MACRO,
    NEUTRAL_MARKET,
    NEUTRAL_PLACEMENT,
    NEUTRAL_SIGNAL,
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
)
from obf_contract.record import SCHEMA_VERSION, asset_view
from tests.cluster import HzCluster
from tests.factories import columns

T0 = 1_723_161_000.0
SPACING = 5.0  # s between bars in the hand-written records
ASSETS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
REPO = Path(__file__).resolve().parents[2]


# -- records written by the test -------------------------------------------------------------------


def record(idx: int, *, version: int = 0, assets: tuple[str, ...] = ASSETS, ts: float | None = None) -> dict:
    """A valid bar record whose every value is a function of (idx, asset, version)."""
    out: dict[str, Any] = {}
    for k, sym in enumerate(assets):
        imb = ((idx * 7 + k * 13) % 200 - 100) / 100.0
        out[sym] = {
            "ts": T0 + idx * SPACING - 0.25, "age_ms": 250.0, "seq": idx * 10 + k,
            "placement": {"depth_1pct_usd": 1000.0 * idx + 10.0 * k + version, "depth_quality": 1.0 + k / 8,
                          "fill_probability": (1.0 + k / 8) / (2.0 + k / 8), "spread_proxy_bps": 2.0 + k},
            "signal": {"imbalance": imb, "imbalance_ma5": imb / 2, "imbalance_persistence": -imb,
                       "depth_asymmetry": imb / 4, "withdrawal_velocity": -0.001 * k},
        }
    return {
        "schema": SCHEMA_VERSION, "bar_idx": idx, "bar_ts": T0 + idx * SPACING if ts is None else ts,
        "n_assets": len(assets), "n_present": len(assets), **columns(out),
        "market": {"median_imbalance": (idx % 10) / 20, "agreement_pct": 60.0 + version, "depth_pressure": 0.125,
                   "notional_pressure": -0.125},
        "macro": {"cascade_count": idx % 3, "cascade_regime": ("CALM", "STRESS", "CASCADE")[idx % 3],
                  "depth_velocity": idx / 1000, "acceleration": -idx / 2000, "depth_ref_usd": 1000.0 + idx},
        "degraded": False,
        "producer": {"worker_id": "test", "computed_at": T0 + idx * SPACING + 0.01, "stale_assets": [],
                     "degraded": False},
    }


def macro_of(rec: dict[str, Any]) -> OBMacroFeatures:
    """The OBMacroFeatures of a record: the market's three in-process fields, then the macro's."""
    m = rec["market"]
    return OBMacroFeatures(median_imbalance=m["median_imbalance"], agreement_pct=m["agreement_pct"],
                           depth_pressure=m["depth_pressure"], **rec["macro"])


def put(m: Any, rec: dict) -> None:
    m.put(rec["bar_idx"], HazelcastJsonValue(orjson.dumps(rec).decode()))


def placement_of(rec: dict, sym: str) -> OBPlacementFeatures:
    return OBPlacementFeatures(**asset_view(rec)[sym]["placement"])


def signal_of(rec: dict, sym: str) -> OBSignalFeatures:
    return OBSignalFeatures(**asset_view(rec)[sym]["signal"])


def config_for(cluster: HzCluster, map_name: str, **kw: Any) -> AdapterConfig:
    return AdapterConfig(cluster_name=cluster.cluster_name, members=tuple(cluster.members), map_name=map_name, **kw)


def poll(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll-with-deadline for counters that have no event of their own."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def bars_map(hz_client, map_suffix: str) -> tuple[str, Any]:
    name = "DOLPHIN_OBF_FEATURES" + map_suffix
    return name, hz_client.get_map(name).blocking()


@pytest.fixture
def shared_engine(hz_cluster: HzCluster, hz_client, bars_map) -> Iterator[HazelcastOBEngine]:
    """An adapter on the session's existing client (the trader-owns-the-client mode)."""
    eng = HazelcastOBEngine(config_for(hz_cluster, bars_map[0], stale_after_bars=2, max_wait_ms=50), client=hz_client)
    yield eng
    eng.close()


# -- resolution --------------------------------------------------------------------------------------


def test_seed_reads_the_newest_bars_already_in_the_map(hz_cluster, hz_client, bars_map) -> None:
    name, m = bars_map
    recs = {i: record(i) for i in range(1, 21)}
    for rec in recs.values():
        put(m, rec)
    with HazelcastOBEngine(config_for(hz_cluster, name, cache_bars=10), client=hz_client) as eng:
        assert eng.stats().cache.bars == 10
        assert eng.stats().cache.inserted == {"seed": 10}
        res = eng.resolve(15)
        assert (res.kind, res.bar_idx) == ("exact", 15)
        assert eng.get_placement("ETHUSDT", 15) == placement_of(recs[15], "ETHUSDT")
        assert eng.get_signal("SOLUSDT", 20) == signal_of(recs[20], "SOLUSDT")
        assert eng.get_market(20) == OBMarketFeatures(**recs[20]["market"])
        assert eng.get_macro("BTCUSDT", 19) == macro_of(recs[19])
        assert eng.resolve(5).kind == "default"  # older than the seeded window, nothing earlier cached


def test_exact_bar_via_listener(shared_engine, bars_map) -> None:
    _, m = bars_map
    rec = record(7)
    put(m, rec)
    assert shared_engine.wait_for_bar(7, 30.0)
    assert shared_engine.resolve(7).kind == "exact"
    for sym in ASSETS:
        assert shared_engine.get_placement(sym, 7) == placement_of(rec, sym)
        assert shared_engine.get_signal(sym, 7) == signal_of(rec, sym)
    assert shared_engine.get_market(7) == shared_engine.get_market("BTCUSDT", 7) == OBMarketFeatures(**rec["market"])
    assert shared_engine.get_macro(7) == shared_engine.get_macro("ETHUSDT", 7) == macro_of(rec)


def test_fallback_to_latest_earlier_bar(shared_engine, bars_map) -> None:
    _, m = bars_map
    r10, r12 = record(10), record(12)
    put(m, r10)
    put(m, r12)
    assert shared_engine.wait_for_bar(10, 30.0) and shared_engine.wait_for_bar(12, 30.0)
    res = shared_engine.resolve(11)
    assert (res.kind, res.bar_idx, res.age_bars) == ("fallback", 10, 1)
    assert shared_engine.get_signal("BTCUSDT", 11) == signal_of(r10, "BTCUSDT")
    assert shared_engine.get_signal("BTCUSDT", 14) == signal_of(r12, "BTCUSDT")  # 2 bars old: still usable
    assert shared_engine.resolve(15).kind == "default"  # 3 bars old > stale_after_bars=2


def test_never_a_future_bar(shared_engine, bars_map) -> None:
    _, m = bars_map
    put(m, record(50))
    assert shared_engine.wait_for_bar(50, 30.0)
    res = shared_engine.resolve(49)
    assert (res.kind, res.bar_idx) == ("default", None)
    assert shared_engine.get_placement("BTCUSDT", 49) == NEUTRAL_PLACEMENT
    assert shared_engine.get_signal("BTCUSDT", 49) == NEUTRAL_SIGNAL
    assert shared_engine.get_market(49) == NEUTRAL_MARKET and shared_engine.get_macro(49) == NEUTRAL_MACRO


def test_timestamp_resolution(shared_engine, bars_map) -> None:
    _, m = bars_map
    recs = {i: record(i) for i in (20, 21, 22)}
    for rec in recs.values():
        put(m, rec)
    for i in recs:
        assert shared_engine.wait_for_bar(i, 30.0)
    mid_21 = T0 + 21 * SPACING + SPACING / 2  # after bar 21 closed, before bar 22
    res = shared_engine.resolve(mid_21)
    assert (res.kind, res.bar_idx) == ("exact", 21)
    assert shared_engine.get_signal("ETHUSDT", mid_21) == signal_of(recs[21], "ETHUSDT")
    assert shared_engine.get_placement("ETHUSDT", T0 + 22 * SPACING) == placement_of(recs[22], "ETHUSDT")
    assert shared_engine.resolve(T0 + 20 * SPACING - 1).kind == "default"  # before every bar
    assert shared_engine.resolve(T0 + 24 * SPACING + 1).kind == "fallback"  # bar 24 due, 22 is 2 old
    assert shared_engine.resolve(T0 + 25 * SPACING + 1).kind == "default"  # 3 bars old


def test_defaults_when_empty_then_stale(shared_engine, bars_map) -> None:
    _, m = bars_map
    assert shared_engine.step_live(list(ASSETS), 100).kind == "default"
    assert shared_engine.get_placement("BTCUSDT") == NEUTRAL_PLACEMENT
    assert shared_engine.get_signal("BTCUSDT") == NEUTRAL_SIGNAL
    assert shared_engine.get_market() == NEUTRAL_MARKET and shared_engine.get_macro() == NEUTRAL_MACRO
    put(m, record(100))
    assert shared_engine.wait_for_bar(100, 30.0)
    assert shared_engine.step_live(list(ASSETS), 100).kind == "exact"
    assert shared_engine.step_live(list(ASSETS), 102).kind == "fallback"
    assert shared_engine.step_live(list(ASSETS), 103).kind == "default"  # worker silent for 3 bars
    assert shared_engine.get_signal("BTCUSDT") == NEUTRAL_SIGNAL  # None = the current bar, 103
    s = shared_engine.stats()
    assert s.steps == {"exact": 1, "fallback": 1, "default": 2}
    assert s.current_bar_idx == 103 and s.lag_bars == 3
    assert s.cache.lookups["default"] >= 5


def test_asset_absent_from_a_usable_bar_is_neutral_and_counted(shared_engine, bars_map) -> None:
    _, m = bars_map
    put(m, record(30, assets=("BTCUSDT",)))
    assert shared_engine.wait_for_bar(30, 30.0)
    before = shared_engine.stats().asset_defaults
    assert shared_engine.get_placement("ETHUSDT", 30) == NEUTRAL_PLACEMENT
    assert shared_engine.get_placement("BTCUSDT", 30) != NEUTRAL_PLACEMENT
    shared_engine.step_live(["BTCUSDT", "ETHUSDT", "SOLUSDT"], 30)
    assert shared_engine.stats().asset_defaults == before + 3


# -- waiting in step_live ------------------------------------------------------------------------------


def test_step_live_is_woken_by_the_arrival(hz_cluster, hz_client, bars_map) -> None:
    name, m = bars_map
    put(m, record(6))
    cfg = config_for(hz_cluster, name, max_wait_ms=10_000)
    with HazelcastOBEngine(cfg, client=hz_client) as eng:
        def write_when_waiting() -> None:
            poll(lambda: bool(eng._cache._cond._waiters), 30.0, "step_live to wait")
            put(m, record(7))

        writer = threading.Thread(target=write_when_waiting)
        writer.start()
        t0 = time.perf_counter()
        res = eng.step_live(list(ASSETS), 7)
        elapsed = time.perf_counter() - t0
        writer.join(30)
        assert res.kind == "exact" and res.bar_idx == 7
        # Woken by the record, well before the 10 s max wait.
        assert elapsed < 5.0, f"step_live took {elapsed:.3f}s"
        s = eng.stats()
        assert (s.waits, s.wait_hits, s.wait_timeouts) == (1, 1, 0)


def test_a_bar_whose_event_was_lost_is_read_while_the_trader_waits(hz_cluster, hz_client, bars_map) -> None:
    # Entry events are best effort (lost while partitions migrate, during reconnects). Stand for a
    # lost event by taking the adapter's listener away: the record is in the map, no event comes.
    name, m = bars_map
    put(m, record(5))
    with HazelcastOBEngine(config_for(hz_cluster, name, max_wait_ms=1000), client=hz_client) as eng:
        reader = eng._reader
        assert reader._listener_id is not None
        assert reader._map.remove_entry_listener(reader._listener_id).result()
        put(m, record(6))
        res = eng.step_live(list(ASSETS), 6)
        assert (res.kind, res.bar_idx) == ("exact", 6)
        assert eng.get_signal("BTCUSDT") == signal_of(record(6), "BTCUSDT")
        assert eng.stats().grid.fetched == 1
        # A bar never written: read once, found absent, nothing inserted.
        assert eng.step_live(list(ASSETS), 7).kind == "fallback"
        poll(lambda: eng.stats().grid.fetched + eng.stats().grid.fetch_failures == 1 and
             not reader._fetch_wanted.is_set(), 10, "the fetch of bar 7 to end")
        assert eng.stats().grid.fetched == 1


def test_step_live_times_out_cleanly(hz_cluster, hz_client, bars_map) -> None:
    name, m = bars_map
    put(m, record(6))
    with HazelcastOBEngine(config_for(hz_cluster, name, max_wait_ms=50), client=hz_client) as eng:
        t0 = time.perf_counter()
        res = eng.step_live(list(ASSETS), 7)  # never written
        elapsed = time.perf_counter() - t0
        assert (res.kind, res.bar_idx) == ("fallback", 6)
        assert elapsed >= 0.045
        s = eng.stats()
        assert (s.waits, s.wait_hits, s.wait_timeouts) == (1, 0, 1)
        assert eng.step_live(list(ASSETS), 6).kind == "exact"  # cached: no wait at all
        assert eng.stats().waits == 1


def test_max_wait_zero_never_waits(hz_cluster, hz_client, bars_map) -> None:
    name, _ = bars_map
    with HazelcastOBEngine(config_for(hz_cluster, name, max_wait_ms=0), client=hz_client) as eng:
        assert eng.step_live(list(ASSETS), 7).kind == "default"
        assert eng.stats().waits == 0


# -- cache bound, threads ------------------------------------------------------------------------------


def test_cache_eviction_at_n_bars(hz_cluster, hz_client, bars_map) -> None:
    name, m = bars_map
    with HazelcastOBEngine(config_for(hz_cluster, name, cache_bars=5), client=hz_client) as eng:
        for i in range(1, 13):
            put(m, record(i))
        poll(lambda: eng.stats().grid.decoded == 12, 30.0, "12 listener events")
        s = eng.stats()
        assert s.cache.bars == 5 and s.cache.oldest_idx == 8 and s.cache.newest_idx == 12
        assert s.cache.evicted + s.cache.ignored.get("too_old", 0) == 7
        assert eng.resolve(7).kind == "default"


def test_thread_safety_under_concurrent_updates_and_reads(hz_cluster, hz_client, bars_map) -> None:
    name, m = bars_map
    n_bars = 150
    errors: list[str] = []
    stop = threading.Event()
    with HazelcastOBEngine(config_for(hz_cluster, name, cache_bars=60, stale_after_bars=3),
                           client=hz_client) as eng:
        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                q = rng.randrange(1, n_bars + 3)
                bar = eng.get_bar(q)
                if bar is None:
                    continue
                if bar.bar_idx > q:
                    errors.append(f"future bar {bar.bar_idx} for {q}")
                versions = {round(a.placement.depth_1pct_usd - 1000.0 * bar.bar_idx - 10.0 * k)
                            for k, a in enumerate(bar.assets[s] for s in ASSETS)}
                if len(versions) != 1:  # a record is decoded and published as one unit
                    errors.append(f"bar {bar.bar_idx} mixes versions {versions}")
                eng.get_placement("BTCUSDT", q)
                eng.get_signal("ETHUSDT", q)
                eng.get_macro(q)

        readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in readers:
            t.start()
        for i in range(1, n_bars + 1):
            put(m, record(i, version=0))
            put(m, record(i, version=1))  # an update of the same key
        poll(lambda: eng.stats().grid.decoded == 2 * n_bars, 60.0, "every listener event")
        stop.set()
        for t in readers:
            t.join(30)
        assert errors == []
        s = eng.stats()
        assert s.grid.listener_errors == 0 and s.grid.rejected == {}
        assert eng._cache.cached_indices() == list(range(n_bars - 59, n_bars + 1))
        # Same key, same partition: the update always lands after the original.
        for i in range(n_bars - 59, n_bars + 1):
            assert eng.get_placement("BTCUSDT", i) == placement_of(record(i, version=1), "BTCUSDT")


# -- ownership, read-only ------------------------------------------------------------------------------


def test_existing_client_is_not_shut_down_and_listener_is_removed(hz_cluster, hz_client, bars_map) -> None:
    name, m = bars_map
    eng = HazelcastOBEngine(config_for(hz_cluster, name), client=hz_client)
    listeners_before = _listener_count(hz_client)
    eng.close()
    eng.close()  # idempotent
    assert hz_client.lifecycle_service.is_running()
    assert _listener_count(hz_client) == listeners_before - 1  # its registration is gone
    # The client still works; a witness listener sees the put, the adapter (closed) does not.
    seen = threading.Event()
    reg = m.add_entry_listener(include_value=False, added_func=lambda e: seen.set())
    try:
        put(m, record(1))
        assert seen.wait(30.0)
    finally:
        m.remove_entry_listener(reg)
    assert eng.stats().closed and eng.stats().grid.events == 0


def _listener_count(client: Any) -> int:
    return len(client._listener_service._active_registrations)


def test_own_client_answers_from_cache_after_close(hz_cluster, bars_map) -> None:
    name, m = bars_map
    rec = record(3)
    put(m, rec)
    eng = HazelcastOBEngine(config_for(hz_cluster, name))
    assert eng.resolve(3).kind == "exact"
    eng.close()
    assert not eng.client.lifecycle_service.is_running()  # its own client is shut down
    # Lookups need no network: they still answer from the cache.
    assert eng.get_signal("BTCUSDT", 3) == signal_of(rec, "BTCUSDT")


def test_read_only_map_contents_and_counts_unchanged(hz_cluster, hz_client, bars_map) -> None:
    name, m = bars_map
    for i in range(1, 31):
        put(m, record(i))

    def snapshot() -> tuple[int, dict]:
        return m.size(), {k: v.to_string() for k, v in m.entry_set()}

    objects_before = {(o.service_name, o.name) for o in hz_client.get_distributed_objects()}
    before = snapshot()
    with HazelcastOBEngine(config_for(hz_cluster, name, cache_bars=20, stale_after_bars=2)) as eng:
        for i in range(25, 36):
            eng.step_live(list(ASSETS), i)
            for sym in ASSETS:
                eng.get_placement(sym, i)
                eng.get_signal(sym, T0 + i * SPACING)
            eng.get_market(i)
            eng.get_macro("BTCUSDT", i)
            eng.resolve(i)
        seeds = eng.stats().grid.seeds
        eng.refresh()  # a re-seed pass: reads only
        poll(lambda: eng.stats().grid.seeds >= seeds + 2, 30.0, "re-seed passes")
    assert snapshot() == before
    objects_after = {(o.service_name, o.name) for o in hz_client.get_distributed_objects()}
    assert objects_after == objects_before


def test_malformed_records_are_counted_not_raised(shared_engine, bars_map) -> None:
    _, m = bars_map
    m.put(1, HazelcastJsonValue('{"schema": 99}'))
    m.put(2, "not json at all")
    bad = record(3)
    bad["bar_idx"] = 4  # key and content disagree
    put_raw = HazelcastJsonValue(orjson.dumps(bad).decode())
    m.put(3, put_raw)
    put(m, record(5))
    assert shared_engine.wait_for_bar(5, 30.0)
    poll(lambda: sum(shared_engine.stats().grid.rejected.values()) == 3, 30.0, "3 rejections")
    s = shared_engine.stats().grid
    assert s.rejected == {"schema": 1, "not_json": 1, "key_mismatch": 1} and s.listener_errors == 0
    assert shared_engine.resolve(3).kind == "default"


# -- connection loss -----------------------------------------------------------------------------------


class _ConnectGate:
    """Test instrumentation: holds the adapter's client off the cluster while the gate is shut.

    Wraps the client's private connect functions, so the cluster stays up (the test keeps writing)
    while this one client cannot reconnect: a trader-side network outage, made deterministic.
    """

    def __init__(self, client: Any) -> None:
        self.open = threading.Event()
        self.open.set()
        cm = client._connection_manager
        for attr in ("_get_or_connect_to_member", "_get_or_connect_to_address"):
            real = getattr(cm, attr)
            setattr(cm, attr, self._gated(real))

    def _gated(self, real: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def connect(target: Any) -> Any:
            if not self.open.is_set():
                raise ConnectionRefusedError("gate shut by the test")
            return real(target)
        return connect


def test_survives_member_restart_and_reseeds_missed_bars(private_cluster: HzCluster, map_suffix: str) -> None:
    cluster = private_cluster
    name = "DOLPHIN_OBF_FEATURES" + map_suffix
    writer = cluster.client()
    m = writer.get_map(name).blocking()
    recs = {i: record(i) for i in range(1, 13)}
    for i in range(1, 6):
        put(m, recs[i])
    eng = HazelcastOBEngine(config_for(cluster, name, stale_after_bars=3, max_wait_ms=50,
                                       reconnect_backoff_max_s=0.5))
    try:
        gate = _ConnectGate(eng.client)
        assert eng.resolve(5).kind == "exact"
        writer.shutdown()

        # Outage: the member goes away; the adapter keeps answering from its cache.
        gate.open.clear()
        cluster.member.stop()
        poll(lambda: not eng.stats().grid.connected, 60.0, "the adapter to notice the outage")
        assert eng.get_placement("ETHUSDT", 5) == placement_of(recs[5], "ETHUSDT")
        t0 = time.perf_counter()
        res = eng.step_live(list(ASSETS), 6)
        assert time.perf_counter() - t0 < 5.0  # bounded by max_wait_ms, not by the outage
        assert (res.kind, res.bar_idx) == ("fallback", 5)
        assert eng.get_signal("BTCUSDT") == signal_of(recs[5], "BTCUSDT")  # current bar 6 -> bar 5
        assert eng.step_live(list(ASSETS), 9).kind == "default"  # 4 bars without news: neutral

        # The member is back and bars are written while the adapter is still cut off: missed bars.
        cluster.member.start()
        writer = cluster.client()
        m = writer.get_map(name).blocking()
        for i in (6, 7, 8):
            put(m, recs[i])
        assert eng.stats().grid.connected is False
        seeds_before = eng.stats().grid.seeds
        gate.open.set()
        for i in (6, 7, 8):
            assert eng.wait_for_bar(i, 60.0), f"missed bar {i} not re-seeded"
        s = eng.stats()
        assert s.grid.reconnects >= 1 and s.grid.connected
        assert s.cache.inserted.get("reseed", 0) == 3  # they can only have come from the re-seed
        assert eng.get_placement("SOLUSDT", 7) == placement_of(recs[7], "SOLUSDT")

        # New bars arrive through the re-registered listener once the re-seed passes are done.
        poll(lambda: eng.stats().grid.seeds >= seeds_before + 2 and not eng.stats().grid.reseed_pending,
             30.0, "both re-seed passes")
        listener_before = eng.stats().cache.inserted.get("listener", 0)
        put(m, recs[9])
        assert eng.wait_for_bar(9, 30.0)
        assert eng.stats().cache.inserted.get("listener", 0) == listener_before + 1
        assert eng.step_live(list(ASSETS), 9).kind == "exact"
    finally:
        eng.close()
        writer.shutdown()


# -- end to end with the real worker ---------------------------------------------------------------------


def _worker_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("obf-features-worker")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "obf_features_worker.cli"]


def test_end_to_end_with_the_real_worker(hz_cluster, hz_client, map_suffix: str, tmp_path: Path) -> None:
    from obf_features_worker.engine.feature_engine import FeatureEngine
    from obf_features_worker.engine.snapshot import parse_snapshot, payload_json

    input_map = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    features_map = hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking()
    health_map = hz_client.get_map("DOLPHIN_OBF_HEALTH" + map_suffix).blocking()
    env = {**os.environ, "HZ_CLUSTER": hz_cluster.cluster_name, "HZ_MEMBERS": ",".join(hz_cluster.members)}
    log_file = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen(
        [*_worker_cmd(), "--map-suffix", map_suffix, "--clock", "scan", "--scan-key", "latest_eigen_scan",
         "--scan-field", "scan_number", "--max-age-s", "3600", "--assets", ",".join(ASSETS),
         "--worker-id", "e2e-test"],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
    )
    rng = random.Random(11)
    engine = FeatureEngine(universe=ASSETS)  # the reference, fed the very snapshots the worker used
    sent: dict[tuple[str, int], Any] = {}  # (symbol, _push_seq) -> Snapshot
    cfg = config_for(hz_cluster, "DOLPHIN_OBF_FEATURES" + map_suffix, max_wait_ms=50)
    try:
        poll(lambda: health_map.size() >= 1 or proc.poll() is not None, 180.0, "worker health")
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        with HazelcastOBEngine(cfg, client=hz_client) as eng:
            for bar_idx in range(1, 7):
                now = time.time()
                for k, sym in enumerate(ASSETS):
                    bid = [rng.uniform(1e4, 1e6) for _ in range(10)]
                    ask = [rng.uniform(1e4, 1e6) for _ in range(10)]
                    seq = bar_idx * 10 + k
                    payload = payload_json(now - 0.01, bid, ask, seq=seq)
                    input_map.put(f"asset_{sym}_ob", payload)
                    sent[sym, seq] = parse_snapshot(f"asset_{sym}_ob", payload, now=now)
                input_map.put("latest_eigen_scan",
                              HazelcastJsonValue(orjson.dumps({"scan_number": bar_idx}).decode()))
                assert eng.wait_for_bar(bar_idx, 60.0), (tmp_path / "worker.log").read_text()[-3000:]
                assert eng.step_live(list(ASSETS), bar_idx).kind == "exact"

                written = orjson.loads(features_map.get(bar_idx).to_string())
                # Events of different keys may overtake each other: the worker may close the bar
                # before a snapshot's event reached it. Its record names each snapshot by seq.
                used = {sym: sent[sym, seq] for sym, seq in zip(written["symbols"], written["seq"], strict=True)}
                expected = engine.step(bar_idx, written["bar_ts"], used)
                w_view, e_view = asset_view(written), asset_view(expected)
                assert written["state"] == expected["state"]
                for sym in used:
                    got_p, got_s = eng.get_placement(sym, bar_idx), eng.get_signal(sym, bar_idx)
                    assert dataclasses.asdict(got_p) == w_view[sym]["placement"] == e_view[sym]["placement"]
                    assert dataclasses.asdict(got_s) == w_view[sym]["signal"] == e_view[sym]["signal"]
                assert dataclasses.asdict(eng.get_market(bar_idx)) == written["market"] == expected["market"]
                assert written["macro"] == expected["macro"]
                assert eng.get_macro(bar_idx) == macro_of(written)
                assert eng.get_bar(bar_idx).worker_id == "e2e-test"
            assert set(written["symbols"]) == set(ASSETS)  # by the last bar every asset is in
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log_file.close()
