"""Nothing outlives the demo (issue 18): the terminal closed (SIGHUP on a pseudo-terminal), its
output pipe closed by a reader that leaves early, the demo SIGKILLed, a second signal forcing the
stop. In each case every process of the demo's tree (live view, worker, feeder, the member JVM it
started) is gone within a deadline, checked by pid (and start time, so a reused pid is not
mistaken for a survivor).

Real processes and a real member: the demo starts its own JVM (or, with an external test
cluster, uses it on this test's maps).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from obf_features_worker import lifecycle
from tests.cluster import HzCluster
from tests.integration.feeder import wait_for

DEMO_ASSETS = 8
FRAME_RE = re.compile(r"^bar (\d+)\b.*\bpresent (\d+)/(\d+)", re.MULTILINE)
MEMBER_PID_RE = re.compile(r"member\s+pid=(\d+)")
# The demo starts a JVM (~5 s) and a worker before bars appear.
FIRST_FRAMES_S = 180.0
GONE_S = 60.0
# Runs a command as the session leader of a new session with stdin (a pty slave) as its
# controlling terminal: closing the pty master then hangs it up, as closing a terminal window does.
_WITH_CONTROLLING_TTY = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                         "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def _demo_args(hz_cluster: HzCluster, map_suffix: str, run_dir: Path) -> list[str]:
    args = ["-m", "obf_features_worker.cli", "demo", "--plain", "--run-dir", str(run_dir)]
    if hz_cluster.kind != "local":  # no JVM of our own: use the test cluster, on maps of this test
        args += ["--members", ",".join(hz_cluster.members), "--cluster", hz_cluster.cluster_name,
                 "--map-suffix", map_suffix]
    return args


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBF_", "HZ_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _full_frames(text: str) -> set[int]:
    return {int(m[1]) for m in FRAME_RE.finditer(text) if int(m[2]) == int(m[3]) == DEMO_ASSETS}


# --- processes by pid ----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], int(fields[19])


def _tree(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` and ``root`` itself: pid -> start time."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            stats[int(entry)] = st
    tree = {root: stats[root][2]} if root in stats else {}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, start) in stats.items():
            if ppid in tree and pid not in tree:
                tree[pid] = start
                grew = True
    return tree


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] not in ("Z", "X")


def _survivors(tree: dict[int, int]) -> dict[int, str]:
    out = {}
    for pid, start in tree.items():
        if _alive(pid, start):
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
            except OSError:
                continue
    return out


def _expected_tree(tree: dict[int, int], hz_cluster: HzCluster, output: str) -> None:
    """The tree holds what the demo started: view, worker, feeder (+ the member JVM)."""
    cmdlines = " | ".join(_survivors(tree).values())
    for part in ("watch", "obf_features_worker.service.worker", "feed"):
        assert part in cmdlines, (part, cmdlines)
    if hz_cluster.kind == "local":
        m = MEMBER_PID_RE.search(output)
        assert m and int(m[1]) in tree, (output[-2000:], tree)


@pytest.fixture
def reap() -> Iterator[dict[int, int]]:
    """Pids a test saw; whatever is left of them at the end (a failed test) is SIGKILLed."""
    seen: dict[int, int] = {}
    yield seen
    for pid, start in seen.items():
        if _alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _assert_all_gone(tree: dict[int, int]) -> None:
    try:
        wait_for(lambda: not _survivors(tree), GONE_S, "every process of the demo's tree to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: left {_survivors(tree)}") from None


# --- the three ways the demo's world ends ------------------------------------------------------------


def test_demo_stops_everything_when_its_terminal_closes(hz_cluster: HzCluster, map_suffix: str,
                                                        tmp_path: Path, reap: dict[int, int]) -> None:
    master, slave = pty.openpty()
    argv = [sys.executable, "-c", _WITH_CONTROLLING_TTY, *_demo_args(hz_cluster, map_suffix, tmp_path)]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=_env(), start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + FIRST_FRAMES_S
        while len(_full_frames(out.decode(errors="replace"))) < 3:
            left = deadline - time.monotonic()
            assert left > 0 and proc.poll() is None, out.decode(errors="replace")[-3000:]
            if select.select([master], [], [], min(left, 1.0))[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:  # EIO: every slave end closed (the demo died)
                    break
        tree = _tree(proc.pid)
        reap.update(tree)
        _expected_tree(tree, hz_cluster, out.decode(errors="replace"))
    finally:
        os.close(master)  # the terminal window closes: SIGHUP to the session
    rc = proc.wait(GONE_S)
    _assert_all_gone(tree)
    # Stopped on SIGHUP; its terminal is gone, so it reports its output closed.
    assert rc == lifecycle.EXIT_OUTPUT_CLOSED, rc


def test_demo_stops_everything_when_its_reader_exits(hz_cluster: HzCluster, map_suffix: str,
                                                     tmp_path: Path, reap: dict[int, int]) -> None:
    # `obf-features demo | head`: the reader leaves once it has seen three full bars.
    proc = subprocess.Popen([sys.executable, *_demo_args(hz_cluster, map_suffix, tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(), start_new_session=True)
    assert proc.stdout is not None
    out = ""
    try:
        deadline = time.monotonic() + FIRST_FRAMES_S
        while len(_full_frames(out)) < 3:
            assert time.monotonic() < deadline and proc.poll() is None, out[-3000:]
            line = proc.stdout.readline()
            assert line, out[-3000:]
            out += line.decode(errors="replace")
        tree = _tree(proc.pid)
        reap.update(tree)
        _expected_tree(tree, hz_cluster, out)
    finally:
        proc.stdout.close()  # the reader exits: the next write of the view or the demo breaks the pipe
    rc = proc.wait(GONE_S)
    _assert_all_gone(tree)
    assert rc == lifecycle.EXIT_OUTPUT_CLOSED, rc
    # The demo's own logs say how each part ended (its stdout is gone, the parts' logs are not).
    worker_logs = list(tmp_path.glob("worker-*.log"))
    assert worker_logs and "worker stopped rc=0" in worker_logs[0].read_text(), worker_logs


def _demo_with_frames(hz_cluster: HzCluster, map_suffix: str, run_dir: Path,
                      frames: int) -> tuple[subprocess.Popen[bytes], list[str], threading.Thread]:
    """The demo on a pipe read by a thread into ``lines``, once it shows ``frames`` full bars."""
    proc = subprocess.Popen([sys.executable, *_demo_args(hz_cluster, map_suffix, run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(), start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(b.decode(errors="replace") for b in proc.stdout or ()),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(_full_frames("".join(lines))) >= frames or proc.poll() is not None, FIRST_FRAMES_S,
                 f"{frames} bar(s) with every asset in the live view")
        assert proc.poll() is None, "".join(lines)[-3000:]
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, lines, reader


def test_demo_parts_die_with_a_sigkilled_demo(hz_cluster: HzCluster, map_suffix: str,
                                              tmp_path: Path, reap: dict[int, int]) -> None:
    proc, lines, reader = _demo_with_frames(hz_cluster, map_suffix, tmp_path, 3)
    try:
        tree = _tree(proc.pid)
        reap.update(tree)
        _expected_tree(tree, hz_cluster, "".join(lines))
        proc.kill()  # no handler, no ordered stop: only the parent-death signal is left
        assert proc.wait(10) == -signal.SIGKILL
        _assert_all_gone(tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)


def test_a_second_signal_forces_the_stop_and_still_leaves_nothing(hz_cluster: HzCluster, map_suffix: str,
                                                                   tmp_path: Path, reap: dict[int, int]) -> None:
    proc, lines, reader = _demo_with_frames(hz_cluster, map_suffix, tmp_path, 1)
    try:
        tree = _tree(proc.pid)
        reap.update(tree)
        _expected_tree(tree, hz_cluster, "".join(lines))
        proc.send_signal(signal.SIGTERM)  # the ordered stop begins (it takes seconds: worker, member) ...
        wait_for(lambda: "stopping ..." in "".join(lines) or proc.poll() is not None, 30, "the stop to begin")
        proc.send_signal(signal.SIGTERM)  # ... and an impatient second signal forces it
        rc = proc.wait(GONE_S)
        _assert_all_gone(tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)
    out = "".join(lines)
    assert rc == lifecycle.EXIT_FAILED, (rc, out[-3000:])
    assert "every part killed" in out, out[-3000:]
