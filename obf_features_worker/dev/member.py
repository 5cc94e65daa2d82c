"""A local Hazelcast member run as a JVM process from the open-source jars.

Used by ``make demo``, ``deploy/hazelcast/start-member.sh`` (``obf-features
member start|stop|status``) and the integration-test fixtures. The jars come
from Maven Central via ``deploy/hazelcast/fetch-jars.sh``; the member config is
``deploy/hazelcast/hazelcast.yaml``. Production clusters are not started with
this: it is the development and test member.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from obf_contract.cluster import DEFAULT_CLUSTER_NAME
from obf_features_worker import lifecycle
from obf_features_worker.logs import setup_logging

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LIB_DIR = Path(os.environ.get("OBF_HZ_LIB", REPO_ROOT / ".hazelcast" / "lib"))
DEFAULT_CONFIG = Path(os.environ.get("OBF_HZ_CONFIG", REPO_ROOT / "deploy" / "hazelcast" / "hazelcast.yaml"))
DEFAULT_RUN_DIR = REPO_ROOT / ".hazelcast" / "run"
MAIN_CLASS = "com.hazelcast.core.server.HazelcastMemberStarter"

# Recommended by Hazelcast for Java 17 (module access for metrics and NIO internals).
_JAVA17_FLAGS = (
    "--add-modules", "java.se",
    "--add-exports", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.management/sun.management=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
)
_STARTED = re.compile(r"is STARTED")
_VERSION = re.compile(r"\[(\d+\.\d+\.\d+[^\]]*)\] Hazelcast")


class MemberError(RuntimeError):
    """The local member could not be started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalMember:
    """One Hazelcast member JVM with a pid file and a log file in ``workdir``."""

    port: int = 5701
    cluster_name: str = DEFAULT_CLUSTER_NAME
    workdir: Path = field(default_factory=lambda: DEFAULT_RUN_DIR / "default")
    interface: str = "127.0.0.1"
    lib_dir: Path = DEFAULT_LIB_DIR
    config_path: Path = DEFAULT_CONFIG
    heap: str = "512m"
    # True: the JVM gets SIGTERM when the process that started it dies, even by SIGKILL (the
    # demo's member). False: a deliberate daemon (`obf-features member start`, test fixtures).
    die_with_parent: bool = False
    # host:port of every member of the cluster to join (this one included); empty: a cluster of one
    peers: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.interface}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "member.pid"

    @property
    def log_file(self) -> Path:
        return self.workdir / "member.log"

    def pid(self) -> int | None:
        """The member's pid if its pid file names a live process."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def version(self) -> str | None:
        """Member version as printed in its log (e.g. ``5.5.0``), once started."""
        try:
            match = _VERSION.search(self.log_file.read_text(errors="replace"))
        except OSError:
            return None
        return match.group(1) if match else None

    def command(self) -> list[str]:
        jars = sorted(self.lib_dir.glob("*.jar"))
        if not any(j.name.startswith("hazelcast-sql") for j in jars):
            raise MemberError(
                f"Hazelcast jars missing in {self.lib_dir}: run deploy/hazelcast/fetch-jars.sh (or `make jars`)"
            )
        return [
            os.environ.get("OBF_JAVA", "java"),
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            *_JAVA17_FLAGS,
            f"-Dhazelcast.config={self.config_path}",
            f"-Dobf.cluster={self.cluster_name}",
            f"-Dobf.port={self.port}",
            f"-Dobf.interface={self.interface}",
            f"-Dobf.members={','.join(self.peers) if self.peers else self.address}",
            "-cp",
            os.pathsep.join(str(j) for j in jars),
            MAIN_CLASS,
        ]

    def start(self, timeout: float = 120.0) -> None:
        """Start the JVM and return once the member logs ``is STARTED``.

        Idempotent: a member already running from this workdir is left alone.
        Raises MemberError (with the log tail) if it exits or is not ready in time.
        """
        if self.is_running():
            log.info("member already running pid=%s address=%s", self.pid(), self.address)
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_file, "wb") as out:
            # Own session: Ctrl-C in a terminal that launched the demo must not
            # kill the member before the worker has shut down cleanly.
            proc = subprocess.Popen(  # noqa: S603 - our own command line, no shell
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.workdir,
                preexec_fn=lifecycle.die_with_parent() if self.die_with_parent else None,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        log.info("member starting pid=%s address=%s cluster=%s", proc.pid, self.address, self.cluster_name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise MemberError(f"member exited with code {proc.returncode}:\n{self.log_tail()}")
            if _STARTED.search(self.log_file.read_text(errors="replace")):
                log.info("member ready pid=%s address=%s version=%s", proc.pid, self.address, self.version())
                return
            time.sleep(0.2)
        self.stop()
        raise MemberError(f"member not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the member (graceful shutdown), SIGKILL after ``timeout``. Idempotent."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        self._signal_and_wait(pid, signal.SIGTERM, timeout) or self._signal_and_wait(pid, signal.SIGKILL, 10.0)
        self.pid_file.unlink(missing_ok=True)
        log.info("member stopped pid=%s address=%s", pid, self.address)

    def kill(self) -> None:
        """SIGKILL the member at once (a crash, for failure tests)."""
        pid = self.pid()
        if pid is not None:
            self._signal_and_wait(pid, signal.SIGKILL, 10.0)
        self.pid_file.unlink(missing_ok=True)

    @staticmethod
    def _signal_and_wait(pid: int, sig: signal.Signals, timeout: float) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                # Reap it if it is our child; otherwise just probe it.
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return True
            except ChildProcessError:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
            time.sleep(0.1)
        return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- `obf-features member ...` -------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """The `obf-features member` options on the parser the CLI made for it."""
    parser.description = "Run a local Hazelcast member from the open-source jars in .hazelcast/lib."
    actions = parser.add_subparsers(dest="action", required=True)
    parser.epilog = ("`member start` starts a deliberate daemon: the member keeps running after the command "
                     "exits, the terminal closes or its parent dies, until `obf-features member stop`. "
                     "(The member `obf-features demo` starts is not one: it stops with the demo.)")
    for name, text in (("start", "start a daemon member (outlives this command; `member stop` ends it) "
                                 "and wait until ready"),
                       ("stop", "stop (SIGTERM, then SIGKILL)"),
                       ("status", "exit 0 if running")):
        p = actions.add_parser(name, help=text)
        p.add_argument("--port", type=int, default=int(os.environ.get("OBF_MEMBER_PORT", 5701)),
                       help="member port (default 5701, env OBF_MEMBER_PORT)")
        p.add_argument("--cluster", default=os.environ.get("HZ_CLUSTER", DEFAULT_CLUSTER_NAME),
                       help=f"cluster name (default {DEFAULT_CLUSTER_NAME}, env HZ_CLUSTER)")
        p.add_argument("--interface", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        p.add_argument("--peers", default="",
                       help="host:port of every member of the cluster, comma-separated, to form a multi-member "
                            "local cluster (default: this member alone)")
        p.add_argument("--dir", type=Path, default=None,
                       help="run directory for pid/log files (default .hazelcast/run/<port>)")
        p.add_argument("--timeout", type=float, default=120.0, help="readiness deadline in seconds")
        p.add_argument("--heap", default="512m", help="JVM heap (-Xms/-Xmx), default 512m")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging("INFO")
    member = LocalMember(
        port=args.port, cluster_name=args.cluster, interface=args.interface, heap=args.heap,
        peers=tuple(p.strip() for p in args.peers.split(",") if p.strip()),
        workdir=args.dir or DEFAULT_RUN_DIR / str(args.port),
    )
    if args.action == "start":
        try:
            member.start(timeout=args.timeout)
        except MemberError as exc:
            print(f"member start failed: {exc}")
            return 1
        print(f"member running pid={member.pid()} address={member.address} cluster={member.cluster_name} "
              f"version={member.version()} log={member.log_file}")
        return 0
    if args.action == "stop":
        member.stop(timeout=args.timeout)
        print(f"member stopped address={member.address}")
        return 0
    running = member.is_running()
    print(f"member {'running pid=' + str(member.pid()) if running else 'not running'} address={member.address}")
    return 0 if running else 1
