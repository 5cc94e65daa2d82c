"""``service.changelog.catch_up`` over the fake grid: the chain of records after a checkpoint is
applied in order (across bars no engine stepped), read in one get_all when short and through a key
query when long, and stops, counted by reason, at a hole, an unreadable record, another lineage or
the limit, leaving the state at the last record applied."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from obf_contract.record import dumps_record
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.snapshot import parse_payload, payload_json
from obf_features_worker.service import changelog
from tests.fakes import FakeGrid

B0 = 1_000_000



def snaps(i: int) -> dict[str, Any]:
    ts = float(B0 + i)
    return {s: parse_payload(s, payload_json(ts - 0.5, [1e5 + i * 1e3, 5e4], [2e5, 1e4 * (i % 3)], seq=100 + i),
                             now=ts) for s in ("AAAUSDT", "BBBUSDT")[: 1 + i % 2]}


def writer(bars: list[int], grid: FakeGrid, skip_write: tuple[int, ...] = ()) -> tuple[FeatureEngine, dict[int, bytes]]:
    """An engine stepping ``bars`` (offsets from B0), its records written to ``grid`` except
    ``skip_write``; returns the engine and the state after each bar."""
    engine = FeatureEngine()
    states = {}
    for i in bars:
        rec = engine.step(B0 + i, float(B0 + i), snaps(i))
        if i not in skip_write:
            grid.c.features[B0 + i] = dumps_record(rec).decode()
        states[i] = orjson.dumps(engine.export_state(), option=orjson.OPT_SORT_KEYS)
    return engine, states


def restored(states: dict[int, bytes], i: int) -> FeatureEngine:
    return FeatureEngine.from_state(orjson.loads(states[i]), FeatureEngine().params)


def state(engine: FeatureEngine) -> bytes:
    return orjson.dumps(engine.export_state(), option=orjson.OPT_SORT_KEYS)


def test_the_chain_is_applied_across_skipped_bars_and_raises_the_seqs() -> None:
    grid = FakeGrid()
    bars = [0, 1, 2, 5, 6, 7]  # bars 3 and 4 stepped by no engine: record 5 says gap_bars 2
    _, states = writer(bars, grid)
    engine = restored(states, 1)
    seqs = {"AAAUSDT": 50}
    result = changelog.catch_up(engine, grid, before_bar=B0 + 7, seqs=seqs, max_records=100)
    assert (result.applied, result.stopped, result.bar_ts) == (3, None, float(B0 + 6))
    assert state(engine) == states[6]
    assert seqs == {"AAAUSDT": 106, "BBBUSDT": 105}
    assert [op[0] for op in grid.ops] == ["get_records"]  # a short range: one get_all, no key query


def test_a_long_range_reads_the_keys_first_and_in_batches() -> None:
    grid = FakeGrid()
    n = changelog.READ_BATCH + 20
    _, states = writer([0, *range(200, 200 + n)], grid)  # a long gap after bar 0
    engine = restored(states, 0)
    result = changelog.catch_up(engine, grid, before_bar=B0 + 10_000, seqs={}, max_records=1000)
    assert result.applied == n and result.stopped is None and state(engine) == states[199 + n]
    assert [op[0] for op in grid.ops] == ["bar_keys", "get_records", "get_records"]


def test_a_missing_record_inside_the_chain_stops_it_there() -> None:
    grid = FakeGrid()
    _, states = writer(list(range(8)), grid, skip_write=(4,))
    engine = restored(states, 1)
    result = changelog.catch_up(engine, grid, before_bar=B0 + 8, seqs={}, max_records=100)
    assert (result.applied, result.stopped) == (2, changelog.STOP_GAP)
    assert state(engine) == states[3]


@pytest.mark.parametrize("bad,reason", [("{not json", changelog.STOP_UNREADABLE),
                                        ("[1, 2]", changelog.STOP_UNREADABLE),
                                        ("other bar", changelog.STOP_UNREADABLE),
                                        ("cold", changelog.STOP_MISMATCH)])
def test_an_unreadable_or_foreign_record_stops_the_chain(bad: str, reason: str) -> None:
    grid = FakeGrid()
    _, states = writer(list(range(6)), grid)
    if bad == "other bar":
        grid.c.features[B0 + 3] = grid.c.features[B0 + 2]
    elif bad == "cold":  # a writer that started cold at bar 3: follows bar 2 by number only
        cold = FeatureEngine()
        cold.step(B0 + 2, float(B0 + 2), {})
        grid.c.features[B0 + 3] = dumps_record(cold.step(B0 + 3, float(B0 + 3), snaps(3))).decode()
    else:
        grid.c.features[B0 + 3] = bad
    engine = restored(states, 0)
    result = changelog.catch_up(engine, grid, before_bar=B0 + 6, seqs={}, max_records=100)
    assert (result.applied, result.stopped) == (2, reason), result.detail
    assert state(engine) == states[2]


def test_at_most_max_records_and_nothing_at_or_after_the_bar() -> None:
    grid = FakeGrid()
    _, states = writer(list(range(10)), grid)
    engine = restored(states, 0)
    result = changelog.catch_up(engine, grid, before_bar=B0 + 10, seqs={}, max_records=3)
    assert (result.applied, result.stopped) == (3, changelog.STOP_LIMIT) and state(engine) == states[3]
    result = changelog.catch_up(engine, grid, before_bar=B0 + 6, seqs={}, max_records=100)
    assert (result.applied, result.stopped) == (2, None) and state(engine) == states[5]
    assert changelog.catch_up(engine, grid, before_bar=B0 + 6, seqs={}, max_records=100).applied == 0
    with pytest.raises(ValueError):
        changelog.catch_up(FeatureEngine(), grid, before_bar=B0, seqs={}, max_records=1)


def _malformed(text: str, how: str) -> str:
    rec = orjson.loads(text)
    if how == "depth number":  # follows the chain, a column is a number
        rec["placement"]["depth_1pct_usd"] = 5
    elif how == "seq number":  # everything the engine reads is right; the seq column is not a list
        rec["seq"] = 5
    elif how == "state missing":
        del rec["state"]
    elif how == "symbols not strings":
        rec["symbols"] = [1] * len(rec["symbols"])
    return orjson.dumps(rec).decode()


@pytest.mark.parametrize("how", ["depth number", "seq number", "state missing", "symbols not strings"])
def test_a_malformed_record_is_a_stop_never_an_exception(how: str) -> None:
    # A record in the map is input: one that breaks the columnar shape must stop the chain (a
    # restore gap), not escape as a TypeError (which crashed the worker on every restart).
    grid = FakeGrid()
    _, states = writer(list(range(6)), grid)
    grid.c.features[B0 + 3] = _malformed(grid.c.features[B0 + 3], how)
    engine = restored(states, 0)
    seqs: dict[str, int] = {}
    result = changelog.catch_up(engine, grid, before_bar=B0 + 6, seqs=seqs, max_records=100)
    assert (result.applied, result.stopped, result.stop_key) == (2, changelog.STOP_UNREADABLE, B0 + 3), result.detail
    # the state and the seqs are those after the last record applied: the bad one changed neither
    assert state(engine) == states[2]
    assert seqs == {"AAAUSDT": 102, "BBBUSDT": 101}


def test_an_unforeseen_error_applying_a_record_is_a_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = FakeGrid()
    _, states = writer(list(range(4)), grid)
    engine = restored(states, 0)
    real = FeatureEngine.apply_record

    def apply(self: FeatureEngine, record: Any) -> None:
        if record["bar_idx"] == B0 + 2:
            raise TypeError("a value apply_record did not foresee")
        real(self, record)

    monkeypatch.setattr(FeatureEngine, "apply_record", apply)
    seqs: dict[str, int] = {}
    result = changelog.catch_up(engine, grid, before_bar=B0 + 4, seqs=seqs, max_records=100)
    assert (result.applied, result.stopped, result.stop_key) == (1, changelog.STOP_MISMATCH, B0 + 2)
    assert "TypeError" in result.detail and state(engine) == states[1]
    assert seqs == {"AAAUSDT": 101, "BBBUSDT": 101}  # record 2's seqs not taken
