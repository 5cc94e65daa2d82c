"""Hot standby against a real member: two workers on the same maps, exactly one writes.

The leader is SIGKILLed; the standby takes over within the lease ttl + one bar and back-fills the
bars of the gap from its own warm engine, so no bar is missing. A third worker then takes over
from the second after a clean SIGTERM (lease released: at its next lease read, a quarter bar). Throughout, an entry
listener counts the writes per bar key (one each: no bar written twice, by anyone), and one
``FeatureEngine`` stepped over every record's snapshots reproduces every record exactly
(``recompute``): the takeovers did not restart the lookbacks.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.cluster import HzCluster
from tests.integration.feeder import TestFeeder, WorkerProcess, wait_for
from tests.integration.test_worker import assert_contiguous, health, recompute, records, worker_env

BAR_S = 2.0  # interval bars >= ~1.8 s (bar_idx below 1e9, config.py)
TTL_S = 3 * BAR_S  # the worker's default lease ttl: 3 bars (LeaseSettings.for_bar_seconds)
SLACK_S = 1.5  # process scheduling on a busy CI machine


class WriteCounter:
    """Entry-added / entry-updated events per key of the features map (reactor thread)."""

    def __init__(self, client: Any, map_name: str) -> None:
        self._lock = threading.Lock()
        self.added: Counter[int] = Counter()
        self.updated: Counter[int] = Counter()
        self._map = client.get_map(map_name)
        self._id = self._map.add_entry_listener(include_value=False, added_func=self._on_added,
                                                updated_func=self._on_updated).result()

    def _on_added(self, event: Any) -> None:
        with self._lock:
            self.added[event.key] += 1

    def _on_updated(self, event: Any) -> None:
        with self._lock:
            self.updated[event.key] += 1

    def close(self) -> None:
        self._map.remove_entry_listener(self._id).result()


def test_standby_takes_over_without_gaps_double_writes_or_a_lookback_restart(
        hz_cluster: HzCluster, hz_client, map_suffix: str, tmp_path: Path) -> None:
    feeder_client = hz_cluster.client()
    feeder = TestFeeder(feeder_client, "DOLPHIN_FEATURES" + map_suffix).start()
    counter = WriteCounter(hz_client, "DOLPHIN_OBF_FEATURES" + map_suffix)
    env = worker_env(hz_cluster, map_suffix)
    ids = {n: f"hs-{n}{map_suffix}" for n in ("a", "b", "c")}
    procs: dict[str, WorkerProcess] = {}

    def start(n: str) -> None:
        procs[n] = WorkerProcess(["--bar-seconds", str(BAR_S), "--worker-id", ids[n], "--retain-bars", "200"], env,
                                 tmp_path, name=f"worker-{n}")

    def h(n: str) -> dict[str, Any] | None:
        return health(hz_client, map_suffix, ids[n])

    try:
        start("a")
        start("b")
        wait_for(lambda: (ha := h("a")) and (hb := h("b")) and {ha["role"], hb["role"]} == {"leader", "standby"}
                 and max(ha["bars_written"], hb["bars_written"]) >= 4, 30, "a leader with 4 bars and a standby")
        leader, standby = ("a", "b") if h("a")["role"] == "leader" else ("b", "a")
        assert h(standby)["bars_written"] == 0 and h(standby)["epoch"] is None and h(leader)["epoch"] == 1

        procs[leader].stop(signal.SIGKILL)
        t_kill = time.monotonic()
        wait_for(lambda: h(standby)["role"] == "leader", TTL_S + BAR_S + 10, "takeover")
        took = time.monotonic() - t_kill
        # Not before the dead leader's term could have ended (the leader refreshes once per bar: its
        # last refresh was at most a bar before the crash). A standby reads the lease every quarter
        # bar, so it sees the last refresh within a quarter bar, counts the ttl from there and takes
        # over at its first read after it: within ttl + half a bar of the crash. The bound asserted
        # is the issue's, ttl + one bar, with no further slack (the other half bar is the slack).
        assert TTL_S - BAR_S - 0.5 <= took <= TTL_S + BAR_S, took
        assert h(standby)["epoch"] == 2
        first_own = h(standby)["last_bar_idx"]
        wait_for(lambda: h(standby)["last_bar_idx"] >= first_own + 3, 15, "3 bars by the new leader")

        # A clean handover: the third worker follows the leader's checkpoints, then gets the
        # released lease at its next tick.
        start("c")
        wait_for(lambda: (hc := h("c")) and hc["role"] == "standby" and hc["last_bar_idx"] is not None
                 and hc["restored_from_bar"] is not None, 30, "third worker warm as standby")
        assert procs[standby].stop() == 0, procs[standby].log_text()[-3000:]
        t_stop = time.monotonic()
        wait_for(lambda: h("c")["role"] == "leader", BAR_S + 10, "handover after release")
        assert time.monotonic() - t_stop <= BAR_S / 4 + SLACK_S  # the next quarter-bar lease read
        assert h("c")["epoch"] == 3
        last_c = h("c")["last_bar_idx"]
        wait_for(lambda: h("c")["last_bar_idx"] >= last_c + 3, 15, "3 bars by the third worker")
        assert procs["c"].stop() == 0, procs["c"].log_text()[-3000:]
    finally:
        for p in procs.values():
            p.stop(signal.SIGKILL)
        feeder.stop()
        feeder_client.shutdown()

    recs = records(hz_client, map_suffix)
    keys = sorted(recs)
    assert_contiguous(keys)  # no bar missing: the gap of each takeover was back-filled
    wait_for(lambda: sum(counter.added.values()) >= len(keys), 10, "listener caught up")
    counter.close()
    assert counter.updated == Counter() and set(counter.added.values()) == {1}, (counter.added, counter.updated)
    producers = [(recs[k]["producer"]["epoch"], recs[k]["producer"]["worker_id"]) for k in keys]
    assert producers == sorted(producers, key=lambda p: p[0])  # epochs never go back with bar_idx
    assert set(producers) == {(1, ids[leader]), (2, ids[standby]), (3, ids["c"])}
    # Every record, across both takeovers, is one uninterrupted engine's output.
    recompute(feeder, recs)
