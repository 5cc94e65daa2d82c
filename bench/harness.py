"""What the system benchmarks share: the cluster (a local member on a free port, or the one given
by ``--members``), worker and publisher subprocesses, CPU and RSS readings from /proc, the
worker's health document, percentiles and table printing.

Every process started here is stopped by the context managers that start it (their own pids
only); a benchmark interrupted with Ctrl-C still cleans up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The tree under test (bench/previous.py sets it in a subject's process; default: this checkout).
# Its packages come first on sys.path, and the worker and trader subprocesses run from it.
TREE = Path(os.environ.get("OBF_BENCH_TREE") or REPO)
if str(TREE) not in sys.path:
    sys.path.insert(0, str(TREE))

import hazelcast
from hazelcast.config import IntType

from obf_contract.cluster import DEFAULT_CLUSTER_NAME
from obf_features_worker.dev.member import LocalMember, free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def add_cluster_args(ap: argparse.ArgumentParser, *, worker: bool = False) -> None:
    ap.add_argument("--members", default="", help="host:port,... of an existing cluster (default: start a member)")
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER_NAME,
                    help=f"cluster name with --members (default {DEFAULT_CLUSTER_NAME})")
    ap.add_argument("--member-pid", type=int, default=None,
                    help="with --members: the pid of that (local) member, to show its CPU share")
    if worker:
        ap.add_argument("--switch-interval", type=float, default=None, metavar="S",
                        help="experiment: run the worker with sys.setswitchinterval(S) (default: Python's 0.005)")
        ap.add_argument("--no-lease", action="store_true",
                        help="experiment: the worker without the leader lease (a sole writer: no checkpoints)")
        ap.add_argument("--gc-freeze", action="store_true",
                        help="experiment: the worker calls gc.freeze() once started (before its first bar)")


@dataclass
class Cluster:
    """Where the benchmark runs: cluster name, member addresses, and the member's pid if we started it."""

    name: str
    members: list[str]
    member_pid: int | None

    def client(self, **kw: Any) -> hazelcast.HazelcastClient:
        return hazelcast.HazelcastClient(cluster_name=self.name, cluster_members=self.members,
                                         default_int_type=IntType.LONG, **kw)


@contextlib.contextmanager
def cluster_from_args(args: argparse.Namespace) -> Iterator[Cluster]:
    """The cluster named by ``--members`` or a fresh local member on a free port (stopped after)."""
    if args.members:
        yield Cluster(args.cluster, [m.strip() for m in args.members.split(",") if m.strip()], args.member_pid)
        return
    name = "obf-bench-" + uuid.uuid4().hex[:6]
    with scratch_dir("obf-bench-hz-") as workdir:
        member = LocalMember(port=free_port(), cluster_name=name, workdir=workdir)
        member.start()
        try:
            yield Cluster(name, [member.address], member.pid())
        finally:
            member.stop()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory for logs; removed afterwards unless the block failed or
    OBF_BENCH_KEEP_LOGS is set (then its path is printed to stderr)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        yield path
        ok = True
    finally:
        if ok and not os.environ.get("OBF_BENCH_KEEP_LOGS"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"logs kept in {path}", file=sys.stderr)


def map_suffix() -> str:
    """A unique map-name suffix: every benchmark run uses maps of its own."""
    return "_BENCH" + uuid.uuid4().hex[:8].upper()


def destroy_maps(client: hazelcast.HazelcastClient, suffix: str) -> None:
    """Destroy the input, features, health, latest and state maps of one run (``suffix``)."""
    for base in ("DOLPHIN_FEATURES", "DOLPHIN_OBF_FEATURES", "DOLPHIN_OBF_HEALTH", "DOLPHIN_OBF_LATEST",
                 "DOLPHIN_OBF_STATE"):
        client.get_map(base + suffix).blocking().destroy()


# -- processes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """Variations of the worker for experiments (never product settings).

    switch_interval_s: ``sys.setswitchinterval`` (None: Python's 5 ms). no_lease: never create
    the leader lease, so it writes as a sole writer without checkpoints. gc_freeze:
    ``gc.freeze()`` once started (before the first bar): full collections skip start-up objects.
    """

    switch_interval_s: float | None = None
    no_lease: bool = False
    gc_freeze: bool = False

    def label(self) -> str:
        parts = []
        if self.switch_interval_s is not None:
            parts.append(f"worker switch interval {self.switch_interval_s:g} s")
        if self.no_lease:
            parts.append("worker WITHOUT lease/checkpoints")
        if self.gc_freeze:
            parts.append("worker gc.freeze()")
        return ", ".join(parts)

    def command(self) -> list[str]:
        if self == Experiment():
            return [sys.executable, "-m", "obf_features_worker.service.worker"]
        code = ["import gc, sys", "import obf_features_worker.service.worker as w"]
        if self.switch_interval_s is not None:
            code.append(f"sys.setswitchinterval({float(self.switch_interval_s)!r})")
        if self.no_lease:
            code.append("w.Worker.before_first_bar = lambda self: None")
        if self.gc_freeze:
            code.append("first = w.Worker.before_first_bar")
            code.append("w.Worker.before_first_bar = lambda self: (first(self), gc.freeze())[0]")
        code.append("from obf_features_worker.cli import worker_main")
        code.append("sys.exit(worker_main([]))")
        return [sys.executable, "-c", "; ".join(code)]


def experiment_from_args(args: argparse.Namespace) -> Experiment:
    return Experiment(args.switch_interval, args.no_lease, args.gc_freeze)


@contextlib.contextmanager
def worker_process(cluster: Cluster, suffix: str, log_dir: Path, *, experiment: Experiment = Experiment(),  # noqa: B008 - a frozen dataclass: one shared default is fine
                   **settings: Any) -> Iterator[subprocess.Popen]:
    """``obf-features-worker`` as a subprocess configured by env (``bar_seconds=2`` ->
    OBF_BAR_SECONDS=2); its log goes to ``log_dir/worker.log``. SIGTERM on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBF_", "HZ_"))}
    env.update(HZ_CLUSTER=cluster.name, HZ_MEMBERS=",".join(cluster.members), OBF_MAP_SUFFIX=suffix,
               OBF_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1", PYTHONPATH=str(TREE))
    env.update({f"OBF_{k.upper()}": str(v) for k, v in settings.items()})
    log_path = log_dir / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(experiment.command(), env=env, cwd=TREE, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            stop_process(proc)


@contextlib.contextmanager
def publisher_process(cluster: Cluster, map_name: str, n_assets: int, rate_hz: float, duration_s: float,
                      *, levels: int = 10, log_dir: Path) -> Iterator[ProgressProcess]:
    """``bench/publisher.py`` as a subprocess; its progress lines carry ``published``."""
    args = ["--members", ",".join(cluster.members), "--cluster", cluster.name, "--map", map_name,
            "--assets", str(n_assets), "--rate", str(rate_hz), "--duration", str(duration_s), "--levels", str(levels)]
    with progress_process("publisher.py", args, log_dir) as proc:
        yield proc


@contextlib.contextmanager
def progress_process(script: str, args: list[str], log_dir: Path) -> Iterator[ProgressProcess]:
    """``bench/<script> <args>`` (this checkout's harness) as a subprocess writing JSON progress lines
    to stdout (kept in a file in ``log_dir``; stderr to ``<script>.log``). It inherits
    OBF_BENCH_TREE: a script that loads code under test (trader_process.py) loads the tree's.
    SIGTERM on exit."""
    cmd = [sys.executable, str(REPO / "bench" / script), *args]
    progress = log_dir / f"{Path(script).stem}-{uuid.uuid4().hex[:6]}.jsonl"
    with open(progress, "wb") as out, open(log_dir / f"{Path(script).stem}.log", "ab") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err)
        try:
            yield ProgressProcess(proc, progress)
        finally:
            stop_process(proc)


@dataclass
class ProgressProcess:
    """A benchmark helper process and the JSON lines it has written so far."""

    proc: subprocess.Popen
    progress_path: Path

    def history(self) -> list[dict[str, Any]]:
        """Every progress line so far (decoded), in order."""
        try:
            lines = self.progress_path.read_bytes().splitlines()
        except OSError:
            return []
        out = []
        for raw in lines:
            try:
                out.append(json.loads(raw))
            except ValueError:
                pass  # the line being written
        return out

    def progress(self) -> dict[str, Any] | None:
        """The newest progress line, or None before the first."""
        h = self.history()
        return h[-1] if h else None

    def published_at(self, t: float) -> float | None:
        """Publisher only: events published by unix time ``t`` (linear between progress lines),
        None if unknown."""
        h = [x for x in self.history() if "published" in x]
        if not h or t < h[0]["t"]:
            return None
        for a, b in zip(h, h[1:]):
            if a["t"] <= t <= b["t"]:
                f = (t - a["t"]) / max(1e-9, b["t"] - a["t"])
                return a["published"] + f * (b["published"] - a["published"])
        return float(h[-1]["published"])


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; only this process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_until(cond: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``cond`` until truthy (returned) or raise TimeoutError."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_for_worker(client: hazelcast.HazelcastClient, suffix: str, proc: subprocess.Popen, log_dir: Path,
                    timeout: float = 60.0) -> dict[str, Any]:
    """The worker's first health document; raises (with its log tail) if it exits or stays silent."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            break
        doc = read_health(client, suffix)
        if doc is not None:
            return doc
        time.sleep(0.1)
    tail = (log_dir / "worker.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"worker not running (exit code {proc.poll()}); log tail:\n{tail}")


# -- /proc readings --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


class CpuMeter:
    """CPU share of a process over an interval: ``start()`` then ``share()`` (1.0 = one core)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._t0 = self._c0 = 0.0

    def start(self) -> None:
        self._t0, self._c0 = time.monotonic(), cpu_seconds(self.pid)

    def share(self) -> float:
        return (cpu_seconds(self.pid) - self._c0) / max(1e-9, time.monotonic() - self._t0)


# -- the worker's health document -------------------------------------------------------------------


def read_health(client: hazelcast.HazelcastClient, suffix: str) -> dict[str, Any] | None:
    """The (only) worker's health document of this run's maps, or None."""
    values = client.get_map("DOLPHIN_OBF_HEALTH" + suffix).blocking().values()
    docs = [json.loads(v.to_string() if hasattr(v, "to_string") else v) for v in values]
    return max(docs, key=lambda d: d.get("updated_at", 0)) if docs else None


# -- numbers and tables ---------------------------------------------------------------------------


def pct(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of ``xs``, nearest rank; NaN for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> None:
    """A plain aligned table (right-aligned cells), with a title line and an optional note."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(title)
    for k, r in enumerate(cells):
        print(" | ".join(c.rjust(w) for c, w in zip(r, widths)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))
    if note:
        print(note)
    print()


def machine_line() -> str:
    """CPU count, memory and load average, for the header of each table."""
    mem_gib = os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30
    load = os.getloadavg()
    return (f"machine: {os.cpu_count()} cores, {mem_gib:.0f} GiB, load avg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
            f"python {sys.version.split()[0]}")
