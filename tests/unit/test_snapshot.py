"""Snapshot parsing and validation: every reject reason, timestamps, payload builder."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from hazelcast.core import HazelcastJsonValue

from obf_contract.keys import asset_key
from obf_contract.timestamps import format_timestamp
from obf_features_worker.engine.snapshot import (
    MAX_LEVELS,
    RejectReason,
    Snapshot,
    SnapshotRejected,
    parse_snapshot,
    parse_timestamp,
    payload_json,
    symbol_from_key,
)

NOW = 1_723_161_254.0  # 2024-08-08T23:54:14Z
KEY = "asset_BTCUSDT_ob"


def good(**overrides: object) -> dict:
    payload = {
        "timestamp": "2024-08-08T23:54:13.500000+00:00",
        "bid_notional": [1000.0, 2000.0, 0.0],
        "ask_notional": [1500.0, 0.0, 500.0],
        "bid_depth": [0.1, 0.2, 0.0],
        "ask_depth": [0.15, 0.0, 0.05],
        "_pushed_at": "2024-08-08T23:54:13.600000+00:00",
        "_push_seq": 7,
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not _DROP}


_DROP = object()


def rejected(value: object, key: object = KEY, **kw: object) -> RejectReason:
    with pytest.raises(SnapshotRejected) as info:
        parse_snapshot(key, value, now=NOW, **kw)
    assert isinstance(info.value, ValueError)
    assert info.value.detail
    return info.value.reason


# -- accepted payloads ---------------------------------------------------------------------


def test_parses_all_fields_from_json_string() -> None:
    snap = parse_snapshot(KEY, json.dumps(good()), now=NOW)
    assert snap.symbol == "BTCUSDT"
    assert snap.ts == NOW - 0.5
    assert snap.bid_notional.tolist() == [1000.0, 2000.0, 0.0]
    assert snap.ask_notional.tolist() == [1500.0, 0.0, 500.0]
    assert snap.bid_depth is not None and snap.bid_depth.tolist() == [0.1, 0.2, 0.0]
    assert snap.ask_depth is not None and snap.ask_depth.tolist() == [0.15, 0.0, 0.05]
    assert snap.seq == 7
    assert snap.pushed_at == pytest.approx(NOW - 0.4, abs=1e-9)
    assert snap.n_levels == 3
    assert snap.bid_notional.dtype == np.float64


@pytest.mark.parametrize("wrap", [
    lambda d: json.dumps(d),
    lambda d: json.dumps(d).encode(),
    lambda d: bytearray(json.dumps(d).encode()),
    lambda d: HazelcastJsonValue(json.dumps(d)),
    lambda d: d,
], ids=["str", "bytes", "bytearray", "HazelcastJsonValue", "dict"])
def test_accepts_every_value_form(wrap) -> None:
    snap = parse_snapshot(KEY, wrap(good()), now=NOW)
    assert snap.bid_notional.tolist() == [1000.0, 2000.0, 0.0]


def test_optional_fields_may_be_absent_or_null() -> None:
    snap = parse_snapshot(KEY, good(bid_depth=_DROP, ask_depth=None, _pushed_at=_DROP, _push_seq=None), now=NOW)
    assert snap.bid_depth is None and snap.ask_depth is None
    assert snap.seq is None and snap.pushed_at is None
    only_ask = parse_snapshot(KEY, good(bid_depth=None), now=NOW)
    assert only_ask.bid_depth is None and only_ask.ask_depth.tolist() == [0.15, 0.0, 0.05]


def test_integers_are_numbers_and_extra_fields_are_ignored() -> None:
    snap = parse_snapshot(KEY, good(bid_notional=[1, 2, 3], extra={"x": 1}), now=NOW)
    assert snap.bid_notional.tolist() == [1.0, 2.0, 3.0]


def test_arrays_are_read_only() -> None:
    snap = parse_snapshot(KEY, good(), now=NOW)
    with pytest.raises(ValueError):
        snap.bid_notional[0] = 5.0


def test_float_dust_and_negative_zero_become_zero() -> None:
    snap = parse_snapshot(KEY, good(bid_notional=[5e-17, -0.0, 1e-12]), now=NOW)
    assert snap.bid_notional.tolist() == [0.0, 0.0, 1e-12]
    assert math.copysign(1.0, snap.bid_notional[1]) == 1.0


def test_level_count_bounds() -> None:
    one = parse_snapshot(KEY, good(bid_notional=[1.0], ask_notional=[2.0], bid_depth=None, ask_depth=None), now=NOW)
    assert one.n_levels == 1
    many = [1.0] * MAX_LEVELS
    assert parse_snapshot(KEY, good(bid_notional=many, ask_notional=many, bid_depth=None, ask_depth=None),
                          now=NOW).n_levels == 64


def test_timestamp_within_skew_is_accepted() -> None:
    assert parse_snapshot(KEY, good(timestamp=NOW + 4.9), now=NOW).ts == NOW + 4.9
    assert parse_snapshot(KEY, good(timestamp=NOW + 9), now=NOW, max_future_skew_s=10).ts == NOW + 9


# -- every reject reason -------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    "BTCUSDT", "asset_BTCUSDT_ob\n", "asset_BTCUSDT_ob_x", "ASSET_BTCUSDT_OB", "assetXBTCUSDTXob",
    42, None, b"asset_BTCUSDT_ob", "",
])
def test_bad_key(key: object) -> None:
    assert rejected(good(), key=key) is RejectReason.BAD_KEY


@pytest.mark.parametrize("key", [
    "asset_btcusdt_ob", "asset_B_ob", "asset_" + "A" * 41 + "_ob", "asset__ob", "asset_ob", "asset_BTC USD_ob",
    "asset__BTCUSD_ob", "asset_BTCUSD-_ob", "asset_BTC\nUSD_ob", "asset_BTCÜSD_ob",
])
def test_bad_symbol(key: str) -> None:
    """An asset_..._ob key whose symbol breaks the grammar: its own reason, not bad_key."""
    assert rejected(good(), key=key) is RejectReason.BAD_SYMBOL


@pytest.mark.parametrize("symbol", [
    "BTCUSD_PERP", "BTCUSD_250328", "BTCUSDT_250328", "1000PEPEUSDT", "1000PEPE-USDT", "BTC-250328-60000-C",
    "A" * 40, "X1",
])
def test_symbol_grammar_accepts_exchange_spellings(symbol: str) -> None:
    snap = parse_snapshot(asset_key(symbol), good(), now=NOW)
    assert snap.symbol == symbol and symbol_from_key(f"asset_{symbol}_ob") == symbol


def test_too_large() -> None:
    assert rejected(json.dumps(good()), max_payload_bytes=100) is RejectReason.TOO_LARGE
    assert rejected(json.dumps(good()).encode(), max_payload_bytes=100) is RejectReason.TOO_LARGE
    # Size is counted in UTF-8 bytes, not characters.
    text = json.dumps(good(note="é" * 60), ensure_ascii=False)
    assert rejected(text, max_payload_bytes=len(text) + 30) is RejectReason.TOO_LARGE


@pytest.mark.parametrize("value", [
    "", "{", "not json", b"\xff\xfe", "[1, 2]", "3", "null", '"a string"', "{]", 12.5, object(), None,
    "[" * 5000 + "]" * 5000,
], ids=lambda v: repr(v)[:20])
def test_bad_json(value: object) -> None:
    assert rejected(value) is RejectReason.BAD_JSON


def test_broken_json_wrapper_is_bad_json() -> None:
    class Broken:
        def to_string(self) -> str:
            raise RuntimeError("boom")

    assert rejected(Broken()) is RejectReason.BAD_JSON


@pytest.mark.parametrize("overrides", [
    {"timestamp": _DROP},
    {"bid_notional": _DROP},
    {"ask_notional": None},
    {"bid_notional": "1,2,3"},
    {"bid_notional": {"0": 1.0}},
    {"bid_notional": [1.0, "2", 3.0]},
    {"bid_notional": [1.0, None, 3.0]},
    {"bid_notional": [1.0, True, 3.0]},
    {"ask_notional": [False, 0.0, 1.0]},
    {"bid_notional": [[1.0], 2.0, 3.0]},
    {"bid_depth": "x"},
    {"ask_depth": [0.1, "0.2", 0.3]},
    {"_push_seq": "7"},
    {"_push_seq": 7.0},
    {"_push_seq": True},
    {"_push_seq": -1},
    {"_push_seq": 2**63},
    {"bid_notional": [1e19, 1.0, 1.0]},
], ids=lambda o: repr(o)[:40])
def test_bad_field(overrides: dict) -> None:
    assert rejected(good(**overrides)) is RejectReason.BAD_FIELD


def test_huge_integer_level_is_bad_field() -> None:
    text = json.dumps(good()).replace("[1000.0, 2000.0, 0.0]", "[1" + "0" * 400 + ", 2.0, 0.0]")
    assert rejected(text) is RejectReason.BAD_FIELD


@pytest.mark.parametrize("overrides", [
    {"ask_notional": [1.0, 2.0]},
    {"bid_notional": [], "ask_notional": [], "bid_depth": [], "ask_depth": []},
    {"bid_notional": [1.0] * 65, "ask_notional": [1.0] * 65, "bid_depth": None, "ask_depth": None},
    {"bid_depth": [0.1, 0.2]},
    {"ask_depth": [0.1, 0.2, 0.3, 0.4]},
], ids=lambda o: repr(o)[:40])
def test_bad_length(overrides: dict) -> None:
    assert rejected(good(**overrides)) is RejectReason.BAD_LENGTH


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_from_text(literal: str) -> None:
    text = json.dumps(good()).replace("2000.0", literal)
    reason = rejected(text)
    # 1e999 is valid JSON that overflows; the NaN/Infinity literals are what Python writers emit.
    assert reason is RejectReason.NON_FINITE


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_from_dict(bad: float) -> None:
    assert rejected(good(ask_depth=[0.1, bad, 0.3])) is RejectReason.NON_FINITE


def test_negative() -> None:
    assert rejected(good(bid_notional=[1.0, -0.5, 2.0])) is RejectReason.NEGATIVE
    assert rejected(good(ask_depth=[0.0, 0.0, -1e-30])) is RejectReason.NEGATIVE


@pytest.mark.parametrize("ts", [
    "yesterday", "2024-13-01T00:00:00Z", "", [], {}, None, True, "1723161254", math.nan, -5.0,
    "1969-12-31T23:59:59Z", "2024-08-08T23:54:14" + "0" * 80,
], ids=repr)
def test_bad_timestamp(ts: object) -> None:
    assert rejected(good(timestamp=ts)) is RejectReason.BAD_TIMESTAMP


def test_bad_pushed_at_is_bad_timestamp() -> None:
    assert rejected(good(_pushed_at="soon")) is RejectReason.BAD_TIMESTAMP


@pytest.mark.parametrize("ts", [
    NOW + 5.01, (NOW + 60) * 1000, "2024-08-08T23:54:20+00:00", "2024-08-09T01:54:20+02:00",
])
def test_future_timestamp(ts: object) -> None:
    assert rejected(good(timestamp=ts)) is RejectReason.FUTURE_TIMESTAMP


# -- timestamps ----------------------------------------------------------------------------


def test_iso_and_float_of_the_same_instant_give_the_same_float() -> None:
    f = 1723161254.123456
    for text in ("2024-08-08T23:54:14.123456Z", "2024-08-08T23:54:14.123456+00:00",
                 "2024-08-09T01:54:14.123456+02:00", "2024-08-08T23:54:14.123456",
                 "2024-08-08 23:54:14.123456"):
        assert parse_timestamp(text) == f, text
    assert parse_timestamp(f) == f
    assert parse_timestamp(1723161254123.456) == pytest.approx(f, abs=1e-6)
    assert parse_timestamp(1723161254) == 1723161254.0
    assert parse_timestamp(1723161254123) == 1723161254.123
    assert parse_timestamp("2024-08-08T23:54:14.123Z") == 1723161254.123


def test_iso_and_float_agree_for_many_instants() -> None:
    rng = np.random.default_rng(1)
    for us in rng.integers(1_500_000_000_000_000, 1_900_000_000_000_000, size=2000):
        f = float(f"{us // 1_000_000}.{us % 1_000_000:06d}")
        iso = datetime.fromtimestamp(int(us) // 1_000_000, UTC).replace(
            microsecond=int(us) % 1_000_000).isoformat()
        assert parse_timestamp(iso) == f
        assert parse_timestamp(format_timestamp(f)) == f


def test_ms_threshold() -> None:
    assert parse_timestamp(1e11) == 1e11  # exactly at the threshold: still seconds
    assert parse_timestamp(100_000_000_001) == 100_000_000.001


# -- helpers -------------------------------------------------------------------------------


def test_key_helpers() -> None:
    assert symbol_from_key("asset_ETHUSDT_ob") == "ETHUSDT"
    assert symbol_from_key(asset_key("1000PEPEUSDT")) == "1000PEPEUSDT"
    with pytest.raises(ValueError):
        asset_key("btc")
    with pytest.raises(ValueError):
        asset_key("X")


def test_payload_json_round_trip() -> None:
    text = payload_json(1723161254.25, [1, 2.5], np.array([3.0, 4.0]), [0.1, 0.2], [0.3, 0.4],
                        seq=9, pushed_at="2024-08-08T23:54:14.300000+00:00")
    obj = orjson.loads(text)
    assert obj["timestamp"] == "2024-08-08T23:54:14.250000+00:00"
    assert obj["bid_notional"] == [1.0, 2.5]
    assert obj["_push_seq"] == 9
    snap = parse_snapshot(KEY, text, now=NOW)
    assert snap.ts == 1723161254.25
    assert snap.ask_notional.tolist() == [3.0, 4.0]
    assert snap.ask_depth.tolist() == [0.3, 0.4]
    assert snap.seq == 9


def test_payload_json_minimal_and_verbatim_timestamp() -> None:
    obj = orjson.loads(payload_json("2024-08-08T23:54:14Z", [1.0], [2.0]))
    assert obj == {"timestamp": "2024-08-08T23:54:14Z", "bid_notional": [1.0], "ask_notional": [2.0]}


def test_snapshot_is_frozen() -> None:
    snap = Snapshot("BTCUSDT", 1.0, np.array([1.0]), np.array([1.0]))
    with pytest.raises(AttributeError):
        snap.ts = 2.0  # type: ignore[misc]


def test_snapshot_holds_contiguous_float64_bands_of_equal_valid_length() -> None:
    # The engine joins the bands' bytes, so a Snapshot never holds anything else.
    base = np.arange(8, dtype=np.float64)
    snap = Snapshot("BTCUSDT", 1.0, base[::2], np.array([1, 2, 3, 4]))  # a strided view, ints
    for side in (snap.bid_notional, snap.ask_notional):
        assert side.dtype == np.float64 and side.flags.c_contiguous
    assert snap.bid_notional.tolist() == [0.0, 2.0, 4.0, 6.0] and snap.ask_notional.tolist() == [1.0, 2.0, 3.0, 4.0]
    parsed = parse_snapshot("asset_BTCUSDT_ob", payload_json(1.0, [1.0, 2.0], [3.0, 4.0]), now=2.0)
    again = Snapshot("BTCUSDT", 1.0, parsed.bid_notional, parsed.ask_notional)
    assert again.bid_notional is parsed.bid_notional  # already right: no copy
    for bid, ask in (([1.0], [1.0, 2.0]), ([], []), ([1.0] * (MAX_LEVELS + 1),) * 2, ([[1.0]], [[1.0]])):
        with pytest.raises(ValueError, match="equal lengths"):
            Snapshot("BTCUSDT", 1.0, np.array(bid), np.array(ask))
