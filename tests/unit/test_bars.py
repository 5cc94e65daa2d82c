"""Bar clocks without a grid: interval rule, catch-up, scan dedupe/queueing, midnight reset, wake-ups."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import orjson
import pytest
from hazelcast.core import HazelcastJsonValue
from hypothesis import given
from hypothesis import strategies as st

from obf_features_worker.service.bars import (
    SCAN_BAD_FIELD,
    SCAN_BAD_JSON,
    SCAN_MISSING_FIELD,
    IntervalClock,
    ScanClock,
    floor_index,
)


@given(t=st.floats(0, 4e9, allow_nan=False), s=st.sampled_from([0.1, 0.25, 0.3, 1.0, 2.0, 5.0, 7.0, 60.0]))
def test_floor_index_brackets_t(t, s):
    k = floor_index(t, s)
    assert k * s <= t < (k + 1) * s


def test_floor_index_on_exact_multiples():
    # The close time is k * s as a float (as in replay): 3 * 0.1 = 0.30000000000000004 > 0.3.
    assert floor_index(0.3, 0.1) == 2
    assert floor_index(3 * 0.1, 0.1) == 3
    # 3 * 0.7 = 2.0999999999999996 and (3 * 0.7) / 0.7 = 2.9999999999999996: still bar 3.
    assert floor_index(3 * 0.7, 0.7) == 3
    assert floor_index(1_700_000_005.0, 5.0) == 340_000_001
    assert floor_index(1_700_000_004.999, 5.0) == 340_000_000


def test_interval_clock_closes_each_multiple_once_with_bar_idx_close_over_seconds():
    clock = IntervalClock(5.0)
    clock.start(1_700_000_001.0)
    assert clock.poll(1_700_000_004.9) is None
    tick = clock.poll(1_700_000_005.0)
    assert tick is not None and (tick.bar_idx, tick.bar_ts, tick.skipped) == (340_000_001, 1_700_000_005.0, 0)
    assert clock.poll(1_700_000_005.5) is None  # closed once
    assert clock.poll(1_700_000_009.99) is None
    assert clock.poll(1_700_000_010.2).bar_idx == 340_000_002


def test_interval_clock_catches_up_missed_bars_in_order():
    clock = IntervalClock(1.0, max_catchup_bars=10)
    clock.start(100.5)
    got = [clock.poll(103.2) for _ in range(4)]
    assert [t.bar_idx for t in got[:3]] == [101, 102, 103] and got[3] is None
    assert [t.bar_ts for t in got[:3]] == [101.0, 102.0, 103.0]


def test_interval_clock_skips_beyond_max_catchup():
    clock = IntervalClock(1.0, max_catchup_bars=3)
    clock.start(100.0)
    first = clock.poll(150.5)
    # Due: 101..150; the current bar (150) plus at most 3 missed ones (147..149) are closed.
    assert (first.bar_idx, first.skipped) == (147, 46)
    assert [clock.poll(150.5).bar_idx for _ in range(3)] == [148, 149, 150]
    assert clock.poll(150.5) is None
    assert clock.stats() == {"ticks": 4, "skipped": 46}


def test_interval_wait_tick_returns_at_the_close():
    now = [99.95]

    def fake_now() -> float:
        return now[0]

    clock = IntervalClock(1.0, now=fake_now)
    clock.start()
    stop = threading.Event()
    threading.Timer(0.05, lambda: now.__setitem__(0, 100.0)).start()
    tick = clock.wait_tick(stop, timeout=10)
    assert tick is not None and tick.bar_idx == 100


def test_interval_wait_tick_wakes_on_stop():
    clock = IntervalClock(3600.0)
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    t0 = time.monotonic()
    assert clock.wait_tick(stop, timeout=60) is None
    assert time.monotonic() - t0 < 5


def test_interval_wait_tick_times_out():
    clock = IntervalClock(3600.0)
    assert clock.wait_tick(threading.Event(), timeout=0.05) is None


def test_scan_clock_field_mode_dedupes_and_queues():
    clock = ScanClock("scan_number")
    for value, at in [('{"scan_number": 5}', 10.0), ('{"scan_number": 6}', 10.1),
                      (HazelcastJsonValue('{"scan_number": 7}'), 10.2), ('{"scan_number": 7}', 10.3),
                      ('{"scan_number": 2}', 10.4), ('{"scan_number": 8.0}', 10.5)]:
        clock.trigger(value, received_at=at)
    ticks = []
    while (t := clock.poll()) is not None:
        ticks.append(t)
    assert [(t.bar_idx, t.bar_ts) for t in ticks] == [(5, 10.0), (6, 10.1), (7, 10.2), (8, 10.5)]
    st_ = clock.stats()
    assert st_["ignored"] == 2 and st_["triggers"] == 6 and st_["ticks"] == 4 and st_["pending"] == 0


def test_scan_field_going_back_with_a_later_scan_time_is_a_restart():
    # Repeat or restart: a lower field with a later `timestamp` is an upstream restart; a lower
    # (or equal) field with an earlier/equal or no timestamp is a repeat, ignored as before.
    clock = ScanClock("scan_number")
    scans = [
        ({"scan_number": 100, "timestamp": "2026-12-04T10:00:00Z"}, 1.0),
        ({"scan_number": 101, "timestamp": "2026-12-04T10:00:05Z"}, 2.0),
        ({"scan_number": 99, "timestamp": "2026-12-04T09:59:55Z"}, 3.0),  # an old scan again: repeat
        ({"scan_number": 101, "timestamp": "2026-12-04T10:00:10Z"}, 4.0),  # same number: repeat
        ({"scan_number": 3}, 5.0),  # no time: cannot be told from a repeat, ignored
        ({"scan_number": 1, "timestamp": 1796378420.0}, 6.0),  # later (unix s): restart
        ({"scan_number": 2, "timestamp": 1796378425000}, 7.0),  # unix ms, next scan
        ({"scan_number": 1, "timestamp": 1796378425.0}, 8.0),  # lower, same time: repeat
    ]
    for obj, at in scans:
        clock.trigger(orjson.dumps(obj).decode(), received_at=at)
    ticks = []
    while (t := clock.poll()) is not None:
        ticks.append(t)
    assert [(t.bar_idx, t.new_epoch) for t in ticks] == [(100, False), (101, False), (1, True), (2, False)]
    st_ = clock.stats()
    assert st_["restarts"] == 1 and st_["ignored"] == 4


def test_a_closed_scan_without_a_time_keeps_the_last_known_scan_time(caplog):
    # Review of issue 13: a closed scan with no readable timestamp used to erase the last scan
    # time, after which every lower number was a "repeat" (no bars until the numbers caught up).
    clock = ScanClock("scan_number", log_interval_s=3600.0)
    scans = [
        ({"scan_number": 100, "timestamp": "2026-12-04T10:00:00Z"}, 1.0),
        ({"scan_number": 101}, 2.0),  # closes a bar, no time: 10:00:00 stays the last known
        ({"scan_number": 5}, 3.0),  # no time: cannot be classified, ignored (WARNING)
        ({"scan_number": 4}, 3.5),  # again: counted, the WARNING rate-limited
        ({"scan_number": 3, "timestamp": "2026-12-04T09:59:00Z"}, 4.0),  # older than 10:00:00: repeat
        ({"scan_number": 1, "timestamp": "2026-12-04T10:00:10Z"}, 5.0),  # later: an upstream restart
    ]
    with caplog.at_level("WARNING", logger="obf_features_worker.service.bars"):
        for obj, at in scans:
            clock.trigger(orjson.dumps(obj).decode(), received_at=at)
        ticks = []
        while (t := clock.poll()) is not None:
            ticks.append(t)
    assert [(t.bar_idx, t.new_epoch) for t in ticks] == [(100, False), (101, False), (1, True)]
    st_ = clock.stats()
    assert st_["restarts"] == 1 and st_["ignored"] == 3 and st_["unclassified"] == 2
    warned = [r.getMessage() for r in caplog.records if "cannot" in r.getMessage() or "no readable" in r.getMessage()]
    assert len(warned) == 1 and "bar_idx=5 last_bar_idx=101" in warned[0]


@pytest.mark.parametrize("value, reason", [
    ("not json", SCAN_BAD_JSON),
    ("[1, 2]", SCAN_BAD_JSON),
    (b"\xff", SCAN_BAD_JSON),
    (12345, SCAN_BAD_JSON),
    ('{"other": 1}', SCAN_MISSING_FIELD),
    ('{"scan_number": "9"}', SCAN_BAD_FIELD),
    ('{"scan_number": true}', SCAN_BAD_FIELD),
    ('{"scan_number": -1}', SCAN_BAD_FIELD),
    ('{"scan_number": 1.5}', SCAN_BAD_FIELD),
])
def test_scan_clock_rejects_bad_values_by_reason(value, reason):
    clock = ScanClock("scan_number")
    clock.trigger(value, received_at=1.0)
    clock.trigger('{"scan_number": 1}', received_at=2.0)
    tick = clock.poll()
    assert tick is not None and tick.bar_idx == 1
    assert clock.stats()["rejected"] == {reason: 1}


def test_scan_clock_queue_is_bounded_dropping_the_oldest():
    clock = ScanClock("n", max_queue=3)
    for i in range(5):
        clock.trigger(f'{{"n": {i}}}', received_at=float(i))
    assert [clock.poll().bar_idx for _ in range(3)] == [2, 3, 4]
    assert clock.stats()["dropped"] == 2


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def test_scan_clock_counts_from_zero_and_restarts_at_utc_midnight():
    clock = ScanClock(None)
    times = ["2024-03-01T23:59:50", "2024-03-01T23:59:55", "2024-03-02T00:00:00", "2024-03-02T00:00:05"]
    for t in times:
        clock.trigger("{}", received_at=_ts(t))
    ticks = [clock.poll() for _ in times]
    assert [t.bar_idx for t in ticks] == [0, 1, 0, 1]
    assert [t.new_epoch for t in ticks] == [False, False, True, False]
    assert [t.bar_ts for t in ticks] == [_ts(t) for t in times]


def test_scan_wait_tick_wakes_on_trigger_and_on_interrupt():
    clock = ScanClock("n")
    stop = threading.Event()
    threading.Timer(0.05, clock.trigger, args=('{"n": 3}', 1.0)).start()
    tick = clock.wait_tick(stop, timeout=10)
    assert tick is not None and tick.bar_idx == 3

    def stop_it() -> None:
        stop.set()
        clock.interrupt()

    threading.Timer(0.05, stop_it).start()
    t0 = time.monotonic()
    assert clock.wait_tick(stop, timeout=60) is None
    assert time.monotonic() - t0 < 5


def test_scan_trigger_never_raises():
    class Weird:
        def __float__(self):
            raise RuntimeError("no")

    clock = ScanClock("n")
    clock.trigger('{"n": 1}', received_at=Weird())  # type: ignore[arg-type]
    assert clock.poll() is None
