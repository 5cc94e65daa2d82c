"""The bar loop end to end in-process: ``Worker.run()`` over the fake grid and a scripted bar
clock: connect, subscribe (initial read first), contend for the lease, close the bars the clock
gives, stop on request, and the ordered stop (last health ``stopping``, lease released, client
closed, exit 0); a grid that gives up ends the run with 1. No member, no threads but the test's."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from obf_features_worker.engine.snapshot import payload_json
from obf_features_worker.service.bars import BarTick
from obf_features_worker.service.config import WorkerConfig
from obf_features_worker.service.lease import LeaderLease, parse_lease
from obf_features_worker.service.worker import Worker
from tests.fakes import FakeClock, FakeCluster, FakeGrid, WorkerFactory

B0 = int(time.time()) - 1000


class ScriptedClock:
    """A bar clock that closes the bars it is given, one per wait, then calls ``then``."""

    kind = "scan"

    def __init__(self, ticks: list[BarTick], then: Callable[[], None]) -> None:
        self.ticks = list(ticks)
        self.then = then
        self.interrupted = 0

    def wait_tick(self, stop: threading.Event, timeout: float) -> BarTick | None:
        if self.ticks:
            return self.ticks.pop(0)
        self.then()
        return None

    def interrupt(self) -> None:
        self.interrupted += 1

    def stats(self) -> dict[str, Any]:
        return {}


class LeasedWorker(Worker):
    """The lease on the fake cluster's clock, moved on after every bar."""

    def __init__(self, config: WorkerConfig, *, grid: FakeGrid, fake_clock: FakeClock, **kw: Any) -> None:
        self._fake_clock = fake_clock
        super().__init__(config, grid=grid, monotonic=fake_clock.mono, **kw)

    def make_lease(self, min_epoch: int) -> LeaderLease:
        return LeaderLease(self.grid.lease_map(), self.config.worker_id, self.config.lease_settings(),
                           min_epoch=min_epoch, clock=self._fake_clock.mono, wall=self._fake_clock.wall)

    def after_bar(self, tick: BarTick, record: dict[str, Any], written: bool) -> None:
        # Over half a ttl per bar: the first term settles within two bars, and the leader, which
        # refreshes at every bar, keeps its lease.
        self._fake_clock.t += self.config.lease_settings().ttl_s * 0.6


def test_run_closes_the_bars_then_stops_in_order(workers: WorkerFactory) -> None:
    clock = FakeClock()
    grid = FakeGrid(FakeCluster(clock))
    for i in range(3):
        grid.inputs[f"asset_A{i}AUSDT_ob"] = payload_json(B0 - 0.2, [1e5, 2e5], [1e5, 1e5], seq=1)
    ticks = [BarTick(B0 + i, float(B0 + i), float(B0 + i)) for i in range(4)]
    holder: list[Worker] = []
    bar_clock = ScriptedClock(ticks, then=lambda: holder[0].request_stop("test"))
    cfg = WorkerConfig(worker_id="w-run", clock="scan", bar_seconds=1.0, max_age_s=1e6)
    w, _ = workers(cfg, grid, cls=LeasedWorker, fake_clock=clock, clock=bar_clock)
    holder.append(w)

    assert w.run() == 0
    assert w.stop_reason == "test" and bar_clock.interrupted >= 1
    assert grid.asset_listeners and grid.closed and not grid.connected
    assert sorted(grid.bars) == [t.bar_idx for t in ticks] and w.health.bars_written == 4
    assert w.health.restored_from_bar is None and w.health.cold_start_reason == "missing"
    last = grid.health[-1]
    assert last["state"] == "stopping" and last["role"] == "leader"
    # Released after the last write: the one lease entry says who released it.
    (value,) = [v for v, _ in grid.c.lease.data.values()]
    lease = parse_lease(value.to_string())
    assert lease is not None and lease.holder is None and lease.released_by == "w-run"


def test_a_grid_that_gives_up_ends_the_run_with_1(workers: WorkerFactory) -> None:
    clock = FakeClock()
    grid = FakeGrid(FakeCluster(clock))

    def give_up() -> None:
        grid.closed = True  # the client shut down: its connect timeout ran out

    cfg = WorkerConfig(worker_id="w-gone", clock="scan", bar_seconds=1.0)
    w, _ = workers(cfg, grid, cls=LeasedWorker, fake_clock=clock, clock=ScriptedClock([], then=give_up))
    assert w.run() == 1  # GridClosed: logged, the ordered stop still runs
    assert grid.closed and w.health.state == "stopping"


def test_stop_before_connecting_returns_0_without_a_lease(workers: WorkerFactory) -> None:
    cfg = WorkerConfig(worker_id="w-early", clock="scan", bar_seconds=1.0)
    w, grid = workers(cfg)
    w.request_stop("SIGTERM")
    assert w.run() == 0
    assert w.lease is None and grid.closed and grid.health == []
