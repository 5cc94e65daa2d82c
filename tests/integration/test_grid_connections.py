"""The worker's Grid on a real member: the bar path and the events on two client connections, the
overload probe (the worker's own health entry coming back through the events connection), and
shedding: the events connection dropped, the grid still open, then listening again on a new one."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from obf_features_worker.service.config import WorkerConfig
from obf_features_worker.service.grid import Grid
from tests.cluster import HzCluster
from tests.integration.feeder import wait_for


def _grid(cluster: HzCluster, suffix: str, worker_id: str) -> Grid:
    m = {name: base + suffix for name, base in (("input_map", "DOLPHIN_FEATURES"), ("scan_map", "DOLPHIN_FEATURES"),
                                                ("features_map", "DOLPHIN_OBF_FEATURES"),
                                                ("health_map", "DOLPHIN_OBF_HEALTH"),
                                                ("latest_map", "DOLPHIN_OBF_LATEST"),
                                                ("state_map", "DOLPHIN_OBF_STATE"))}
    cfg = WorkerConfig(worker_id=worker_id, cluster_name=cluster.cluster_name, members=tuple(cluster.members),
                       bar_seconds=2.0, **m)
    return Grid(cfg)


def _health(updated_at: float) -> tuple[str, float]:
    return orjson.dumps({"worker_id": "w", "updated_at": updated_at}).decode(), updated_at


def test_two_connections_probe_and_shedding(hz_cluster: HzCluster, hz_client: Any, map_suffix: str) -> None:
    grid = _grid(hz_cluster, map_suffix, "t-conn" + map_suffix)
    got: dict[str, str] = {}
    cond = threading.Condition()
    hold, held = threading.Event(), threading.Event()

    def on_entry(key: Any, value: Any, received_at: float) -> None:
        if key == "asset_HOLDUSDT_ob" and not hold.is_set():
            held.set()
            hold.wait(60)  # the events reactor stays busy: every event behind this one waits
        with cond:
            got[key] = value
            cond.notify_all()

    inputs = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    try:
        assert grid.connect(threading.Event())
        assert grid.bars._client is not grid.events._client  # two clients, two connections, two reactors
        grid.add_asset_listener(on_entry)
        inputs.put("asset_AAAUSDT_ob", '{"v": 1}')
        with cond:
            assert cond.wait_for(lambda: got.get("asset_AAAUSDT_ob") == '{"v": 1}', 10)

        # The probe: a health write on the bar path comes back through the events connection.
        grid.put_health(*_health(time.time()))
        wait_for(lambda: grid.events_lag_s is not None, 10, "the probe's first event")
        assert grid.events_lag_s is not None and 0 <= grid.events_lag_s < 1.0
        assert grid.events_live() and grid.events_sheds == 0

        # A real backlog past shed_lag_s (one bar, 2 s): the events reactor is held inside a
        # callback, so the health writes acknowledged on the bar path do not come back.
        grid.shed_cooldown_s = 1.0
        grid._no_shed_before = 0.0  # no grace (5 bars normally: the first bars stall the whole process)
        inputs.put("asset_HOLDUSDT_ob", '{"v": 0}')
        assert held.wait(10)
        grid.put_health(*_health(time.time()))
        grid.put_health(*_health(time.time()))
        try:
            wait_for(lambda: grid.events_sheds == 1, 15, "the shed")
        finally:
            hold.set()
        assert "asset_AAAUSDT_ob" in grid.read_assets()  # pulled on the bar path's connection meanwhile
        states = grid.connection_states()
        assert not grid.closed and grid.connected  # the worker carries on: bars still go out
        assert states["events"]["sheds"] == 1 and states["bars"]["connected"] is True
        assert states["events"]["shed"] is True and states["events"]["connected"] is True  # on purpose
        grid.write_bar(7, '{"bar_idx": 7}')  # the bar path works while the events are shed
        assert hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking().get(7).to_string() == '{"bar_idx": 7}'

        # After the cool-down it listens again on a new connection, with the same callback.
        wait_for(grid.events_live, 20, "listening again")
        assert grid.connection_states()["events"]["connected"] is True and not grid.closed
        inputs.put("asset_AAAUSDT_ob", '{"v": 2}')
        with cond:
            assert cond.wait_for(lambda: got.get("asset_AAAUSDT_ob") == '{"v": 2}', 10)
        assert grid.listener_errors == 0

        # Two health documents acknowledged 5 s ago whose events have not come back (the events
        # queue is that far behind) shed again without waiting for the events.
        with grid._lock:
            grid._unechoed.extend([[1.0, time.monotonic() - 5.0], [2.0, time.monotonic() - 5.0]])
        wait_for(lambda: grid.events_sheds == 2, 10, "the second shed")
        wait_for(grid.events_live, 20, "listening again")
        assert grid.listener_errors == 0 and not grid.closed
    finally:
        grid.shutdown()
    assert grid.closed and not grid.connected


def test_listening_again_on_a_connection_never_registers_twice(hz_cluster: HzCluster, hz_client: Any,
                                                               map_suffix: str) -> None:
    """review 2, finding 2: a retried registration (the worker's subscribe retry, the re-listen
    loop) must not add a second asset listener on the same connection: every event would be
    decoded twice (half the ingest ceiling; the copies counted as stale_seq rejects)."""
    grid = _grid(hz_cluster, map_suffix, "t-once" + map_suffix)
    seen: list[str] = []
    cond = threading.Condition()

    def on_entry(key: Any, value: Any, received_at: float) -> None:
        with cond:
            seen.append(value)
            cond.notify_all()

    inputs = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    try:
        assert grid.connect(threading.Event())
        grid.add_asset_listener(on_entry)
        registrations = grid.events._client._listener_service._active_registrations
        before = len(registrations)  # the asset listener, the probe (and the client's own)
        grid._listen(grid.events)  # a retry after a later step failed
        assert len(registrations) == before
        for v in range(1, 4):
            inputs.put("asset_ONCEUSDT_ob", f'{{"v": {v}}}')
        with cond:  # events of one key arrive in order: the copies of v1, v2 would come before v3's last
            assert cond.wait_for(lambda: '{"v": 3}' in seen, 10)
        inputs.put("asset_ONCEUSDT_ob", '{"v": 4}')
        with cond:
            assert cond.wait_for(lambda: '{"v": 4}' in seen, 10)
        assert seen == ['{"v": 1}', '{"v": 2}', '{"v": 3}', '{"v": 4}']
    finally:
        grid.shutdown()
