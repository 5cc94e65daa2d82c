"""The worker under a real supervisord, configured by deploy/supervisor/obf-features-worker.conf:
SIGKILL the worker, supervisord restarts it, bars keep being written; a supervisorctl stop is clean."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import HzCluster
from tests.integration.feeder import REPO_ROOT, TestFeeder, wait_for

DEPLOY_CONF = REPO_ROOT / "deploy" / "supervisor" / "obf-features-worker.conf"
PROGRAM = "obf-features-worker"
BIN = Path(sys.prefix) / "bin"


def _supervisord_conf(run_dir: Path) -> Path:
    # The deploy file is included as it is; only the supervisord/ctl plumbing is the test's.
    conf = run_dir / "supervisord.conf"
    conf.write_text(f"""
[unix_http_server]
file={run_dir}/supervisor.sock

[supervisord]
logfile={run_dir}/supervisord.log
pidfile={run_dir}/supervisord.pid
childlogdir={run_dir}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{run_dir}/supervisor.sock

[include]
files = {DEPLOY_CONF}
""")
    return conf


def _health_by_pid(client: Any, suffix: str, pid: int) -> dict[str, Any] | None:
    for _, value in client.get_map("DOLPHIN_OBF_HEALTH" + suffix).blocking().entry_set():
        doc = json.loads(value.to_string())
        if doc["pid"] == pid:
            return doc
    return None


def test_supervisord_restarts_a_killed_worker(hz_cluster: HzCluster, hz_client, map_suffix: str, tmp_path: Path):
    if not (BIN / "supervisord").exists() or not (BIN / PROGRAM).exists():
        pytest.skip("supervisord or obf-features-worker not installed in this environment")
    run_dir = Path(tempfile.mkdtemp(prefix="obfsv-"))  # short path: unix socket names are limited
    conf = _supervisord_conf(run_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBF_", "HZ_"))}
    env.update(OBF_VENV=sys.prefix, OBF_LOG_DIR=str(tmp_path), HZ_MEMBERS=",".join(hz_cluster.members),
               HZ_CLUSTER=hz_cluster.cluster_name, OBF_MAP_SUFFIX=map_suffix, OBF_BAR_SECONDS="2")

    def ctl(*args: str) -> str:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), *args], env=env, capture_output=True,
                              text=True, timeout=60).stdout

    def pid() -> int:
        out = ctl("pid", PROGRAM).strip()
        return int(out) if out.isdigit() else 0

    feeder_client = hz_cluster.client()
    feeder = TestFeeder(feeder_client, "DOLPHIN_FEATURES" + map_suffix).start()
    sup = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(conf)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        pid1 = wait_for(pid, 30, "worker started by supervisord")
        pids.append(pid1)
        h1 = wait_for(lambda: (h := _health_by_pid(hz_client, map_suffix, pid1)) and h["bars_written"] >= 2 and h,
                      30, "bars from the first worker")
        os.kill(pid1, signal.SIGKILL)
        pid2 = wait_for(lambda: (p := pid()) and p != pid1 and p, 30, "worker restarted by supervisord")
        pids.append(pid2)
        h2 = wait_for(lambda: (h := _health_by_pid(hz_client, map_suffix, pid2)) and h["bars_written"] >= 2 and h,
                      30, "bars from the restarted worker")
        assert h2["worker_id"] != h1["worker_id"]  # default id is <hostname>-<pid>
        assert h2["last_bar_idx"] > h1["last_bar_idx"]
        rec = hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking().get(h2["last_bar_idx"])
        assert json.loads(rec.to_string())["producer"]["worker_id"] == h2["worker_id"]

        assert "stopped" in ctl("stop", PROGRAM)
        sup_log = (run_dir / "supervisord.log").read_text()
        assert "exited: obf-features-worker (terminated by SIGKILL; not expected)" in sup_log
        assert "stopped: obf-features-worker (exit status 0)" in sup_log, sup_log[-2000:]
        assert _health_by_pid(hz_client, map_suffix, pid2)["state"] == "stopping"
        assert (tmp_path / "obf-features-worker.log").stat().st_size > 0
    finally:
        feeder.stop()
        feeder_client.shutdown()
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
        for p in pids:  # never leave a worker behind, whatever happened above
            try:
                if PROGRAM in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(p, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        shutil.rmtree(run_dir, ignore_errors=True)
