"""SnapshotBook: ordering, reject accounting, never-raises, thread safety."""

from __future__ import annotations

import json
import logging
import threading

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from obf_features_worker.engine.ingest import INTERNAL_ERROR, RejectStats, SnapshotBook
from obf_features_worker.engine.snapshot import RejectReason, payload_json
from tests.hypothesis_profiles import scaled

T0 = 1_723_161_254.0


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def book(**kw: object) -> tuple[SnapshotBook, FakeClock]:
    clock = FakeClock()
    return SnapshotBook(clock=clock, **kw), clock


def payload(ts: float = T0 - 0.1, bid: float = 100.0, seq: int | None = None) -> str:
    return payload_json(ts, [bid, 1.0], [50.0, 1.0], seq=seq)


def test_accepts_and_returns_latest() -> None:
    b, _ = book()
    assert b.offer("asset_BTCUSDT_ob", payload(seq=1))
    assert b.offer("asset_ETHUSDT_ob", payload(seq=1, bid=7.0))
    latest = b.latest()
    assert sorted(latest) == ["BTCUSDT", "ETHUSDT"]
    assert latest["ETHUSDT"].bid_notional[0] == 7.0
    assert b.get("BTCUSDT") is latest["BTCUSDT"]
    assert b.get("XRPUSDT") is None
    latest.clear()  # a copy: the book is unaffected
    assert len(b.latest()) == 2


def test_received_at_defaults_to_clock_and_can_be_given() -> None:
    b, clock = book()
    b.offer("asset_BTCUSDT_ob", payload(seq=1))
    assert b.last_received_at("BTCUSDT") == clock.t
    b.offer("asset_BTCUSDT_ob", payload(seq=2), received_at=T0 + 0.25)
    assert b.last_received_at("BTCUSDT") == T0 + 0.25
    assert b.last_received_at("ETHUSDT") is None


def test_duplicate_and_out_of_order_seq_are_stale() -> None:
    b, _ = book()
    assert b.offer("asset_BTCUSDT_ob", payload(seq=5, bid=5.0))
    assert not b.offer("asset_BTCUSDT_ob", payload(seq=5, bid=6.0))
    assert not b.offer("asset_BTCUSDT_ob", payload(seq=4, bid=4.0))
    assert b.get("BTCUSDT").bid_notional[0] == 5.0
    assert b.offer("asset_BTCUSDT_ob", payload(seq=6, bid=6.0))
    assert b.get("BTCUSDT").seq == 6
    # seq ordering is per asset
    assert b.offer("asset_ETHUSDT_ob", payload(seq=1))
    assert b.stats()["rejected"] == {"stale_seq": 2}


def test_reads_racing_events_are_echoes_not_rejects() -> None:
    b, _ = book()
    # The bar-close re-read took seq 5 while the events of seq 4 and 5 were still in flight.
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.4, seq=4, bid=4.0))
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.2, seq=5, bid=5.0), from_read=True)
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.3, seq=4, bid=4.0))  # overtaken by the read
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.2, seq=5, bid=5.0))  # the read push's event
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.2, seq=5, bid=5.0))  # again: a duplicate push
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.5, seq=3, bid=3.0))  # older: stale_timestamp
    assert b.get("BTCUSDT").bid_notional[0] == 5.0
    # The reverse race: the listener took seq 7 before a read of seq 6 (or 7 again) was offered.
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.1, seq=7, bid=7.0))
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.15, seq=6, bid=6.0), from_read=True)
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.1, seq=7, bid=7.0), from_read=True)
    assert b.get("BTCUSDT").seq == 7
    # After a read, a push with a lower seq but a newer timestamp is no echo: newer wins (a seq reset) ...
    assert b.offer("asset_ETHUSDT_ob", payload(ts=T0 - 40.0, seq=9), from_read=True)
    assert b.offer("asset_ETHUSDT_ob", payload(ts=T0 - 39.0, seq=8))
    # ... and a read of an older value, whatever its seq, is an echo: the read never hides fresh data.
    assert not b.offer("asset_ETHUSDT_ob", payload(ts=T0 - 40.0, seq=20), from_read=True)
    assert b.get("ETHUSDT").seq == 8
    # Once an event was accepted the read is history: the same seq again is a duplicate.
    assert b.offer("asset_XRPUSDT_ob", payload(seq=1), from_read=True)
    assert b.offer("asset_XRPUSDT_ob", payload(seq=2))
    assert not b.offer("asset_XRPUSDT_ob", payload(seq=2))
    st = b.stats()
    assert st["read_echoes"] == 5 and st["seq_resets"] == 1, st
    assert st["rejected"] == {"stale_seq": 2, "stale_timestamp": 1}, st
    assert st["received"] == st["accepted"] + st["ignored"] + st["read_echoes"] + sum(st["rejected"].values())


def test_without_seq_older_timestamp_is_stale_equal_is_not() -> None:
    b, _ = book()
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 1.0))
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 2.0))
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 1.0, bid=9.0))
    assert b.get("BTCUSDT").bid_notional[0] == 9.0
    assert b.stats()["rejected"] == {"stale_timestamp": 1}


def test_timestamp_orders_and_seq_only_breaks_ties() -> None:
    b, _ = book()
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 2.0, seq=5, bid=5.0))
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 3.0, seq=6, bid=6.0))  # older, higher seq
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 2.0, seq=7, bid=7.0))  # same ts: seq breaks the tie
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 2.0, seq=7, bid=8.0))  # duplicate
    assert b.get("BTCUSDT").bid_notional[0] == 7.0
    assert b.stats()["rejected"] == {"stale_timestamp": 1, "stale_seq": 1}


def test_one_wild_message_never_blocks_the_asset() -> None:
    """The two poison cases of issue 17: a 1971 timestamp under a higher seq, and _push_seq = 2^62."""
    b, clock = book()
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 1.0, seq=100, bid=1.0))
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=31_536_000.0, seq=101, bid=2.0))  # 1971
    assert b.get("BTCUSDT").bid_notional[0] == 1.0
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.9, seq=102, bid=3.0))  # the next normal push
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.8, seq=2**62, bid=4.0))  # legal, accepted: a jump
    for i in range(5):  # the producer carries on with its own numbering: every push is used
        clock.t += 0.1
        assert b.offer("asset_BTCUSDT_ob", payload(ts=clock.t - 0.7, seq=103 + i, bid=5.0 + i))
        assert b.get("BTCUSDT").seq == 103 + i
    st = b.stats()
    assert st["rejected"] == {"stale_timestamp": 1}
    assert (st["seq_jumps"], st["seq_resets"]) == (1, 1)
    assert st["received"] == st["accepted"] + sum(st["rejected"].values())

    # an upstream restart: a low seq under a newer timestamp is taken at once, no wait
    assert b.offer("asset_ETHUSDT_ob", payload(ts=T0 - 0.5, seq=1000))
    assert b.offer("asset_ETHUSDT_ob", payload(ts=T0 - 0.4, seq=1))
    assert b.stats()["seq_resets"] == 2


def test_rejected_never_replaces_last_good() -> None:
    b, _ = book()
    assert b.offer("asset_BTCUSDT_ob", payload(seq=1, bid=42.0))
    bad_values = [
        "{", payload(seq=2).replace("100.0", "NaN"), payload(seq=2).replace("100.0", "-1.0"),
        payload(ts=T0 + 100, seq=2), orjson.dumps({"timestamp": T0, "bid_notional": [1.0]}).decode(),
        payload(seq=1),
    ]
    for value in bad_values:
        assert not b.offer("asset_BTCUSDT_ob", value)
    assert b.get("BTCUSDT").bid_notional[0] == 42.0
    stats = b.stats()
    assert stats["received"] == 7 and stats["accepted"] == 1
    assert stats["rejected"] == {"bad_json": 1, "non_finite": 1, "negative": 1, "future_timestamp": 1,
                                 "bad_field": 1, "stale_seq": 1}


def test_every_reason_is_counted_by_name() -> None:
    b, _ = book(max_payload_bytes=1000)
    cases = {
        RejectReason.BAD_KEY: ("assetXBTCUSDTXob", payload()),
        RejectReason.BAD_SYMBOL: ("asset_btc_ob", payload()),
        RejectReason.TOO_LARGE: ("asset_BTCUSDT_ob", payload_json(T0, [1.0] * 64, [1.0] * 64, [1.0] * 64, [1.0] * 64)),
        RejectReason.BAD_JSON: ("asset_BTCUSDT_ob", b"\x00"),
        RejectReason.BAD_FIELD: ("asset_BTCUSDT_ob", '{"timestamp": 1723161254}'),
        RejectReason.BAD_LENGTH: ("asset_BTCUSDT_ob", payload_json(T0, [1.0], [1.0, 2.0])),
        RejectReason.NON_FINITE: ("asset_BTCUSDT_ob",
                                  {"timestamp": T0, "bid_notional": [float("inf")], "ask_notional": [1.0]}),
        RejectReason.NEGATIVE: ("asset_BTCUSDT_ob", payload_json(T0, [-1.0], [1.0])),
        RejectReason.BAD_TIMESTAMP: ("asset_BTCUSDT_ob", payload_json("noon", [1.0], [1.0])),
        RejectReason.FUTURE_TIMESTAMP: ("asset_BTCUSDT_ob", payload_json(T0 + 3600, [1.0], [1.0])),
    }
    b.offer("asset_XRPUSDT_ob", payload(ts=T0 - 1.0))
    b.offer("asset_XRPUSDT_ob", payload(ts=T0 - 2.0))
    for key, value in cases.values():
        assert not b.offer(key, value)
    b.offer("asset_ETHUSDT_ob", payload(seq=3))
    b.offer("asset_ETHUSDT_ob", payload(seq=3))
    expected = {reason.value: 1 for reason in cases} | {RejectReason.STALE_SEQ.value: 1,
                                                         RejectReason.STALE_TIMESTAMP.value: 1}
    assert b.stats()["rejected"] == expected
    assert set(expected) == {r.value for r in RejectReason}
    assert b.rejects.total == len(RejectReason)


def test_ignored_assets_are_not_rejects() -> None:
    b, _ = book(assets=["BTCUSDT"])
    assert b.offer("asset_BTCUSDT_ob", payload())
    assert not b.offer("asset_ETHUSDT_ob", payload())
    assert not b.offer("asset_ETHUSDT_ob", "garbage")  # ignored before parsing: no parse cost, no reject
    assert not b.offer("asset_eth_ob", payload())  # but a malformed key is still a reject
    assert not b.offer("status", payload())
    stats = b.stats()
    assert (stats["received"], stats["accepted"], stats["ignored"]) == (5, 1, 2)
    assert stats["rejected"] == {"bad_symbol": 1, "bad_key": 1}
    assert b.get("ETHUSDT") is None


def test_samples_keep_the_last_few() -> None:
    b, _ = book(sample_size=3)
    for i in range(5):
        b.offer(f"bad_key_{i}", payload())
    samples = b.stats()["samples"]
    assert [s["key"] for s in samples] == ["bad_key_2", "bad_key_3", "bad_key_4"]
    assert all(s["reason"] == "bad_key" and s["detail"] and s["at"] == T0 for s in samples)


def test_internal_error_is_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    b, _ = book()

    def boom(*args: object, **kw: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr("obf_features_worker.engine.ingest.parse_payload", boom)
    assert b.offer("asset_BTCUSDT_ob", payload()) is False
    assert b.stats()["rejected"] == {INTERNAL_ERROR: 1}


def test_reject_logging_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    stats = RejectStats(5, clock=clock, log_interval_s=10.0)
    caplog.set_level(logging.WARNING, logger="obf_features_worker.engine.ingest")
    for _ in range(50):
        stats.record(RejectReason.BAD_JSON, "k", "x")
    stats.record(RejectReason.NEGATIVE, "k", "x")  # another reason has its own budget
    clock.t += 10.5
    stats.record(RejectReason.BAD_JSON, "k", "x")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "reason=bad_json" in lines[0] and "suppressed_since_last=0" in lines[0]
    assert "reason=negative" in lines[1]
    assert "reason=bad_json" in lines[2] and "suppressed_since_last=49" in lines[2]
    assert stats.counts() == {"bad_json": 51, "negative": 1}
    snap = stats.snapshot()
    assert snap["total"] == 52 and len(snap["samples"]) == 5


def test_bad_symbol_is_logged_once_per_key(caplog: pytest.LogCaptureFixture) -> None:
    """Every malformed asset key is named in the log once, however often it is pushed and however
    many others there are (the per-reason rate limit would hide all but one per interval)."""
    b, clock = book()
    caplog.set_level(logging.WARNING, logger="obf_features_worker.engine.ingest")
    for _ in range(20):
        for key in ("asset_btcusdt_ob", "asset_BTC USD_ob", "asset__ob"):
            assert not b.offer(key, payload())
        clock.t += 0.1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    for key, line in zip(("asset_btcusdt_ob", "asset_BTC USD_ob", "asset__ob"), lines):
        assert "reason=bad_symbol" in line and repr(key) in line
    assert b.stats()["rejected"] == {"bad_symbol": 60}


def test_export_import_seqs() -> None:
    b, _ = book()
    b.offer("asset_BTCUSDT_ob", payload(seq=10))
    b.offer("asset_ETHUSDT_ob", payload(seq=3))
    assert b.export_seqs() == {"BTCUSDT": 10, "ETHUSDT": 3}
    fresh, _ = book()
    fresh.import_seqs({"BTCUSDT": 10, "ETHUSDT": 3})
    # after a restart the initial read meets the very push the seq came from: taken, not a reset
    assert fresh.offer("asset_BTCUSDT_ob", payload(seq=10))
    assert fresh.offer("asset_BTCUSDT_ob", payload(ts=T0, seq=11))
    assert fresh.stats()["seq_resets"] == 0
    fresh.import_seqs({"BTCUSDT": 5})  # never moves a known seq backwards
    assert fresh.export_seqs()["BTCUSDT"] == 11
    with pytest.raises(ValueError):
        fresh.import_seqs({"BTCUSDT": "12"})


def test_concurrent_offers_keep_order_and_counts() -> None:
    b = SnapshotBook(clock=lambda: T0)
    n_threads, per_thread = 4, 250
    start = threading.Barrier(n_threads)

    def run(tid: int) -> None:
        start.wait()
        for i in range(per_thread):
            b.offer("asset_BTCUSDT_ob", payload(seq=i * n_threads + tid, bid=float(i * n_threads + tid)))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = b.stats()
    assert stats["received"] == n_threads * per_thread
    assert stats["accepted"] + sum(stats["rejected"].values()) == stats["received"]
    assert set(stats["rejected"]) <= {"stale_seq"}
    top = n_threads * per_thread - 1
    assert b.get("BTCUSDT").seq == top and b.get("BTCUSDT").bid_notional[0] == float(top)


# -- never raises --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
field_names = st.sampled_from(["timestamp", "bid_notional", "ask_notional", "bid_depth", "ask_depth",
                               "_pushed_at", "_push_seq"])
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30), st.booleans())
field_values = st.one_of(
    json_values,
    st.lists(numbers, max_size=70),
    st.floats(0, 2e12), st.integers(0, 2 * 10**15),
    st.sampled_from(["2024-08-08T23:54:14Z", "2024-08-08T23:54:14.5+01:00", "x", "9999-12-31T23:59:59-23:59"]),
)
payload_dicts = st.dictionaries(field_names, field_values, max_size=7)
keys = st.one_of(
    st.sampled_from(["asset_BTCUSDT_ob", "asset_ETHUSDT_ob"]), st.text(max_size=40),
    st.builds(lambda s: f"asset_{s}_ob", st.text(alphabet="ABC019xyz_-", max_size=32)),
    st.none(), st.integers(), st.binary(max_size=20),
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict:
    """A valid payload with a few fields possibly overwritten by arbitrary values."""
    n = draw(st.integers(1, 64))
    side = st.lists(st.floats(0, 1e9) | st.integers(0, 10**6), min_size=n, max_size=n)
    d = {"timestamp": draw(st.floats(T0 - 100, T0 + 10) | st.just("2024-08-08T23:54:13.5Z")),
         "bid_notional": draw(side), "ask_notional": draw(side)}
    if draw(st.booleans()):
        d["_push_seq"] = draw(st.integers(0, 20))
    if draw(st.integers(0, 2)) == 0:
        d.update(draw(st.dictionaries(field_names, field_values, min_size=1, max_size=2)))
    return d


values = st.one_of(
    payload_dicts,
    near_valid(),
    near_valid().map(lambda d: json.dumps(d, default=str)),
    # stdlib json: also writes NaN/Infinity literals and integers beyond 64 bits
    payload_dicts.map(lambda d: json.dumps(d, default=str).encode()),
    payload_dicts.map(lambda d: json.dumps(d, default=str)),
    st.binary(max_size=300), st.text(max_size=300), json_values,
    json_values.map(lambda v: json.dumps(v, default=str)),
)


@settings(max_examples=scaled(2))
@given(events=st.lists(st.tuples(keys, values), min_size=1, max_size=8))
def test_offer_never_raises(events: list) -> None:
    b = SnapshotBook(clock=lambda: T0, max_payload_bytes=4096)
    for key, value in events:
        accepted = b.offer(key, value)
        assert accepted in (True, False)
    stats = b.stats()
    assert stats["received"] == len(events)
    assert stats["accepted"] + stats["ignored"] + sum(stats["rejected"].values()) == len(events)
    assert INTERNAL_ERROR not in stats["rejected"], stats["samples"]
    event(f"some accepted: {stats['accepted'] > 0}")
    latest = b.latest()
    assert stats["accepted"] == 0 or latest
    for snap in latest.values():
        assert snap.bid_notional.shape == snap.ask_notional.shape
        assert 1 <= snap.n_levels <= 64
        assert (snap.bid_notional >= 0).all() and (snap.ask_notional >= 0).all()


@given(events=st.lists(st.tuples(st.sampled_from(["asset_BTCUSDT_ob", "asset_ETHUSDT_ob"]),
                                 near_valid() | near_valid().map(json.dumps)), min_size=1, max_size=12))
def test_near_valid_stream_keeps_per_asset_order(events: list) -> None:
    b = SnapshotBook(clock=lambda: T0)
    last: dict[str, tuple[float, int | None]] = {}
    for key, value in events:
        if b.offer(key, value):
            snap = b.get(key[6:-3])
            if snap.symbol in last:
                ts, seq = last[snap.symbol]
                assert snap.ts >= ts
                if snap.ts == ts and snap.seq is not None and seq is not None:
                    assert snap.seq > seq
            last[snap.symbol] = (snap.ts, snap.seq)
    stats = b.stats()
    event(f"some accepted: {stats['accepted'] > 0}")
    assert stats["accepted"] + sum(stats["rejected"].values()) == len(events)
    assert INTERNAL_ERROR not in stats["rejected"], stats["samples"]


def test_superseded_counts_snapshots_no_bar_close_took() -> None:
    b, _ = book()
    for seq in (1, 2, 3):  # three pushes of one asset before a bar closes: two coalesced away
        assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 1 + seq * 0.1, seq=seq))
    assert b.offer("asset_ETHUSDT_ob", payload(seq=1))
    assert b.stats()["superseded"] == 2
    b.latest()  # not a bar close: takes nothing
    assert b.offer("asset_ETHUSDT_ob", payload(ts=T0 - 0.05, seq=2))
    assert b.stats()["superseded"] == 3
    assert set(b.latest(bar_close=True)) == {"BTCUSDT", "ETHUSDT"}
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.01, seq=4))  # first push since the bar: used next
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.5, seq=5))  # rejected: never counted
    s = b.stats()
    assert s["superseded"] == 3 and s["accepted"] == 6 and s["read_refreshed"] == 0


def test_read_refreshed_counts_snapshots_taken_from_a_read() -> None:
    b, _ = book()
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.3, seq=1))
    # The bar-close re-read finds a newer push whose event never came: taken, counted.
    assert b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.2, seq=2), from_read=True)
    # Its late event is an echo: not taken again, not counted again.
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.2, seq=2))
    assert not b.offer("asset_BTCUSDT_ob", payload(ts=T0 - 0.2, seq=2), from_read=True)
    s = b.stats()
    assert s["read_refreshed"] == 1 and s["read_echoes"] == 2 and s["superseded"] == 1
