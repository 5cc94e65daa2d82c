"""Leader lease against a real member: one leader, takeover after expiry, release, data loss,
the TTL backstop, and contenders hammering the lease never lead at the same instant."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from hazelcast.core import HazelcastJsonValue

from obf_features_worker.service.lease import LeaderLease, LeaseSettings, Term, parse_lease
from tests.cluster import HzCluster

TTL = 2.0
S = LeaseSettings(ttl_s=TTL, guard_s=0.3, backstop_ttl_s=10.0)
TICK = 0.1


@pytest.fixture
def clients(hz_cluster: HzCluster) -> Iterator[Callable[[], object]]:
    made: list = []

    def make():
        c = hz_cluster.client()
        made.append(c)
        return c

    yield make
    for c in made:
        c.shutdown()


def state_map(client, map_suffix: str):
    return client.get_map("DOLPHIN_OBF_STATE" + map_suffix).blocking()


def tick_until(leases: Sequence[LeaderLease], pred: Callable[[], bool], timeout: float) -> float:
    """Tick every lease every TICK s until pred() holds; returns the monotonic time it did."""
    pace = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        for le in leases:
            le.tick()
        if pred():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s: "
                                 f"{[(le.me.worker_id, le.status()) for le in leases]}")
        pace.wait(TICK)


def entry(m) -> dict:
    value = m.get("leader")
    assert isinstance(value, HazelcastJsonValue)
    lease = parse_lease(value.to_string())
    assert lease is not None
    return {"holder": lease.holder, "epoch": lease.epoch, "released": lease.released}


def test_replace_if_same_clears_the_ttl_and_set_ttl_restores_it(clients, map_suffix: str) -> None:
    """The member behaviour the lease's backstop relies on (measured on 5.5)."""
    m = state_map(clients(), map_suffix)
    m.put_if_absent("k", "v1", ttl=30)
    assert m.get_entry_view("k").ttl == 30_000
    assert m.replace_if_same("k", "v1", "v2")
    assert m.get_entry_view("k").ttl > 10**15  # Long.MAX_VALUE: no TTL any more
    m.set_ttl("k", 40)
    assert m.get_entry_view("k").ttl == 40_000


def test_two_contenders_exactly_one_leader(clients, map_suffix: str) -> None:
    a = LeaderLease(state_map(clients(), map_suffix), "worker-a", S)
    b = LeaderLease(state_map(clients(), map_suffix), "worker-b", S)
    t0 = time.monotonic()
    t_lead = tick_until([a, b], lambda: a.may_write() or b.may_write(), 4 * TTL)
    assert t_lead - t0 >= TTL  # an empty map is waited out first
    leader, other = (a, b) if a.may_write() else (b, a)
    assert not other.may_write() and leader.epoch == 1
    assert entry(state_map(clients(), map_suffix)) == {"holder": leader.me.worker_id, "epoch": 1, "released": False}
    # stable: over 2 ttl of regular ticks nobody else leads and the epoch stays
    end = time.monotonic() + 2 * TTL
    pace = threading.Event()
    while time.monotonic() < end:
        for le in (a, b):
            le.tick()
        assert leader.may_write() and not other.may_write() and leader.epoch == 1
        pace.wait(TICK)
    assert other.status().holder == leader.me.worker_id and other.status().acquisitions == 0
    assert state_map(clients(), map_suffix).get_entry_view("leader").ttl == S.backstop_ttl_s * 1000


def test_takeover_after_the_leader_stops_refreshing(clients, map_suffix: str) -> None:
    m = state_map(clients(), map_suffix)
    a = LeaderLease(state_map(clients(), map_suffix), "worker-a", S)
    b = LeaderLease(state_map(clients(), map_suffix), "worker-b", S)
    tick_until([a], a.may_write, 4 * TTL)
    tick_until([b], lambda: b.status().holder == "worker-a", 2.0)
    a.tick()  # A's last refresh: from now on A is "paused"
    last_term: Term = a.term
    last_text = m.get("leader")
    t_take = tick_until([b], b.may_write, 3 * TTL)
    # not before A's term could have ended, and within ttl + one tick (+ scheduling slack)
    assert t_take >= last_term.deadline
    assert t_take - last_term.started_at >= TTL
    assert t_take - last_term.started_at <= TTL + TICK + 1.0
    assert b.epoch == 2 and not a.may_write()
    assert entry(m) == {"holder": "worker-b", "epoch": 2, "released": False}
    # the old leader's refresh fails: a compare-and-set on its last value, and its next tick
    assert not m.replace_if_same("leader", last_text, HazelcastJsonValue('{"x": 1}'))
    st = a.tick()
    assert st.role == "standby" and st.losses == 1 and st.holder == "worker-b"
    assert entry(m)["holder"] == "worker-b"


def test_release_lets_the_other_take_over_at_once(clients, map_suffix: str) -> None:
    a = LeaderLease(state_map(clients(), map_suffix), "worker-a", S)
    b = LeaderLease(state_map(clients(), map_suffix), "worker-b", S)
    tick_until([a], a.may_write, 4 * TTL)
    b.tick()
    assert not b.may_write()
    assert a.release() and not a.may_write()
    assert entry(state_map(clients(), map_suffix)) == {"holder": None, "epoch": 1, "released": True}
    t0 = time.monotonic()
    st = b.tick()  # the very next tick, no ttl to wait
    assert st.role == "leader" and st.epoch == 2
    assert time.monotonic() - t0 < TTL / 2
    assert a.tick().role == "standby"


def test_a_lost_entry_is_recreated_by_its_live_leader_and_otherwise_waited_out(clients, map_suffix: str) -> None:
    m = state_map(clients(), map_suffix)
    a = LeaderLease(state_map(clients(), map_suffix), "worker-a", S)
    b = LeaderLease(state_map(clients(), map_suffix), "worker-b", S)
    tick_until([a, b], lambda: a.may_write() or b.may_write(), 4 * TTL)
    leader, other = (a, b) if a.may_write() else (b, a)
    m.delete("leader")  # what a member losing its data looks like to the clients
    # The live leader re-creates its entry (same term, same epoch); the other never leads.
    tick_until([a, b], lambda: m.get("leader") is not None, 1.0)
    assert leader.may_write() and not other.may_write() and leader.epoch == 1
    assert entry(m) == {"holder": leader.me.worker_id, "epoch": 1, "released": False}
    # A lost entry with no live leader (the leader is gone) is waited out, epochs keep rising.
    m.delete("leader")
    t_loss = time.monotonic()
    t_lead = tick_until([other], other.may_write, 4 * TTL)
    assert t_lead - t_loss >= TTL
    assert other.epoch == 2


def test_hammering_contenders_never_lead_at_the_same_instant(clients, map_suffix: str) -> None:
    """Three contenders ticking at random, pausing at random while still checking may_write() (a
    stalled leader that keeps writing): a shared log of who believed it led, sampled under one
    lock, must show one term at a time, epochs rising, each term starting after the last ended."""
    ttl = 1.0
    s = LeaseSettings(ttl_s=ttl, guard_s=0.2, backstop_ttl_s=5.0)
    log_lock = threading.Lock()
    samples: list[tuple[float, int, str]] = []
    first_term: dict[int, Term] = {}  # epoch -> the term that began it
    last_term: dict[int, Term] = {}  # epoch -> its last refresh
    stop = threading.Event()
    errors: list[BaseException] = []

    def contender(idx: int) -> None:
        try:
            rng = random.Random(idx)
            lease = LeaderLease(state_map(clients(), map_suffix), f"worker-{idx}", s)
            next_tick = 0.0
            paused_until = 0.0
            stall_at: float | None = None
            while not stop.is_set():
                now = time.monotonic()
                if now >= paused_until and now >= next_tick:
                    lease.tick()
                    next_tick = now + rng.uniform(0.02, 0.25)
                    if not lease.may_write():
                        stall_at = None
                    elif stall_at is None:
                        stall_at = now + rng.uniform(0.2, 1.0)  # lead a while, then stall
                    elif now >= stall_at:
                        paused_until = now + rng.uniform(0.4, 2.0)  # sometimes shorter than ttl
                        stall_at = None
                with log_lock:
                    term = lease.term
                    if lease.may_write() and term is not None:
                        samples.append((time.monotonic(), term.epoch, lease.me.token))
                        first_term.setdefault(term.epoch, term)
                        last_term[term.epoch] = term
                stop.wait(0.003)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    stop.wait(10.0)
    stop.set()
    for t in threads:
        t.join(10.0)
    assert not errors, errors
    epochs = [e for _, e, _ in samples]
    assert len(set(epochs)) >= 3, f"too few takeovers to mean anything: {sorted(set(epochs))}"
    owner: dict[int, str] = {}
    for (_, e0, _), (_, e1, tok1) in zip(samples, samples[1:]):
        assert e1 >= e0, f"epoch {e1} believed after epoch {e0} began: two leaders at once"
        assert owner.setdefault(e1, tok1) == tok1, f"epoch {e1} held by two processes"
    # Nobody releases here, so a takeover waits until the previous holder's last refresh has run
    # out: the write that began a term was sent after the previous term's final deadline.
    ordered = sorted(first_term)
    for prev, nxt in zip(ordered, ordered[1:]):
        assert first_term[nxt].started_at >= last_term[prev].deadline, (prev, nxt)
