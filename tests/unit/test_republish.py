"""Issue 17, worker side: records the grid lost are re-published from memory, and a restarted
worker continues from the newest state in the grid whatever its age (no cold start while state
exists). In-process over the shared in-memory grid of test_worker_standby."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from obf_features_worker.service.republish import RecentRecords, Republisher
from obf_features_worker.service.worker import Worker
from tests.fakes import FakeClock, FakeCluster, FakeGrid, WorkerFactory
from tests.unit.test_worker_standby import (
    B0,
    BAR_S,
    ClockedWorker,
    Start,
    check_records,
    config,
    reference,
    run_bar,
    without_producer,
)


@pytest.fixture
def start(workers: WorkerFactory) -> Start:
    """A connected worker contending for the lease on its own grid of ``cluster`` (as in
    test_worker_standby); closed at teardown."""

    def start_(cluster: FakeCluster, fake_clock: FakeClock, worker_id: str, **kw: Any) -> tuple[Worker, FakeGrid]:
        w, grid = workers(config(worker_id, **kw), FakeGrid(cluster), cls=ClockedWorker, fake_clock=fake_clock)
        w.before_first_bar()
        return w, grid

    return start_


def test_recent_records_are_bounded_by_count_and_bytes_and_kept_sorted() -> None:
    r = RecentRecords(max_bars=3, max_bytes=10)
    for i in range(5):
        r.add(i, "ab")
    assert [b for b, _ in r.items()] == [2, 3, 4] and r.bytes == 6
    r.add(5, "x" * 9)  # over the byte bound: the oldest go, the newest always stays
    assert [b for b, _ in r.items()] == [5] and r.bytes == 9
    r.add(4, "cd")  # a back-fill below the newest goes first when over the byte bound
    assert [b for b, _ in r.items()] == [5]
    r.add(9, "e")  # bars retention removes (<= newest - max_bars) are not kept: they are not lost
    assert [b for b, _ in r.items()] == [9]
    r2 = RecentRecords(max_bars=5)
    for i in (1, 2, 3):
        r2.add(i, "a")
    r2.add(2, "bb")
    assert r2.items() == [(1, "a"), (2, "bb"), (3, "a")] and r2.bytes == 4
    r2.forget_from(2)
    assert r2.items() == [(1, "a")] and r2.newest() == 1
    with pytest.raises(ValueError):
        RecentRecords(0)
    with pytest.raises(ValueError):
        Republisher(r2, check_every_bars=0)


def test_checks_after_a_reconnect_and_every_few_bars() -> None:
    rep = Republisher(RecentRecords(10), check_every_bars=3)
    assert [rep.due(0) for _ in range(6)] == [False, False, True, False, False, True]
    assert rep.due(1) and not rep.due(1)  # a reconnect: at once, then the count again


@pytest.mark.parametrize("reconnect", [True, False])
def test_records_and_checkpoint_the_grid_lost_are_written_back(start: Start, reconnect: bool) -> None:
    clock = FakeClock()
    cluster = FakeCluster(clock)
    w, grid = start(cluster, clock, "w")
    for i in range(12):
        run_bar([w], clock, i)
    assert w.republisher.republished == 0  # the checks so far found everything in place
    # The single member restarts empty: every record, the checkpoint and the lease are gone.
    cluster.features.clear()
    cluster.writes.clear()
    cluster.checkpoint = None
    cluster.lease.data.clear()
    if reconnect:
        grid.disconnects += 1
    last = 12 if reconnect else 12 + w.republisher.check_every_bars
    for i in range(12, last + 1):
        run_bar([w], clock, i)
    check_records(cluster, 0, last)  # whole again, each bar written once since the loss, all exact
    assert w.republisher.losses == 1 and w.health.republished_records == w.republisher.republished >= 11
    assert cluster.checkpoint is not None
    assert orjson.loads(cluster.checkpoint.to_string())["body"]["bar_idx"] == B0 + last


def test_a_restart_after_a_long_gap_continues_from_the_state_whatever_its_age(start: Start) -> None:
    clock = FakeClock()
    cluster = FakeCluster(clock)
    w1, _ = start(cluster, clock, "w1")
    for i in range(10):
        run_bar([w1], clock, i)
    # w1 dies (SIGKILL); the new process starts 10 bars later, far past checkpoint_max_age_bars.
    clock.t += 10 * BAR_S
    w2, grid2 = start(cluster, clock, "w1")
    for i in range(20, 26):
        run_bar([w2], clock, i)
    doc = grid2.health[-1]
    # its last checkpoint plus the records written since: the state of bar 9
    assert (doc["restored_from_bar"], doc["restore_gap_bars"], doc["cold_start_reason"]) == (B0 + 9, 10, None)
    assert doc["restore_replayed_records"] >= 1
    assert w2.config.checkpoint_max_age_bars < 10
    # The histories and the EMA references continued: the records are those of one engine that
    # stepped bars 0..9 and then 20..25, not those of a cold engine.
    bars = {B0 + i: float(B0 + i) for i in [*range(10), *range(20, 26)]}
    expected = reference(bars)
    for k in range(B0 + 20, B0 + 26):
        assert without_producer(cluster.features[k])[0] == expected[k], k - B0
    cold = reference({B0 + i: float(B0 + i) for i in range(20, 26)})
    assert without_producer(cluster.features[B0 + 20])[0] != cold[B0 + 20]
