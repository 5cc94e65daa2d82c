"""Grid data loss, worker side (issue 17), against a real member:

- A single member restarted empty under a running worker: the records written before the restart
  are re-published from the worker's memory and the checkpoint is back, so the map is whole again
  (before the change: every bar written before the restart was gone for good).
- A worker SIGKILLed and restarted after more bars than ``--checkpoint-max-age-bars``: it continues
  from the checkpoint in the grid plus the records written since (no cold start while state
  exists) and says how many bars it missed (before the change: a cold start, histories and EMA
  references reset).

Synchronisation is on the grid with deadlines; the member outage and the worker's downtime are the
scenarios' own waits and say so.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.cluster import HzCluster
from tests.integration.fault_tools import ControlledFeeder
from tests.integration.feeder import WorkerProcess, json_value, wait_for
from tests.integration.test_worker import assert_contiguous, health, worker_env

BAR_S = 2.0
SYMBOLS = ("AAAUSDT", "BBBUSDT")


def checkpoint_bar(client: Any, suffix: str) -> int | None:
    raw = client.get_map("DOLPHIN_OBF_STATE" + suffix).blocking().get("checkpoint")
    return None if raw is None else int(json_value(raw)["body"]["bar_idx"])


def test_single_member_restarted_empty_the_worker_republishes(private_cluster: HzCluster, map_suffix: str,
                                                              tmp_path: Path, record_property: Any) -> None:
    cluster = private_cluster
    client = cluster.client(cluster_connect_timeout=120.0)
    features = client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking()
    feeder = ControlledFeeder(client, "DOLPHIN_FEATURES" + map_suffix, SYMBOLS).start()
    worker_id = "t-loss-republish" + map_suffix
    try:
        with WorkerProcess(["--bar-seconds", str(BAR_S), "--worker-id", worker_id, "--retain-bars", "500",
                            "--reconnect-backoff-max-s", "1"], worker_env(cluster, map_suffix), tmp_path) as w:
            wait_for(lambda: (h := health(client, map_suffix, worker_id)) and h["bars_written"] >= 4, 40, "bars")
            pre = sorted(features.key_set())
            assert len(pre) >= 4 and checkpoint_bar(client, map_suffix) is not None
            assert cluster.member is not None
            cluster.member.stop()
            cluster.member.start()  # same address, every map empty (the scenario)
            t_back = time.monotonic()

            def whole() -> bool:
                keys = set(features.key_set())
                cp = checkpoint_bar(client, map_suffix)
                return set(pre) <= keys and cp is not None and cp >= max(keys) - 1

            wait_for(whole, 60, "the records written before the restart and the checkpoint back")
            repaired_s = time.monotonic() - t_back
            h = wait_for(lambda: (h := health(client, map_suffix, worker_id)) and h["republished_records"] and h,
                         20, "health counts the re-published records")
            last = h["last_bar_idx"]
            wait_for(lambda: health(client, map_suffix, worker_id)["last_bar_idx"] >= last + 1, 15, "one more bar")
            assert w.stop() == 0, w.log_text()[-3000:]
            log_text = w.log_text()
        keys = sorted(features.key_set())
        assert_contiguous(keys)  # the pre-restart bars, the outage's (back-filled) and the new ones
        assert keys[0] == pre[0]
        assert "grid lost bar records: re-published" in log_text
        summary = (f"single member restarted empty: records_before={len(pre)} republished={h['republished_records']} "
                   f"map_whole_after_s={repaired_s:.1f} bar_s={BAR_S:g} bars_now={len(keys)}")
        print(summary)
        record_property("republish_after_member_restart", summary)
        # "within a bar or two" of the worker's reconnect (its backoff is 1 s; the member's start
        # is in the measured time too)
        assert repaired_s <= 2 * BAR_S + 10, summary
    finally:
        feeder.stop()
        client.shutdown()


def test_a_restart_after_a_long_gap_continues_from_the_grids_state(hz_cluster: HzCluster, hz_client: Any,
                                                                   map_suffix: str, tmp_path: Path,
                                                                   record_property: Any) -> None:
    feeder = ControlledFeeder(hz_client, "DOLPHIN_FEATURES" + map_suffix, SYMBOLS).start()
    env = worker_env(hz_cluster, map_suffix)
    ids = ("t-loss-gap-a" + map_suffix, "t-loss-gap-b" + map_suffix)
    args = ["--bar-seconds", str(BAR_S), "--retain-bars", "500", "--checkpoint-max-age-bars", "2"]
    try:
        with WorkerProcess([*args, "--worker-id", ids[0]], env, tmp_path, name="a") as a:
            wait_for(lambda: (h := health(hz_client, map_suffix, ids[0])) and h["bars_written"] >= 3, 40, "bars")
            a.stop(signal.SIGKILL)
        cp_bar = checkpoint_bar(hz_client, map_suffix)
        assert cp_bar is not None
        # The state a successor rebuilds: the checkpoint plus the records written after it.
        state_bar = max(hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking().key_set())
        assert state_bar >= cp_bar
        # Down for 4 bars (the scenario): more than --checkpoint-max-age-bars, and past the lease ttl.
        time.sleep(4 * BAR_S)
        with WorkerProcess([*args, "--worker-id", ids[1]], env, tmp_path, name="b") as b:
            h = wait_for(lambda: (h := health(hz_client, map_suffix, ids[1])) and h["last_bar_idx"] is not None and h,
                         40, "the restarted worker's first bar")
            assert h["cold_start_reason"] is None, (h["cold_start_reason"], b.log_text()[-2000:])
            assert h["restored_from_bar"] == state_bar
            assert h["restore_replayed_records"] == state_bar - cp_bar
            gap = h["restore_gap_bars"]
            assert gap is not None and gap >= 3, gap
            assert f"gap_bars={gap}" in b.log_text()
            first = state_bar + gap + 1  # the first bar the restarted worker stepped: its record says so
            raw = wait_for(lambda: hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking().get(first),
                           20, "the restarted worker's first record")
            assert json_value(raw)["gap_bars"] == gap
            assert b.stop() == 0, b.log_text()[-3000:]
        summary = (f"worker restarted after 4 bars down: checkpoint_bar={cp_bar} restored_from_bar={state_bar} "
                   f"gap_bars={gap} (max age 2)")
        print(summary)
        record_property("warm_restart_after_gap", summary)
        assert gap <= 4 + 10  # the bars down, plus the second process's start-up
    finally:
        feeder.stop()
