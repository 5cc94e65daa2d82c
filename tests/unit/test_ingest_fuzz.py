"""Fuzz of the ingest path (``SnapshotBook.offer``) against an independent model.

Goes further than the never-raises fuzz in test_ingest.py: every offer's outcome is predicted
exactly. Payloads are built as Python objects, then broken by known defects (each with the reject
reason it must produce) and sent in every form the listener can see (str, bytes,
HazelcastJsonValue, decoded dict). A model written from the contract (docs/contract.md and the
SnapshotBook docstring) tracks the last good snapshot and ``_push_seq`` per asset, and an
independent validity predicate over the stdlib-decoded payload checks everything accepted.

Properties: offer() never raises; accepted == the model's prediction; a single defect is counted
under its own reason; nothing invalid is accepted; the last good snapshot is never lost or
altered by a reject; received == accepted + ignored + sum(rejected by reason).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from hazelcast.core import HazelcastJsonValue
from hypothesis import event, given
from hypothesis import strategies as st

from obf_features_worker.engine.ingest import INTERNAL_ERROR, SnapshotBook

NOW = 1_723_161_254.0  # 2024-08-08T23:54:14Z, the book's clock
SKEW = 5.0  # SnapshotBook default max_future_skew_s
MAX_BYTES = 65_536  # SnapshotBook default max_payload_bytes
SYMBOLS = ("BTCUSDT", "ETHUSDT", "X1")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MARK = 31415926.53589793  # a level value replaced in the text by a huge-exponent literal


# -- independent validity predicate -------------------------------------------------------------

def ts_seconds(v: Any) -> float | None:
    """The contract's timestamp rule: ISO-8601 (naive = UTC) or unix s (> 1e11 = ms), >= 1970."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        s = v / 1000 if v > 1e11 else float(v)
    elif isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            s = ((dt - EPOCH) // timedelta(microseconds=1)) / 1e6
        except (ValueError, OverflowError):
            return None
    else:
        return None
    return s if s >= 0 else None


def level_ok(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)
            and (not isinstance(x, float) or math.isfinite(x)) and 0 <= x <= 1e18)


def valid_payload(obj: Any) -> bool:
    """Is this decoded payload a valid snapshot (ordering aside)?"""
    if not isinstance(obj, dict) or "timestamp" not in obj:
        return False
    ts = ts_seconds(obj["timestamp"])
    if ts is None or ts > NOW + SKEW:
        return False
    bid, ask = obj.get("bid_notional"), obj.get("ask_notional")
    if not (isinstance(bid, list) and isinstance(ask, list) and len(bid) == len(ask) and 1 <= len(bid) <= 64):
        return False
    sides = [bid, ask]
    for name in ("bid_depth", "ask_depth"):
        d = obj.get(name)
        if d is not None:
            if not isinstance(d, list) or len(d) != len(bid):
                return False
            sides.append(d)
    if not all(level_ok(x) for side in sides for x in side):
        return False
    seq = obj.get("_push_seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63):
        return False
    pushed = obj.get("_pushed_at")
    return pushed is None or ts_seconds(pushed) is not None


def decode_like_a_reader(value: Any) -> Any:
    """Stdlib decoding of what was offered (accepts NaN/Infinity and 1e999 -> inf)."""
    if isinstance(value, HazelcastJsonValue):
        value = value.to_string()
    if isinstance(value, (bytes, str)):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return None
    return value


# -- payload construction with known defects ----------------------------------------------------

@dataclass
class Offer:
    key: Any
    obj: Any  # the payload as a Python object (before serialisation)
    form: str  # "str" | "bytes" | "json_value" | "dict"
    defects: tuple[str, ...]  # names in DEFECTS; empty = a valid payload
    seq_mode: str = "none"  # how the stream picks _push_seq: next | dup | older | jump | none


DEFECTS: dict[str, tuple[str, str]] = {
    # name -> (reason in a text form, reason as a decoded dict); a text form over the size limit
    # is "too_large" whatever else is wrong (the size is checked before decoding).
    "nan_level": ("non_finite", "non_finite"),
    "inf_level": ("non_finite", "non_finite"),
    "neg_inf_level": ("non_finite", "non_finite"),
    "huge_exponent": ("bad_json|non_finite", "non_finite"),  # 1e999: undecodable, or decoded as inf
    "negative_level": ("negative", "negative"),
    "tiny_negative_level": ("negative", "negative"),
    "too_big_level": ("bad_field", "bad_field"),
    "bool_level": ("bad_field", "bad_field"),
    "string_level": ("bad_field", "bad_field"),
    "null_level": ("bad_field", "bad_field"),
    "nested_level": ("bad_field", "bad_field"),
    "length_mismatch": ("bad_length", "bad_length"),
    "empty_sides": ("bad_length", "bad_length"),
    "too_many_levels": ("bad_length", "bad_length"),
    "huge_array": ("too_large", "bad_length"),
    "depth_length": ("bad_length", "bad_length"),
    "depth_not_list": ("bad_field", "bad_field"),
    "side_not_list": ("bad_field", "bad_field"),
    "side_missing": ("bad_field", "bad_field"),
    "ts_missing": ("bad_field", "bad_field"),
    "ts_garbage": ("bad_timestamp", "bad_timestamp"),
    "ts_bool": ("bad_timestamp", "bad_timestamp"),
    "ts_negative": ("bad_timestamp", "bad_timestamp"),
    "ts_nan": ("bad_timestamp", "bad_timestamp"),
    "ts_future": ("future_timestamp", "future_timestamp"),
    "seq_negative": ("bad_field", "bad_field"),
    "seq_float": ("bad_field", "bad_field"),
    "seq_string": ("bad_field", "bad_field"),
    "seq_too_big": ("bad_field", "bad_field"),
    "pushed_at_garbage": ("bad_timestamp", "bad_timestamp"),
    "not_an_object": ("bad_json", "bad_json"),
    "padding": ("too_large", "too_large"),  # drawn for text forms only: a dict has no size
    "bad_key": ("bad_key", "bad_key"),
    "bad_symbol": ("bad_symbol", "bad_symbol"),
}


# At most one defect per group, applied in this order, so a second defect never undoes the first.
GROUPS: tuple[tuple[str, ...], ...] = (
    ("nan_level", "inf_level", "neg_inf_level", "huge_exponent", "negative_level", "tiny_negative_level",
     "too_big_level", "bool_level", "string_level", "null_level", "nested_level"),
    ("length_mismatch", "empty_sides", "too_many_levels", "huge_array", "depth_length", "depth_not_list",
     "side_not_list", "side_missing"),
    ("ts_missing", "ts_garbage", "ts_bool", "ts_negative", "ts_nan", "ts_future"),
    ("seq_negative", "seq_float", "seq_string", "seq_too_big"),
    ("pushed_at_garbage",),
    ("padding",),
    ("bad_key", "bad_symbol"),
    ("not_an_object",),  # always alone
)
assert sorted(n for g in GROUPS for n in g) == sorted(DEFECTS)


def apply_defect(name: str, obj: dict, draw: st.DrawFn) -> tuple[Any, Any]:
    """Break ``obj`` in place (or replace it); returns (obj, key override or None)."""
    # value defects come first (GROUPS order), so both sides are still intact lists here
    side = draw(st.sampled_from(["bid_notional", "ask_notional"]))
    n = len(obj[side]) if name in GROUPS[0] or name in GROUPS[1] else 0
    i = draw(st.integers(0, n - 1)) if name in GROUPS[0] else 0
    simple = {
        "nan_level": math.nan, "inf_level": math.inf, "neg_inf_level": -math.inf, "huge_exponent": MARK,
        "negative_level": -draw(st.floats(1e-3, 1e12)), "tiny_negative_level": -1e-15,
        "too_big_level": 2e18, "bool_level": draw(st.booleans()), "string_level": "1.5",
        "null_level": None, "nested_level": [1.0],
    }
    key = None
    if name in simple:
        obj[side][i] = simple[name]
    elif name == "length_mismatch":
        obj[side] = obj[side] + [1.0] if n < 64 else obj[side][:-1]
    elif name == "empty_sides":
        obj["bid_notional"], obj["ask_notional"] = [], []
    elif name == "too_many_levels":
        obj["bid_notional"] = obj["ask_notional"] = [1.0] * draw(st.integers(65, 200))
    elif name == "huge_array":
        obj["bid_notional"] = obj["ask_notional"] = [123456.789] * draw(st.sampled_from([5_000, 200_000]))
    elif name == "depth_length":
        obj["bid_depth"] = [1.0] * (n + 1)
    elif name == "depth_not_list":
        obj["ask_depth"] = draw(st.sampled_from(["x", 3, {"0": 1.0}]))
    elif name == "side_not_list":
        obj[side] = draw(st.sampled_from(["1,2", 7.0, {"0": 1.0}, True]))
    elif name == "side_missing":
        del obj[side]
    elif name == "ts_missing":
        del obj["timestamp"]
    elif name == "ts_garbage":
        obj["timestamp"] = draw(st.sampled_from(["yesterday", "", "2024-13-01T00:00:00Z", "12:00", "1e5s"]))
    elif name == "ts_bool":
        obj["timestamp"] = draw(st.booleans())
    elif name == "ts_negative":
        obj["timestamp"] = draw(st.sampled_from([-1.0, -1723161254, "1969-12-31T23:59:59Z"]))
    elif name == "ts_nan":
        obj["timestamp"] = draw(st.sampled_from([math.nan, math.inf]))
    elif name == "ts_future":
        ahead = draw(st.floats(SKEW + 0.01, 1e6))
        obj["timestamp"] = draw(st.sampled_from([NOW + ahead, _iso(NOW + ahead), int((NOW + ahead) * 1000)]))
    elif name == "seq_negative":
        obj["_push_seq"] = -draw(st.integers(1, 10**6))
    elif name == "seq_float":
        obj["_push_seq"] = 5.0
    elif name == "seq_string":
        obj["_push_seq"] = "5"
    elif name == "seq_too_big":
        obj["_push_seq"] = 2**63 + draw(st.integers(0, 10**6))
    elif name == "pushed_at_garbage":
        obj["_pushed_at"] = draw(st.sampled_from(["soon", True, -5, [1]]))
    elif name == "not_an_object":
        return draw(st.sampled_from([[], [obj], 42, "snapshot", None, 1.5])), None
    elif name == "padding":
        obj["comment"] = "x" * MAX_BYTES
    elif name == "bad_key":
        key = draw(st.sampled_from(["asset_BTCUSDT", "BTCUSDT", "ASSET_BTCUSDT_OB", 7, None, b"asset_X1_ob",
                                    "asset_BTCUSDT_ob\n", "latest_eigen_scan"]))
    elif name == "bad_symbol":  # the asset_..._ob shape around a symbol outside the grammar
        key = draw(st.sampled_from(["asset_btcusdt_ob", "asset_B_ob", "asset_" + "A" * 41 + "_ob", "asset__ob",
                                    "asset_BTC USDT_ob", "asset__BTCUSDT_ob", "asset_BTCUSDT-_ob"]))
    return obj, key


def _iso(ts: float) -> str:
    return (EPOCH + timedelta(microseconds=round(ts * 1e6))).isoformat()


@st.composite
def offers(draw: st.DrawFn) -> Offer:
    sym = draw(st.sampled_from(SYMBOLS))
    n = draw(st.integers(1, 64))
    rng = random.Random(draw(st.integers(0, 2**32)))  # level values: cheaper than drawing each

    def side() -> list[float | int]:
        out: list[float | int] = []
        for _ in range(n):
            kind = rng.random()
            out.append(0.0 if kind < 0.1 else 1e-13 if kind < 0.15 else -0.0 if kind < 0.2
                       else rng.randrange(10**12) if kind < 0.4 else rng.uniform(0, 10 ** rng.uniform(-6, 12)))
        return out

    # timestamps on whole microseconds, so ISO and float spell the same instant
    micros = draw(st.integers(int((NOW - 120) * 1e6), int((NOW + SKEW) * 1e6)))
    ts_form = draw(st.sampled_from(["float", "iso", "iso_naive", "ms"]))
    if ts_form == "ms":
        micros -= micros % 1000
    ts = micros / 1e6
    obj: dict[str, Any] = {
        "timestamp": {"float": ts, "iso": _iso(ts), "iso_naive": _iso(ts).replace("+00:00", ""),
                      "ms": micros // 1000}[ts_form],
        "bid_notional": side(),
        "ask_notional": side(),
    }
    if draw(st.booleans()):
        obj["bid_depth"] = side()
        obj["ask_depth"] = draw(st.one_of(st.none(), st.builds(side)))
    if draw(st.booleans()):
        obj["_pushed_at"] = _iso(NOW - 0.01)
    seq_mode = draw(st.sampled_from(["next", "next", "dup", "older", "none", "jump"]))
    form = draw(st.sampled_from(["str", "bytes", "json_value", "dict"]))
    n_defects = draw(st.sampled_from([0, 0, 1, 1, 1, 2]))
    groups = sorted(draw(st.lists(st.integers(0, len(GROUPS) - 1), min_size=n_defects, max_size=n_defects,
                                  unique=True)))
    names = [draw(st.sampled_from(GROUPS[g])) for g in groups]
    if "not_an_object" in names:
        names = ["not_an_object"]  # nothing left to break after it
    if form == "dict":
        names = [n for n in names if n != "padding"]
    key: Any = f"asset_{sym}_ob"
    payload: Any = obj
    for name in names:
        payload, key_override = apply_defect(name, payload, draw)
        if name in ("bad_key", "bad_symbol"):
            key = key_override
    return Offer(key, payload, form, tuple(names), seq_mode)


# -- the model ------------------------------------------------------------------------------------

@dataclass
class Last:
    ts: float
    bid: list[float]
    ask: list[float]
    seq: int | None


def encode(offer: Offer) -> Any:
    if offer.form == "dict":
        if "huge_exponent" in offer.defects:  # what a decoder that reads 1e999 would hand over
            for side in ("bid_notional", "ask_notional"):
                offer.obj[side] = [math.inf if v == MARK else v for v in offer.obj[side]]
        return offer.obj
    text = json.dumps(offer.obj)  # writes NaN / Infinity / -Infinity tokens
    if "huge_exponent" in offer.defects:
        text = text.replace(repr(MARK), "1e999")
    return {"str": text, "bytes": text.encode(), "json_value": HazelcastJsonValue(text)}[offer.form]


def dust(values: list[float]) -> list[float]:
    return [0.0 if v < 1e-12 else float(v) for v in values]


def run_stream(stream: list[Offer], book: SnapshotBook, assets: frozenset[str] | None = None) -> dict[str, int]:
    last: dict[str, Last] = {}
    last_seq: dict[str, int] = {}
    counts = {"received": 0, "accepted": 0, "ignored": 0, "rejected": 0}
    for offer in stream:
        sym = offer.key[6:-3] if isinstance(offer.key, str) and offer.key.startswith("asset_") else None
        # the stream decides the seq now, relative to the model (duplicates, reorders, jumps)
        if isinstance(offer.obj, dict) and "_push_seq" not in offer.obj and offer.seq_mode != "none":
            prev = last_seq.get(sym or "", None)
            base = 10 if prev is None else prev
            offer.obj["_push_seq"] = max(0, {"next": base + 1, "dup": base, "older": base - 3,
                                             "jump": base + 2**40}[offer.seq_mode])
        value = encode(offer)
        size = len(value) if isinstance(value, bytes) else (
            len(value.encode()) if isinstance(value, str) else
            len(value.to_string().encode()) if isinstance(value, HazelcastJsonValue) else 0)
        oversized = offer.form != "dict" and size > MAX_BYTES
        # what a reject must be counted as: exactly one reason, or one of a set when two defects
        # compete (their order of checks is the implementation's business)
        key_defect = {"bad_key", "bad_symbol"} & set(offer.defects)
        if key_defect:
            reasons = key_defect
        elif oversized:
            reasons = {"too_large"}
        else:
            reasons = {r for n in offer.defects for r in DEFECTS[n][offer.form == "dict"].split("|")}
        ignored = assets is not None and not key_defect and sym not in assets
        expected = False
        if not reasons and not ignored:
            obj = offer.obj
            ts = ts_seconds(obj["timestamp"])
            seq = obj.get("_push_seq")
            prev = last.get(sym)
            # ordered by timestamp; _push_seq breaks ties (both present) and catches duplicates
            if prev is None or ts > prev.ts:
                expected = True
                if prev is not None and seq is not None and prev.seq is not None and seq <= prev.seq:
                    event("upstream seq reset accepted")
            elif ts == prev.ts:
                expected = seq is None or prev.seq is None or seq > prev.seq
                if not expected:
                    reasons = {"stale_seq"}
            else:
                reasons = {"stale_timestamp"}
        event(f"outcome: {'ignored' if ignored else 'accepted' if expected else '/'.join(sorted(reasons))}")

        before = book.stats()["rejected"]
        got = book.offer(offer.key, value)  # must not raise
        after = book.stats()["rejected"]
        new_reasons = {r for r in after if after[r] != before.get(r, 0)}
        assert got is expected, (offer, reasons, after, book.stats()["samples"][-1:])
        counts["received"] += 1
        if ignored:
            counts["ignored"] += 1
            assert not new_reasons
        elif got:
            counts["accepted"] += 1
            assert valid_payload(decode_like_a_reader(value)), offer  # the independent predicate agrees
            obj = offer.obj
            last[sym] = Last(ts_seconds(obj["timestamp"]), dust(obj["bid_notional"]), dust(obj["ask_notional"]),
                             obj.get("_push_seq"))
            if obj.get("_push_seq") is not None:
                last_seq[sym] = obj["_push_seq"]
            assert not new_reasons
        else:
            counts["rejected"] += 1
            assert len(new_reasons) == 1 and sum(after.values()) == sum(before.values()) + 1
            (reason,) = new_reasons
            assert reason in reasons, (offer.key, offer.defects, reason, reasons)

        # the last good snapshot of every asset is still there, unchanged
        for s in SYMBOLS:
            snap = book.get(s)
            if s not in last:
                assert snap is None
                continue
            want = last[s]
            assert snap is not None and snap.ts == want.ts and snap.seq == want.seq
            assert snap.bid_notional.tolist() == want.bid and snap.ask_notional.tolist() == want.ask
            assert np.isfinite(snap.bid_notional).all() and (snap.bid_notional >= 0).all()
    return counts


def check_totals(book: SnapshotBook, counts: dict[str, int]) -> None:
    stats = book.stats()
    assert INTERNAL_ERROR not in stats["rejected"], stats["samples"]
    assert stats["received"] == counts["received"]
    assert stats["accepted"] == counts["accepted"] and stats["ignored"] == counts["ignored"]
    assert sum(stats["rejected"].values()) == counts["rejected"]
    assert stats["received"] == stats["accepted"] + stats["ignored"] + sum(stats["rejected"].values())


@given(st.lists(offers(), min_size=1, max_size=25))
def test_every_offer_is_predicted_and_the_last_good_one_survives(stream: list[Offer]) -> None:
    book = SnapshotBook(clock=lambda: NOW)
    check_totals(book, run_stream(stream, book))


@given(st.lists(offers(), min_size=1, max_size=25))
def test_with_an_asset_list_others_are_ignored_not_rejected(stream: list[Offer]) -> None:
    assets = frozenset({"BTCUSDT", "X1"})
    book = SnapshotBook(clock=lambda: NOW, assets=assets)
    check_totals(book, run_stream(stream, book, assets))


@given(st.one_of(st.binary(max_size=2000), st.text(max_size=2000)), st.sampled_from(SYMBOLS),
       st.sampled_from(["raw", "json_value"]))
def test_arbitrary_bytes_are_never_accepted_unless_valid(data: bytes | str, sym: str, form: str) -> None:
    book = SnapshotBook(clock=lambda: NOW)
    value: Any = data
    if form == "json_value":
        value = HazelcastJsonValue(data if isinstance(data, str) else data.decode("latin-1"))
    got = book.offer(f"asset_{sym}_ob", value)
    stats = book.stats()
    assert INTERNAL_ERROR not in stats["rejected"], stats["samples"]
    assert stats["accepted"] + sum(stats["rejected"].values()) == 1
    if got:
        assert valid_payload(decode_like_a_reader(value))
    else:
        assert book.get(sym) is None


def test_the_predicate_itself() -> None:
    """The oracle must be able to say no (and yes): spot checks written by hand."""
    good = {"timestamp": NOW, "bid_notional": [1.0, 0], "ask_notional": [2, 3.5]}
    assert valid_payload(good)
    assert valid_payload({**good, "timestamp": "2024-08-08T23:54:14Z", "_push_seq": 0, "bid_depth": None})
    assert valid_payload({**good, "timestamp": int(NOW * 1000)})
    for bad in ({**good, "bid_notional": [1.0]}, {**good, "ask_notional": [2, math.nan]},
                {**good, "ask_notional": [2, -0.5]}, {**good, "timestamp": NOW + 6}, {**good, "timestamp": True},
                {**good, "_push_seq": True}, {**good, "_push_seq": 2**63}, {**good, "bid_depth": [1]},
                {**good, "ask_notional": [2, 1e19]}, {"bid_notional": [1], "ask_notional": [1]}, [good]):
        assert not valid_payload(bad), bad


def test_huge_exponent_and_nan_tokens_in_one_payload() -> None:
    """1e999 (alone, or next to a NaN literal that sends the text to a lenient decoder) is refused."""
    book = SnapshotBook(clock=lambda: NOW)
    assert book.offer("asset_X1_ob", f'{{"timestamp": {NOW}, "bid_notional": [1.0], "ask_notional": [2.0]}}')
    for text in (f'{{"timestamp": {NOW}, "bid_notional": [1e999], "ask_notional": [NaN]}}',
                 f'{{"timestamp": {NOW}, "bid_notional": [-1e999], "ask_notional": [1.0]}}',
                 f'{{"timestamp": {NOW}, "bid_notional": [1.0], "ask_notional": [2.0], "_push_seq": 1e999}}',
                 '{"timestamp": 1e999, "bid_notional": [1.0], "ask_notional": [2.0]}'):
        assert not book.offer("asset_X1_ob", text)
    rejected = book.stats()["rejected"]
    assert sum(rejected.values()) == 4
    assert set(rejected) <= {"non_finite", "bad_json", "bad_field", "bad_timestamp"}
    assert book.get("X1").bid_notional.tolist() == [1.0]
