"""A trader-only install works: a clean virtualenv with only the base install (no extras) runs the
adapter against a real member, and neither numpy, numba, matplotlib nor rich is installed or loaded.

The venv is built from this checkout with pip (a real wheel build, not an editable install), in a
temporary folder, so the repository itself is not on the trader's ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
from hazelcast.core import HazelcastJsonValue

from obf_contract.record import asset_view, dumps_record
from tests.cluster import HzCluster
from tests.factories import bar_record

REPO = Path(__file__).resolve().parents[2]
# Third-party packages the trader must not get; the worker's own code ships in the same wheel but
# must not be loaded.
HEAVY = ("numpy", "numba", "llvmlite", "matplotlib", "rich", "prometheus_client")
NOT_LOADED = (*HEAVY, "obf_features_worker")

TRADER = textwrap.dedent("""
    import importlib.util, json, sys
    from engine_adapter import AdapterConfig, HazelcastOBEngine
    cfg = AdapterConfig(cluster_name=sys.argv[1], members=(sys.argv[2],), map_name=sys.argv[3], max_wait_ms=0)
    with HazelcastOBEngine(cfg) as eng:
        bar_idx = int(sys.argv[4])
        res = eng.step_live(["BTCUSDT", "ETHUSDT"], bar_idx)
        out = {
            "kind": res.kind,
            "imbalance": eng.get_signal("BTCUSDT").imbalance,
            "depth_quality": eng.get_placement("ETHUSDT").depth_quality,
            "agreement_pct": eng.get_market().agreement_pct,
            "installed": sorted(m for m in sys.argv[5].split(",") if importlib.util.find_spec(m) is not None),
            "loaded": sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[6].split(",")),
        }
    print(json.dumps(out))
""")


@pytest.mark.timeout(600)
def test_base_install_runs_the_adapter_against_a_real_member(hz_cluster: HzCluster, hz_client, map_suffix: str,
                                                             tmp_path: Path) -> None:
    env_dir = tmp_path / "trader-venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=540)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

    name = "DOLPHIN_OBF_FEATURES" + map_suffix
    rec = bar_record(41)
    hz_client.get_map(name).blocking().put(41, HazelcastJsonValue(dumps_record(rec).decode()))

    run = subprocess.run([str(py), "-c", TRADER, hz_cluster.cluster_name, hz_cluster.members[0], name, "41",
                          ",".join(HEAVY), ",".join(NOT_LOADED)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["kind"] == "exact"
    assert out["imbalance"] == asset_view(rec)["BTCUSDT"]["signal"]["imbalance"]
    assert out["depth_quality"] == asset_view(rec)["ETHUSDT"]["placement"]["depth_quality"]
    assert out["agreement_pct"] == rec["market"]["agreement_pct"]
    assert out["installed"] == [] and out["loaded"] == []


def test_the_check_sees_heavy_packages_in_this_environment() -> None:
    # The same probe in the full test environment finds them: the trader check can fail.
    import importlib.util

    assert {m for m in HEAVY if importlib.util.find_spec(m) is not None} >= {"numpy", "numba"}
    assert sys.modules.get("numpy") is not None
