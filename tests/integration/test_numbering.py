"""Bar numbering restarts end to end (issue 13): a worker on the scan clock crossing a forced UTC
midnight (no --scan-field: the count restarts at 0) and an upstream scan-number restart (the
field goes back with a later scan timestamp), with an adapter that was running before. Every
bar after the restart resolves exact, to the new numbering's record (never to the previous
numbering's record of the same number).

The worker runs in-process (a thread) so the midnight can be forced: its scan clock takes each
scan's receipt time from the scan value (``at``), which the test sets just before and just after
a UTC midnight. Everything else is the real worker against a real member.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import orjson
from hazelcast.core import HazelcastJsonValue

from engine_adapter import AdapterConfig, HazelcastOBEngine
from obf_contract.record import SCHEMA_VERSION
from obf_features_worker.service.bars import ScanClock
from obf_features_worker.service.config import load_config
from obf_features_worker.service.worker import Worker
from tests.cluster import HzCluster
from tests.factories import columns
from tests.integration.feeder import DEFAULT_SYMBOLS, TestFeeder, json_value, wait_for

SCAN_KEY = "latest_eigen_scan"


class ForcedTimeScanClock(ScanClock):
    """The real scan clock, its receipt time taken from the scan's ``at`` field (test only)."""

    def trigger(self, value: object, received_at: float | None = None) -> None:
        at = json_value(value).get("at")
        super().trigger(value, received_at if at is None else float(at))



def start_worker(cluster: HzCluster, suffix: str, clock: ScanClock, *extra: str) -> tuple[Worker, threading.Thread]:
    cfg, _ = load_config(["--clock", "scan", "--scan-key", SCAN_KEY, "--bar-seconds", "1",
                          "--assets", ",".join(DEFAULT_SYMBOLS), *extra],
                         environ={"HZ_MEMBERS": ",".join(cluster.members), "HZ_CLUSTER": cluster.cluster_name,
                                  "OBF_MAP_SUFFIX": suffix})
    worker = Worker(cfg, clock=clock)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    return worker, thread


def health_up(client: Any, suffix: str) -> bool:
    return client.get_map("DOLPHIN_OBF_HEALTH" + suffix).blocking().size() > 0


def run_scans(inp: Any, eng: HazelcastOBEngine, scans: list[tuple[int, dict[str, Any]]]) -> list[tuple[str, float]]:
    """Publish each scan, then step the adapter like the trader: (kind, bar_ts of the answer)."""
    out = []
    for trader_idx, scan in scans:
        inp.put(SCAN_KEY, HazelcastJsonValue(orjson.dumps(scan).decode()))
        res = eng.step_live(list(DEFAULT_SYMBOLS), trader_idx)
        bar = eng.get_bar(trader_idx)
        out.append((res.kind, math.nan if bar is None else bar.bar_ts))
        # The trader's reads of the current bar answer from that same bar.
        assert bar is None or eng.get_macro().agreement_pct == bar.market.agreement_pct  # type: ignore[union-attr]
    return out


def adapter(cluster: HzCluster, suffix: str) -> HazelcastOBEngine:
    return HazelcastOBEngine(AdapterConfig(cluster_name=cluster.cluster_name, members=tuple(cluster.members),
                                           map_name="DOLPHIN_OBF_FEATURES" + suffix, max_wait_ms=10_000,
                                           stale_after_bars=2))


def test_scan_count_crossing_a_forced_utc_midnight(hz_cluster: HzCluster, hz_client: Any, feeder: TestFeeder,
                                                   map_suffix: str) -> None:
    inp = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    # The last UTC midnight: snapshots (now) are then newer than the bars, which counts as present.
    midnight = math.floor(time.time() / 86_400) * 86_400.0
    worker, thread = start_worker(hz_cluster, map_suffix, ForcedTimeScanClock(None))
    eng = adapter(hz_cluster, map_suffix)  # running before the restart
    try:
        wait_for(lambda: health_up(hz_client, map_suffix), 30, "worker up")
        before = [(i, {"at": midnight - 4.0 + i * 0.5}) for i in range(5)]  # bars 0..4 of the day before
        after = [(i, {"at": midnight + 1.0 + i * 0.5}) for i in range(6)]  # bars 0..5 of the new day
        got = run_scans(inp, eng, before)
        assert got == [("exact", s["at"]) for _, s in before]
        got = run_scans(inp, eng, after)
        # Every bar after the midnight: exact, and the new day's record (its bar_ts), never yesterday's.
        assert got == [("exact", s["at"]) for _, s in after]
        s = eng.stats()
        assert s.cache.numbering_restarts >= 1 and s.steps["exact"] == 11 and s.non_exact_warnings == 0
        # The worker removed the previous numbering's keys: only the new day's bars remain.
        keys = sorted(hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking().key_set())
        assert keys == list(range(6))
    finally:
        eng.close()
        worker.request_stop("test")
        thread.join(30)
    assert not thread.is_alive()


def test_trader_lagging_the_worker_across_midnight(hz_cluster: HzCluster, hz_client: Any, feeder: TestFeeder,
                                                  map_suffix: str) -> None:
    """The worker's new numbering arrives before the trader steps into it (the trader a bar or two
    behind at midnight): the trader's step_live(0) must not lose the new bars 0 and 1 (review of
    issue 13: it used to wipe them and refuse their re-insert), and every new bar resolves exact."""
    inp = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    midnight = math.floor(time.time() / 86_400) * 86_400.0
    worker, thread = start_worker(hz_cluster, map_suffix, ForcedTimeScanClock(None))
    eng = adapter(hz_cluster, map_suffix)
    try:
        wait_for(lambda: health_up(hz_client, map_suffix), 30, "worker up")
        before = [(i, {"at": midnight - 4.0 + i * 0.5}) for i in range(5)]
        assert run_scans(inp, eng, before) == [("exact", s["at"]) for _, s in before]
        after = [(i, {"at": midnight + 1.0 + i * 0.5}) for i in range(6)]
        for _, scan in after[:2]:  # the worker's bars 0 and 1 of the new day, the trader not stepping
            inp.put(SCAN_KEY, HazelcastJsonValue(orjson.dumps(scan).decode()))
        # The trader is still on yesterday's bar 4: wait until the adapter holds the new bars 0 and 1.
        wait_for(lambda: eng.stats().cache.numbering_restarts >= 1 and eng.stats().cache.newest_idx == 1, 20,
                 "the adapter holds the new numbering's bars 0 and 1")
        got = []
        for k, (trader_idx, scan) in enumerate(after):
            if k >= 2:
                inp.put(SCAN_KEY, HazelcastJsonValue(orjson.dumps(scan).decode()))
            res = eng.step_live(list(DEFAULT_SYMBOLS), trader_idx)
            bar = eng.get_bar(trader_idx)
            got.append((res.kind, math.nan if bar is None else bar.bar_ts))
        assert got == [("exact", s["at"]) for _, s in after]
        s = eng.stats()
        assert s.cache.ignored.get("old_numbering", 0) == 0 and s.non_exact_warnings == 0
    finally:
        eng.close()
        worker.request_stop("test")
        thread.join(30)
    assert not thread.is_alive()


def test_upstream_scan_number_restart(hz_cluster: HzCluster, hz_client: Any, feeder: TestFeeder,
                                      map_suffix: str) -> None:
    inp = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    worker, thread = start_worker(hz_cluster, map_suffix, ScanClock("scan_number"), "--scan-field", "scan_number")
    eng = adapter(hz_cluster, map_suffix)
    t0 = time.time()
    try:
        wait_for(lambda: health_up(hz_client, map_suffix), 30, "worker up")
        before = [(n, {"scan_number": n, "timestamp": t0 + k}) for k, n in enumerate(range(100, 105))]
        got = run_scans(inp, eng, before)
        assert [kind for kind, _ in got] == ["exact"] * 5
        # A repeat of an old scan (lower number, older time) is ignored: no bar 101 again.
        inp.put(SCAN_KEY, HazelcastJsonValue(orjson.dumps({"scan_number": 101, "timestamp": t0 + 1}).decode()))
        # The upstream restarts: numbers from 3, with later scan times.
        after = [(n, {"scan_number": n, "timestamp": t0 + 10 + k}) for k, n in enumerate(range(3, 9))]
        got = run_scans(inp, eng, after)
        assert [kind for kind, _ in got] == ["exact"] * 6
        for (n, _), (_, bar_ts) in zip(after, got):
            rec = json_value(hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking().get(n))
            assert rec["bar_ts"] == bar_ts  # the answer is the new numbering's record
        assert worker.clock.stats()["restarts"] == 1 and worker.clock.stats()["ignored"] >= 1
        keys = sorted(hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking().key_set())
        assert keys == list(range(3, 9))  # 100..104 were removed with the restart
        assert eng.stats().non_exact_warnings == 0
    finally:
        eng.close()
        worker.request_stop("test")
        thread.join(30)
    assert not thread.is_alive()


def test_the_adapter_follows_removals_of_its_newest_bars(hz_cluster: HzCluster, hz_client: Any,
                                                        map_suffix: str) -> None:
    """The worker's removal of the previous numbering's keys (remove_all with a predicate, as its
    retention does) reaches the adapter's cache as entry removals: those bars go."""
    from hazelcast import predicate

    features = hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking()
    t0 = time.time()

    def rec(idx: int) -> str:
        return orjson.dumps({"schema": SCHEMA_VERSION, "bar_idx": idx, "bar_ts": t0 + idx, "n_assets": 0,
                             "n_present": 0, **columns({}), "market": None, "macro": None,
                             "degraded": False}).decode()

    for i in range(1, 6):
        features.put(i, HazelcastJsonValue(rec(i)))
    eng = adapter(hz_cluster, map_suffix)
    try:
        assert eng.stats().cache.bars == 5
        foreign = hz_cluster.foreign_client()
        try:
            foreign.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking().remove_all(
                predicate.greater("__key", 2))
        finally:
            foreign.shutdown()
        wait_for(lambda: eng.stats().cache.newest_idx == 2, 10, "removals followed")
        s = eng.stats().cache
        assert s.removed == 3 and s.bars == 2 and eng.resolve(4).kind == "fallback"
        events = eng.stats().grid.events
        features.remove_all(predicate.less_or_equal("__key", 1))  # a retention removal of an old bar
        wait_for(lambda: eng.stats().grid.events == events + 1, 10, "the removal event")
        assert eng.stats().cache.bars == 2  # old bars stay: the adapter keeps more than the worker
        assert eng.stats().grid.listener_errors == 0
    finally:
        eng.close()
