"""record.dumps_record: deterministic bytes, and NaN/inf refused wherever they are (orjson alone
would write them as null)."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from obf_contract.record import dumps_record, loads_record


def record(seq: int | None = 7, with_market: bool = True) -> dict[str, Any]:
    return {
        "schema": 2, "bar_idx": 3, "bar_ts": 1_723_161_005.0, "n_assets": 1, "n_present": 1,
        "assets": {"BTCUSDT": {
            "ts": 1_723_161_004.5, "age_ms": 500.0, "seq": seq,
            "placement": {"depth_1pct_usd": 1e6, "depth_quality": 1.0, "fill_probability": 0.5,
                          "spread_proxy_bps": 2.5},
            "signal": {"imbalance": 0.1, "imbalance_ma5": 0.05, "imbalance_persistence": 1.0,
                       "depth_asymmetry": -0.2, "withdrawal_velocity": 0.0}}},
        "market": {"median_imbalance": 0.1, "agreement_pct": 100.0, "depth_pressure": 0.1} if with_market else None,
        "macro": {"cascade_count": 0, "cascade_regime": "CALM", "depth_velocity": 0.0, "acceleration": 0.0},
        "degraded": False,
        "producer": {"worker_id": "w1", "computed_at": 1_723_161_005.01, "stale_assets": ["ETHUSDT"],
                     "degraded": False},
    }


PATHS = [
    ("bar_ts",),
    ("assets", "BTCUSDT", "age_ms"),
    ("assets", "BTCUSDT", "placement", "depth_quality"),
    ("assets", "BTCUSDT", "signal", "withdrawal_velocity"),
    ("market", "depth_pressure"),
    ("macro", "acceleration"),
    ("producer", "computed_at"),
]


def set_path(rec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        rec = rec[k]
    rec[path[-1]] = value


@pytest.mark.parametrize("path", PATHS, ids=lambda p: ".".join(p))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("seq", [7, None], ids=["no-null", "with-null"])
def test_non_finite_anywhere_is_refused(path: tuple[str, ...], bad: float, seq: int | None) -> None:
    rec = record(seq=seq)
    set_path(rec, path, bad)
    with pytest.raises(ValueError, match="non-finite"):
        dumps_record(rec)


def test_non_finite_in_a_list_is_refused() -> None:
    rec = record()
    rec["producer"]["extra"] = [1.0, [2.0, math.nan]]
    with pytest.raises(ValueError, match="non-finite"):
        dumps_record(rec)


@pytest.mark.parametrize("rec", [record(), record(seq=None), record(with_market=False)],
                         ids=["plain", "null-seq", "null-market"])
def test_finite_records_encode_sorted_compact_and_round_trip(rec: dict[str, Any]) -> None:
    data = dumps_record(copy.deepcopy(rec))
    # Independent encoder: the stdlib with sorted keys and no whitespace gives the same text.
    assert data.decode() == json.dumps(rec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert loads_record(data) == rec
