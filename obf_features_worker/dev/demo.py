"""``obf-features demo``: the whole pipeline on this machine, live, until Ctrl-C.

Starts (1) a local Hazelcast member (``devmember.LocalMember``) unless ``--members`` names a
cluster, (2) the worker (``obf-features-worker``, 2 s bars), (3) the feeder (``obf-features
feed``: synthetic books for 8 assets at 10 Hz with a liquidity drain ~35 s in, repeating), and
(4) the live view ``obf-features watch`` in the foreground. Ctrl-C stops everything in order:
the worker (SIGTERM, so it finishes its bar and says ``stopping``), the feeder, then the member
if the demo started it. Worker, feeder and member logs go to the run directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from obf_features_worker.dev.member import DEFAULT_RUN_DIR, LocalMember, MemberError, free_port

DEMO_CLUSTER = "obf-demo"


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _start(cmd: list[str], log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    out = open(log_path, "ab")
    # Own session: the terminal's Ctrl-C reaches only the live view and the demo, which then
    # stops the worker first (cleanly) and the feeder after it.
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,  # noqa: S603 - our own command line, no shell
                            start_new_session=True)
    return proc, out


def _stop(proc: subprocess.Popen[bytes], out: IO[bytes], timeout: float) -> tuple[int, bool]:
    """SIGTERM, wait ``timeout`` s, SIGKILL if needed; (exit code, was killed)."""
    killed = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            killed = True
            proc.kill()
            proc.wait(10)
    out.close()
    return proc.returncode, killed


def configure(p: argparse.ArgumentParser) -> None:
    """The `obf-features demo` options on the parser the CLI made for it."""
    p.description = __doc__.split("\n\n")[1]
    p.add_argument("--members", default=None,
                   help="use this cluster (host:port,...) instead of starting a local member")
    p.add_argument("--cluster", default=None, help=f"cluster name (default {DEMO_CLUSTER} / HZ_CLUSTER with --members)")
    p.add_argument("--port", type=int, default=None, help="port of the local member (default: a free port)")
    p.add_argument("--map-suffix", default=None,
                   help="appended to every map name (default none on the demo's own member, _DEMO with --members)")
    p.add_argument("--bar-seconds", type=float, default=2.0, help="worker bar length (default 2)")
    p.add_argument("--drain-at", type=float, default=35.0, help="first liquidity drain after S seconds (default 35)")
    p.add_argument("--drain-every", type=float, default=90.0, help="repeat the drain every S seconds (default 90)")
    p.add_argument("--seed", type=int, default=0, help="feeder seed (default 0)")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR / "demo",
                   help="where logs (and the member's files) go (default .hazelcast/run/demo)")
    p.add_argument("--plain", action="store_true", help="plain lines in the live view instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 after Ctrl-C with everything stopped cleanly; 1 if a part could not start."""
    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    member: LocalMember | None = None
    if args.members:
        members = args.members
        cluster = args.cluster or os.environ.get("HZ_CLUSTER", "dev")
        suffix = "_DEMO" if args.map_suffix is None else args.map_suffix
    else:
        cluster = args.cluster or DEMO_CLUSTER
        member = LocalMember(port=args.port or free_port(), cluster_name=cluster, workdir=run_dir / "member")
        suffix = args.map_suffix or ""
        print(f"starting a local Hazelcast member on {member.address} (cluster {cluster}) ...")
        try:
            member.start()
        except MemberError as exc:
            print(f"demo: member start failed: {exc}")
            return 1
        members = member.address

    env = dict(os.environ, HZ_MEMBERS=members, HZ_CLUSTER=cluster, OBF_MAP_SUFFIX=suffix, PYTHONUNBUFFERED="1")
    for var in ("OBF_ASSETS", "OBF_CLOCK", "OBF_INPUT_MAP", "OBF_FEATURES_MAP"):
        env.pop(var, None)  # the demo's own settings, not the caller's worker environment
    print(f"demo running against {members} (cluster {cluster}); logs in {run_dir}")
    if member is not None:
        print(f"  member  pid={member.pid():<7} log={member.log_file}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    worker = feeder = None
    rc = 0
    try:
        worker_log, feed_log = run_dir / f"worker-{stamp}.log", run_dir / f"feed-{stamp}.log"
        worker = _start(_python_module("obf_features_worker.service.worker", "--bar-seconds", str(args.bar_seconds),
                                       "--worker-id", "demo-worker"), worker_log, env)
        print(f"  worker  pid={worker[0].pid:<7} log={worker_log}")
        feeder = _start(_python_module(
            "obf_features_worker.cli", "feed", "--seed", str(args.seed), "--drain-at", str(args.drain_at),
            "--drain-every", str(args.drain_every)), feed_log, env)
        print(f"  feeder  pid={feeder[0].pid:<7} log={feed_log}")
        print(f"liquidity drain from t={args.drain_at:g}s, every {args.drain_every:g}s: "
              "watch the cascade regime leave CALM. Ctrl-C stops everything.\n")
        view = _python_module("obf_features_worker.cli", "watch", "--members", members, "--cluster", cluster,
                              *(["--map-suffix", suffix] if suffix else []), *(["--plain"] if args.plain else []))
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the view; the stop follows
            subprocess.run(view, env=env, check=False)  # noqa: S603 - our own command line, no shell
    finally:
        # Ctrl-C again while stopping would leave processes behind: finish the clean stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("\nstopping ...")
        for name, proc, timeout in (("worker", worker, 15.0), ("feeder", feeder, 10.0)):
            if proc is None:
                continue
            code, killed = _stop(*proc, timeout=timeout)
            print(f"  {name:<7} {'killed after ' + format(timeout, 'g') + ' s' if killed else 'stopped'} rc={code}")
            if name == "worker" and code != 0:
                rc = 1
        if member is not None:
            member.stop()
            print("  member  stopped")
        print(f"logs: {run_dir}")
    return rc
