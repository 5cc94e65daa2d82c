"""Until the engine builds schema-3 records itself (issue 14, the ``columnar`` branch): the columnar
form of a schema-2 ``step()`` record, with ``state.ref_depth_usd`` read from the engine that made it.

``shim(monkeypatch)`` makes ``FeatureEngine.step`` return that form (keeping ``assets`` too, so the
worker's LATEST code of that time keeps working). Once ``step()`` returns ``symbols`` itself, both
are no-ops. Test-only.
"""

from __future__ import annotations

from typing import Any

import pytest

from obf_contract.record import PLACEMENT_FIELDS, SIGNAL_FIELDS
from obf_features_worker.engine.feature_engine import FeatureEngine


def columnar(record: Any, engine: FeatureEngine) -> Any:
    """``record`` (just returned by ``engine.step``) in the columnar shape (unchanged if it is)."""
    if "symbols" in record:
        return record
    assets = record["assets"]
    symbols = sorted(assets)
    rows = [assets[s] for s in symbols]
    out = dict(record)
    out["symbols"] = symbols
    out["ts"] = [a["ts"] for a in rows]
    out["age_ms"] = [a["age_ms"] for a in rows]
    out["seq"] = [a["seq"] for a in rows]
    out["placement"] = {f: [a["placement"][f] for a in rows] for f in PLACEMENT_FIELDS}
    out["signal"] = {f: [a["signal"][f] for a in rows] for f in SIGNAL_FIELDS}
    out["state"] = {"ref_depth_usd": [float(engine._ref_depth[engine._slots[s]]) for s in symbols]}
    return out


def shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``FeatureEngine.step`` return columnar records (no-op once it does)."""
    original = FeatureEngine.step

    def step(self: FeatureEngine, bar_idx: int, bar_ts: float, snapshots: Any) -> Any:
        return columnar(original(self, bar_idx, bar_ts, snapshots), self)

    monkeypatch.setattr(FeatureEngine, "step", step)
