"""``FeatureEngine.apply_record``: a checkpoint's state plus the records written since is the state
of the engine that wrote them (snapshot + changelog), bit for bit; a record that does not continue
the state is refused with the state unchanged."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obf_contract.record import dumps_record, loads_record
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.engine.snapshot import Snapshot, parse_payload, payload_json
from tests.hypothesis_profiles import scaled

POOL = ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT", "FFFUSDT")
B0 = 340_000_000
BAR_S = 5.0

level = st.one_of(st.just(0.0), st.floats(1.0, 1e7, allow_nan=False, allow_infinity=False))


@st.composite
def bars(draw: st.DrawFn) -> list[tuple[int, float, dict[str, Snapshot]]]:
    """Bars with gaps, empty runs, assets joining and leaving, zero and wide levels."""
    out = []
    bar_idx = B0
    for _ in range(draw(st.integers(1, 30))):
        bar_idx += 1 + draw(st.sampled_from([0, 0, 0, 0, 1, 3]))
        bar_ts = bar_idx * BAR_S
        present = draw(st.one_of(st.just(()), st.lists(st.sampled_from(POOL), unique=True, max_size=len(POOL))))
        snaps = {}
        for sym in present:
            n = draw(st.integers(1, 4))
            bid = draw(st.lists(level, min_size=n, max_size=n))
            ask = draw(st.lists(level, min_size=n, max_size=n))
            text = payload_json(bar_ts - draw(st.floats(0, 4)), bid, ask, seq=bar_idx)
            snaps[sym] = parse_payload(sym, text, now=bar_ts)
        out.append((bar_idx, bar_ts, snaps))
    return out


@st.composite
def params_st(draw: st.DrawFn) -> FeatureParams:
    """Short lookbacks (the rings wrap), any EMA weight, an early ``degraded``."""
    lookback = draw(st.integers(1, 5))
    return FeatureParams(imbalance_lookback=lookback, depth_lookback=draw(st.integers(1, 5)),
                         ma_window=draw(st.integers(1, lookback)),
                         ema_alpha=draw(st.sampled_from([0.05, 0.2, 0.3, 0.5, 1.0])),
                         degraded_after_bars=draw(st.integers(1, 3)))


def state_bytes(engine: FeatureEngine) -> bytes:
    return orjson.dumps(engine.export_state(), option=orjson.OPT_SORT_KEYS)


def wire(record: Any) -> dict[str, Any]:
    """What a successor reads back from the grid: the record through its JSON codec."""
    return loads_record(dumps_record(record))


@settings(max_examples=scaled(2))
@given(feed=bars(), params=params_st(), cut=st.integers(0, 30), configured=st.booleans())
def test_checkpoint_plus_records_is_the_writers_state(feed: list[tuple[int, float, dict[str, Snapshot]]],
                                                      params: FeatureParams, cut: int, configured: bool) -> None:
    universe = POOL[:4] if configured else None
    a = FeatureEngine(params, universe=universe)
    cut = min(cut, len(feed))
    state_at_cut: dict[str, Any] | None = None
    records = []
    for k, (bar_idx, bar_ts, snaps) in enumerate(feed):
        if k == cut:
            state_at_cut = orjson.loads(orjson.dumps(a.export_state()))  # as a checkpoint holds it
        records.append(wire(a.step(bar_idx, bar_ts, snaps)))
    if state_at_cut is None:
        state_at_cut = orjson.loads(orjson.dumps(a.export_state()))
    b = FeatureEngine.from_state(state_at_cut, params, universe=universe)
    for rec in records[cut:]:
        b.apply_record(rec)
    assert state_bytes(b) == state_bytes(a)
    # ... and the next bar's record is the same (what the successor writes next)
    nxt = feed[-1][0] + 1
    snaps = {s: parse_payload(s, payload_json(nxt * BAR_S, [1e5, 2e5], [3e5, 1e5], seq=1), now=nxt * BAR_S)
             for s in POOL[:3]}
    assert dumps_record(b.step(nxt, nxt * BAR_S, snaps)) == dumps_record(a.step(nxt, nxt * BAR_S, snaps))


def _feed3() -> list[tuple[int, float, dict[str, Snapshot]]]:
    out = []
    for i in range(6):
        ts = (B0 + i) * BAR_S
        out.append((B0 + i, ts, {s: parse_payload(s, payload_json(ts - 1, [1e5 * (i + 1)], [2e5], seq=i + 1), now=ts)
                                 for s in POOL[:2 + i % 2]}))
    return out


def test_a_record_of_another_lineage_or_out_of_order_is_refused_and_changes_nothing() -> None:
    feed = _feed3()
    a = FeatureEngine()
    recs = [wire(a.step(*bar)) for bar in feed]
    b = FeatureEngine()
    b.step(*feed[0])
    before = state_bytes(b)
    with pytest.raises(ValueError, match="does not follow"):
        b.apply_record(recs[2])  # bar 1 missing
    # A cold writer's first record at bar 1 follows bar 0 by number but not by state: its EMA
    # reference is its own first depth.
    cold = FeatureEngine()
    cold_rec = wire(cold.step(*feed[1]))
    with pytest.raises(ValueError, match="EMA"):
        b.apply_record(cold_rec)
    bad = dict(recs[1], universe={"configured": False, "size": 9, "hash": "0" * 16})
    with pytest.raises(ValueError, match="universe"):
        b.apply_record(bad)
    with pytest.raises(ValueError, match="schema"):
        b.apply_record(dict(recs[1], schema=2))
    # malformed columns are refusals (ValueError) too, never a TypeError
    for group, name, value in (("placement", "depth_1pct_usd", 5), ("signal", "imbalance", {"a": 1}),
                               ("state", "ref_depth_usd", None), ("placement", "depth_1pct_usd", [[1.0, 2.0]])):
        with pytest.raises(ValueError, match=f"{group}.{name}"):
            b.apply_record(dict(recs[1], **{group: dict(recs[1][group], **{name: value})}))
    assert state_bytes(b) == before
    b.apply_record(recs[1])
    assert b.last_bar_idx == feed[1][0]


def test_copy_is_independent() -> None:
    feed = _feed3()
    a = FeatureEngine()
    a.step(*feed[0])
    b = a.copy()
    a.step(*feed[1])
    assert b.last_bar_idx == feed[0][0] and state_bytes(b) != state_bytes(a)
    b.step(*feed[1])
    assert state_bytes(b) == state_bytes(a)
