"""Soak: a time-compressed day of bars with assets joining and leaving, against a real member.

The worker runs the scan clock; the test is the scan source and drives bars in lock-step (it
publishes scan ``i + 1`` as soon as its witness listener has seen bar ``i``), so a day of 5 s bars
takes minutes, not a day. A pool of symbols is fed at 10 Hz; every ``BLOCK`` bars a different
part of the pool leaves (its feed stops; every other time its map entry is removed too) and the
previous leavers rejoin. The adapter runs as a trader in a process of its own
(``adapter_probe``), stepping every bar.

Checked: memory of the worker and of the adapter process is flat after warm-up (RSS growth
reported and bounded), the bar map holds exactly ``retain_bars``, the latest map at most one
entry per symbol ever seen, every bar is written and stepped exactly, and the assets of each
record follow the joins and leaves.

The CI variant runs at least 1 800 bars, and more while its time budget lasts; the day variant
(17 280 bars = a day of 5 s bars) is marked ``soak`` and runs only with ``OBF_SOAK=1``
(``make soak``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from obf_features_worker.engine.snapshot import parse_snapshot
from tests.cluster import HzCluster
from tests.integration.fault_tools import AdapterProbe, BarWitness, ControlledFeeder, proc_status_kb
from tests.integration.feeder import WorkerProcess, wait_for
from tests.integration.test_worker import health, records, worker_env

POOL = tuple(f"SOAK{i}USDT" for i in range(10))
LEAVERS_PER_BLOCK = 3
BLOCK = 300  # bars per join/leave block
RETAIN = 50  # --retain-bars
CACHE_BARS = 100  # adapter cache
MAX_AGE_S = 1.0  # --max-age-s: an asset whose feed stopped is absent from bars closing 1 s later
AGE_MARGIN_S = 0.2  # input entries this much past (or within) MAX_AGE_S count as aged out (fresh)
SAMPLE_EVERY = 120  # bars between memory / map-size samples
# Memory "flat after warm-up": RSS growth between the first and the last samples after warm-up
# may not exceed RSS_NOISE_KB (allocator arenas, measured < 0.3 MB) or RSS_LEAK_KB_PER_BAR per
# bar between them, whichever is larger. A decoded record is ~9.5 kB and its JSON text ~4.6 kB,
# so keeping one of either per bar fails the CI variant (>= 840 bars between the samples).
RSS_NOISE_KB = 1024
RSS_LEAK_KB_PER_BAR = 1.0
SOAK_DAY_BARS = 17_280  # a day of 5 s bars


def active_for(block: int) -> frozenset[str]:
    """The symbols fed during ``block``: the pool minus a rotating group of leavers."""
    leavers = {POOL[(block * LEAVERS_PER_BLOCK + j) % len(POOL)] for j in range(LEAVERS_PER_BLOCK)}
    return frozenset(POOL) - leavers


def growth_kb(samples: list[int]) -> float:
    """Median of the last three samples minus median of the first three (kB)."""
    return statistics.median(samples[-3:]) - statistics.median(samples[:3])


def snapshot_ts(key: str, value: Any) -> float:
    return parse_snapshot(key, value, now=math.inf).ts


def block_settled(inp: Any, active: frozenset[str], removed_ts: dict[str, float]) -> bool:
    """The block's last bar may close: every active symbol's entry is fresh, every other one
    aged out of the bars (with AGE_MARGIN_S on each side). A removed entry's age is that of the
    value removed: the worker still holds it."""
    now = time.time()
    ts = dict(removed_ts)
    ts.update({k[len("asset_"):-len("_ob")]: snapshot_ts(k, v)
               for k, v in inp.get_all([f"asset_{s}_ob" for s in POOL]).items()})
    ages = {sym: now - t for sym, t in ts.items()}
    return (all(ages.get(s, math.inf) < MAX_AGE_S - AGE_MARGIN_S for s in active)
            and all(ages[s] > MAX_AGE_S + AGE_MARGIN_S for s in ages.keys() - active))


@pytest.mark.parametrize(("min_bars", "max_bars", "budget_s"), [
    # CI: at least 1 800 bars, more while the budget lasts (100-300 bars/s on 2 cores, load dependent).
    pytest.param(1_800, 12_000, 45.0, id="ci"),
    pytest.param(SOAK_DAY_BARS, SOAK_DAY_BARS, math.inf, id="day", marks=[
        pytest.mark.soak, pytest.mark.timeout(3 * 3600),
        pytest.mark.skipif(os.environ.get("OBF_SOAK") != "1", reason="day-long soak: set OBF_SOAK=1 (make soak)"),
    ]),
])
def test_soak_memory_flat_and_maps_at_retention(min_bars: int, max_bars: int, budget_s: float, hz_cluster: HzCluster,
                                                map_suffix: str, tmp_path: Path, record_property: Any) -> None:
    assert min_bars % SAMPLE_EVERY == 0 and max_bars % SAMPLE_EVERY == 0 and min_bars >= 6 * BLOCK
    client = hz_cluster.client()
    inp = client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    features = client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking()
    latest = client.get_map("DOLPHIN_OBF_LATEST" + map_suffix).blocking()
    health_map = client.get_map("DOLPHIN_OBF_HEALTH" + map_suffix).blocking()
    feeder = ControlledFeeder(client, "DOLPHIN_FEATURES" + map_suffix, POOL)
    feeder.active = active_for(0)
    feeder.start()
    witness = BarWitness(client, "DOLPHIN_OBF_FEATURES" + map_suffix)
    worker_id = "t-soak" + map_suffix
    args = ["--clock", "scan", "--scan-key", "latest_eigen_scan", "--scan-field", "scan_number",
            "--bar-seconds", "0.2", "--max-age-s", str(MAX_AGE_S), "--retain-bars", str(RETAIN),
            "--worker-id", worker_id]
    n_bars = 0
    samples: list[dict[str, Any]] = []
    block_active: dict[int, frozenset[str]] = {}
    block_seconds: list[float] = []
    removed_ts: dict[str, float] = {}  # symbol -> timestamp of the input entry the test removed
    t_run = time.monotonic()
    try:
        with WorkerProcess(args, worker_env(hz_cluster, map_suffix), tmp_path) as w, \
                AdapterProbe(cluster_name=hz_cluster.cluster_name, members=hz_cluster.members,
                             map_name="DOLPHIN_OBF_FEATURES" + map_suffix, assets=POOL, start_bar=1,
                             cache_bars=CACHE_BARS, report_every=SAMPLE_EVERY, log_dir=tmp_path) as probe:
            wait_for(lambda: health(client, map_suffix, worker_id), 60, "worker up (scan listener registered)")
            assert probe.wait_line(lambda ln: ln["stepped"] == 0, 60) is not None, probe.log_text()[-3000:]
            block_start = t_loop = time.monotonic()
            for i in itertools.count(1):
                block = (i - 1) // BLOCK
                if (i - 1) % BLOCK == 0:
                    if block:
                        block_seconds.append(time.monotonic() - block_start)
                    block_start = time.monotonic()
                    block_active[block] = active_for(block)
                    leaving = feeder.active - block_active[block]
                    feeder.active = block_active[block]
                    if block % 2:  # upstream may also delete a dead asset's entry
                        for sym in leaving:
                            old = inp.remove(f"asset_{sym}_ob")
                            if old is not None:
                                removed_ts[sym] = snapshot_ts(f"asset_{sym}_ob", old)
                if i % BLOCK == 0:  # the block's last bar: leavers aged out, joiners published
                    wait_for(lambda b=block: block_settled(inp, block_active[b], removed_ts), 15,
                             f"block {block} settled", interval=0.05)
                inp.put("latest_eigen_scan", json.dumps({"scan_number": i}))
                assert witness.wait_for(i, 30), f"bar {i} not written:\n{w.log_text()[-3000:]}"
                if i % SAMPLE_EVERY == 0:
                    hb = health(client, map_suffix, worker_id) or {}
                    samples.append({"bar": i, "worker_kb": proc_status_kb(w.pid),
                                    "adapter_kb": proc_status_kb(probe.pid),
                                    "features": features.size(), "latest": latest.size(),
                                    "bar_to_write_p50_ms": (hb.get("bar_to_write_ms") or {}).get("p50")})
                    if i >= max_bars or (i >= min_bars and time.monotonic() - t_loop >= budget_s):
                        n_bars = i
                        break
            block_seconds.append(time.monotonic() - block_start)
            done = probe.wait_line(lambda ln: ln["bar"] == n_bars, 60)
            assert done is not None, probe.log_text()[-3000:]
            assert w.stop() == 0, w.log_text()[-3000:]
            h = health(client, map_suffix, worker_id)  # its last document, written while stopping
            final = probe.stop()
        run_s = time.monotonic() - t_run
        warmup = max(n_bars // 4, 2 * BLOCK)

        # Every bar written once, in order; the map holds exactly the newest RETAIN.
        assert sorted(witness.bars) == list(range(1, n_bars + 1)) and witness.errors == 0
        assert sorted(records(client, map_suffix)) == list(range(n_bars - RETAIN + 1, n_bars + 1))
        assert h is not None and h["bars_written"] == n_bars and h["write_failures"] == 0
        # No rejects. An asset's first events after a (re)join may race the bar-close re-read that
        # already took a newer or the same entry: counted as read_echoes, a few per join at most.
        joins = sum(len(block_active[b] - block_active[b - 1]) for b in block_active if b)
        events = h["events"]
        assert events["listener_errors"] == 0 and events["rejected"] == {}, events
        assert events["read_echoes"] <= 3 * joins, (events, joins)
        assert health_map.size() == 1
        assert sorted(client.get_map("DOLPHIN_OBF_STATE" + map_suffix).blocking().key_set()) == \
            ["checkpoint", "leader"]
        for s in samples:
            if s["bar"] > RETAIN:
                # Retention runs right after each write: at most the bar just written is extra.
                assert RETAIN <= s["features"] <= RETAIN + 1, s
            assert s["latest"] <= len(POOL), s
        assert latest.size() == len(POOL)  # one entry per symbol ever present, never more

        # Joins and leaves are followed: the last bar of each block has exactly the block's feed.
        # An asset is "stale" once known (fed at some time before) and absent now.
        known: set[str] = set()
        for block, active in sorted(block_active.items()):
            known |= active
            last_bar = (block + 1) * BLOCK
            if last_bar <= n_bars:
                assets, stale, _ = witness.bars[last_bar]
                assert assets == active, (block, sorted(assets ^ active))
                assert set(stale) == known - active, (block, stale)
        for sym in POOL:
            present = sum(sym in a for a, _, _ in witness.bars.values())
            assert 0 < present < n_bars, (sym, present)

        # The trader stepped every bar, exactly, with a cache held at its bound.
        assert final is not None, probe.log_text()[-3000:]
        assert final["stepped"] == n_bars and final["skipped"] == 0, final
        assert final["steps"] == {"exact": n_bars, "fallback": 0, "default": 0}, final
        assert final["cache_bars"] == CACHE_BARS and final["listener_errors"] == 0 and final["rejected"] == {}

        # Memory flat after warm-up.
        after = [s for s in samples if s["bar"] > warmup]
        # Bars between the first three and the last three samples' medians.
        span_bars = statistics.median(s["bar"] for s in after[-3:]) - statistics.median(s["bar"] for s in after[:3])
        limit_kb = max(RSS_NOISE_KB, RSS_LEAK_KB_PER_BAR * span_bars)
        worker_growth = growth_kb([s["worker_kb"] for s in after])
        adapter_growth = growth_kb([s["adapter_kb"] for s in after])
        summary = (f"soak bars={n_bars} run_s={run_s:.1f} bars_per_s={n_bars / run_s:.0f} "
                   f"block_s={[round(b, 1) for b in block_seconds]} warmup_bars={warmup} "
                   f"worker_rss_kb={after[0]['worker_kb']}->{after[-1]['worker_kb']} growth_kb={worker_growth:.0f} "
                   f"adapter_rss_kb={after[0]['adapter_kb']}->{after[-1]['adapter_kb']} "
                   f"growth_kb={adapter_growth:.0f} limit_kb={limit_kb:.0f} over_bars={span_bars:.0f} "
                   f"bar_to_write_p50_ms={after[0]['bar_to_write_p50_ms']}->{after[-1]['bar_to_write_p50_ms']} "
                   f"read_echoes={events['read_echoes']} joins={joins}")
        print(summary)
        record_property("soak_summary", summary)
        record_property("rss_samples", json.dumps(samples))
        assert worker_growth <= limit_kb, summary
        assert adapter_growth <= limit_kb, summary
    finally:
        witness.close()
        feeder.stop()
        client.shutdown()
