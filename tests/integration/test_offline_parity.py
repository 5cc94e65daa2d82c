"""Paper parity: ``OfflineOBEngine.preload_date`` on a day file (and on a range of the bar map)
gives the same lookups as the live adapter gave for those bars, on a real member.

The same records, with gaps (a missing bar: fallback; five missing: fallback then default) and
an absent asset, go into a day folder (``replay.write_by_date``, the ``--by-date`` writer) and into
a bar map the live ``HazelcastOBEngine`` listens to. Both engines then step through the day's
bars and answer every kind of lookup (current bar, bar_idx, timestamps, absent assets, past the
last bar) identically.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from engine_adapter.adapter import HazelcastOBEngine
from engine_adapter.offline import OfflineOBEngine
from obf_contract import dayfiles
from obf_features_worker.offline.replay import write_by_date
from tests.integration.test_adapter import ASSETS, SPACING, config_for, poll, put, record

DAY = date(2024, 8, 9)  # the records run from 2024-08-08 23:50 to 2024-08-09 00:06:40 UTC
MISSING = {130, 150, 151, 152, 153, 154}
PARTIAL = {140: ASSETS[:2]}  # ASSETS[2] absent from bar 140


def _records() -> list[dict[str, Any]]:
    return [record(i, assets=PARTIAL.get(i, ASSETS)) for i in range(0, 200) if i not in MISSING]


def _answers(eng: Any, keys: list[Any]) -> list[Any]:
    out: list[Any] = []
    for key in keys:
        bar = eng.get_bar(key)
        out.append((key, eng.resolve(key), None if bar is None else bar.bar_idx, eng.get_market(key),
                     eng.get_macro(key), eng.get_market("BTCUSDT", key)))
        for sym in (*ASSETS, "XRPUSDT"):
            out.append((key, sym, eng.get_placement(sym, key), eng.get_signal(sym, key), eng.get_asset(sym, key)))
    return out


def _walk(eng: Any, indices: range) -> list[Any]:
    """step_live through ``indices`` and read the current bar (key None) after each step."""
    out = []
    for idx in indices:
        out.append(eng.step_live(ASSETS, idx))
        out.extend(_answers(eng, [None]))
    return out


def test_preload_date_answers_as_the_live_adapter(hz_cluster, hz_client, map_suffix: str, tmp_path: Path) -> None:
    recs = _records()
    assert [d for d in write_by_date(recs, tmp_path)] == [date(2024, 8, 8), DAY]
    map_name = "DOLPHIN_OBF_FEATURES" + map_suffix
    m = hz_client.get_map(map_name).blocking()
    for rec in recs:
        put(m, rec)
    lo, hi = dayfiles.day_bounds(DAY)
    day_idx = [r["bar_idx"] for r in recs if lo <= r["bar_ts"] < hi]
    first, last = day_idx[0], day_idx[-1]
    assert recs[first - 1 if first - 1 not in MISSING else 0]["bar_ts"] < lo  # the day has a day before it
    indices = range(first, last + 5)  # and 4 bars past the last one
    keys: list[Any] = [*indices]
    for idx in indices:
        t = 1_723_161_000.0 + idx * SPACING
        keys += [t, t + SPACING / 2]

    with HazelcastOBEngine(config_for(hz_cluster, map_name, cache_bars=1000, max_wait_ms=0),
                           client=hz_client) as live:
        poll(lambda: all(live.wait_for_bar(r["bar_idx"], 0) for r in recs), 30, "every bar cached")
        expected = _answers(live, keys) + _walk(live, indices)
        live_stats = live.stats()

    for offline in (OfflineOBEngine(tmp_path), OfflineOBEngine.from_map(hz_client, map_name)):
        assert offline.preload_date(DAY) == len(day_idx)
        assert offline.loaded_indices() == day_idx
        assert _answers(offline, keys) + _walk(offline, indices) == expected
        assert offline.stats().steps == live_stats.steps
    kinds = {r.kind for r in expected if hasattr(r, "kind")}
    assert kinds == {"exact", "fallback", "default"}  # the walk exercised every resolution kind
