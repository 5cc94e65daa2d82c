"""record.dumps_record: deterministic bytes, and NaN/inf refused wherever they are (orjson alone
would write them as null), including inside the columns of a schema 3 record."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest

from obf_contract.record import dumps_record, loads_record
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.snapshot import Snapshot


def record(seq: int | None = 7, with_market: bool = True, worker_id: str = "w1") -> dict[str, Any]:
    return {
        "schema": 3, "bar_idx": 3, "bar_ts": 1_723_161_005.0, "n_assets": 2, "n_present": 2,
        "symbols": ["BTCUSDT", "ETHUSDT"], "ts": [1_723_161_004.5, 1_723_161_004.25], "age_ms": [500.0, 750.0],
        "seq": [seq, 9],
        "placement": {"depth_1pct_usd": [1e6, 2.5e5], "depth_quality": [1.0, 0.75], "fill_probability": [0.5, 0.4],
                      "spread_proxy_bps": [2.5, 3.0]},
        "signal": {"imbalance": [0.1, -0.3], "imbalance_ma5": [0.05, -0.1], "imbalance_persistence": [1.0, -1.0],
                   "depth_asymmetry": [-0.2, 0.0], "withdrawal_velocity": [0.0, -0.01]},
        "state": {"ref_depth_usd": [1e6, 3e5]},
        "market": {"median_imbalance": 0.1, "agreement_pct": 100.0, "depth_pressure": 0.1} if with_market else None,
        "macro": {"cascade_count": 0, "cascade_regime": "CALM", "depth_velocity": 0.0, "acceleration": 0.0},
        "degraded": False,
        "producer": {"worker_id": worker_id, "computed_at": 1_723_161_005.01, "stale_assets": ["XRPUSDT"],
                     "degraded": False},
    }


PATHS: list[tuple[str | int, ...]] = [
    ("bar_ts",),
    ("age_ms", 1),
    ("ts", 0),
    ("placement", "depth_quality", 0),
    ("signal", "withdrawal_velocity", 1),
    ("state", "ref_depth_usd", 1),
    ("market", "depth_pressure"),
    ("macro", "acceleration"),
    ("producer", "computed_at"),
]


def set_path(rec: Any, path: tuple[str | int, ...], value: Any) -> None:
    for k in path[:-1]:
        rec = rec[k]
    rec[path[-1]] = value


@pytest.mark.parametrize("path", PATHS, ids=lambda p: ".".join(map(str, p)))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("variant", ["no-null", "null-seq", "null-in-string", "null-market"])
def test_non_finite_anywhere_is_refused(path: tuple[str | int, ...], bad: float, variant: str) -> None:
    rec = record(seq=None if variant == "null-seq" else 7, with_market=variant != "null-market",
                 worker_id="nullable" if variant == "null-in-string" else "w1")
    if path[0] == "market" and rec["market"] is None:
        path = ("macro", "depth_velocity")
    set_path(rec, path, bad)
    with pytest.raises(ValueError, match="non-finite"):
        dumps_record(rec)


def test_non_finite_in_a_nested_or_mixed_list_is_refused() -> None:
    rec = record()
    rec["producer"]["extra"] = [1.0, [2.0, math.nan]]
    with pytest.raises(ValueError, match="non-finite"):
        dumps_record(rec)
    rec = record(seq=None)
    rec["producer"]["extra"] = [None, "x", math.inf]
    with pytest.raises(ValueError, match=r"non-finite float inf at \$\.producer\.extra\[2\]"):
        dumps_record(rec)


def test_a_finite_column_whose_sum_overflows_is_accepted() -> None:
    # The column check sums at C speed; an overflowing sum of finite values must not be refused.
    rec = record(seq=None)
    rec["state"]["ref_depth_usd"] = [1.5e308, 1.5e308]
    assert loads_record(dumps_record(rec))["state"]["ref_depth_usd"] == [1.5e308, 1.5e308]


@pytest.mark.parametrize("rec", [record(), record(seq=None), record(with_market=False), record(worker_id="null")],
                         ids=["plain", "null-seq", "null-market", "null-in-string"])
def test_finite_records_encode_sorted_compact_and_round_trip(rec: dict[str, Any]) -> None:
    data = dumps_record(copy.deepcopy(rec))
    # Independent encoder: the stdlib with sorted keys and no whitespace gives the same text.
    assert data.decode() == json.dumps(rec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert loads_record(data) == rec


def test_engine_record_is_plain_json_with_shortest_round_trip_floats() -> None:
    # The engine builds its columns from numpy arrays: they must reach the encoder as plain
    # Python values (any JSON encoder works) and encode as the stdlib writes the same doubles.
    rng = np.random.default_rng(5)
    engine = FeatureEngine()
    for bar in range(1, 4):
        snaps = {f"S{i:03d}": Snapshot(f"S{i:03d}", 1_723_161_000.0 + bar - rng.random(), rng.gamma(2.0, 5e3, 5),
                                       rng.gamma(2.0, 5e3, 5), seq=None if i % 3 else bar) for i in range(40)}
        rec = engine.step(bar, 1_723_161_000.0 + bar, snaps)
        text = json.dumps(rec, sort_keys=True, separators=(",", ":"), allow_nan=False)
        assert dumps_record(rec).decode() == text
        assert loads_record(text) == rec
