"""Producer clocks: robust per-asset offset medians, flags, all-rejected assets, bounded memory."""

from __future__ import annotations

import pytest

from obf_features_worker.engine.ingest import SnapshotBook
from obf_features_worker.engine.producer_clock import ProducerClocks, describe_offset, median
from obf_features_worker.engine.snapshot import payload_json

T0 = 1_723_161_254.0


def test_median_and_description() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert describe_offset(-10.24) == "clock 10.2 s ahead"
    assert describe_offset(3.0).startswith("clock 3.0 s behind")


def test_one_odd_message_does_not_move_the_median_and_memory_is_bounded() -> None:
    clocks = ProducerClocks(window=5, threshold_s=2.0)
    for _ in range(100):
        clocks.observe("AAA", 0.02, accepted=True)
    clocks.observe("AAA", -1e6, accepted=True)  # a wild timestamp once
    assert clocks.offsets() == {"AAA": 0.02}
    assert len(clocks._assets["AAA"].offsets) == 5
    s = clocks.summary()
    assert s["n_flagged"] == 0 and s["flagged"] == {} and s["assets"] == 1 and s["p50_s"] == 0.02


def test_flagged_beyond_the_threshold_either_way() -> None:
    clocks = ProducerClocks(window=3, threshold_s=2.0)
    for _ in range(3):
        clocks.observe("AHEAD", -10.2, accepted=False, reject_reason="future_timestamp")
        clocks.observe("LATE", 3.5, accepted=True)
        clocks.observe("OK", 0.1, accepted=True)
    s = clocks.summary()
    assert s["flagged"] == {"AHEAD": -10.2, "LATE": 3.5} and s["n_flagged"] == 2
    assert (s["min_s"], s["p50_s"], s["max_s"]) == (-10.2, 0.1, 3.5)
    assert s["all_rejected"] == {"AHEAD": {"reason": "future_timestamp", "rejects": 3,
                                           "note": "clock 10.2 s ahead, all pushes rejected"}}
    clocks.observe("AHEAD", 0.0, accepted=True)  # one accepted push ends the streak
    assert clocks.summary()["all_rejected"] == {}


def test_threshold_and_window_are_validated() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="threshold_s"):
            ProducerClocks(threshold_s=bad)
    with pytest.raises(ValueError, match="window"):
        ProducerClocks(window=0)


def test_book_feeds_offsets_from_events_only() -> None:
    now = [T0]
    book = SnapshotBook(clock=lambda: now[0], clock_offset_threshold_s=2.0)
    for i in range(5):
        now[0] = T0 + i
        assert not book.offer("asset_FUTUSDT_ob", payload_json(now[0] + 10.2, [1.0], [1.0], seq=i))
        assert book.offer("asset_OKUSDT_ob", payload_json(now[0] - 0.05, [1.0], [1.0], seq=i))
        book.offer("asset_BADUSDT_ob", "{")  # no timestamp: counted in the streak, no offset
    # a read is no clock sample: its value may be seconds old
    book.offer("asset_OKUSDT_ob", payload_json(T0 - 100, [1.0], [1.0], seq=99), from_read=True)
    pc = book.stats()["producer_clock"]
    assert pc["flagged"] == {"FUTUSDT": -10.2}
    assert pc["all_rejected"]["FUTUSDT"]["note"] == "clock 10.2 s ahead, all pushes rejected"
    assert pc["all_rejected"]["BADUSDT"] == {"reason": "bad_json", "rejects": 5,
                                             "note": "all pushes rejected (bad_json)"}
    assert book.clocks.offsets()["OKUSDT"] == pytest.approx(0.05)
    assert "OKUSDT" not in pc["all_rejected"]
