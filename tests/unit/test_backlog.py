"""``service.backlog``: the worker's write backlog on its own: bounded (oldest dropped, counted),
sorted with one entry per bar, payloads per lease epoch, and what an adopted checkpoint covers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from obf_features_worker.service.backlog import PendingRecord, WriteBacklog


def record(bar_idx: int) -> dict[str, Any]:
    return {"bar_idx": bar_idx, "assets": {}, "producer": {"worker_id": "w", "epoch": None}}


def mine(bar_idx: int, term: int | None = None) -> PendingRecord:
    return PendingRecord(record(bar_idx), term)


def theirs(bar_idx: int) -> PendingRecord:
    return PendingRecord(None, None, payload=json.dumps({"bar_idx": bar_idx, "from": "checkpoint"}))


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        WriteBacklog(0)


def test_full_backlog_drops_the_oldest_and_counts_it() -> None:
    b = WriteBacklog(2)
    assert [b.add(i, mine(i)) for i in (10, 11, 12, 13)] == [None, None, 10, 11]
    assert b.bars() == [12, 13] and b.dropped == 2 and len(b) == 2


def test_out_of_order_entry_is_sorted_in_and_replaces_its_bar() -> None:
    b = WriteBacklog(10)
    for i in (10, 12, 13):
        b.add(i, mine(i))
    b.add(11, theirs(11))
    b.add(12, theirs(12))  # the previous writer's record of bar 12 wins over mine
    assert b.bars() == [10, 11, 12, 13]
    assert [e.record is None for _, e in b] == [False, True, True, False]


def test_first_and_pop_first_walk_oldest_first() -> None:
    b = WriteBacklog(5)
    for i in (3, 1, 2):
        b.add(i, mine(i))
    seen = []
    while b:
        bar, _ = b.first()
        seen.append(bar)
        b.pop_first()
    assert seen == [1, 2, 3] and not b
    with pytest.raises(IndexError):
        b.first()


def test_payload_carries_the_epoch_it_is_written_under() -> None:
    entry = mine(7, term=3)
    assert json.loads(entry.payload_for(3))["producer"]["epoch"] == 3
    assert json.loads(entry.payload_for(4))["producer"]["epoch"] == 4
    assert json.loads(entry.payload_for(None))["producer"]["epoch"] is None
    fixed = theirs(8)
    assert fixed.payload_for(5) == fixed.payload  # another writer's text is never re-serialised


def test_payloads_for_the_checkpoint() -> None:
    b = WriteBacklog(5)
    b.add(1, mine(1))
    b.add(2, theirs(2))
    out = b.payloads(9)
    assert sorted(out) == [1, 2]
    assert json.loads(out[1])["producer"]["epoch"] == 9 and json.loads(out[2])["from"] == "checkpoint"


def test_drop_covered_keeps_newer_bars_and_checkpoint_records() -> None:
    b = WriteBacklog(10)
    for i in (1, 2, 4, 5):
        b.add(i, mine(i))
    b.add(3, theirs(3))
    b.drop_covered(4)
    assert b.bars() == [3, 5]
    b.drop_covered(0)  # nothing at or below: unchanged
    assert b.bars() == [3, 5]
