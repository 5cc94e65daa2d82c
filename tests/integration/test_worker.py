"""The worker as a service against a real member: records equal the engine's, both clocks,
input hygiene, retention, health, member restart and clean SIGTERM.

Each test runs ``obf-features-worker`` as a subprocess with 1 s bars on its own maps
(``--map-suffix``); synchronisation is by polling the grid with deadlines.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

from hazelcast.core import HazelcastJsonValue

from obf_contract.record import asset_view
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.params import FeatureParams
from tests.cluster import HzCluster
from tests.integration.feeder import DEFAULT_SYMBOLS, TestFeeder, WorkerProcess, json_value, wait_for
from tests.integration.prometheus import scrape

HEALTH_KEYS = {
    "worker_id", "host", "pid", "version", "state", "role", "started_at", "updated_at", "clock", "bar_seconds",
    "last_bar_idx", "last_bar_ts", "bars_written", "n_assets", "n_present", "stale_assets", "events",
    "compute_ms", "bar_to_write_ms", "event_to_write_ms", "write_failures", "epoch", "cold_start_reason",
    "restored_from_bar", "restore_gap_bars", "restore_replayed_records", "republished_records",
    "changelog_stops", "producer_clock", "connections",
}
LATEST_KEYS = {
    "symbol", "bar_idx", "bar_ts", "age_ms", "seq", "depth_1pct_usd", "depth_quality", "fill_probability",
    "spread_proxy_bps", "imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry",
    "withdrawal_velocity",
}


def records(client: Any, suffix: str) -> dict[int, dict[str, Any]]:
    m = client.get_map("DOLPHIN_OBF_FEATURES" + suffix).blocking()
    return {k: json_value(v) for k, v in m.entry_set()}


def health(client: Any, suffix: str, worker_id: str) -> dict[str, Any] | None:
    v = client.get_map("DOLPHIN_OBF_HEALTH" + suffix).blocking().get(worker_id)
    return None if v is None else json_value(v)


def worker_env(cluster: HzCluster, suffix: str) -> dict[str, str]:
    return {"HZ_MEMBERS": ",".join(cluster.members), "HZ_CLUSTER": cluster.cluster_name, "OBF_MAP_SUFFIX": suffix}


def recompute(feeder: TestFeeder, recs: dict[int, dict[str, Any]]) -> None:
    """Step a fresh engine through the worker's bars in order, with the snapshots each record says
    it used (by ``seq``), and require the records to be exactly the engine's output."""
    engine = FeatureEngine(FeatureParams())
    for bar_idx in sorted(recs):
        rec = dict(recs[bar_idx])
        producer = rec.pop("producer")
        snaps = {sym: feeder.snapshot(sym, a["seq"]) for sym, a in asset_view(rec).items()}
        expected = engine.step(bar_idx, rec["bar_ts"], snaps)
        assert rec == expected, f"bar {bar_idx} differs from the engine's record"
        assert producer["degraded"] == expected["degraded"]


def assert_contiguous(keys: list[int]) -> None:
    assert keys == list(range(min(keys), max(keys) + 1)), f"bars missing or extra: {keys}"



def test_interval_clock_writes_the_engines_records(hz_cluster, hz_client, feeder, map_suffix, tmp_path: Path):
    inp = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    # Other keys in the input map never reach the worker (server-side filter); a malformed asset key
    # does, and is counted (bad_symbol).
    for key, value in {"latest_eigen_scan": '{"scan_number": 1}', "assetXBTCUSDTXob": feeder.payload("AAAUSDT")[1],
                       "asset_btcusdt_ob": feeder.payload("AAAUSDT")[1], "status": "x"}.items():
        inp.put(key, value)
    worker_id = "t-interval" + map_suffix
    with WorkerProcess(["--bar-seconds", "2", "--worker-id", worker_id, "--retain-bars", "100"],
                       worker_env(hz_cluster, map_suffix), tmp_path) as w:
        wait_for(lambda: (h := health(hz_client, map_suffix, worker_id)) and h["bars_written"] >= 2, 30,
                 "first bars")
        # Malformed payloads on asset keys: counted by reason, the worker keeps going.
        bad = {
            "asset_BADAUSDT_ob": "{not json",
            "asset_BADBUSDT_ob": '{"timestamp": 1.0e9, "bid_notional": [NaN], "ask_notional": [1.0]}',
            "asset_BADCUSDT_ob": json.dumps({"timestamp": time.time(), "bid_notional": [-1.0], "ask_notional": [1.0]}),
            "asset_BADDUSDT_ob": json.dumps({"timestamp": time.time(), "bid_notional": [1.0, 2.0],
                                             "ask_notional": [1.0]}),
        }
        for key, value in bad.items():
            inp.put(key, value)
        expected_rejects = {"bad_json": 1, "non_finite": 1, "negative": 1, "bad_length": 1, "bad_symbol": 1}
        wait_for(lambda: health(hz_client, map_suffix, worker_id)["events"]["rejected"] == expected_rejects, 15,
                 "rejects counted")
        h_mid = health(hz_client, map_suffix, worker_id)
        wait_for(lambda: health(hz_client, map_suffix, worker_id)["bars_written"] >= h_mid["bars_written"] + 3,
                 15, "bars after the malformed payloads")
        rc = w.stop()
        assert rc == 0, w.log_text()[-3000:]
        assert w.stop_seconds is not None and w.stop_seconds < 5.0
        pid = w.pid

    recs = records(hz_client, map_suffix)
    keys = sorted(recs)
    assert_contiguous(keys)
    h = health(hz_client, map_suffix, worker_id)
    assert h is not None and set(h) == HEALTH_KEYS
    assert h["state"] == "stopping"
    assert (h["worker_id"], h["pid"], h["host"], h["clock"], h["bar_seconds"], h["role"]) == (
        worker_id, pid, socket.gethostname(), "interval", 2.0, "leader")
    assert h["bars_written"] == len(recs) and h["last_bar_idx"] == keys[-1] and h["write_failures"] == 0
    assert h["last_bar_ts"] == recs[keys[-1]]["bar_ts"]
    assert h["n_assets"] == len(DEFAULT_SYMBOLS) and h["n_present"] == len(DEFAULT_SYMBOLS) and h["stale_assets"] == []
    ev = h["events"]
    assert ev["rejected"] == expected_rejects and ev["listener_errors"] == 0 and ev["ignored"] == 0
    assert ev["accepted"] >= 10 * len(DEFAULT_SYMBOLS)
    assert ev["received"] == ev["accepted"] + sum(ev["rejected"].values())
    # 10 Hz into 2 s bars: most snapshots are coalesced away; the rest is at most one per asset and bar.
    assert 0 < ev["superseded"] < ev["accepted"]
    assert ev["accepted"] - ev["superseded"] <= (len(recs) + 1) * len(DEFAULT_SYMBOLS)
    # Two client connections (bar path, events), both up until the end.
    conns = h["connections"]
    assert conns["bars"] == {"connected": True, "disconnects": 0}
    assert conns["events"]["connected"] is True and conns["events"]["disconnects"] == 0
    assert conns["events"]["sheds"] == 0 and 0 <= conns["events"]["lag_s"] < 2.0  # its probe came back
    for name in ("compute_ms", "bar_to_write_ms", "event_to_write_ms"):
        assert 0 <= h[name]["p50"] <= h[name]["p99"], name
    assert h["updated_at"] >= h["started_at"]

    for bar_idx, rec in recs.items():
        assert rec["bar_ts"] == bar_idx * 2.0  # interval rule: bar_idx = close / bar_seconds
        assert rec["producer"]["worker_id"] == worker_id
        assert abs(rec["producer"]["computed_at"] - rec["bar_ts"]) < 5.0
        assert set(rec["symbols"]) <= set(DEFAULT_SYMBOLS)
    # Every bar after the first has every fed asset (10 Hz feed, 2 s max age).
    assert all(recs[k]["n_present"] == len(DEFAULT_SYMBOLS) for k in keys[1:])
    recompute(feeder, recs)

    latest = hz_client.get_map("DOLPHIN_OBF_LATEST" + map_suffix).blocking()
    last = recs[keys[-1]]
    for sym in DEFAULT_SYMBOLS:
        doc = json_value(latest.get(sym))
        assert set(doc) == LATEST_KEYS
        a = asset_view(last)[sym]
        assert (doc["symbol"], doc["bar_idx"], doc["seq"], doc["age_ms"]) == (sym, keys[-1], a["seq"], a["age_ms"])
        assert doc["imbalance"] == a["signal"]["imbalance"]
        assert doc["depth_1pct_usd"] == a["placement"]["depth_1pct_usd"]


def test_retention_holds_the_map_at_retain_bars(hz_cluster, hz_client, feeder, map_suffix, tmp_path: Path):
    out = hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking()
    # Keys from another numbering (far above / below the interval bar_idx) must go too.
    out.put(10**15, HazelcastJsonValue('{"left": "over"}'))
    out.put(5, HazelcastJsonValue('{"left": "over"}'))
    worker_id = "t-retain" + map_suffix
    with WorkerProcess(["--bar-seconds", "2", "--worker-id", worker_id, "--retain-bars", "3"],
                       worker_env(hz_cluster, map_suffix), tmp_path) as w:
        wait_for(lambda: (h := health(hz_client, map_suffix, worker_id)) and h["bars_written"] >= 6, 30, "6 bars")
        assert out.size() <= 4  # 3 kept + at most the one just written before its retention call
        rc = w.stop()
        assert rc == 0 and w.stop_seconds is not None and w.stop_seconds < 5.0, w.log_text()[-3000:]
    h = health(hz_client, map_suffix, worker_id)
    last = h["last_bar_idx"]
    assert sorted(out.key_set()) == [last - 2, last - 1, last]
    assert h["state"] == "stopping"


def test_scan_clock_closes_one_bar_per_scan(hz_cluster, hz_client, feeder, map_suffix, tmp_path: Path):
    inp = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    worker_id = "t-scan" + map_suffix
    args = ["--clock", "scan", "--scan-key", "latest_eigen_scan", "--scan-field", "scan_number", "--bar-seconds", "1",
            "--worker-id", worker_id]

    def written() -> dict[int, dict[str, Any]]:
        return records(hz_client, map_suffix)

    with WorkerProcess(args, worker_env(hz_cluster, map_suffix), tmp_path) as w:
        # Health is first written once the scan listener is registered.
        wait_for(lambda: health(hz_client, map_suffix, worker_id), 30, "worker up")
        inp.put("latest_eigen_scan", '{"scan_number": 5, "eigen": [1, 2]}')
        wait_for(lambda: 5 in written(), 10, "bar 5")
        # A burst: closes arriving while a bar is processed are queued, none dropped.
        inp.put("latest_eigen_scan", '{"scan_number": 6}')
        inp.put("latest_eigen_scan", HazelcastJsonValue('{"scan_number": 7}'))
        inp.put("latest_eigen_scan", '{"scan_number": 8}')
        # Repeated, older and malformed scans close nothing.
        inp.put("latest_eigen_scan", '{"scan_number": 8}')
        inp.put("latest_eigen_scan", '{"scan_number": 3}')
        inp.put("latest_eigen_scan", '{"scan_number": "nine"}')
        inp.put("latest_eigen_scan", '{"scan_number": 9}')
        wait_for(lambda: 9 in written(), 10, "bar 9")
        rc = w.stop()
        assert rc == 0, w.log_text()[-3000:]
    recs = written()
    assert sorted(recs) == [5, 6, 7, 8, 9]
    h = health(hz_client, map_suffix, worker_id)
    assert h["clock"] == "scan" and h["bars_written"] == 5 and h["last_bar_idx"] == 9
    for rec in recs.values():
        assert rec["n_present"] == len(DEFAULT_SYMBOLS)
        assert abs(rec["bar_ts"] - rec["producer"]["computed_at"]) < 5.0  # bar_ts = receipt of the scan
    recompute(feeder, recs)


def test_worker_survives_a_member_restart(private_cluster: HzCluster, map_suffix: str, tmp_path: Path):
    cluster = private_cluster
    client = cluster.client(cluster_connect_timeout=120.0)
    feeder = TestFeeder(client, "DOLPHIN_FEATURES" + map_suffix).start()
    worker_id = "t-restart" + map_suffix
    try:
        with WorkerProcess(["--bar-seconds", "2", "--worker-id", worker_id, "--reconnect-backoff-max-s", "1"],
                           worker_env(cluster, map_suffix), tmp_path) as w:
            wait_for(lambda: (h := health(client, map_suffix, worker_id)) and h["bars_written"] >= 2, 30, "bars")
            before = health(client, map_suffix, worker_id)
            cluster.restart()  # graceful stop + start on the same address: every map is empty after it

            def recovered() -> dict[str, Any] | None:
                h = health(client, map_suffix, worker_id)
                # role: an outage longer than the lease's term makes the worker wait out the lost
                # lease entry (lease ttl) before it leads and back-fills again.
                ok = (h is not None and h["last_bar_idx"] > before["last_bar_idx"] + 1
                      and h["n_present"] == len(DEFAULT_SYMBOLS) and h["state"] == "running"
                      and h["role"] == "leader")
                return h if ok else None

            h1 = wait_for(recovered, 90, "bars with every asset present after the restart")
            # Listeners are back (not only the stale re-read, which adds at most one snapshot per
            # asset per bar): the 10 Hz events are accepted again.
            wait_for(lambda: health(client, map_suffix, worker_id)["last_bar_idx"] >= h1["last_bar_idx"] + 3, 15,
                     "3 more bars")
            h2 = health(client, map_suffix, worker_id)
            gained = h2["events"]["accepted"] - h1["events"]["accepted"]
            bars = h2["last_bar_idx"] - h1["last_bar_idx"]
            assert gained >= 5 * len(DEFAULT_SYMBOLS) * bars, (gained, bars)
            rc = w.stop()
            assert rc == 0, w.log_text()[-3000:]
            log_text = w.log_text()
        assert "disconnected from cluster" in log_text and "reconnected cluster" in log_text
        recs = records(client, map_suffix)
        after = sorted(k for k in recs if k > before["last_bar_idx"])
        assert after and after[-1] >= h2["last_bar_idx"]
        assert_contiguous(after)  # bars of the outage were kept in the backlog and written on return
    finally:
        feeder.stop()
        client.shutdown()


def test_connect_timeout_exits_non_zero_with_the_reason(tmp_path: Path):
    from obf_features_worker.dev.member import free_port

    env = {"HZ_MEMBERS": f"127.0.0.1:{free_port()}", "HZ_CLUSTER": "nobody"}
    w = WorkerProcess(["--connect-timeout-s", "1", "--reconnect-backoff-max-s", "0.2"], env, tmp_path)
    try:
        rc = w.proc.wait(30)
    finally:
        w.stop(signal.SIGKILL)
    assert rc == 1
    assert "cluster connection given up" in w.log_text()



def test_metrics_endpoint_scrapes(hz_cluster, hz_client, feeder, map_suffix, tmp_path: Path):
    from obf_features_worker.dev.member import free_port

    port = free_port()
    worker_id = "t-metrics" + map_suffix
    inp = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    with WorkerProcess(["--bar-seconds", "2", "--worker-id", worker_id, "--metrics-port", str(port)],
                       worker_env(hz_cluster, map_suffix), tmp_path) as w:
        wait_for(lambda: (h := health(hz_client, map_suffix, worker_id)) and h["bars_written"] >= 2, 30,
                 "first bars")
        inp.put("asset_BADAUSDT_ob", "{not json")
        wait_for(lambda: scrape(port).get('obf_events_rejected_total{reason="bad_json"}') == 1.0, 15,
                 "reject visible in metrics")
        m = scrape(port)
        h = health(hz_client, map_suffix, worker_id)
        assert w.stop() == 0, w.log_text()[-3000:]
    # Scraped after the health doc was read: counters can only have grown since.
    assert m["obf_bars_written_total"] >= 2
    assert m["obf_events_received_total"] >= m["obf_events_accepted_total"] >= 10
    assert m["obf_bar_compute_seconds_count"] == m["obf_bars_written_total"]
    assert m['obf_worker_state{state="running"}'] == 1.0 and h["state"] == "running"
    assert m["obf_degraded"] == 0.0
    assert m["obf_last_bar_idx"] >= h["last_bar_idx"] - 1
