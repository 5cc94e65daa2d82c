"""The pure checks of `obf-features verify` (each line's verdict and reason), no member."""

from __future__ import annotations

import json
from types import SimpleNamespace

from obf_contract.record import SCHEMA_VERSION
from obf_features_worker.inspection.verify import (
    check_input,
    check_macro,
    check_record,
    check_supervisor,
    check_worker,
)
from tests.factories import columns

NOW = 1_800_000_000.0


def health(**kw: object) -> dict[str, object]:
    doc = {"worker_id": "w1", "state": "running", "role": "leader", "bar_seconds": 5.0, "updated_at": NOW - 1,
           "last_bar_ts": NOW - 2, "last_bar_idx": 360_000_000}
    doc.update(kw)
    return doc


def test_worker_check() -> None:
    assert check_worker([health()], NOW).ok
    assert check_worker([], NOW).line() == "✗ worker: no live worker (no health document)"
    bad = check_worker([health(state="degraded")], NOW)
    assert not bad.ok and "w1: state degraded" in bad.reason


def test_supervisor_check() -> None:
    assert check_supervisor("obf", lambda argv: (0, "obf   RUNNING   pid 12, uptime 0:01:00\n")).ok
    down = check_supervisor("obf", lambda argv: (3, "obf   STOPPED   Dec 04 10:00 AM\n"))
    assert not down.ok and "obf not RUNNING (rc=3)" in down.reason

    def missing(argv: list[str]) -> tuple[int, str]:
        raise OSError("supervisorctl not found on PATH")
    assert "not found" in check_supervisor("obf", missing).reason


def test_input_check() -> None:
    fresh = json.dumps({"timestamp": NOW - 2.0, "bid_notional": [1.0], "ask_notional": [1.0]})
    old = json.dumps({"timestamp": NOW - 12.5, "bid_notional": [1.0], "ask_notional": [1.0]})
    values = {"asset_AAAUSDT_ob": fresh, "asset_BBBUSDT_ob": old, "asset_DDDUSDT_ob": '{"x": 1}'}
    assert check_input(["AAAUSDT"], values, NOW, 10.0).ok
    c = check_input(["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"], values, NOW, 10.0)
    assert not c.ok
    assert c.reason == ("BBBUSDT entry 12.5s old (limit 10s); CCCUSDT has no input entry; "
                        "DDDUSDT entry has no readable timestamp")


def record(**kw: object) -> dict[str, object]:
    rec = {"schema": SCHEMA_VERSION, "bar_idx": 7, "producer": {"worker_id": "w1"}, "n_present": 0, **columns({}),
           "market": {"median_imbalance": 0.0, "agreement_pct": 50.0, "depth_pressure": 0.0, "notional_pressure": 0.0},
           "macro": {"cascade_count": 0, "cascade_regime": "CALM", "depth_velocity": 0.0, "acceleration": 0.0,
                     "depth_ref_usd": 1.0}}
    rec.update(kw)
    return rec


def test_record_check() -> None:
    assert check_record(7, record(), 7, "interval 5s").ok
    assert "the worker lags" in check_record(9, None, 7, "interval 5s").reason
    assert "numbers bars differently" in check_record(3_000, None, 7, "scan field n").reason
    assert "map is empty" in check_record(3, None, None, "given").reason
    assert "schema 1" in check_record(7, record(schema=1), 7, "given").reason
    assert "malformed: symbols must be" in check_record(7, record(n_present=1), 7, "given").reason
    assert "malformed: ts must be" in check_record(7, record(ts=None), 7, "given").reason


def test_macro_check() -> None:
    assert check_macro(record()).ok
    rec = record()
    del rec["macro"]["depth_ref_usd"]  # type: ignore[attr-defined]
    assert check_macro(rec).reason == "bar 7 lacks macro.depth_ref_usd"
    assert "no market/macro" in check_macro(record(market=None, macro=None)).reason
    assert not check_macro(None).ok


def test_adapter_and_fill_checks() -> None:
    from obf_features_worker.inspection.verify import check_adapter, check_fill

    kinds = {5: "exact", 6: "fallback", 7: "exact"}
    fills = {"A": 0.6, "H": 0.5, "N": float("nan"), "O": 1.0}  # H: a real 0.5 (first bar, empty book)

    def asset(fill: float) -> SimpleNamespace:
        return SimpleNamespace(placement=SimpleNamespace(fill_probability=fill))

    bar7 = SimpleNamespace(assets={s: asset(f) for s, f in fills.items()})
    engine = SimpleNamespace(resolve=lambda b: SimpleNamespace(kind=kinds[b]),
                             get_bar=lambda b: bar7 if b == 7 else None)
    assert check_adapter(engine, 7, 3).reason == "not exact: 6=fallback"
    assert check_adapter(engine, 7, 1).ok
    assert check_fill(engine, ["A", "X"], 7).reason == "absent from bar 7: X"
    assert check_fill(engine, ["A", "H"], 7).ok  # 0.5 is a measured value, not a default
    assert check_fill(engine, ["N", "O"], 7).reason == "fill_probability not finite in [0, 1) in bar 7: N=nan, O=1.0"
    assert check_fill(engine, ["A"], 8).reason == "no bar 8 in the adapter"
