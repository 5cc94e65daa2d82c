"""The trader-side drop-in behaviour of issue 13 against a real member (review follow-up): the
non-exact warnings and their recovery, millisecond / truncated / ISO lookup keys, ``wire()`` with
``OBF_ENGINE=live|mock|off`` and ``HZ_HOST`` really connecting, the rollback (flip to mock), and
a worker started on a schema-1 checkpoint (a logged cold start).

Records are written by the test into its own map (``map_suffix``); the adapter is built by
``wire()`` from an environment, with its own client, exactly as the trader's start-up does.
Waiting is event-driven (``wait_for_bar``) or poll-with-deadline; never a bare sleep.
"""

from __future__ import annotations

import hashlib
import logging
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hazelcast.core import HazelcastJsonValue

from engine_adapter import HazelcastOBEngine, MockOBEngine, wire
from engine_adapter.features import NEUTRAL_SIGNAL
from engine_adapter.mock import PAPER_BIASES
from obf_contract.record import dumps_record
from obf_features_worker.engine import checkpoint
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.service.grid import CHECKPOINT_KEY
from tests.cluster import HzCluster
from tests.integration.test_adapter import ASSETS, poll, put, record, signal_of
from tests.integration.test_warm_restart import Run


def live_env(cluster: HzCluster, map_name: str, **extra: str) -> dict[str, str]:
    """The trader's environment: HZ_HOST (one member), its cluster and the bar map."""
    return {"HZ_HOST": cluster.members[0], "HZ_CLUSTER": cluster.cluster_name, "OBF_FEATURES_MAP": map_name,
            "OBF_CONNECT_TIMEOUT_S": "30", **extra}


@pytest.fixture
def bars(hz_client: Any, map_suffix: str) -> tuple[str, Any]:
    name = "DOLPHIN_OBF_FEATURES" + map_suffix
    return name, hz_client.get_map(name).blocking()


@pytest.fixture
def live(hz_cluster: HzCluster, bars: tuple[str, Any], caplog: pytest.LogCaptureFixture) -> Iterator[HazelcastOBEngine]:
    caplog.set_level(logging.INFO, logger="engine_adapter.wiring")
    caplog.set_level(logging.INFO, logger="engine_adapter.adapter")
    eng = wire(ASSETS, environ=live_env(hz_cluster, bars[0], OBF_ADAPTER_MAX_WAIT_MS="0",
                                        OBF_ADAPTER_STALE_AFTER_BARS="2"))
    assert isinstance(eng, HazelcastOBEngine)
    yield eng
    eng.close()


def test_wire_live_with_hz_host_connects_and_logs_the_line(hz_cluster: HzCluster, bars: tuple[str, Any],
                                                           live: HazelcastOBEngine,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    name, m = bars
    setup = caplog.get_records("setup")  # wire() ran in the fixture
    wired = [r.getMessage() for r in setup if r.getMessage().startswith("OBF wired: ")]
    assert len(wired) == 1 and wired[0].startswith(f"OBF wired: live map={name} cluster={hz_cluster.cluster_name}")
    assert f"members={hz_cluster.members[0]}" in wired[0] and "assets=3" in wired[0]
    rec = record(7)
    put(m, rec)
    assert live.wait_for_bar(7, 10.0)
    assert live.step_live(ASSETS, 7).kind == "exact"
    assert live.get_signal("ETHUSDT") == signal_of(rec, "ETHUSDT")
    assert live.stats().grid.connected


def test_third_non_exact_bar_warns_each_bar_then_info_on_recovery(bars: tuple[str, Any], live: HazelcastOBEngine,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    _, m = bars
    put(m, record(10))
    assert live.wait_for_bar(10, 10.0)
    caplog.clear()
    assert live.step_live(ASSETS, 10).kind == "exact"
    kinds = [live.step_live(ASSETS, b).kind for b in (11, 12, 13, 14)]
    assert kinds == ["fallback", "fallback", "default", "default"]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "engine_adapter.adapter"]
    assert len(warnings) == 2  # bars 13 and 14
    assert "bar_idx=13" in warnings[0] and "kind=default" in warnings[0] and "last_exact_bar=10" in warnings[0]
    assert "lag_bars=3" in warnings[0] and "bar_idx=14" in warnings[1]
    s = live.stats()
    assert (s.non_exact_streak, s.non_exact_warnings, s.last_exact_bar_idx) == (4, 2, 10)
    put(m, record(15))
    assert live.wait_for_bar(15, 10.0)
    caplog.clear()
    assert live.step_live(ASSETS, 15).kind == "exact"
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("exact again bar_idx=15 after 4 non-exact bars" in msg for msg in infos)
    s = live.stats()
    assert (s.non_exact_streak, s.non_exact_warnings, s.last_exact_bar_idx) == (0, 2, 15)
    assert s.steps == {"exact": 2, "fallback": 2, "default": 2}


def test_millisecond_truncated_and_iso_keys(bars: tuple[str, Any], live: HazelcastOBEngine) -> None:
    _, m = bars
    recs = {i: record(i) for i in (20, 21)}
    for rec in recs.values():
        put(m, rec)
    assert live.wait_for_bar(21, 10.0)
    assert live.step_live(ASSETS, 21.9).kind == "exact"  # truncated like int()
    want = signal_of(recs[20], "BTCUSDT")
    ts = recs[20]["bar_ts"]
    iso = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    for key in (20.4, int(ts * 1000), ts * 1000.0, ts, iso):
        assert live.get_signal("BTCUSDT", key) == want, key
        assert live.resolve(key).kind == "exact", key
    assert live.stats().cache.truncated_keys == 3  # 21.9 once, 20.4 twice: counted per call
    # Never a raise on the trader's thread: bad keys answer neutral, counted.
    assert live.get_signal("BTCUSDT", "yesterday") is NEUTRAL_SIGNAL
    assert live.step_live(ASSETS, -3).kind == "default" and live.get_signal("BTCUSDT") is NEUTRAL_SIGNAL
    s = live.stats()
    assert s.bad_keys == {"ValueError": 1} and s.bad_steps == {"negative": 1}


def test_rollback_flip_to_mock_and_off(hz_cluster: HzCluster, bars: tuple[str, Any], hz_client: Any,
                                       caplog: pytest.LogCaptureFixture) -> None:
    name, m = bars
    put(m, record(30))
    caplog.set_level(logging.INFO, logger="engine_adapter.wiring")
    env = live_env(hz_cluster, name, OBF_ADAPTER_MAX_WAIT_MS="0")
    eng = wire(ASSETS, environ=env)
    assert isinstance(eng, HazelcastOBEngine)
    assert eng.step_live(ASSETS, 30).kind == "exact"
    eng.close()  # the trader stops ...
    # ... the variable is flipped, the trader restarts: nothing else changes.
    mock = wire(ASSETS, environ={**env, "OBF_ENGINE": "mock"})
    assert isinstance(mock, MockOBEngine)
    assert mock.step_live(ASSETS, 31).kind == "exact"
    assert mock.get_signal("BTCUSDT").imbalance == PAPER_BIASES["BTCUSDT"]
    assert mock.get_signal("SOLUSDT", 31).imbalance == PAPER_BIASES["SOLUSDT"]
    assert wire(ASSETS, environ={**env, "OBF_ENGINE": "off"}) is None
    back = wire(ASSETS, environ={**env, "OBF_ENGINE": "live"})  # and back
    assert isinstance(back, HazelcastOBEngine)
    try:
        assert back.step_live(ASSETS, 30).kind == "exact"
    finally:
        back.close()
    lines = [r.getMessage().split(" map=")[0] for r in caplog.records if r.getMessage().startswith("OBF wired: ")]
    assert lines == ["OBF wired: live", "OBF wired: mock", "OBF wired: off", "OBF wired: live"]
    assert m.size() == 1  # the map untouched by the switch


def test_wire_live_with_the_trader_client(hz_cluster: HzCluster, bars: tuple[str, Any], hz_client: Any) -> None:
    name, m = bars
    put(m, record(40))
    eng = wire(ASSETS, environ=live_env(hz_cluster, name, OBF_ADAPTER_MAX_WAIT_MS="0"), client=hz_client)
    assert isinstance(eng, HazelcastOBEngine)
    try:
        poll(lambda: eng.stats().cache.newest_idx == 40,
             10.0, "bar 40 seeded")
        assert eng.step_live(ASSETS, 40).kind == "exact"
    finally:
        eng.close()
    assert hz_client.lifecycle_service.is_running()  # the trader's client is left running


def test_a_schema_1_checkpoint_means_a_logged_cold_start(hz_cluster: HzCluster, hz_client: Any, map_suffix: str,
                                                         tmp_path: Path) -> None:
    """A worker started with a schema-1 checkpoint (engine state version 1) in the state map says
    why and starts cold: its first bar is a first bar of a fresh engine."""
    engine = FeatureEngine(FeatureParams())
    engine.step(99, 99.0, {})
    env = orjson.loads(checkpoint.encode(checkpoint.capture(engine, seqs={}, bar_ts=99.0, worker_id="old",
                                                            written_at=1.0, epoch=1)))
    env["body"]["engine"]["version"] = 1  # what a schema-1 worker wrote (checksum recomputed: valid bytes)
    env["sha256"] = hashlib.sha256(orjson.dumps(env["body"], option=orjson.OPT_SORT_KEYS)).hexdigest()
    run = Run(hz_cluster, hz_client, map_suffix, tmp_path)
    run.state.set(CHECKPOINT_KEY, HazelcastJsonValue(orjson.dumps(env).decode()))
    run.start("schema1")
    try:
        run.close_bar(100)
        h = run.health()
        assert h is not None and (h["cold_start_reason"], h["restored_from_bar"]) == ("version", None)
        log_text = run.worker.log_text()  # type: ignore[union-attr]
        assert "starting cold reason=version" in log_text and "older schema" in log_text
        rec = dict(run.record(100) or {})
        rec.pop("producer")
        first = FeatureEngine(FeatureParams()).step(
            100, rec["bar_ts"], {s: run.feeder.snapshot(s, seq) for s, seq in run.published[100].items()})
        assert dumps_record(rec) == dumps_record(first)
        assert run.worker.stop() == 0  # type: ignore[union-attr]
    finally:
        run.worker.stop(signal.SIGKILL)  # type: ignore[union-attr]
