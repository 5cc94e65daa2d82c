"""Model test of crashes at every step of the leader's bar path (snapshot + changelog, issue 14).

An uninterrupted leader's run logs every grid call it makes (``FakeGrid.ops``). For each call of
the bars chosen (one whose checkpoint is due, the bars either side of it), a fresh run kills the
leader on entering that call (``kill_at_op``: the call does not happen; "killed right after call
n" is "killed entering call n + 1"). A successor then carries on: a restarted process (the scan
clock re-closes the scan the dead one did not finish, if its state ends before it), or a standby
that ran alongside from the start. Every bar 0..END must then be in the map exactly once and
byte-identical (producer aside) to one uninterrupted engine's record over the same snapshots.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from obf_features_worker.service.bars import BarTick
from obf_features_worker.service.worker import Worker
from tests.fakes import FakeClock, FakeCluster, FakeGrid, Killed, WorkerFactory
from tests.unit.test_worker_standby import B0, BAR_S, FEED, ClockedWorker, check_records, config, offer, tick

EVERY = 3  # checkpoint_every_bars: short, so the crash bars include a checkpoint bar
KILL_BARS = (11, 12, 13)
END = 24
KW: dict[str, Any] = {"clock": "scan", "scan_field": "n", "checkpoint_every_bars": EVERY}



def _start(workers: WorkerFactory, cluster: FakeCluster, clock: FakeClock, worker_id: str) -> tuple[Worker, FakeGrid]:
    w, grid = workers(config(worker_id, **KW), FakeGrid(cluster), cls=ClockedWorker, fake_clock=clock)
    w.before_first_bar()
    return w, grid


def _bar(live: list[Worker], cluster: FakeCluster, clock: FakeClock, i: int) -> None:
    cluster.scan_value = json.dumps({"n": B0 + i})
    for w in list(live):
        _offer(w, i)
        w.process_bar(tick(i))
    clock.t += BAR_S


def _offer(w: Worker, i: int) -> None:
    """The bar's snapshots; a standby misses some events at bars 5 and 7, so its own state
    differs from the leader's: only following the leader's records makes its later records right."""
    if w.config.worker_id == "w2" and i in (5, 7):
        w.book.offer("asset_AAAUSDT_ob", FEED[i]["asset_AAAUSDT_ob"])
    else:
        offer(w, i)


def _uninterrupted_ops(workers: WorkerFactory) -> dict[int, tuple[int, int]]:
    """bar -> (index of its first grid call, one past its last) in the leader's uninterrupted run."""
    clock = FakeClock()
    cluster = FakeCluster(clock)
    w, grid = _start(workers, cluster, clock, "w1")
    spans = {}
    for i in range(END + 1):
        start = len(grid.ops)
        _bar([w], cluster, clock, i)
        spans[i] = (start, len(grid.ops))
    assert w.role == "leader"
    check_records(cluster, 0, END)
    return spans


def _kill_points(workers: WorkerFactory) -> list[tuple[int, int, str]]:
    spans = _uninterrupted_ops(workers)
    out = []
    for bar in KILL_BARS:
        lo, hi = spans[bar]
        out += [(bar, n, "") for n in range(lo + 1, hi + 2)]  # hi + 1: entering the next bar's first call
    return out


def test_the_crash_bars_cover_a_checkpoint_and_every_kind_of_call(workers: WorkerFactory) -> None:
    clock = FakeClock()
    cluster = FakeCluster(clock)
    w, grid = _start(workers, cluster, clock, "w1")
    for i in range(KILL_BARS[-1] + 1):
        start = len(grid.ops)
        _bar([w], cluster, clock, i)
        if i in KILL_BARS:
            names = {name for name, _ in grid.ops[start:]}
            assert {"write_bar", "put_latest", "put_health", "lease"} <= names, names
            if "put_checkpoint" in names:
                # the checkpoint comes after the bar's record and LATEST
                order = [name for name, _ in grid.ops[start:]]
                assert order.index("write_bar") < order.index("put_latest") < order.index("put_checkpoint")
    ops = {name for name, _ in grid.ops}
    assert "put_checkpoint" in ops


@pytest.mark.parametrize("successor", ["restart", "standby"])
def test_a_crash_at_any_grid_call_of_the_bar_path_leaves_records_bit_identical(workers: WorkerFactory,
                                                                              successor: str) -> None:
    points = _kill_points(workers)
    assert len(points) >= 3 * 5
    checkpoint_kills = 0
    for bar, op_number, _ in points:
        clock = FakeClock()
        cluster = FakeCluster(clock)
        w1, g1 = _start(workers, cluster, clock, "w1")
        live: list[Worker] = [w1]
        if successor == "standby":
            w2, _ = _start(workers, cluster, clock, "w2")
            live.append(w2)
        g1.kill_at_op = op_number
        i = 0
        killed_at: int | None = None
        while killed_at is None:
            try:
                _bar(live, cluster, clock, i)
            except Killed:
                killed_at = i
                live.remove(w1)
                if g1.ops[-1][0] == "put_checkpoint":
                    checkpoint_kills += 1
                if successor == "standby":  # the standby closes the bar the leader died in
                    _offer(w2, i)
                    w2.process_bar(tick(i))
                clock.t += BAR_S
            i += 1
        assert killed_at in (bar, bar + 1), (bar, op_number, killed_at)
        if successor == "restart":
            w2, _ = _start(workers, cluster, clock, "w1")
            offer(w2, killed_at)
            again = w2.clock.poll()  # type: ignore[union-attr]
            if again is not None:  # the dead process's state ends before this scan: close it again
                assert again.bar_idx == B0 + killed_at
                w2.process_bar(tick(killed_at))
            live = [w2]
            clock.t += BAR_S
        for j in range(killed_at + 1, END + 1):
            _bar(live, cluster, clock, j)
        assert w2.role == "leader", (bar, op_number)
        try:
            check_records(cluster, 0, END)
        except AssertionError as exc:
            raise AssertionError(f"killed entering call {op_number} {g1.ops[-1]} of bar {bar}: {exc}") from None
    assert checkpoint_kills >= 1  # one of the bars wrote a checkpoint, and a crash hit it


# --- the first bars of a new bar numbering (scan count restarted at midnight, no field) -------

RESTART_AT = 15  # feed index of the first bar of the new numbering (bar NEW0)
NEW0 = 100
NEW_KW: dict[str, Any] = {"clock": "scan", "checkpoint_every_bars": EVERY}


def _numbered(i: int) -> BarTick:
    bar = B0 + i if i < RESTART_AT else NEW0 + i - RESTART_AT
    return BarTick(bar, float(B0 + i), float(B0 + i), new_epoch=(i == RESTART_AT))


class _Restored(ClockedWorker):
    """Keeps the state it adopted at its first bar (to compare with the uninterrupted run's)."""

    adopted: dict[str, Any] | None = None

    def _adopt_checkpoint(self, tick: BarTick) -> None:
        first = self.succession.restore_pending
        super()._adopt_checkpoint(tick)
        if first and self.health.cold_start_reason is None:
            self.adopted = self.engine.export_state()


def test_a_crash_at_any_grid_call_after_the_numbering_restarts_loses_no_state(workers: WorkerFactory) -> None:
    # The first bar of the new numbering writes its checkpoint before its record: a crash at any
    # later call leaves a state a successor restores (the checkpoint of the new numbering plus its
    # records), equal to the uninterrupted leader's at the last bar in the grid. Only a crash
    # before that checkpoint is written leaves the old numbering's, refused (a cold start).
    clock = FakeClock()
    cluster = FakeCluster(clock)
    ref, grid = workers(config("w1", **NEW_KW), FakeGrid(cluster), cls=ClockedWorker, fake_clock=clock)
    ref.before_first_bar()
    states: dict[int, dict[str, Any]] = {}
    spans: dict[int, tuple[int, int]] = {}
    for i in range(RESTART_AT + 3):
        start = len(grid.ops)
        offer(ref, i)
        ref.process_bar(_numbered(i))
        states[_numbered(i).bar_idx] = ref.engine.export_state()
        spans[i] = (start, len(grid.ops))
        clock.t += BAR_S
    assert ref.role == "leader"
    lo, hi = spans[RESTART_AT]
    checkpoint_op = grid.ops.index(("put_checkpoint", NEW0), lo) + 1  # 1-based call number
    assert grid.ops[lo:hi].index(("put_checkpoint", NEW0)) < grid.ops[lo:hi].index(("write_bar", NEW0))
    warm = 0
    for op_number in range(lo + 1, spans[RESTART_AT + 2][1] + 1):
        clock = FakeClock()
        cluster = FakeCluster(clock)
        w1, g1 = workers(config("w1", **NEW_KW), FakeGrid(cluster), cls=ClockedWorker, fake_clock=clock)
        w1.before_first_bar()
        g1.kill_at_op = op_number
        killed_at = None
        for i in range(RESTART_AT + 3):
            offer(w1, i)
            try:
                w1.process_bar(_numbered(i))
            except Killed:
                killed_at = i
                break
            clock.t += BAR_S
        assert killed_at is not None and killed_at >= RESTART_AT, op_number
        clock.t += 30
        w2, _ = workers(config("w2", **NEW_KW), FakeGrid(cluster), cls=_Restored, fake_clock=clock)
        w2.before_first_bar()
        nxt = killed_at + 1
        offer(w2, nxt)
        w2.process_bar(_numbered(nxt))
        assert isinstance(w2, _Restored)
        where = f"killed entering call {op_number} {g1.ops[-1]}"
        if op_number <= checkpoint_op:
            assert w2.health.cold_start_reason == "from_future", where
            continue
        warm += 1
        cp = json.loads(cluster.checkpoint.to_string())["body"]
        newest = max([cp["bar_idx"], *(k for k in cluster.features if k < B0)])
        assert w2.health.cold_start_reason is None, where
        assert w2.health.restored_from_bar == newest, where
        assert w2.adopted == states[newest], where
    assert warm >= 10
