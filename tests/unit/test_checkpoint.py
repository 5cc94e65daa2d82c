"""Checkpoint: bit-identical warm restart, every refusal reason, and no crash on garbage."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obf_contract.record import dumps_record
from obf_features_worker.engine import checkpoint
from obf_features_worker.engine.checkpoint import CheckpointRejected
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.ingest import SnapshotBook
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.engine.snapshot import Snapshot, parse_payload, payload_json
from tests.hypothesis_profiles import scaled

BAR_S = 5.0
T0 = 1_700_000_000.0
SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT")


def feed(n_bars: int, seed: int = 7) -> list[tuple[int, float, dict[str, Snapshot]]]:
    """A deterministic bar sequence: assets join late, drop out, some bars are empty, levels vary."""
    rng = random.Random(seed)
    bars = []
    seq = dict.fromkeys(SYMBOLS, 0)
    for i in range(n_bars):
        bar_idx = int(T0 / BAR_S) + i
        bar_ts = bar_idx * BAR_S
        snaps: dict[str, Snapshot] = {}
        empty_bar = 20 <= i < 24  # long enough to turn the engine degraded
        for k, sym in enumerate(SYMBOLS):
            if empty_bar or i < 3 * k or rng.random() < 0.15:
                continue
            n = 1 + (k % 4) * 3
            bid = [rng.uniform(0, 1e6) * (rng.random() > 0.1) for _ in range(n)]
            ask = [rng.uniform(0, 1e6) * (rng.random() > 0.1) for _ in range(n)]
            seq[sym] += rng.randint(1, 5)
            text = payload_json(bar_ts - rng.uniform(0, 4), bid, ask, seq=seq[sym])
            snaps[sym] = parse_payload(sym, text, now=bar_ts)
        bars.append((bar_idx, bar_ts, snaps))
    return bars


FEED = feed(60)


def run(engine: FeatureEngine, bars) -> list[bytes]:
    return [dumps_record(engine.step(i, ts, s)) for i, ts, s in bars]


def params_small() -> FeatureParams:
    # Short lookbacks so the ring buffers wrap several times within the feed.
    return FeatureParams(imbalance_lookback=4, depth_lookback=3, ma_window=2, ema_alpha=0.2)


@pytest.mark.parametrize("params", [FeatureParams(), params_small()], ids=["default", "small"])
@pytest.mark.parametrize("cut", [1, 7, 19, 22, 40, 58])
def test_restart_from_checkpoint_is_bit_identical(params: FeatureParams, cut: int) -> None:
    uninterrupted = run(FeatureEngine(params), FEED)

    first = FeatureEngine(params)
    before = run(first, FEED[:cut])
    bar_idx, bar_ts, _ = FEED[cut - 1]
    cp = checkpoint.capture(first, seqs={"AAAUSDT": 3}, bar_ts=bar_ts, worker_id="w-1",
                            written_at=bar_ts + 0.25, epoch=4)
    data = checkpoint.encode(cp)
    del first

    restored = checkpoint.decode(data, params=params, now_bar_idx=bar_idx + 1, max_age_bars=3)
    after = run(restored.restore_engine(), FEED[cut:])
    assert before + after == uninterrupted
    assert (restored.bar_idx, restored.bar_ts, restored.worker_id, restored.epoch) == (bar_idx, bar_ts, "w-1", 4)
    assert restored.written_at == bar_ts + 0.25
    assert dict(restored.seqs) == {"AAAUSDT": 3}


def test_chained_restarts_stay_identical() -> None:
    params = params_small()
    uninterrupted = run(FeatureEngine(params), FEED)
    engine = FeatureEngine(params)
    out: list[bytes] = []
    for start, stop in ((0, 11), (11, 12), (12, 21), (21, 45), (45, 60)):
        out += run(engine, FEED[start:stop])
        bar_idx, bar_ts, _ = FEED[stop - 1]
        data = checkpoint.encode(checkpoint.capture(engine, seqs={}, bar_ts=bar_ts, worker_id="w",
                                                    written_at=bar_ts))
        engine = checkpoint.decode(data, params=params, now_bar_idx=bar_idx, max_age_bars=0).restore_engine()
    assert out == uninterrupted


def test_seqs_round_trip_into_the_snapshot_book() -> None:
    engine = FeatureEngine()
    bar_idx, bar_ts, snaps = FEED[10]
    engine.step(bar_idx, bar_ts, snaps)
    book = SnapshotBook(clock=lambda: bar_ts)
    for sym, seq in (("AAAUSDT", 41), ("BBBUSDT", 9), ("BTCUSD_PERP", 7), ("1000PEPE-USDT", 5)):
        assert book.offer(f"asset_{sym}_ob", payload_json(bar_ts - 1, [1.0], [2.0], seq=seq))
    data = checkpoint.encode(checkpoint.capture(engine, seqs=book.export_seqs(), bar_ts=bar_ts,
                                                worker_id="w", written_at=bar_ts))
    cp = checkpoint.decode(data, params=FeatureParams(), now_bar_idx=bar_idx, max_age_bars=1)
    assert dict(cp.seqs) == {"AAAUSDT": 41, "BBBUSDT": 9, "BTCUSD_PERP": 7, "1000PEPE-USDT": 5}
    fresh = SnapshotBook(clock=lambda: bar_ts)
    fresh.import_seqs(cp.seqs)
    assert fresh.export_seqs()["AAAUSDT"] == 41
    # Ordering is by timestamp against the held snapshot (none after a restart, docs/contract.md):
    # the first value is taken (the initial read of the push the seq came from is no reset), a
    # duplicate of it is refused, the next push accepted.
    assert fresh.offer("asset_AAAUSDT_ob", payload_json(bar_ts - 0.5, [1.0], [2.0], seq=41))
    assert not fresh.offer("asset_AAAUSDT_ob", payload_json(bar_ts - 0.5, [1.0], [2.0], seq=41))
    assert fresh.offer("asset_AAAUSDT_ob", payload_json(bar_ts - 0.4, [1.0], [2.0], seq=42))
    assert fresh.stats()["seq_resets"] == 0 and fresh.stats()["rejected"] == {"stale_seq": 1}


def test_encoding_is_deterministic_and_str_or_json_value_decode() -> None:
    engine = FeatureEngine()
    bar_idx, bar_ts, snaps = FEED[10]
    engine.step(bar_idx, bar_ts, snaps)
    cp = checkpoint.capture(engine, seqs={"BBBUSDT": 2}, bar_ts=bar_ts, worker_id="w", written_at=bar_ts)
    data = checkpoint.encode(cp)
    assert checkpoint.encode(cp) == data

    class JsonValue:  # the shape of hazelcast.core.HazelcastJsonValue
        def to_string(self) -> str:
            return data.decode()

    for form in (data, data.decode(), bytearray(data), JsonValue()):
        got = checkpoint.decode(form, params=FeatureParams(), now_bar_idx=bar_idx, max_age_bars=0)
        assert got.bar_idx == bar_idx


def test_capture_refuses_an_engine_without_a_bar_and_bad_fields() -> None:
    with pytest.raises(ValueError, match="not stepped"):
        checkpoint.capture(FeatureEngine(), seqs={}, bar_ts=1.0, worker_id="w", written_at=1.0)
    engine = FeatureEngine()
    engine.step(1, 5.0, {})
    with pytest.raises(ValueError, match="worker_id"):
        checkpoint.capture(engine, seqs={}, bar_ts=5.0, worker_id="", written_at=5.0)
    with pytest.raises(ValueError, match="seqs"):
        checkpoint.capture(engine, seqs={"bad symbol": 1}, bar_ts=5.0, worker_id="w", written_at=5.0)
    with pytest.raises(ValueError, match="bar_ts"):
        checkpoint.capture(engine, seqs={}, bar_ts=float("nan"), worker_id="w", written_at=5.0)


# -- refusals ---------------------------------------------------------------------------------

BAR_IDX, BAR_TS, _ = FEED[30]


def valid_bytes(params: FeatureParams | None = None) -> bytes:
    engine = FeatureEngine(params or FeatureParams())
    run(engine, FEED[:31])
    return checkpoint.encode(checkpoint.capture(engine, seqs={"AAAUSDT": 5}, bar_ts=BAR_TS,
                                                worker_id="w", written_at=BAR_TS))


VALID = valid_bytes()


def rehashed(mutate) -> bytes:
    """A checkpoint whose body was changed by ``mutate`` and whose checksum was recomputed, as a
    well-meaning but wrong writer would produce it (so the structural checks are what refuses it)."""
    env = orjson.loads(VALID)
    mutate(env)
    env["sha256"] = hashlib.sha256(orjson.dumps(env["body"], option=orjson.OPT_SORT_KEYS)).hexdigest()
    return orjson.dumps(env)


def reason_of(data: object, *, params: FeatureParams | None = None, now: int = BAR_IDX,
              max_age: int = 5) -> str:
    with pytest.raises(CheckpointRejected) as info:
        checkpoint.decode(data, params=params or FeatureParams(), now_bar_idx=now, max_age_bars=max_age)
    assert str(info.value).startswith(f"checkpoint refused ({info.value.reason}): ")
    return info.value.reason


def test_the_valid_checkpoint_is_accepted_at_the_age_bounds() -> None:
    for now in (BAR_IDX, BAR_IDX + 5):
        assert checkpoint.decode(VALID, params=FeatureParams(), now_bar_idx=now, max_age_bars=5).bar_idx == BAR_IDX


def test_too_old_and_from_future() -> None:
    assert reason_of(VALID, now=BAR_IDX + 6, max_age=5) == "too_old"
    assert reason_of(VALID, now=BAR_IDX + 1, max_age=0) == "too_old"
    assert reason_of(VALID, now=BAR_IDX - 1) == "from_future"


def test_other_parameters_are_refused_naming_the_field() -> None:
    other = FeatureParams(ema_alpha=0.02)
    with pytest.raises(CheckpointRejected) as info:
        checkpoint.decode(VALID, params=other, now_bar_idx=BAR_IDX, max_age_bars=1)
    assert info.value.reason == "params"
    assert "ema_alpha" in str(info.value) and "0.01" in str(info.value) and "0.02" in str(info.value)
    # and the other way round: a checkpoint written with other parameters
    assert reason_of(valid_bytes(FeatureParams(imbalance_lookback=20))) == "params"


def test_version_refusals() -> None:
    env = orjson.loads(VALID)
    env["version"] = 2
    assert reason_of(orjson.dumps(env)) == "version"

    def engine_v1(e: dict[str, Any]) -> None:  # the schema before the in-process formulas
        e["body"]["engine"]["version"] = 1
    with pytest.raises(CheckpointRejected) as info:
        checkpoint.decode(rehashed(engine_v1), params=FeatureParams(), now_bar_idx=BAR_IDX, max_age_bars=1)
    assert info.value.reason == "version" and "older schema" in info.value.detail


def test_universe_refusal() -> None:
    # The worker's --assets changed since the checkpoint: depth_ref_usd averages over another set.
    with pytest.raises(CheckpointRejected) as info:
        checkpoint.decode(VALID, params=FeatureParams(), now_bar_idx=BAR_IDX, max_age_bars=1,
                          universe=["AAAUSDT"])
    assert info.value.reason == "params" and "universe" in info.value.detail


@pytest.mark.parametrize("data", [
    b"", b"{", b"[]", b"null", b'"checkpoint"', b"\xff\xfe", "\ud800", 42, object(),
    VALID[: len(VALID) // 2], VALID + b"x", VALID.replace(b'"kind":"obf_checkpoint"', b'"kind":"other"'),
    VALID.replace(b'"version":1', b'"version":"1"'),
    VALID.replace(b'"bar_idx":', b'"bar_idx":1000000000000000000000000000000,"x":'),  # > 64-bit int
    VALID.replace(b'"bar_ts":', b'"bar_ts":1e999,"x":'),
    VALID.replace(b'"bar_ts":', b'"bar_ts":NaN,"x":'),
])
def test_garbage_is_corrupt(data: object) -> None:
    assert reason_of(data) == "corrupt"


def test_no_entry_is_missing() -> None:
    assert reason_of(None) == "missing"


def test_a_flipped_digit_fails_the_checksum() -> None:
    i = VALID.index(b'"ref_depth":[') + len(b'"ref_depth":[')
    digit = VALID[i:i + 1]
    assert digit.isdigit()
    flipped = VALID[:i] + (b"1" if digit != b"1" else b"2") + VALID[i + 1:]
    with pytest.raises(CheckpointRejected, match="checksum") as info:
        checkpoint.decode(flipped, params=FeatureParams(), now_bar_idx=BAR_IDX, max_age_bars=1)
    assert info.value.reason == "corrupt"


def _set(path: tuple, value: Any):
    def mutate(env: dict[str, Any]) -> None:
        target = env["body"]
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
    return mutate


@pytest.mark.parametrize("path,value", [
    (("worker_id",), ""),
    (("worker_id",), 7),
    (("bar_idx",), -1),
    (("bar_idx",), 1.5),
    (("bar_idx",), True),
    (("bar_ts",), "now"),
    (("epoch",), -3),
    (("seqs",), {"AAAUSDT": -1}),
    (("seqs",), {"aaa": 1}),
    (("seqs",), []),
    (("engine",), []),
    (("engine", "kind"), "something_else"),
    (("engine", "last_bar_idx"), 3),
    (("engine", "ref_depth"), []),
    (("engine", "imbalance_history"), "0.5"),
    (("engine", "n_obs"), None),
    (("engine", "params"), {"ema_alpha": 0.5}),
])
def test_malformed_fields_with_a_good_checksum_are_corrupt(path: tuple, value: Any) -> None:
    assert reason_of(rehashed(_set(path, value))) == "corrupt"


def test_missing_field_is_corrupt() -> None:
    def drop(env: dict[str, Any]) -> None:
        del env["body"]["seqs"]
    assert reason_of(rehashed(drop)) == "corrupt"


def test_size_limit() -> None:
    with pytest.raises(CheckpointRejected, match="limit") as info:
        checkpoint.decode(VALID, params=FeatureParams(), now_bar_idx=BAR_IDX, max_age_bars=1,
                          max_bytes=len(VALID) - 1)
    assert info.value.reason == "corrupt"


def test_caller_errors_are_not_disguised_as_corrupt() -> None:
    with pytest.raises(TypeError):
        checkpoint.decode(VALID, params=FeatureParams(), now_bar_idx=float(BAR_IDX), max_age_bars=1)  # type: ignore[arg-type]


# -- fuzz -------------------------------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_value = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), c, max_size=4)),
                          max_leaves=12)


def decode_or_refuse(data: object) -> None:
    try:
        cp = checkpoint.decode(data, params=FeatureParams(), now_bar_idx=BAR_IDX, max_age_bars=5)
    except CheckpointRejected as exc:
        assert exc.reason in checkpoint.REJECT_REASONS
        return
    cp.restore_engine()  # whatever decode accepts must restore


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_fuzz_arbitrary_input_never_crashes(data: bytes | str) -> None:
    decode_or_refuse(data)


@given(st.integers(0, len(VALID) - 1), st.integers(0, 255), st.booleans())
def test_fuzz_byte_flips_and_truncations_are_refused(pos: int, byte: int, truncate: bool) -> None:
    data = VALID[:pos] if truncate else VALID[:pos] + bytes([byte]) + VALID[pos + 1:]
    if data == VALID:
        return
    try:
        cp = checkpoint.decode(data, params=FeatureParams(), now_bar_idx=BAR_IDX, max_age_bars=5)
    except CheckpointRejected:
        return
    # Compact JSON has no insignificant bytes: every change hits the body (checksum), the
    # checksum text, or an envelope key/value. The checksum covers the canonical encoding of the
    # values, so the only change that may pass is one that spells the same value another way
    # (e.g. 1700000150.0 as 1700000150e0): then the checkpoint is the original, value for value.
    original = checkpoint.decode(VALID, params=FeatureParams(), now_bar_idx=BAR_IDX, max_age_bars=5)
    assert checkpoint.encode(cp) == checkpoint.encode(original), \
        f"a modified checkpoint was accepted: pos={pos} byte={byte} truncate={truncate}"


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            out += _paths(v, (*prefix, i))
    return out


BODY_PATHS = _paths(orjson.loads(VALID)["body"])


@settings(max_examples=scaled(2))
@given(st.sampled_from(BODY_PATHS), json_value)
def test_fuzz_rehashed_structural_mutations_never_crash(path: tuple, value: Any) -> None:
    decode_or_refuse(rehashed(_set(path, value)))


# -- unconfirmed records (written before the records, so a successor can write them) -------------

def test_unconfirmed_records_round_trip_and_are_optional() -> None:
    engine = FeatureEngine()
    record = engine.step(BAR_IDX, BAR_TS, {})
    text = dumps_record(record).decode()
    data = checkpoint.encode(checkpoint.capture(engine, seqs={}, bar_ts=BAR_TS, worker_id="w", written_at=BAR_TS,
                                                records={BAR_IDX: text}))
    cp = checkpoint.decode(data, params=FeatureParams(), now_bar_idx=BAR_IDX, max_age_bars=0)
    assert cp.records == {BAR_IDX: text}
    # Without records the body has no "records" field at all: the format of earlier checkpoints.
    assert "records" not in orjson.loads(VALID)["body"]
    assert checkpoint.decode(VALID, params=FeatureParams(), now_bar_idx=BAR_IDX, max_age_bars=0).records == {}
    # None skips only the age checks.
    assert checkpoint.decode(VALID, params=FeatureParams(), now_bar_idx=None, max_age_bars=0).bar_idx == BAR_IDX
    assert reason_of(valid_bytes(FeatureParams(imbalance_lookback=20)), now=None) == "params"  # type: ignore[arg-type]


@pytest.mark.parametrize("records", [
    [], {"12x": "{}"}, {"-1": "{}"}, {"\u0661\u0662": "{}"}, {"99999999999999999999": "{}"},
    {str(BAR_IDX): 7}, {str(BAR_IDX): "{not json"}, {str(BAR_IDX): "[]"}, {str(BAR_IDX): '{"bar_idx": 1}'},
])
def test_malformed_unconfirmed_records_are_corrupt(records: Any) -> None:
    assert reason_of(rehashed(_set(("records",), records))) == "corrupt"
    engine = FeatureEngine()
    engine.step(BAR_IDX, BAR_TS, {})
    if type(records) is dict and all(type(k) is str and k.isascii() and k.isdigit() for k in records):
        with pytest.raises(ValueError):
            checkpoint.capture(engine, seqs={}, bar_ts=BAR_TS, worker_id="w", written_at=BAR_TS,
                               records={int(k): v for k, v in records.items()})
