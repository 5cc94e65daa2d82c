"""engine_adapter.cache: key classification, exact/fallback/default rules, eviction, waiting, threads."""

from __future__ import annotations

import gc
import random
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine_adapter.cache import BarCache, parse_key
from engine_adapter.features import BarFeatures, bar_from_record, decode_bar
from tests.factories import columnar_record

T0 = 1_723_161_000.0  # unix s
SPACING = 5.0  # s between consecutive bars in these tests


def bar(idx: int, ts: float | None = None, imbalance: float = 0.0) -> BarFeatures:
    """A one-asset bar; ``imbalance`` tags it so a test can tell two versions apart."""
    return bar_from_record(columnar_record({
        "bar_idx": idx, "bar_ts": T0 + idx * SPACING if ts is None else ts,
        "n_assets": 1, "n_present": 1,
        "assets": {"BTCUSDT": {
            "ts": T0, "age_ms": 0.0, "seq": idx,
            "placement": {"depth_1pct_usd": 1.0, "depth_quality": 1.0, "fill_probability": 0.5,
                          "spread_proxy_bps": 1.0},
            "signal": {"imbalance": imbalance, "imbalance_ma5": 0.0, "imbalance_persistence": 0.0,
                       "depth_asymmetry": 0.0, "withdrawal_velocity": 0.0}}},
        "market": None, "macro": None, "degraded": False,
    }))


def cache_with(*indices: int, capacity: int = 100, stale_after_bars: int = 2) -> BarCache:
    c = BarCache(capacity, stale_after_bars)
    for i in indices:
        assert c.insert(bar(i))
    return c


# -- key classification --------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), [
    (0, (False, 0)),
    (17, (False, 17)),
    (17.0, (False, 17)),
    (999_999_999, (False, 999_999_999)),
    (np.int64(12), (False, 12)),
    (np.float64(12.0), (False, 12)),
    (1_000_000_000, (True, 1e9)),
    (1e9, (True, 1e9)),
    (1_723_161_000.25, (True, 1_723_161_000.25)),
    (datetime(2024, 8, 9, tzinfo=UTC), (True, 1723161600.0)),  # 2024-08-09T00:00Z, by date arithmetic
    (1_723_161_000_250, (True, 1_723_161_000.25)),  # >= 1e12: unix milliseconds
    (1_723_161_000_250.0, (True, 1_723_161_000.25)),
    (1e12, (True, 1e9)),
    (999_999_999_999, (True, 999_999_999_999.0)),  # just below 1e12: still seconds
    (12.5, (False, 12)),  # non-integral below 1e9: truncated like the in-process engine's int()
    (0.99, (False, 0)),
])
def test_parse_key(key: object, expected: tuple[bool, float]) -> None:
    got = parse_key(key)
    assert got == expected
    assert type(got[1]) is (float if expected[0] else int)


@pytest.mark.parametrize(("key", "error"), [
    (-1, ValueError), (-0.5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (-3.0, ValueError), (True, TypeError), ("12", ValueError), ("yesterday", ValueError), (None, TypeError),
    ([1], TypeError),
])
def test_parse_key_rejects(key: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_key(key)


# -- bar_idx resolution --------------------------------------------------------------------------


def test_exact_bar() -> None:
    c = cache_with(10, 11, 12)
    res, b = c.resolve(11)
    assert (res.kind, res.bar_idx, res.requested_idx, res.age_bars) == ("exact", 11, 11, 0)
    assert b is not None and b.bar_idx == 11 and res.bar_ts == T0 + 11 * SPACING


def test_fallback_to_latest_earlier_bar() -> None:
    c = cache_with(10, 12, stale_after_bars=2)
    res, b = c.resolve(11)
    assert (res.kind, res.bar_idx, res.age_bars) == ("fallback", 10, 1)
    res, b = c.resolve(14)
    assert (res.kind, res.bar_idx, res.age_bars) == ("fallback", 12, 2)
    assert b is not None and b.bar_idx == 12


def test_never_a_future_bar() -> None:
    c = cache_with(10, 12)
    res, b = c.resolve(9)  # only later bars exist
    assert res.kind == "default" and res.bar_idx is None and b is None


def test_default_when_empty() -> None:
    res, b = BarCache(10, 2).resolve(5)
    assert (res.kind, res.bar_idx, res.requested_idx, res.age_bars, b) == ("default", None, 5, None, None)


def test_default_when_stale_reports_the_age() -> None:
    c = cache_with(10, stale_after_bars=2)
    assert c.resolve(12)[0].kind == "fallback"
    res, b = c.resolve(13)
    assert (res.kind, res.bar_idx, res.age_bars, b) == ("default", None, 3, None)


def test_stale_after_zero_allows_only_exact() -> None:
    c = cache_with(10, stale_after_bars=0)
    assert c.resolve(10)[0].kind == "exact"
    assert c.resolve(11)[0].kind == "default"


@given(st.sets(st.integers(0, 60), max_size=20), st.integers(0, 70), st.integers(0, 5))
def test_resolution_matches_the_rules(cached: set[int], query: int, stale: int) -> None:
    c = cache_with(*sorted(cached), stale_after_bars=stale)
    res, b = c.resolve(query)
    earlier = [i for i in cached if i <= query]
    if query in cached:
        assert res.kind == "exact" and res.bar_idx == query
    elif earlier and query - max(earlier) <= stale:
        assert res.kind == "fallback" and res.bar_idx == max(earlier)
    else:
        assert res.kind == "default" and b is None
    if b is not None:
        assert b.bar_idx == res.bar_idx <= query


# -- timestamp resolution ------------------------------------------------------------------------


def ts_of(idx: int) -> float:
    return T0 + idx * SPACING


def test_timestamp_at_a_bar_close_is_that_bar() -> None:
    c = cache_with(10, 11, 12)
    res, _ = c.resolve(ts_of(11))
    assert (res.kind, res.bar_idx) == ("exact", 11)


def test_timestamp_between_closes_is_the_earlier_bar() -> None:
    c = cache_with(10, 11, 12)
    res, _ = c.resolve(ts_of(11) + SPACING / 2)
    assert (res.kind, res.bar_idx) == ("exact", 11)


def test_timestamp_before_every_bar_is_default() -> None:
    c = cache_with(10, 11)
    res, b = c.resolve(ts_of(10) - 0.001)
    assert (res.kind, res.requested_idx, b) == ("default", None, None)


def test_timestamp_in_a_missing_bar_falls_back() -> None:
    c = cache_with(10, 14)  # bars 11..13 missing; their closes are at ts_of(11..13)
    res, _ = c.resolve(ts_of(12) + 1.0)
    assert (res.kind, res.bar_idx, res.requested_idx, res.age_bars) == ("fallback", 10, 12, 2)
    res, _ = c.resolve(ts_of(13) + 1.0)
    assert (res.kind, res.requested_idx, res.age_bars) == ("default", 13, 3)


def test_timestamp_after_the_newest_bar_goes_stale() -> None:
    c = cache_with(10, 11, stale_after_bars=2)
    assert c.resolve(ts_of(11) + 1.0)[0].kind == "exact"
    res, _ = c.resolve(ts_of(13) + 1.0)  # bar 13 should have closed: the newest known is 2 bars old
    assert (res.kind, res.bar_idx, res.requested_idx) == ("fallback", 11, 13)
    res, _ = c.resolve(ts_of(14))
    assert (res.kind, res.requested_idx, res.age_bars) == ("default", 14, 3)


def test_single_bar_timestamp_is_exact() -> None:
    c = cache_with(10)
    assert c.resolve(ts_of(10) + 100 * SPACING)[0].kind == "exact"  # no spacing known yet


# -- insertion, eviction, counters ---------------------------------------------------------------


def test_eviction_keeps_the_newest_n_bars() -> None:
    c = BarCache(5, 2)
    for i in range(1, 9):
        c.insert(bar(i))
    assert c.cached_indices() == [4, 5, 6, 7, 8]
    st_ = c.stats()
    assert (st_.bars, st_.evicted, st_.oldest_idx, st_.newest_idx) == (5, 3, 4, 8)
    assert c.resolve(3)[0].kind == "default"  # evicted and nothing earlier


def test_a_bar_older_than_a_full_cache_is_ignored() -> None:
    c = BarCache(3, 2)
    for i in (10, 11, 12):
        c.insert(bar(i))
    assert not c.insert(bar(9))
    assert c.cached_indices() == [10, 11, 12]
    assert c.stats().ignored == {"too_old": 1}


def test_out_of_order_arrivals_are_kept_sorted() -> None:
    c = BarCache(10, 2)
    for i in (5, 3, 9, 4, 7):
        c.insert(bar(i))
    assert c.cached_indices() == [3, 4, 5, 7, 9]
    assert c.resolve(8)[0].bar_idx == 7


def test_listener_update_replaces_but_seed_never_overwrites() -> None:
    c = BarCache(10, 2)
    c.insert(bar(5, imbalance=0.1))
    assert c.insert(bar(5, imbalance=0.2))
    assert c.get(5).assets["BTCUSDT"].signal.imbalance == 0.2
    assert c.insert_many([bar(5, imbalance=0.3), bar(6)], "seed") == 1
    assert c.get(5).assets["BTCUSDT"].signal.imbalance == 0.2
    s = c.stats()
    assert s.inserted == {"listener": 1, "seed": 1} and s.replaced == 1 and s.ignored == {"duplicate": 1}


def test_a_bar_breaking_timestamp_order_is_ignored() -> None:
    c = BarCache(10, 2)
    c.insert(bar(5))
    c.insert(bar(7))
    assert not c.insert(bar(6, ts=ts_of(4)))
    assert not c.insert(bar(7, ts=ts_of(4)))
    assert c.cached_indices() == [5, 7] and c.stats().ignored == {"bar_ts_order": 2}


def test_lookup_counters_by_kind() -> None:
    c = cache_with(10, 11)
    for key in (10, 11, 12, 20, 5):
        c.resolve(key)
    c.resolve(11, count=False)
    assert c.stats().lookups == {"exact": 2, "fallback": 1, "default": 2}


def test_bad_capacity_fails_fast() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BarCache(0, 2)
    with pytest.raises(ValueError, match="stale_after_bars"):
        BarCache(10, -1)


# -- waiting for a bar ---------------------------------------------------------------------------


def _wait_until_blocked(c: BarCache, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not c._cond._waiters:
        assert time.monotonic() < end, "waiter never blocked"
        time.sleep(0.001)


def test_wait_for_is_woken_by_the_arrival() -> None:
    c = cache_with(1)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(c.wait_for(2, timeout_s=60.0)))
    t.start()
    _wait_until_blocked(c)
    c.insert(bar(3))  # another bar does not satisfy the wait
    assert t.is_alive()
    c.insert(bar(2))
    t.join(30.0)
    assert result == [True]  # True means woken by the bar, not by the 60 s timeout


def test_wait_for_times_out_cleanly() -> None:
    c = cache_with(1)
    assert c.wait_for(2, timeout_s=0.02) is False
    assert c.wait_for(2, timeout_s=0) is False
    assert c.wait_for(1, timeout_s=0) is True


# -- threads ---------------------------------------------------------------------------------------


def test_concurrent_inserts_and_reads_stay_consistent() -> None:
    n_bars, cap = 3000, 50
    c = BarCache(cap, stale_after_bars=3)
    bars = [bar(i, imbalance=(i % 7) / 10) for i in range(n_bars)]
    stop = threading.Event()
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            q = rng.randrange(n_bars + 5)
            key = q if rng.random() < 0.5 else ts_of(q) + rng.random() * SPACING
            res, b = c.resolve(key)
            if b is not None:
                if b.bar_idx != res.bar_idx or b.bar_idx > q:
                    errors.append(f"query={key} resolved={res} bar={b.bar_idx}")
                if b.assets["BTCUSDT"].signal.imbalance != (b.bar_idx % 7) / 10:
                    errors.append(f"bar {b.bar_idx} has another bar's data")

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in readers:
        t.start()
    # Two writers, interleaved indices, like events from different partitions.
    writers = [threading.Thread(target=lambda k=k: [c.insert(b) for b in bars[k::2]]) for k in (0, 1)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    for t in readers:
        t.join(60)
    assert errors == []
    s = c.stats()
    assert s.bars == cap and c.cached_indices() == list(range(n_bars - cap, n_bars))
    assert sum(s.inserted.values()) + s.ignored.get("too_old", 0) == n_bars
    assert sum(s.inserted.values()) - s.evicted == cap


# -- numbering restarts and lookup keys (issue 13) -------------------------------------------------


def test_a_newer_bar_with_a_lower_number_starts_a_new_numbering() -> None:
    # The scan count restarted at UTC midnight: bars 86395..86399 of yesterday, then bar 0.
    c = cache_with(86395, 86396, 86397, 86398, 86399)
    assert c.insert(bar(0, ts=ts_of(86400)))
    assert c.cached_indices() == [0]
    res, b = c.resolve(0)
    assert res.kind == "exact" and b is not None and b.bar_ts == ts_of(86400)
    assert c.insert(bar(1, ts=ts_of(86401))) and c.resolve(1)[0].kind == "exact"
    # A late bar of the previous numbering (listener or re-seed) is refused, whatever its number.
    assert not c.insert(bar(86399))
    assert not c.insert_many([bar(2, ts=ts_of(86398)), bar(86396)], "reseed")
    s = c.stats()
    assert s.numbering_restarts == 1 and s.ignored == {"old_numbering": 3}
    assert c.cached_indices() == [0, 1]


def test_an_upstream_scan_number_going_back_starts_a_new_numbering() -> None:
    c = cache_with(100, 101, 102)
    assert c.insert(bar(40, ts=ts_of(103)))  # newer in time, lower in number
    assert c.cached_indices() == [40]
    # bar 102 now means a future bar of the new numbering: far beyond bar 40, so default
    assert c.resolve(102)[0].kind == "default" and c.resolve(41)[0].bar_idx == 40


def test_removals_of_the_previous_numbering_are_followed() -> None:
    # The worker removed its keys above the new numbering before the adapter saw the new bar.
    c = cache_with(*range(10, 20))
    assert not c.key_removed(12)  # a retention removal of an old bar: the cache keeps more bars
    assert c.cached_indices() == list(range(10, 20))
    assert not c.key_removed(18)  # 19 is still there
    assert c.key_removed(19)  # the newest: it goes, and so does 18 (removed before)
    assert c.cached_indices() == list(range(10, 18))
    for k in (17, 16, 15, 14, 13, 11, 10):
        c.key_removed(k)
    assert c.cached_indices() == []  # 12 had been removed too
    assert not c.key_removed(99)  # not cached
    assert c.stats().removed == 10
    assert c.insert(bar(0, ts=ts_of(30))) and c.resolve(0)[0].kind == "exact"


def test_a_non_integral_key_is_truncated_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    c = cache_with(10, 11)
    with caplog.at_level("WARNING", logger="engine_adapter.cache"):
        assert c.resolve(11.7)[0].kind == "exact" and c.resolve(10.2)[0].bar_idx == 10
    assert c.stats().truncated_keys == 2
    assert len([r for r in caplog.records if "truncated" in r.getMessage()]) == 1  # logged once


def test_a_millisecond_timestamp_resolves_like_the_second_one() -> None:
    c = cache_with(10, 11, 12)
    for ms in (int(ts_of(11) * 1000), ts_of(11) * 1000.0, int(ts_of(11) * 1000) + 2500):
        res, b = c.resolve(ms)
        assert res.kind == "exact" and b is not None and b.bar_idx == 11, ms


def test_the_traders_numbering_going_back_first_never_resolves_to_the_previous_numbering() -> None:
    # Trader ahead of the worker: its count restarted at midnight, the worker's bar 0 is not here.
    c = cache_with(0, 1, 86397, 86398, 86399)  # yesterday's bars, 0 and 1 among them
    assert c.trader_restarted(0, ts_of(86399))  # the trader's previous bar was 86399
    assert c.cached_indices() == [0, 1, 86397, 86398, 86399]  # nothing dropped
    assert c.resolve(0)[0].kind == "default" and c.resolve(1)[0].kind == "default"  # not yesterday's
    assert c.resolve(86398)[0].kind == "default"  # nor any older one by number
    assert c.resolve(86399)[0].kind == "exact"  # the bar the trader used itself is not older than the floor
    assert c.resolve(ts_of(86398))[0].kind == "exact"  # a timestamp is absolute: unaffected
    assert c.insert(bar(0, ts=ts_of(86400)))  # the worker's new numbering: the cache follows
    assert c.resolve(0)[0].kind == "exact" and c.get(0) is not None and c.get(0).bar_ts == ts_of(86400)
    assert c.insert(bar(1, ts=ts_of(86401))) and c.resolve(1)[0].kind == "exact"
    assert c.trader_floor is None  # lifted by the worker's restart
    assert c.stats().numbering_restarts == 1


def test_worker_ahead_of_the_trader_keeps_the_new_numberings_bars() -> None:
    # The worker's bars 0 and 1 of today arrived before the trader's step_live(0).
    c = cache_with(86397, 86398, 86399)
    assert c.insert(bar(0, ts=ts_of(86400))) and c.insert(bar(1, ts=ts_of(86401)))
    assert c.trader_restarted(0, ts_of(86399))  # the trader goes back after using bar 86399
    assert c.cached_indices() == [0, 1]  # the new numbering's bars stay
    for i in (0, 1):
        res, b = c.resolve(i)
        assert res.kind == "exact" and b is not None and b.bar_ts == ts_of(86400 + i)
    assert c.insert(bar(1, ts=ts_of(86401), imbalance=0.3))  # a re-write of bar 1 is accepted
    assert c.insert(bar(2, ts=ts_of(86402))) and c.resolve(2)[0].kind == "exact"
    assert c.resolve(5)[0].kind == "default"  # never a future bar; bar 2 is 3 bars old (> 2)
    assert c.resolve(3)[0].bar_idx == 2  # fallback to the newest bar not after it


def test_trader_re_stepping_an_older_scan_keeps_the_cache() -> None:
    c = cache_with(100, 101, 102, 103, 104)
    assert c.trader_restarted(101, ts_of(104))
    assert c.cached_indices() == [100, 101, 102, 103, 104]  # nothing wiped
    assert c.resolve(101)[0].kind == "default"  # cannot tell it from a restart: never a bar of before
    assert c.insert(bar(105)) and c.resolve(105)[0].kind == "exact"  # newer than the floor
    assert c.lift_trader_floor() and not c.lift_trader_floor()
    assert c.resolve(101)[0].kind == "exact" and len(c) == 6
    assert c.stats().numbering_restarts == 0


def test_trader_restarted_without_a_previous_bar_ts_keeps_the_old_call() -> None:
    c = cache_with(0, 1, 86397, 86398, 86399)
    assert c.trader_restarted(0)  # floor: the newest cached bar (above bar 0)
    assert c.resolve(0)[0].kind == "default" and len(c) == 5
    assert not c.trader_restarted(0)  # the same floor again: no change
    empty = BarCache(10, 2)
    assert not empty.trader_restarted(0)


# -- columns only: the cache's objects and bytes per bar (issue 14) ------------------------------


def wide_texts(n_bars: int, n_assets: int) -> list[bytes]:
    syms = [f"A{k:04d}USDT" for k in range(n_assets)]
    out = []
    for idx in range(1, n_bars + 1):
        bar_ts = T0 + idx * SPACING
        out.append(orjson.dumps(columnar_record({
            "bar_idx": idx, "bar_ts": bar_ts, "n_assets": n_assets,
            "assets": {s: {"ts": bar_ts - 0.25 - k / 1e4, "age_ms": (bar_ts - (bar_ts - 0.25 - k / 1e4)) * 1000.0,
                           "seq": idx * 1000 + k,
                           "placement": {"depth_1pct_usd": 1e5 + k + idx, "depth_quality": 1.0 + k / 1e3,
                                         "fill_probability": 0.5, "spread_proxy_bps": 2.0},
                           "signal": {"imbalance": k / n_assets, "imbalance_ma5": 0.0, "imbalance_persistence": 0.0,
                                      "depth_asymmetry": 0.0, "withdrawal_velocity": -0.001}}
                       for k, s in enumerate(syms)},
            "market": {"median_imbalance": 0.0, "agreement_pct": 50.0, "depth_pressure": 0.0,
                       "notional_pressure": 0.0},
            "macro": {"cascade_count": 0, "cascade_regime": "CALM", "depth_velocity": 0.0, "acceleration": 0.0,
                      "depth_ref_usd": 1e5},
            "degraded": False})))
    return out


def test_cached_bars_hold_no_per_asset_objects() -> None:
    n_bars, n_assets = 40, 200
    texts = wide_texts(n_bars, n_assets)
    decode_bar(texts[0])  # the shared symbol table exists before counting
    cache = BarCache(n_bars, 2)
    gc.collect()
    before = len(gc.get_objects())
    for t in texts:
        assert cache.insert(decode_bar(t))
    gc.collect()
    grown = len(gc.get_objects()) - before
    # A handful of objects a bar (the bar, its columns, market, macro, two arrays), plus the
    # trader's objects of the newest bar and of the one prepared before it (3 per asset each).
    assert grown <= n_bars * 8 + 2 * (3 * n_assets + 10), grown
    assert cache.newest().assets.prepared is not None  # type: ignore[union-attr]
    assert all(cache.get(i).assets.prepared is None for i in range(1, n_bars))  # type: ignore[union-attr]


def test_a_cached_bar_costs_about_its_columns_in_memory() -> None:
    n_bars, n_assets = 30, 300
    texts = wide_texts(n_bars, n_assets)
    decode_bar(texts[0])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bars = [decode_bar(t) for t in texts]
        per_bar = (tracemalloc.get_traced_memory()[0] - before) / n_bars
    finally:
        tracemalloc.stop()
    # ts + nine features + seq at 8 B each (age_ms is derived from ts), plus ~1 kB of objects.
    assert 11 * 8 * n_assets <= per_bar <= 11 * 8 * n_assets + 1500, per_bar
    assert all(b.assets.nbytes() == 11 * 8 * n_assets for b in bars)  # type: ignore[attr-defined]


def test_seeded_bars_prepare_the_newest_and_drop_the_memo_version() -> None:
    texts = wide_texts(5, 3)
    bars = [decode_bar(t) for t in texts]
    # What a reader woken by each change would find (on_change runs where waiters are notified).
    seen: list[bool] = []
    cache = BarCache(10, 2, on_change=lambda: seen.append(bars[4].assets.prepared is not None))  # type: ignore[attr-defined]
    version = cache.version
    assert cache.insert_many(bars[1:], "seed") == 4
    assert [b.assets.prepared is not None for b in bars] == [False] * 4 + [True]  # type: ignore[attr-defined]
    # Review finding 6: prepared before the readers are woken, so one change, never an unprepared newest bar.
    assert cache.version > version and seen == [True]
    assert cache.insert(bars[0], "listener")  # an older bar: not prepared, the newest stays so
    assert bars[0].assets.prepared is None and bars[4].assets.prepared is not None  # type: ignore[attr-defined]
    assert cache.prepare_newest() is False  # nothing to do


def changing_texts(n_bars: int, n_present: int, superset: list[str], seed: int) -> Iterator[bytes]:
    """Records whose present-asset list changes every bar (``n_present`` drawn from ``superset``,
    as illiquid assets hovering around max_age_s do on real books); made one at a time."""
    rng = random.Random(seed)
    previous: list[str] = []
    for idx in range(1, n_bars + 1):
        syms = previous
        while syms == previous:
            syms = sorted(rng.sample(superset, n_present))
        previous = syms
        bar_ts = T0 + idx * SPACING
        ts = [bar_ts - 0.25 - k / 1e4 for k in range(n_present)]
        yield orjson.dumps({
            "schema": 3, "bar_idx": idx, "bar_ts": bar_ts, "n_assets": len(superset), "n_present": n_present,
            "symbols": syms, "ts": ts, "age_ms": [(bar_ts - t) * 1000.0 for t in ts],
            "seq": [idx * 1000 + k for k in range(n_present)],
            "placement": {"depth_1pct_usd": [1e5 + k for k in range(n_present)],
                          "depth_quality": [1.0 + k / 1e3 for k in range(n_present)],
                          "fill_probability": [0.5] * n_present, "spread_proxy_bps": [2.0] * n_present},
            "signal": {"imbalance": [k / n_present for k in range(n_present)], "imbalance_ma5": [0.0] * n_present,
                       "imbalance_persistence": [0.0] * n_present, "depth_asymmetry": [0.0] * n_present,
                       "withdrawal_velocity": [-0.001] * n_present},
            "state": {"ref_depth_usd": [1e5] * n_present},
            "market": {"median_imbalance": 0.0, "agreement_pct": 50.0, "depth_pressure": 0.0,
                       "notional_pressure": 0.0},
            "macro": {"cascade_count": 0, "cascade_regime": "CALM", "depth_velocity": 0.0, "acceleration": 0.0,
                      "depth_ref_usd": 1e5},
            "degraded": False})


def test_a_symbol_list_changing_every_bar_keeps_the_cache_small() -> None:
    # Review finding 5: a table per symbol list (a tuple, a dict and a frozenset of the symbols,
    # ~51 kB at 400 assets) made such a cache ~2.5x its columns. Now a bar's present symbols are
    # two int16 arrays of ids into one shared superset table.
    n_bars, n, n_superset = 500, 400, 440
    superset = [f"CHG{k:04d}USDT" for k in range(n_superset)]
    decode_bar(next(changing_texts(1, n_superset, superset, 0)))  # every symbol known before counting
    cache = BarCache(n_bars, 2)
    gc.collect()
    before = gc.get_objects()
    known = set(map(id, before))
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for text in changing_texts(n_bars, n, superset, 1):
            assert cache.insert(decode_bar(text))
        gc.collect()
        grown_bytes = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    added = [o for o in gc.get_objects() if id(o) not in known and o is not before and o is not known]
    del before, known
    assert len(cache) == n_bars
    bars = [cache.get(i) for i in range(1, n_bars + 1)]
    assert len({b.symbols for b in bars if b is not None}) == n_bars  # the list changed every bar
    # Tracked objects: per bar the BarFeatures, its AssetColumns, market, macro, SymbolTable and
    # four arrays (values, seq, the table's ids and positions) = 9; once: the trader's objects of
    # the newest bar and of the one prepared before it (3 an asset + 3 dicts each), and 100 for
    # the interpreter's own (the old tables' frozenset and dict alone were 2 more a bar).
    assert len(added) <= 9 * n_bars + 2 * (3 * n + 3) + 100, len(added)
    # What a full collection visits, its references: none of the per-bar objects holds a
    # per-asset one (an array's values are not objects), so O(bars), not O(bars x assets) as a
    # per-bar frozenset's. Per bar (fields + type): BarFeatures 14, AssetColumns 7, macro 9,
    # market 5, SymbolTable 4, the arrays 1 each = 43; once: 17 an asset in the trader's objects
    # and 2 per dict entry (3 dicts), for the newest and the retired bar.
    refs = sum(len(gc.get_referents(o)) for o in added)
    assert refs <= 43 * n_bars + 2 * (17 + 6) * n + 200, refs
    # Bytes: per bar its column buffers (ts + nine features + seq, 8 B each: age_ms is derived),
    # the table's two int16 arrays (ids: 2 B an asset; positions: 2 B a superset symbol) and at
    # most 2 kB of fixed-size objects (the five objects, the market/macro floats, four array
    # headers, the cache's index entries); once: the newest and the retired bars' trader objects
    # (3 an asset at <= 100 B, + their 10 floats and 3 dict entries: < 700 B an asset). The old
    # tables added ~51 kB a bar here.
    columns = 11 * 8 * n
    assert all(b is not None and b.assets.nbytes() == columns for b in bars)  # type: ignore[attr-defined]
    per_bar = columns + 2 * n + 2 * n_superset + 2048
    assert grown_bytes <= n_bars * per_bar + 2 * 700 * n, (grown_bytes / n_bars, per_bar)


def test_a_fetched_bar_is_prepared_before_a_waiting_reader_wakes() -> None:
    # Review finding 6: a trader whose bar event was lost waits in wait_for; the fetch thread
    # inserts the bar with insert_many. Woken (on_change runs where the waiters are notified), the
    # trader must find it prepared, not build objects per get_* on its own thread.
    bars = [decode_bar(t) for t in wide_texts(4, 3)]
    woke: list[bool] = []
    cache = BarCache(10, 2, on_change=lambda: woke.append(bars[2].assets.prepared is not None))  # type: ignore[attr-defined]
    assert cache.insert_many(bars[:2], "seed") == 2
    woke.clear()
    assert cache.insert_many([bars[2]], "fetch") == 1
    assert woke == [True] and cache.newest() is bars[2]
    # A batch whose newest is cached already prepares nothing; nor does a batch of older bars.
    assert cache.insert_many([bars[1], bars[2]], "reseed") == 0
    assert [b.assets.prepared is not None for b in bars] == [False, False, True, False]  # type: ignore[attr-defined]
    cache2 = BarCache(10, 2)
    assert cache2.insert(bars[3]) and cache2.insert_many(bars[:1], "seed") == 1
    assert bars[0].assets.prepared is None and bars[3].assets.prepared is not None  # type: ignore[attr-defined]
