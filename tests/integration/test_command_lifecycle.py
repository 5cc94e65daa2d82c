"""Every long-running command stops cleanly on SIGHUP (the terminal closed) and on a broken output
pipe (the reader left): ``obf-features-worker``, ``obf-features feed`` and ``obf-features watch``
(issue 18, ``obf_features_worker.lifecycle``). No traceback, the documented exit code (0 on a
signal, 141 on a closed output), and the worker's clean stop visible in the grid (health
``stopping``).

Real processes against a real member, on this test's maps; waits are conditions with deadlines.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import pytest

from obf_features_worker import lifecycle
from tests.cluster import HzCluster
from tests.integration.feeder import json_value, wait_for

START_S = 90.0
STOP_S = 45.0


@dataclass
class Cmd:
    """A command under test: its process, the pipe we read it on and what it wrote there."""

    name: str
    proc: subprocess.Popen[bytes]
    stream: IO[bytes]
    out: bytearray = field(default_factory=bytearray)

    def text(self) -> str:
        return self.out.decode(errors="replace")


def _pump(cmds: dict[str, Cmd], until: Callable[[], bool], timeout: float, message: str) -> None:
    """Read every open pipe (one thread: a pipe can then be closed safely) until ``until()``."""
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}: "
                                 + "; ".join(f"{c.name}: {c.text()[-1000:]}" for c in cmds.values()))
        open_ = {c.stream.fileno(): c for c in cmds.values() if not c.stream.closed}
        if not open_:
            wait_for(until, left, message)
            return
        for fd in select.select(list(open_), [], [], min(left, 0.5))[0]:
            chunk = os.read(fd, 65536)
            if chunk:
                open_[fd].out += chunk
            else:
                open_[fd].stream.close()


def _env(cluster: HzCluster, suffix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBF_", "HZ_"))}
    env.update(HZ_MEMBERS=",".join(cluster.members), HZ_CLUSTER=cluster.cluster_name, OBF_MAP_SUFFIX=suffix,
               PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def commands(hz_cluster: HzCluster, map_suffix: str) -> Iterator[dict[str, Cmd]]:
    """Worker (2 s bars, DEBUG logs: a line per bar), feeder and live view on this test's maps,
    each read on the stream it writes to (logs: stderr; the view: stdout). Killed at the end if
    a test left one running."""
    env = _env(hz_cluster, map_suffix)
    cluster = ["--members", ",".join(hz_cluster.members), "--cluster", hz_cluster.cluster_name]
    argv = {
        "worker": ["-m", "obf_features_worker.service.worker", "--bar-seconds", "2", "--worker-id", "lc-worker",
                   "--log-level", "DEBUG"],
        "feed": ["-m", "obf_features_worker.cli", "feed", *cluster, "--map-suffix", map_suffix, "--hz", "5",
                 "--log-level", "DEBUG"],
        "watch": ["-m", "obf_features_worker.cli", "watch", "--plain", *cluster, "--map-suffix", map_suffix],
    }
    cmds: dict[str, Cmd] = {}
    try:
        for name, args in argv.items():
            on_stdout = name == "watch"
            proc = subprocess.Popen([sys.executable, *args], env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if on_stdout else subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT if on_stdout else subprocess.PIPE)
            stream = proc.stdout if on_stdout else proc.stderr
            assert stream is not None
            cmds[name] = Cmd(name, proc, stream)
        _pump(cmds, lambda: b"\nbar " in b"\n" + cmds["watch"].out
              or any(c.proc.poll() is not None for c in cmds.values()), START_S, "a bar in the live view")
        for c in cmds.values():
            assert c.proc.poll() is None, (c.name, c.text()[-3000:])
        yield cmds
    finally:
        for c in cmds.values():
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait(10)
            if not c.stream.closed:
                c.stream.close()


def _health_state(hz_client: Any, suffix: str) -> str | None:
    v = hz_client.get_map("DOLPHIN_OBF_HEALTH" + suffix).blocking().get("lc-worker")
    return None if v is None else json_value(v).get("state")


def test_commands_stop_cleanly_on_sighup(commands: dict[str, Cmd], hz_client: Any, map_suffix: str) -> None:
    for c in commands.values():
        c.proc.send_signal(signal.SIGHUP)  # the terminal closed (each would get it from its session)
    _pump(commands, lambda: all(c.proc.poll() is not None for c in commands.values()), STOP_S,
          "every command to exit")
    _pump(commands, lambda: all(c.stream.closed for c in commands.values()), 10, "the rest of their output")
    for c in commands.values():
        out = c.text()
        assert c.proc.returncode == lifecycle.EXIT_OK, (c.name, c.proc.returncode, out[-3000:])
        assert "Traceback" not in out, (c.name, out[-3000:])
    assert "worker stopped rc=0 reason=SIGHUP" in commands["worker"].text()
    assert "feed stopped" in commands["feed"].text()
    assert _health_state(hz_client, map_suffix) == "stopping"


def test_commands_stop_cleanly_when_their_output_closes(commands: dict[str, Cmd], hz_client: Any,
                                                        map_suffix: str) -> None:
    for c in commands.values():
        c.stream.close()  # `| head` exited: the next line each writes breaks the pipe
    _pump(commands, lambda: all(c.proc.poll() is not None for c in commands.values()), STOP_S,
          "every command to exit after its output closed")
    for c in commands.values():
        assert c.proc.returncode == lifecycle.EXIT_OUTPUT_CLOSED, (c.name, c.proc.returncode)
    # The worker's stop was the clean one (its last health document), not a crash.
    assert _health_state(hz_client, map_suffix) == "stopping"
