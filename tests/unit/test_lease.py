"""Leader lease: settings, value codec, the pure decision (exhaustively), and a model-checked
simulation of several contenders over an in-memory map with a fake clock."""

from __future__ import annotations

import itertools
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obf_features_worker.service.lease import (
    Action,
    Identity,
    LeaderLease,
    LeaseSettings,
    LeaseValue,
    View,
    after_write,
    decide,
    parse_lease,
)
from tests.fakes import FakeClock, FakeMap
from tests.hypothesis_profiles import scaled

S = LeaseSettings(ttl_s=10.0, guard_s=1.0, backstop_ttl_s=100.0)
ME = Identity("w-me", "tok-me")


# -- settings and codec --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"ttl_s": 0}, "ttl_s"), ({"ttl_s": math.inf}, "ttl_s"), ({"ttl_s": "15"}, "ttl_s"),
    ({"ttl_s": 10, "guard_s": 5}, "guard_s"), ({"guard_s": -0.1}, "guard_s"),
    ({"ttl_s": 10, "backstop_ttl_s": 19}, "backstop"), ({"reclaim_own": 1}, "reclaim_own"), ({"key": ""}, "key"),
])
def test_bad_settings_fail_fast(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LeaseSettings(**kwargs)


def test_settings_for_a_bar_clock() -> None:
    s = LeaseSettings.for_bar_seconds(5.0)
    assert (s.ttl_s, s.guard_s) == (15.0, 1.0) and s.backstop_ttl_s >= 2 * s.ttl_s
    s.check_tick_interval(5.0)
    with pytest.raises(ValueError, match="too short"):
        s.check_tick_interval(7.5)
    assert LeaseSettings(backstop_ttl_s=0).backstop_ttl_s == 0.0


def test_value_round_trip_and_determinism() -> None:
    live = LeaseValue("w1", "t1", 7, 3, 15.0, 100.5, 115.5)
    released = LeaseValue(None, None, 7, released_by="w1", renewed_at=120.0)
    for v in (live, released):
        assert parse_lease(v.to_json()) == v
        assert v.to_json() == LeaseValue(*[getattr(v, f) for f in v.__slots__]).to_json()
    obj = orjson.loads(live.to_json())
    assert obj == {"holder": "w1", "token": "t1", "epoch": 7, "renewals": 3, "ttl_s": 15.0,
                   "renewed_at": 100.5, "expires_at": 115.5}
    assert list(obj) == sorted(obj)
    assert released.released and not live.released


@pytest.mark.parametrize("text", [
    "", "{", "[]", "null", '"x"', '{"epoch": -1, "holder": null}', '{"holder": null}',
    '{"holder": "w", "token": "t", "epoch": 1}',  # no ttl
    '{"holder": "w", "token": "t", "epoch": 1, "renewals": 0, "ttl_s": 0, "renewed_at": 1, "expires_at": 2}',
    '{"holder": 5, "token": "t", "epoch": 1, "renewals": 0, "ttl_s": 5, "renewed_at": 1, "expires_at": 2}',
    '{"holder": "w", "token": "t", "epoch": true, "renewals": 0, "ttl_s": 5, "renewed_at": 1, "expires_at": 2}',
])
def test_malformed_values_parse_as_none(text: str) -> None:
    assert parse_lease(text) is None


@given(st.one_of(st.text(max_size=200), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=5)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(
        st.sampled_from(["holder", "token", "epoch", "renewals", "ttl_s", "renewed_at", "expires_at", "x"]),
        c, max_size=8)), max_leaves=10).map(lambda o: orjson.dumps(o).decode())))
def test_parse_lease_never_raises(text: str) -> None:
    value = parse_lease(text)
    if value is not None:  # whatever parses re-encodes to something that parses to the same value
        assert parse_lease(value.to_json()) == value


# -- the decision, exhaustively -------------------------------------------------------------------

OTHER = LeaseValue("w-other", "tok-other", 5, 2, 10.0, 1000.0, 1010.0)
LONG_OTHER = LeaseValue("w-other", "tok-other", 5, 2, 30.0, 1000.0, 1030.0)  # a holder with a longer ttl
MINE = LeaseValue("w-me", "tok-me", 4, 9, 10.0, 1000.0, 1010.0)
MY_OLD = LeaseValue("w-me", "tok-dead", 6, 1, 10.0, 1000.0, 1010.0)
RELEASED = LeaseValue(None, None, 8, released_by="w-other", renewed_at=1000.0)
ENTRIES: dict[str, str | None] = {
    "absent": None, "released": RELEASED.to_json(), "mine": MINE.to_json(), "my_old": MY_OLD.to_json(),
    "other": OTHER.to_json(), "long_other": LONG_OTHER.to_json(), "garbage": '{"not": "a lease"}',
}
EPOCH_OF = {"absent": 0, "released": 8, "mine": 4, "my_old": 6, "other": 5, "long_other": 5, "garbage": 0}


def expected_action(entry: str, relation: str, elapsed: float, hold: float, reclaim: bool) -> Action:
    """The protocol table of docs/reliability.md, written out case by case."""
    if entry == "released":
        return Action.TAKE_OVER
    if entry == "mine":
        return Action.REFRESH
    if entry == "my_old" and reclaim:
        return Action.TAKE_OVER
    # Absent / unreadable states can recur, so watching them proves nothing: take them at once
    # and settle (write only after ttl_s) instead.
    if entry == "absent":
        return Action.ACQUIRE
    if entry == "garbage":
        return Action.TAKE_OVER
    if relation == "same" and elapsed >= hold:
        return Action.TAKE_OVER
    return Action.WAIT


@pytest.mark.parametrize("reclaim", [False, True])
@pytest.mark.parametrize("relation", ["never", "same", "different"])
@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("view_max_epoch", [0, 20])
def test_decide_table(entry: str, relation: str, reclaim: bool, view_max_epoch: int) -> None:
    s = LeaseSettings(ttl_s=10.0, guard_s=1.0, backstop_ttl_s=100.0, reclaim_own=reclaim)
    text = ENTRIES[entry]
    # How long this state must be seen unchanged: the holder's ttl if longer than mine; for an
    # entry without a live holder the longest ttl seen before (12 s here, via the view).
    hold = 30.0 if entry == "long_other" else (12.0 if entry in ("absent", "garbage", "released") else 10.0)
    seen_at = 100.0
    for elapsed in (0.0, 5.0, hold - 1e-9, hold, hold + 50.0):
        now = seen_at + elapsed
        if relation == "never":
            view = View(max_epoch=view_max_epoch, max_ttl_s=12.0)
        elif relation == "same":
            view = View(True, text, seen_at, seen_at + hold, view_max_epoch, 12.0)
        else:
            other_text = None if text is not None else OTHER.to_json()
            view = View(True, other_text, seen_at - 500, seen_at - 400, view_max_epoch, 12.0)
        d = decide(text, now, 5000.0, view, ME, s)
        want = expected_action(entry, relation, elapsed, hold, reclaim)
        assert d.action is want, (entry, relation, elapsed, reclaim, d.reason)
        assert d.settle == (entry in ("absent", "garbage")), (entry, d.reason)

        # the view: a new state starts its clock now; an unchanged one keeps it
        assert d.view.observed and d.view.text == text
        assert d.view.seen_at == (seen_at if relation == "same" else now)
        if relation != "same":
            assert d.view.blocked_until == now + hold
        assert d.view.max_epoch == max(view_max_epoch, EPOCH_OF[entry])

        # what would be written
        if want is Action.WAIT:
            assert d.new_value is None
        elif want is Action.REFRESH:
            assert d.new_value == LeaseValue("w-me", "tok-me", MINE.epoch, MINE.renewals + 1, 10.0, 5000.0, 5010.0)
        else:
            assert d.new_value == LeaseValue("w-me", "tok-me", max(view_max_epoch, EPOCH_OF[entry]) + 1, 0,
                                             10.0, 5000.0, 5010.0)


def test_a_changing_lease_is_never_taken() -> None:
    """A holder that refreshes more often than ttl keeps its lease however long a contender watches."""
    view = View()
    for i in range(100):
        text = LeaseValue("w-other", "tok-other", 5, i, 10.0, 1000.0 + i, 1010.0 + i).to_json()
        d = decide(text, 100.0 + 9.0 * i, 0.0, view, ME, S)
        assert d.action is Action.WAIT
        view = d.view


def test_after_write() -> None:
    d = decide(None, 50.0, 0.0, View(True, None, 10.0, 20.0, 3, 10.0), ME, S)
    assert d.action is Action.ACQUIRE and d.settle
    term, view = after_write(d, True, 49.5, S)
    assert term is not None and (term.epoch, term.started_at, term.deadline) == (4, 49.5, 49.5 + 10.0 - 1.0)
    # An absent entry was taken: the term holds the lease but writes only ttl_s after the write.
    assert term.writable_from == 49.5 + S.ttl_s
    assert not term.writable(49.5 + S.ttl_s - 1e-9) and not term.writable(49.5)
    assert view.text == term.text == d.new_value.to_json()
    assert (view.seen_at, view.blocked_until, view.max_epoch) == (49.5, 59.5, 4)
    # Renewing the same term keeps its settling time; a renewal past it is writable.
    renew = decide(term.text, 56.0, 0.0, view, ME, S)
    assert renew.action is Action.REFRESH and not renew.settle
    renewed, _ = after_write(renew, True, 56.0, S, term)
    assert renewed is not None and renewed.writable_from == term.writable_from and renewed.deadline == 56.0 + 9.0
    assert renewed.writable(59.5) and not renewed.writable(59.4)
    # Taking over a lease of ours seen unchanged for ttl_s is writable at once.
    take = decide(OTHER.to_json(), 80.0, 0.0, View(True, OTHER.to_json(), 60.0, 70.0, 5, 10.0), ME, S)
    assert take.action is Action.TAKE_OVER and not take.settle
    taken, _ = after_write(take, True, 80.0, S)
    assert taken is not None and taken.writable(80.0)
    # A lost race forgets what was seen: the winner's entry is unknown until the next read.
    lost_term, lost_view = after_write(d, False, 49.5, S)
    assert lost_term is None and not lost_view.observed and lost_view.max_epoch == d.view.max_epoch
    again = decide(None, 50.5, 0.0, lost_view, ME, S)
    assert again.action is Action.ACQUIRE and again.settle
    wait = decide(MINE.to_json(), 50.0, 0.0, View(True, None, 10.0, 20.0, 3, 10.0), Identity("w-x", "t"), S)
    assert after_write(wait, False, 49.5, S) == (None, wait.view)  # nothing was attempted: view kept


def test_my_lost_entry_is_recreated_during_my_term_only() -> None:
    # The entry vanished (data loss) while my term is live: re-create it with my epoch at once.
    d = decide(None, 50.0, 0.0, View(True, MINE.to_json(), 45.0, 55.0, 4, 10.0), ME, S, held_epoch=4)
    assert d.action is Action.ACQUIRE and d.new_value is not None
    assert (d.new_value.holder, d.new_value.token, d.new_value.epoch) == (ME.worker_id, ME.token, 4)
    assert not d.settle  # the same term goes on: no settling
    # Without a live term the absent entry is taken like by anyone else: a new term, settling first.
    fresh = decide(None, 50.0, 0.0, View(True, MINE.to_json(), 45.0, 55.0, 4, 10.0), ME, S)
    assert fresh.action is Action.ACQUIRE and fresh.settle and fresh.new_value.epoch == 5
    # Someone else's entry is never replaced early because I believe I hold a term.
    other = decide(OTHER.to_json(), 50.0, 0.0, View(True, MINE.to_json(), 45.0, 55.0, 4, 10.0), ME, S, held_epoch=4)
    assert other.action is Action.WAIT


# -- the class over an in-memory model of the map ------------------------------------------------

def make(clock: FakeClock, m: FakeMap, wid: str, s: LeaseSettings = S, **kw) -> LeaderLease:
    return LeaderLease(m, wid, s, clock=clock.mono, wall=clock.wall, **kw)


def test_first_contender_waits_out_an_empty_map_then_leads_and_keeps_the_backstop_ttl() -> None:
    clock = FakeClock()
    m = FakeMap(clock)
    a = make(clock, m, "a")
    # An absent entry may be grid data loss (a holder still in its term): take it, but settle ttl.
    st_ = a.tick()
    assert (st_.role, st_.holder) == ("standby", "a") and not a.may_write()
    assert m.data["leader"][1] == clock.t + S.backstop_ttl_s
    clock.t += 9.5
    assert a.tick().role == "standby"  # renewed, still settling
    clock.t += 0.5
    st_ = a.tick()
    assert (st_.role, st_.epoch, st_.holder) == ("leader", 1, "a") and a.may_write()
    assert m.data["leader"][1] == clock.t + S.backstop_ttl_s
    for _ in range(5):
        clock.t += 5.0
        assert a.tick().epoch == 1
        assert m.data["leader"][1] == clock.t + S.backstop_ttl_s  # restored after each replace
    assert parse_lease(m.data["leader"][0].to_string()).renewals == 7


def test_min_epoch_seed_and_epochs_increase_across_a_lost_entry() -> None:
    clock = FakeClock()
    m = FakeMap(clock)
    a = make(clock, m, "a", min_epoch=41)
    a.tick()
    clock.t += 10.0
    assert a.tick().epoch == 42
    del m.data["leader"]  # grid data loss while a's term runs: a re-creates its entry, same term
    clock.t += 1.0
    assert a.tick().epoch == 42 and "leader" in m.data
    clock.t += 9.5  # past a's deadline without a refresh: the term is over
    del m.data["leader"]  # and the entry lost again
    assert a.tick().role == "standby"  # no live term: an absent entry is waited out
    clock.t += 10.0
    assert a.tick().epoch == 43


def test_grid_errors_never_raise_and_leadership_ends_at_the_deadline() -> None:
    clock = FakeClock()
    m = FakeMap(clock)
    a = make(clock, m, "a")
    a.tick()
    clock.t += 10.0
    a.tick()
    assert a.may_write()
    start = a.term.started_at
    m.fail = ConnectionError("member gone")
    clock.t += 5.0
    st_ = a.tick()
    assert st_.role == "leader" and st_.errors == 1 and "member gone" in st_.last_error
    clock.t = start + S.ttl_s - S.guard_s - 1e-6
    assert a.may_write()
    clock.t = start + S.ttl_s - S.guard_s
    assert not a.may_write() and a.epoch is None
    st_ = a.tick()
    assert st_.role == "standby" and st_.losses == 1
    assert not a.release()  # nothing to release, and no raise


def test_release_hands_over_at_once() -> None:
    clock = FakeClock()
    m = FakeMap(clock)
    a, b = make(clock, m, "a"), make(clock, m, "b")
    a.tick(), b.tick()
    clock.t += 10.0
    assert a.tick().role == "leader" and b.tick().role == "standby"
    assert a.release() and not a.may_write()
    assert parse_lease(m.data["leader"][0].to_string()).released
    st_ = b.tick()
    assert (st_.role, st_.epoch) == ("leader", 2)
    assert a.tick().role == "standby"


def test_reclaim_own_takes_a_dead_incarnations_lease_at_once() -> None:
    clock = FakeClock()
    m = FakeMap(clock)
    s = LeaseSettings(ttl_s=10.0, guard_s=1.0, backstop_ttl_s=100.0, reclaim_own=True)
    old = make(clock, m, "w", s)
    old.tick()
    clock.t += 10.0
    assert old.tick().role == "leader"
    del old  # SIGKILL
    clock.t += 1.0
    new = make(clock, m, "w", s)
    assert new.tick().epoch == 2
    other = make(clock, m, "x", s)  # another worker_id has to wait
    assert other.tick().role == "standby"


def test_unreadable_and_json_string_entries() -> None:
    clock = FakeClock()
    m = FakeMap(clock)
    m.data["leader"] = ("something else wrote this", math.inf)
    a = make(clock, m, "a")
    assert a.tick().role == "standby"
    clock.t += 10.0
    assert a.tick().epoch == 1  # replaced with a compare on the exact (str) object read


# -- model check: many contenders, random schedules ------------------------------------------------

OPS = st.lists(st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 2)),
    st.tuples(st.just("advance"), st.floats(0.0, 12.0)),
    st.tuples(st.just("release"), st.integers(0, 2)),
    st.tuples(st.just("restart"), st.integers(0, 2)),  # SIGKILL + start again under the same worker_id
    st.tuples(st.just("wipe"), st.just(0)),  # grid data loss
    st.tuples(st.just("garbage"), st.just(0)),  # someone else writes the key
), min_size=1, max_size=80)


@settings(max_examples=scaled(10))
@given(OPS, st.booleans())
def test_model_never_two_leaders(ops: list[tuple[str, Any]], reclaim: bool) -> None:
    s = LeaseSettings(ttl_s=10.0, guard_s=1.0, backstop_ttl_s=20.0, reclaim_own=reclaim)
    clock = FakeClock()
    m = FakeMap(clock)
    ids = ["a", "b", "c"]
    leases = [make(clock, m, w, s) for w in ids]
    terms: list[tuple[int, str]] = []  # (epoch, token) in the order terms began
    entry_lost = False  # epochs only increase while the entry (or a contender's memory) survives
    for op, arg in ops:
        if op == "tick":
            leases[arg].tick()
        elif op == "advance":
            clock.t += arg
        elif op == "release":
            leases[arg].release()
        elif op == "restart":
            leases[arg] = make(clock, m, ids[arg], s)
        elif op == "wipe":
            m.data.clear()
            entry_lost = True
        else:
            m.data["leader"] = ("garbage", math.inf)
            entry_lost = True
        leading = [le for le in leases if le.may_write()]
        assert len(leading) <= 1, f"two leaders after {op} {arg}: {[le.me for le in leading]}"
        for le in leading:
            key = (le.epoch, le.me.token)
            if not terms or terms[-1] != key:
                assert key not in terms, f"term {key} resumed after another began"
                assert entry_lost or not terms or key[0] > terms[-1][0], f"epoch {terms[-1][0]} -> {key[0]}"
                terms.append(key)


def test_model_liveness_with_regular_ticks() -> None:
    """Contenders ticking every 2.5 s: someone leads within ttl + one tick of any failure."""
    s = LeaseSettings(ttl_s=10.0, guard_s=1.0, backstop_ttl_s=20.0)
    clock = FakeClock()
    m = FakeMap(clock)
    leases = [make(clock, m, w, s) for w in "abc"]
    dead: set[int] = set()
    leaderless_since: float | None = None
    worst = 0.0
    for step in itertools.count():
        if step == 200:
            break
        if step in (40, 100):  # kill whoever leads
            dead |= {i for i, le in enumerate(leases) if le.may_write()}
        for i, le in enumerate(leases):
            if i not in dead:
                le.tick()
        alive_leading = [i for i, le in enumerate(leases) if i not in dead and le.may_write()]
        if alive_leading:
            if leaderless_since is not None:
                worst = max(worst, clock.t - leaderless_since)
            leaderless_since = None
        elif leaderless_since is None:
            leaderless_since = clock.t
        clock.t += 2.5
    assert len(dead) == 2
    assert leaderless_since is None
    # the first acquisition waits out an empty map (ttl); a takeover needs ttl + one tick at most
    assert 0 < worst <= s.ttl_s + 2.5
