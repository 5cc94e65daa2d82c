"""``obf-features demo``: the whole pipeline on this machine, live, until Ctrl-C.

Starts (1) a local Hazelcast member (``dev.member.LocalMember``) unless ``--members`` names a
cluster, (2) the worker (``obf-features-worker``, 2 s bars), (3) the feeder (``obf-features
feed``: synthetic books for 8 assets at 10 Hz with a liquidity drain ~35 s in, repeating), and
(4) the live view ``obf-features watch`` in the foreground. Ctrl-C, SIGTERM, closing the terminal
(SIGHUP) or closing its output (``| head`` exited) stops everything in order: the feeder, the live
view, the worker (SIGTERM, so it finishes its bar and says ``stopping``), then the member if the
demo started it; a second signal forces it (SIGKILL to every part). The parts die with the demo
even if it is SIGKILLed (a parent-death signal, ``lifecycle.die_with_parent``). Worker, feeder
and member logs go to the run directory.

Exit codes: 0 stopped cleanly on a signal (or the view ended); 1 a part could not start or did
not stop cleanly, or a second signal forced the stop; 141 its output closed (everything stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from obf_contract.cluster import DEFAULT_CLUSTER_NAME
from obf_features_worker import lifecycle
from obf_features_worker.dev.member import DEFAULT_RUN_DIR, LocalMember, MemberError, free_port

DEMO_CLUSTER = "obf-demo"
# Signals a terminal sends to its whole foreground process group (the demo and its live view).
_GROUP_SIGNALS = ("SIGINT", "SIGHUP")
_VIEW_GRACE_S = 3.0


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class _Part:
    """A child process of the demo: its name, process and log file (None: the view, on our stdout)."""

    name: str
    proc: subprocess.Popen[bytes]
    out: IO[bytes] | None = None

    def terminate(self) -> None:
        """SIGTERM now (the part stops in its own time); nothing if it has exited."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float) -> tuple[int, bool]:
        """SIGTERM, wait ``timeout`` s, SIGKILL if needed; (exit code, was killed)."""
        killed = False
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                self.proc.wait(10)
        if self.out is not None:
            self.out.close()
        return self.proc.returncode, killed


@dataclass
class _Demo:
    """What the demo started, so that the ordered stop and the forced stop find every part."""

    stop: lifecycle.StopRequest
    member: LocalMember | None = None
    parts: dict[str, _Part] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path | None) -> _Part:
        out = open(log_path, "ab") if log_path is not None else None  # closed by _Part.stop
        # Worker and feeder in their own session: the terminal's Ctrl-C reaches only the live view
        # and the demo, which then stops them in order. All die with the demo (parent-death signal).
        proc = subprocess.Popen(  # noqa: S603 - our own command line, no shell
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=out is not None, preexec_fn=lifecycle.die_with_parent())
        part = self.parts[name] = _Part(name, proc, out)
        return part

    def force(self, signame: str) -> None:
        """A second signal while stopping: SIGKILL every part and the member, exit 1 at once."""
        for part in self.parts.values():
            with contextlib.suppress(OSError):
                part.proc.kill()
        if self.member is not None and (pid := self.member.pid()) is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError, ValueError):
            os.write(2, f"\ndemo: second {signame}: every part killed\n".encode())
        os._exit(lifecycle.EXIT_FAILED)

    def say(self, text: str = "") -> None:
        lifecycle.say(self.stop, text)


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
    p.epilog = __doc__.split("\n\n")[2]  # the exit codes
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 after Ctrl-C/SIGTERM/SIGHUP with everything stopped cleanly; 1 if a part could not
    start or stop cleanly (or a second signal forced the stop); 141 if the output closed."""
    stop = lifecycle.StopRequest()
    demo = _Demo(stop)
    with lifecycle.capture_signals(stop, force=demo.force):
        try:
            return _run(args, demo)
        except OSError as exc:  # stdout gone outside a say() (e.g. the interpreter's own writes)
            if not lifecycle.output_gone(exc):
                raise
            stop.output_lost()
            return _stop_all(demo)


def _run(args: argparse.Namespace, demo: _Demo) -> int:
    stop = demo.stop
    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.members:
        members = args.members
        cluster = args.cluster or os.environ.get("HZ_CLUSTER", DEFAULT_CLUSTER_NAME)
        suffix = "_DEMO" if args.map_suffix is None else args.map_suffix
    else:
        cluster = args.cluster or DEMO_CLUSTER
        demo.member = LocalMember(port=args.port or free_port(), cluster_name=cluster, workdir=run_dir / "member",
                                  die_with_parent=True)
        suffix = args.map_suffix or ""
        demo.say(f"starting a local Hazelcast member on {demo.member.address} (cluster {cluster}) ...")
        try:
            demo.member.start()
        except MemberError as exc:
            demo.say(f"demo: member start failed: {exc}")
            return lifecycle.EXIT_FAILED
        members = demo.member.address

    env = dict(os.environ, HZ_MEMBERS=members, HZ_CLUSTER=cluster, OBF_MAP_SUFFIX=suffix, PYTHONUNBUFFERED="1")
    for var in ("OBF_ASSETS", "OBF_CLOCK", "OBF_INPUT_MAP", "OBF_FEATURES_MAP"):
        env.pop(var, None)  # the demo's own settings, not the caller's worker environment
    demo.say(f"demo running against {members} (cluster {cluster}); logs in {run_dir}")
    if demo.member is not None:
        demo.say(f"  member  pid={demo.member.pid():<7} log={demo.member.log_file}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if not stop.is_set():
        log_path = run_dir / f"worker-{stamp}.log"
        part = demo.start("worker", _python_module(
            "obf_features_worker.service.worker", "--bar-seconds", str(args.bar_seconds),
            "--worker-id", "demo-worker"), env, log_path)
        demo.say(f"  worker  pid={part.proc.pid:<7} log={log_path}")
    if not stop.is_set():
        log_path = run_dir / f"feed-{stamp}.log"
        part = demo.start("feeder", _python_module(
            "obf_features_worker.cli", "feed", "--seed", str(args.seed), "--drain-at", str(args.drain_at),
            "--drain-every", str(args.drain_every)), env, log_path)
        demo.say(f"  feeder  pid={part.proc.pid:<7} log={log_path}")
        demo.say(f"liquidity drain from t={args.drain_at:g}s, every {args.drain_every:g}s: "
                 "watch the cascade regime leave CALM. Ctrl-C stops everything.\n")
    if not stop.is_set():
        view = demo.start("view", _python_module(
            "obf_features_worker.cli", "watch", "--members", members, "--cluster", cluster,
            *(["--map-suffix", suffix] if suffix else []), *(["--plain"] if args.plain else [])), env, None)
        threading.Thread(target=_watch_view, args=(view, stop), name="view-exit", daemon=True).start()
        stop.event.wait()  # a signal, a closed output or the view's own end
    return _stop_all(demo, run_dir)


def _watch_view(view: _Part, stop: lifecycle.StopRequest) -> None:
    """The view ending is the demo's stop too (Ctrl-C reached it, its output closed, it failed)."""
    rc = view.proc.wait()
    if rc == lifecycle.EXIT_OUTPUT_CLOSED:
        stop.output_lost()  # the view's stdout is ours: the reader went away
    stop.request("view-exited" if rc in (0, lifecycle.EXIT_OUTPUT_CLOSED) else f"view-failed rc={rc}")


def _stop_all(demo: _Demo, run_dir: Path | None = None) -> int:
    """The ordered stop: feeder, view, worker, member. The exit code of the whole demo."""
    failed = demo.stop.reason is not None and demo.stop.reason.startswith("view-failed")
    demo.say("\nstopping ...")
    for name, timeout in (("feeder", 10.0), ("view", 5.0), ("worker", 15.0)):
        part = demo.parts.get(name)
        if part is None:
            continue
        if name == "view" and demo.stop.reason in _GROUP_SIGNALS:
            # The terminal sent it to the view too: let it leave on that one (a SIGTERM on top
            # would be its second signal, a forced exit).
            with contextlib.suppress(subprocess.TimeoutExpired):
                part.proc.wait(_VIEW_GRACE_S)
        code, killed = part.stop(timeout)
        if name != "view":
            demo.say(f"  {name:<7} {'killed after ' + format(timeout, 'g') + ' s' if killed else 'stopped'} "
                     f"rc={code}")
        if name == "worker" and code != 0:
            failed = True
    if demo.member is not None:
        demo.member.stop()
        demo.say("  member  stopped")
    if run_dir is not None:
        demo.say(f"logs: {run_dir}")
    return demo.stop.exit_code(failed)
