"""The README's first command, end to end: ``obf-features demo`` starts its own member (the
default: a local JVM member from the jars ``make setup`` fetched), the feeder, the worker and the
live view; bars with every asset appear in the view, one after another; Ctrl-C (SIGINT to the
demo's process group, as a terminal sends it) stops everything cleanly and the demo exits 0.

With an external or container cluster (``tests/cluster.py``) the demo is pointed at it instead.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.cluster import HzCluster
from tests.integration.feeder import wait_for

DEMO_ASSETS = 8  # the demo feeder's synthetic universe (obf_features_worker/dev/demo.py)
FRAME_RE = re.compile(r"^bar (\d+)\b.*\bpresent (\d+)/(\d+)")


def test_demo_runs_end_to_end_and_stops_on_ctrl_c(hz_cluster: HzCluster, map_suffix: str, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "obf_features_worker.cli", "demo", "--plain", "--run-dir", str(tmp_path)]
    if hz_cluster.kind != "local":  # no JVM of our own: use the test cluster, on maps of this test
        args += ["--members", ",".join(hz_cluster.members), "--cluster", hz_cluster.cluster_name,
                 "--map-suffix", map_suffix]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBF_", "HZ_"))}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()

    def full_frames() -> list[int]:
        frames = [FRAME_RE.match(line) for line in list(lines)]
        return [int(m[1]) for m in frames if m and int(m[2]) == int(m[3]) == DEMO_ASSETS]

    try:
        wait_for(lambda: len(set(full_frames())) >= 3 or proc.poll() is not None, 180,
                 "three bars with every asset in the live view")
        assert proc.poll() is None, "".join(lines)[-3000:]
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        rc = proc.wait(90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    reader.join(10)
    out = "".join(lines)
    bars = full_frames()
    # Frames in bar order (the view shows the newest bar; it may skip one when two land at once).
    assert len(set(bars)) >= 3 and bars == sorted(bars), (bars, out[-3000:])
    assert rc == 0, out[-3000:]
    assert "worker  stopped rc=0" in out and "feeder  stopped" in out, out[-3000:]
    if hz_cluster.kind == "local":
        assert "member  stopped" in out, out[-3000:]
