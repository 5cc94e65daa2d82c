"""``service.succession`` on its own, over the fake grid: the lease's epochs continue from the
checkpoint's, term changes, the warm-restart / standby adoption decision (with its reasons) and
the previous leader's records at a takeover."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hazelcast.core import HazelcastJsonValue

from obf_contract.record import dumps_record
from obf_features_worker.engine import checkpoint
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.service import changelog
from obf_features_worker.service.config import WorkerConfig
from obf_features_worker.service.grid import GridError
from obf_features_worker.service.lease import LeaderLease
from obf_features_worker.service.succession import COLD_UNAVAILABLE, Adopt, StartCold, Succession
from tests.fakes import FakeClock, FakeCluster, FakeGrid

B0 = 1_000_000


def cp_text(bar: int, *, epoch: int | None = 5, records: dict[int, str] | None = None,
            params: FeatureParams | None = None) -> str:
    engine = FeatureEngine(params or FeatureParams())
    engine.step(bar, float(bar), {})
    cp = checkpoint.capture(engine, seqs={}, bar_ts=float(bar), worker_id="old", written_at=1.0, epoch=epoch,
                            records=records or {})
    return checkpoint.encode(cp).decode()


def make(stored: str | None = None, **cfg: Any) -> tuple[Succession, FakeGrid, FakeClock]:
    clock = FakeClock()
    grid = FakeGrid(FakeCluster(clock))
    grid.c.checkpoint = None if stored is None else HazelcastJsonValue(stored)
    config = WorkerConfig(worker_id="w", clock="scan", bar_seconds=1.0, **cfg)

    def lease(min_epoch: int) -> LeaderLease:
        return LeaderLease(grid.lease_map(), "w", config.lease_settings(), min_epoch=min_epoch, clock=clock.mono,
                           wall=clock.wall)

    return Succession(grid, config, lease), grid, clock


def test_without_begin_there_is_no_lease_and_every_write_is_allowed() -> None:
    s, _, _ = make()
    assert s.lease is None and s.may_write() and s.current_epoch() is None


def test_lease_epochs_continue_above_the_checkpoints() -> None:
    s, _, clock = make(cp_text(B0, epoch=5))
    s.begin()
    assert s.restore_pending and s.startup_checkpoint is not None and s.startup_checkpoint.epoch == 5
    change = s.tick()
    while change.acquired is None:  # the first term settles one ttl
        clock.t += 1.0
        change = s.tick()
    assert change.acquired == 6 and change.lost is None and s.epoch == 6 and s.may_write()


def test_losing_the_lease_is_reported_once_with_the_holder() -> None:
    s, grid, clock = make()
    s.begin()
    while s.tick().acquired is None:
        clock.t += 1.0
    mine = s.epoch
    grid.c.lease.data.clear()  # the entry expired while I was away ...
    LeaderLease(grid.lease_map(), "w2", s.config.lease_settings(), clock=clock.mono, wall=clock.wall).tick()
    # ... and another worker took it
    change = s.tick()
    assert change.lost == mine and change.acquired is None and change.holder == "w2"
    assert s.tick().lost is None


def _empty_record(engine: FeatureEngine, bar: int) -> str:
    return dumps_record(engine.step(bar, float(bar), {})).decode()


def test_first_bar_adopts_the_checkpoint_then_follows_the_records() -> None:
    text = cp_text(B0)
    s, grid, _ = make(text)
    s.begin()
    decision = s.adoption(B0 + 1, None)
    assert isinstance(decision, Adopt) and decision.first and decision.checkpoint.bar_idx == B0
    assert (decision.bar_idx, decision.replayed) == (B0, 0)
    leader = decision.engine.copy()
    grid.c.features[B0 + 1] = _empty_record(leader, B0 + 1)
    grid.c.checkpoint = HazelcastJsonValue(cp_text(B0 + 5))  # not read: the records continue the state
    grid.ops.clear()
    later = s.adoption(B0 + 2, B0 + 1)
    assert isinstance(later, Adopt) and not later.first and (later.bar_idx, later.replayed) == (B0 + 1, 1)
    assert later.checkpoint.bar_idx == B0 and later.engine.export_state() == leader.export_state()
    assert later.engine is not leader and [op[0] for op in grid.ops] == ["get_records"]
    assert s.adoption(B0 + 3, B0 + 2) is None  # no record 2 yet: my own state is newer
    # A record that does not continue the state (another writer started cold): the chain breaks,
    # the checkpoint is read again, and its next version restarts the state followed.
    cold = FeatureEngine()
    cold.step(B0 + 1, float(B0 + 1), {})
    grid.c.features[B0 + 2] = dumps_record(cold.step(B0 + 2, float(B0 + 2), {})).decode()
    assert s.adoption(B0 + 4, B0 + 3) is None
    fresh = s.adoption(B0 + 6, B0 + 5)
    assert isinstance(fresh, Adopt) and (fresh.checkpoint.bar_idx, fresh.bar_idx) == (B0 + 5, B0 + 5)


def test_a_state_of_another_numbering_is_dropped_not_adopted() -> None:
    s, grid, _ = make(cp_text(B0))
    s.begin()
    assert isinstance(s.adoption(B0 + 1, None), Adopt)
    # The scan count restarted (bar 3 < B0): the state followed is not before it.
    assert s.adoption(3, None) is None
    grid.c.checkpoint = HazelcastJsonValue(cp_text(2))  # the leader's first checkpoint of the new numbering
    again = s.adoption(4, None)
    assert isinstance(again, Adopt) and again.bar_idx == 2


def test_my_own_newer_state_is_kept() -> None:
    s, _, _ = make(cp_text(B0))
    s.begin()
    assert s.adoption(B0 + 2, B0 + 1) is None


def test_my_own_checkpoint_is_not_adopted_back() -> None:
    s, grid, _ = make()
    s.begin()
    first = s.adoption(B0, None)
    assert isinstance(first, StartCold) and first.reason == "missing"
    text = cp_text(B0)
    grid.c.checkpoint = HazelcastJsonValue(text)
    s.wrote_checkpoint(text)
    assert s.adoption(B0 + 1, B0) is None


@pytest.mark.parametrize("stored,reason", [
    (None, "missing"),
    ("{not json", "corrupt"),
    (cp_text(B0, params=FeatureParams(ma_window=3)), "params"),
])
def test_first_bar_starts_cold_with_the_reason(stored: str | None, reason: str) -> None:
    s, _, _ = make(stored)
    s.begin()
    decision = s.adoption(B0 + 1, None)
    assert isinstance(decision, StartCold) and decision.reason == reason
    assert s.adoption(B0 + 2, B0 + 1) is None  # later refusals are a standby's, not a cold start


def test_unreadable_state_map_at_the_first_bar_is_a_cold_start() -> None:
    s, grid, _ = make(cp_text(B0))
    s.begin()
    grid.offline = True
    decision = s.adoption(B0 + 1, None)
    assert isinstance(decision, StartCold) and decision.reason == COLD_UNAVAILABLE
    assert s.adoption(B0 + 2, B0 + 1) is None


def test_previous_records_at_a_takeover() -> None:
    records = {B0 - 1: f'{{"bar_idx": {B0 - 1}}}', B0: f'{{"bar_idx": {B0}}}'}
    s, grid, _ = make(cp_text(B0, records=records))
    cp = s.previous_records(6)
    assert cp is not None and cp.records == records
    grid.c.checkpoint = HazelcastJsonValue("{not json")
    assert s.previous_records(7) is None
    grid.c.checkpoint = None
    assert s.previous_records(8) is None
    grid.offline = True
    assert s.previous_records(9) is None


def test_scan_catch_up_only_for_the_scan_just_after_the_checkpoint() -> None:
    s, grid, _ = make(cp_text(B0), scan_field="scan_number")
    s.begin()
    grid.c.scan_value = HazelcastJsonValue(f'{{"scan_number": {B0 + 1}}}')
    assert s.scan_to_catch_up() is grid.c.scan_value
    grid.c.scan_value = HazelcastJsonValue(f'{{"scan_number": {B0}}}')  # already checkpointed
    assert s.scan_to_catch_up() is None
    s2, _, _ = make(cp_text(B0))  # no scan field: nothing to catch up
    s2.begin()
    assert s2.scan_to_catch_up() is None


def test_a_read_failure_at_start_up_does_not_escape_the_scan_catch_up() -> None:
    s, grid, _ = make(cp_text(B0), scan_field="scan_number")
    s.begin()
    grid.c.scan_value = HazelcastJsonValue(f'{{"scan_number": {B0 + 2}}}')
    leader = checkpoint.decode(cp_text(B0), params=FeatureParams(), now_bar_idx=None, max_age_bars=0).restore_engine()
    grid.c.features[B0 + 1] = _empty_record(leader, B0 + 1)
    real = grid.get_records

    def timeout(bar_idxs: Any) -> dict[int, Any]:
        raise GridError("read records", "OperationTimeoutError")

    grid.get_records = timeout  # type: ignore[method-assign]
    assert s.scan_to_catch_up() is None  # was: the GridError escaped before_first_bar (rc=1)
    grid.get_records = real  # type: ignore[method-assign]
    decision = s.adoption(B0 + 3, None)  # the first bar reads on
    assert isinstance(decision, Adopt) and decision.first and (decision.bar_idx, decision.replayed) == (B0 + 1, 1)


def test_a_malformed_record_is_counted_and_the_broken_chain_not_reread_until_it_can_continue() -> None:
    s, grid, _ = make(cp_text(B0))
    s.begin()
    first = s.adoption(B0 + 1, None)
    assert isinstance(first, Adopt)
    leader = first.engine.copy()
    good = {k: _empty_record(leader, B0 + k) for k in range(1, 8)}
    grid.c.features.update({B0 + k: t for k, t in good.items()})
    bad = orjson.loads(good[2])
    bad["seq"] = 5  # follows the chain; the seq column is not a list (was: TypeError out of adoption)
    grid.c.features[B0 + 2] = orjson.dumps(bad).decode()
    later = s.adoption(B0 + 8, None)
    assert isinstance(later, Adopt) and later.bar_idx == B0 + 1
    assert s.catchup_stops == {changelog.STOP_UNREADABLE: 1}
    grid.ops.clear()
    for k in range(9, 12):
        s.adoption(B0 + k, None)
    # per bar: the checkpoint (a new one restarts the chain) and one key query; the leader's
    # records after the break (up to 64 per get_all) are not read again
    assert [op[0] for op in grid.ops] == ["get_checkpoint", "bar_keys"] * 3
    assert s.catchup_stops == {changelog.STOP_UNREADABLE: 1}  # counted once
    # The bad record goes (retention, a repair) and comes back good: the key set changed in
    # between, so the chain is read again and continues.
    del grid.c.features[B0 + 2]
    assert s.adoption(B0 + 12, None) is not None
    grid.c.features[B0 + 2] = good[2]
    grid.ops.clear()
    caught_up = s.adoption(B0 + 13, None)
    assert "get_records" in [op[0] for op in grid.ops]
    assert isinstance(caught_up, Adopt) and caught_up.bar_idx == B0 + 7
    assert caught_up.engine.export_state() == leader.export_state()
