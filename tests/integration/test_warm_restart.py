"""Warm restart against a real member: a worker SIGKILLed mid-run and restarted continues from its
checkpoint plus the records written since (snapshot + changelog), and every record, before and
after each restart, is bit-identical to the record an uninterrupted engine computes over the same
snapshots. Covered crash points: between two bars, after a bar's record but before the checkpoint
that would cover it (several records to replay), and after a scan arrived but before its record
(the restarted worker closes that scan again). The checkpoint comes every 4 bars, after the record.
Refused checkpoints (other engine parameters, corrupt bytes) mean a cold start, never a crash.

The test is the scan clock: it publishes the snapshots of a bar, waits until the worker has
accepted them (health ``events.accepted``), publishes the scan and waits for the record, so the
snapshots of every bar are known exactly. The expectation is a fresh ``FeatureEngine`` stepped
over those snapshots, with each bar's ``bar_ts`` (the worker's receipt time of the scan) taken
from the record.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import orjson
from hazelcast.core import HazelcastJsonValue

from obf_contract.record import asset_view, dumps_record
from obf_features_worker.engine import checkpoint
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.engine.snapshot import Snapshot
from obf_features_worker.service.grid import CHECKPOINT_KEY
from tests.cluster import HzCluster
from tests.integration.feeder import TestFeeder, WorkerProcess, json_value, wait_for
from tests.integration.test_worker import worker_env

SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")
SCAN_KEY = "latest_eigen_scan"
# 0.25 s heartbeats: health (and its event counts) is refreshed 4x a second while waiting.
BASE_ARGS = ["--clock", "scan", "--scan-key", SCAN_KEY, "--scan-field", "scan_number", "--bar-seconds", "0.25",
             "--max-age-s", "3600", "--checkpoint-every-bars", "4"]


class Run:
    """The test's side of one deterministic run on one set of maps."""

    def __init__(self, cluster: HzCluster, client: Any, suffix: str, tmp_path: Path) -> None:
        self.cluster = cluster
        self.suffix = suffix
        self.tmp_path = tmp_path
        self.inp = client.get_map("DOLPHIN_FEATURES" + suffix).blocking()
        self.features = client.get_map("DOLPHIN_OBF_FEATURES" + suffix).blocking()
        self.health_map = client.get_map("DOLPHIN_OBF_HEALTH" + suffix).blocking()
        self.state = client.get_map("DOLPHIN_OBF_STATE" + suffix).blocking()
        self.feeder = TestFeeder(client, "DOLPHIN_FEATURES" + suffix, SYMBOLS)
        self.published: dict[int, dict[str, int]] = {}  # bar -> symbol -> seq published before its scan
        self.worker: WorkerProcess | None = None
        self.worker_id = ""
        self.accepted_target = 0

    def health(self) -> dict[str, Any] | None:
        v = self.health_map.get(self.worker_id)
        return None if v is None else json_value(v)

    def start(self, worker_id: str, *extra: str) -> WorkerProcess:
        self.worker_id = worker_id + self.suffix
        self.worker = WorkerProcess([*BASE_ARGS, "--worker-id", self.worker_id, *extra],
                                    worker_env(self.cluster, self.suffix), self.tmp_path, name=worker_id)
        # Health appears once the initial read and the listeners are done; nothing is published
        # meanwhile, so every later accepted event is one of ours.
        h = wait_for(self.health, 30, f"{worker_id} up")
        self.accepted_target = h["events"]["accepted"]
        return self.worker

    def publish(self, bar: int, symbols: tuple[str, ...]) -> None:
        entries = {}
        for sym in symbols:
            seq, text = self.feeder.payload(sym)
            entries[f"asset_{sym}_ob"] = text
            self.published.setdefault(bar, {})[sym] = seq
        self.inp.put_all(entries)
        self.accepted_target += len(entries)
        wait_for(lambda: self.health()["events"]["accepted"] >= self.accepted_target, 15, f"bar {bar} snapshots in")

    def scan(self, bar: int) -> None:
        self.inp.put(SCAN_KEY, HazelcastJsonValue(json.dumps({"scan_number": bar})))

    def close_bar(self, bar: int, symbols: tuple[str, ...] = SYMBOLS) -> dict[str, Any]:
        self.publish(bar, symbols)
        self.scan(bar)
        return wait_for(lambda: self.record(bar), 20, f"record of bar {bar}")

    def record(self, bar: int) -> dict[str, Any] | None:
        v = self.features.get(bar)
        return None if v is None else json_value(v)

    def checkpoint_bar(self) -> int:
        """The bar of the checkpoint in the state map (the test's own, unvalidated read)."""
        return int(orjson.loads(self.state.get(CHECKPOINT_KEY).to_string())["body"]["bar_idx"])

    def kill(self) -> None:
        assert self.worker is not None
        self.worker.stop(signal.SIGKILL)

    def expected(self, bars: list[int], bar_ts: dict[int, float]) -> dict[int, bytes]:
        """An uninterrupted engine over the snapshots published for ``bars`` (each present once
        published: max age 3600 s), producer aside."""
        engine = FeatureEngine(FeatureParams())
        latest: dict[str, Snapshot] = {}
        out = {}
        for bar in bars:
            for sym, seq in self.published.get(bar, {}).items():
                latest[sym] = self.feeder.snapshot(sym, seq)
            out[bar] = dumps_record(engine.step(bar, bar_ts[bar], dict(latest)))
        return out


def symbols_for(bar: int) -> tuple[str, ...]:
    """DDD joins at bar 104; BBB publishes nothing at bars 103 and 109 (its last snapshot stays)."""
    return tuple(s for s in SYMBOLS
                 if not (s == "DDDUSDT" and bar < 104) and not (s == "BBBUSDT" and bar in (103, 109)))


def test_sigkill_and_restart_continue_bit_identically(hz_cluster, hz_client, map_suffix: str, tmp_path: Path):
    run = Run(hz_cluster, hz_client, map_suffix, tmp_path)
    bars = list(range(100, 123))
    try:
        # 1. A first worker, bars 100..108.
        run.start("wr1")
        for bar in range(100, 109):
            run.close_bar(bar, symbols_for(bar))
        assert run.health()["role"] == "leader"
        # 2. SIGKILL between two bars; the restarted worker continues from bar 108: its last
        # checkpoint plus the records written since.
        cp_bar = run.checkpoint_bar()
        run.kill()
        run.start("wr2")
        for bar in range(109, 115):
            run.close_bar(bar, symbols_for(bar))
        h = run.health()
        assert (h["restored_from_bar"], h["cold_start_reason"], h["role"]) == (108, None, "leader")
        assert h["restore_replayed_records"] == 108 - cp_bar
        checkpoint_old = run.state.get(CHECKPOINT_KEY).to_string()
        old_bar = run.checkpoint_bar()
        assert old_bar < 114
        # 3. Crash after the record of bar 114, before the checkpoint that would cover it (the grid
        # is rewound to the older checkpoint): the records since are replayed.
        run.kill()
        run.state.set(CHECKPOINT_KEY, HazelcastJsonValue(checkpoint_old))
        run.start("wr3")
        for bar in range(115, 119):
            run.close_bar(bar, symbols_for(bar))
        h = run.health()
        assert (h["restored_from_bar"], h["restore_replayed_records"]) == (114, 114 - old_bar)
        # 4. Crash after scan 118 arrived, before its record: the grid then holds no record 118,
        # the scan key still says 118, and the state (checkpoint + records) ends at 117.
        run.kill()
        run.features.delete(118)
        run.start("wr4")
        wait_for(lambda: run.record(118), 20, "bar 118 closed again by the restarted worker")
        for bar in range(119, 123):
            run.close_bar(bar, symbols_for(bar))
        h = run.health()
        assert (h["restored_from_bar"], h["cold_start_reason"]) == (117, None)
        assert run.worker is not None and run.worker.stop() == 0, run.worker.log_text()[-3000:]
    finally:
        if run.worker is not None:
            run.worker.stop(signal.SIGKILL)

    recs = {k: json_value(v) for k, v in run.features.entry_set()}
    assert sorted(recs) == bars
    expected = run.expected(bars, {b: recs[b]["bar_ts"] for b in bars})
    for bar in bars:
        rec = dict(recs[bar])
        producer = rec.pop("producer")
        assert dumps_record(rec) == expected[bar], f"bar {bar} differs from the uninterrupted run"
        assert {s: a["seq"] for s, a in asset_view(rec).items()} == {
            s: seq for b in bars if b <= bar for s, seq in run.published.get(b, {}).items()}
        assert producer["epoch"] is not None
    epochs = [recs[b]["producer"]["epoch"] for b in bars]
    assert epochs == sorted(epochs) and epochs[0] == 1 and epochs[-1] == 4


def test_refused_checkpoints_start_cold_without_crashing(hz_cluster, hz_client, map_suffix: str, tmp_path: Path):
    # Two workers side by side, each on its own maps: a valid checkpoint of other engine
    # parameters, and a corrupt one. Both start cold, say why, and keep closing bars.
    engine = FeatureEngine(FeatureParams())
    engine.step(99, 99.0, {})
    valid = checkpoint.encode(checkpoint.capture(engine, seqs={}, bar_ts=99.0, worker_id="old", written_at=1.0,
                                                 epoch=1)).decode()
    cases = {"params": (valid, ["--ma-window", "3"]), "corrupt": (valid[:-40] + "garbage", [])}
    runs = {}
    try:
        for reason, (stored, extra) in cases.items():
            run = Run(hz_cluster, hz_client, f"{map_suffix}_{reason}", tmp_path)
            run.state.set(CHECKPOINT_KEY, HazelcastJsonValue(stored))
            run.start(f"cold-{reason}", *extra)
            runs[reason] = run
        for run in runs.values():
            run.close_bar(100)
            run.close_bar(101)
        for reason, run in runs.items():
            h = run.health()
            assert (h["cold_start_reason"], h["restored_from_bar"]) == (reason, None)
            assert f"starting cold reason={reason}" in run.worker.log_text()
            # A cold engine: bar 100 is a first bar.
            rec = dict(run.record(100))
            rec.pop("producer")
            first = FeatureEngine(FeatureParams(ma_window=3) if reason == "params" else FeatureParams()).step(
                100, rec["bar_ts"], {s: run.feeder.snapshot(s, seq) for s, seq in run.published[100].items()})
            assert dumps_record(rec) == dumps_record(first)
            assert run.worker.stop() == 0, run.worker.log_text()[-3000:]
    finally:
        for run in runs.values():
            run.worker.stop(signal.SIGKILL)


def test_checkpoint_in_the_grid_is_the_engine_state_after_the_bar(hz_cluster, hz_client, map_suffix: str,
                                                                  tmp_path: Path):
    """What a standby or a restarted worker restores is exactly the leader's state after the
    bar it names; it comes after that bar's record (every bar here: --checkpoint-every-bars 1),
    so it carries no unconfirmed record."""
    run = Run(hz_cluster, hz_client, map_suffix, tmp_path)
    try:
        run.start("cp1", "--checkpoint-every-bars", "1")
        for bar in range(100, 104):
            rec = run.close_bar(bar)
        wait_for(lambda: run.checkpoint_bar() == 103, 10, "the checkpoint of bar 103, after its record")
        raw = run.state.get(CHECKPOINT_KEY).to_string()
        cp = checkpoint.decode(raw, params=FeatureParams(), now_bar_idx=103, max_age_bars=0)
        assert cp.worker_id == run.worker_id and cp.bar_idx == 103 and cp.epoch == rec["producer"]["epoch"]
        assert cp.records == {}
        engine = FeatureEngine(FeatureParams())
        latest = {}
        for bar in range(100, 104):
            for sym, seq in run.published[bar].items():
                latest[sym] = run.feeder.snapshot(sym, seq)
            engine.step(bar, run.record(bar)["bar_ts"], dict(latest))
        assert orjson.dumps(cp.engine_state, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
            engine.export_state(), option=orjson.OPT_SORT_KEYS)
        assert cp.seqs == {s: run.published[103][s] for s in SYMBOLS}
        assert run.worker.stop() == 0
    finally:
        if run.worker is not None:
            run.worker.stop(signal.SIGKILL)
