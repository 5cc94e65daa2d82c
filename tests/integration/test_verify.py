"""`obf-features verify` against a real member: green with a healthy worker, red (with the right
✗ line) with no worker, with stale input and with a worker on another bar numbering."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from obf_features_worker import cli
from tests.cluster import HzCluster
from tests.integration.feeder import DEFAULT_SYMBOLS, TestFeeder, WorkerProcess, json_value, wait_for


def verify(cluster: HzCluster, suffix: str, capsys: pytest.CaptureFixture[str], *args: str,
           assets: tuple[str, ...] = DEFAULT_SYMBOLS) -> tuple[int, dict[str, str]]:
    """Run the command in-process: (exit code, check name -> its printed line)."""
    capsys.readouterr()
    rc = cli.main(["verify", "--members", ",".join(cluster.members), "--cluster", cluster.cluster_name,
                   "--map-suffix", suffix, "--assets", ",".join(assets), "--bars", "3", *args])
    out = capsys.readouterr().out
    lines = {}
    for line in out.splitlines():
        if line[:2] in ("✓ ", "✗ "):
            lines[line[2:].split(":", 1)[0]] = line
    return rc, lines


def test_verify_green_then_red_on_stale_input_and_another_numbering(
        hz_cluster: HzCluster, hz_client: Any, feeder: TestFeeder, map_suffix: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    worker_id = "t-verify" + map_suffix
    env = {"HZ_MEMBERS": ",".join(hz_cluster.members), "HZ_CLUSTER": hz_cluster.cluster_name,
           "OBF_MAP_SUFFIX": map_suffix}
    with WorkerProcess(["--bar-seconds", "2", "--worker-id", worker_id, "--assets", ",".join(DEFAULT_SYMBOLS)],
                       env, tmp_path):
        health = hz_client.get_map("DOLPHIN_OBF_HEALTH" + map_suffix).blocking()
        wait_for(lambda: (h := health.get(worker_id)) and json_value(h)["bars_written"] >= 4, 40, "bars written")

        rc, lines = verify(hz_cluster, map_suffix, capsys, "--bar-seconds", "2")
        assert rc == 0, lines
        assert set(lines) == {"worker", "input", "record", "adapter", "fill", "macro"}
        assert all(line.startswith("✓ ") for line in lines.values()), lines

        # Another numbering: the trader counts 5 s bars, the worker 2 s bars.
        rc, lines = verify(hz_cluster, map_suffix, capsys, "--bar-seconds", "5", "--wait-s", "1")
        assert rc == 1
        assert lines["record"].startswith("✗ record: no record of bar")
        assert "numbers bars differently" in lines["record"]
        assert lines["worker"].startswith("✓") and lines["input"].startswith("✓")

        # Stale input: one listed asset's entry is a minute old (its feed stopped).
        stale = json.dumps({"timestamp": time.time() - 60.0, "bid_notional": [1e5], "ask_notional": [1e5]})
        hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking().put("asset_ZZZUSDT_ob", stale)
        rc, lines = verify(hz_cluster, map_suffix, capsys, "--bar-seconds", "2",
                           assets=(*DEFAULT_SYMBOLS, "ZZZUSDT"))
        assert rc == 1
        assert lines["input"].startswith("✗ input: ZZZUSDT entry") and "old (limit 10s)" in lines["input"]
        assert lines["fill"].startswith("✗ fill:") and "ZZZUSDT" in lines["fill"]


def test_verify_red_without_a_worker(hz_cluster: HzCluster, feeder: TestFeeder, map_suffix: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = verify(hz_cluster, map_suffix, capsys, "--bar-seconds", "2", "--wait-s", "0.5")
    assert rc == 1
    assert lines["worker"] == "✗ worker: no live worker (no health document)"
    assert lines["input"].startswith("✓")  # the feed is fine; the worker is what is missing
    assert lines["record"].startswith("✗ record:") and "the features map is empty" in lines["record"]
    assert lines["adapter"].startswith("✗") and lines["macro"].startswith("✗")
