"""The trees a benchmark measures side by side: this checkout ("current") and the previous design
(by default commit 44f6ba9, main before issue 14), materialised once from git history.

The previous tree is ``git archive REF | tar -x`` into ``.bench-previous/<sha>/`` (ignored by git;
made once, reused; works on a fresh clone since the commit is in the history). Both trees run in
the same venv; only the harness (``bench/``) is this checkout's. A measurement runs in a
subprocess per tree (:func:`run_in`) whose ``sys.path`` starts with that tree, so the engine,
``dumps_record``, the worker and the adapter under test are each tree's own.

By hand: ``.venv/bin/python bench/previous.py --materialise [--previous REF]`` prints the tree's path.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE_DIR = REPO / ".bench-previous"
DEFAULT_PREVIOUS = "44f6ba9"  # main before issue 14 (per-asset records, checkpoint before the record)
TREE_ENV = "OBF_BENCH_TREE"  # set in a subject's process: the root of the tree under test


@dataclass(frozen=True)
class Subject:
    """One tree under test: ``name`` ("current" / "previous") and its root directory."""

    name: str
    root: Path
    ref: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.ref})" if self.ref else self.name


def add_args(ap: argparse.ArgumentParser) -> None:
    """``--previous REF`` (default 44f6ba9) and ``--no-previous``."""
    ap.add_argument("--previous", default=DEFAULT_PREVIOUS, metavar="REF",
                    help=f"git ref of the previous design measured beside this checkout (default {DEFAULT_PREVIOUS})")
    ap.add_argument("--no-previous", action="store_true", help="measure this checkout only")


def subjects(args: argparse.Namespace) -> list[Subject]:
    """The current tree, then the previous one unless ``--no-previous`` (materialised if needed)."""
    out = [Subject("current", REPO, _describe(REPO))]
    ref = getattr(args, "previous", None)
    if ref and not getattr(args, "no_previous", False):
        out.append(Subject("previous", materialise(ref), ref))
    return out


def _describe(root: Path) -> str:
    r = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def materialise(ref: str) -> Path:
    """The tree of ``ref`` under ``.bench-previous/<sha>`` (extracted once, atomically)."""
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"--previous {ref}: not a commit of this repository ({r.stderr.strip()})")
    sha = r.stdout.strip()
    dest = CACHE_DIR / sha
    if (dest / "pyproject.toml").exists():
        return dest
    CACHE_DIR.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:8]}-", dir=CACHE_DIR))
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        try:
            tmp.rename(dest)
        except OSError:  # another run made it meanwhile
            if not (dest / "pyproject.toml").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"previous design {ref} ({sha[:10]}) materialised in {dest}", file=sys.stderr)
    return dest


def run_in(subject: Subject, module: str, func: str, timeout: float = 3600.0, **params: Any) -> Any:
    """``bench/<module>.py``'s ``func(**params)`` run in a subprocess with ``subject``'s tree first on
    ``sys.path`` (cwd = that tree); returns its result (JSON round trip). Its prints pass through.
    After ``timeout`` s (or on Ctrl-C) it gets SIGINT, so its context managers stop the processes it
    started, then SIGKILL a minute later."""
    with tempfile.TemporaryDirectory(prefix="obf-bench-subject-") as d:
        out = Path(d) / "result.json"
        env = dict(os.environ)
        env[TREE_ENV] = str(subject.root)
        env["PYTHONPATH"] = os.pathsep.join([str(subject.root), str(BENCH_DIR)])
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, str(BENCH_DIR / "previous.py"), "--call", f"{module}:{func}", "--params",
               json.dumps(params), "--out", str(out)]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=subject.root, env=env)
        try:
            rc = proc.wait(timeout)
        except BaseException as exc:  # SIGINT lets it stop its own workers and publishers
            if not isinstance(exc, KeyboardInterrupt):  # Ctrl-C reached its process group already
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        if rc != 0 or not out.exists():
            raise RuntimeError(f"{module}.{func} on the {subject.label} tree failed (exit {rc}) after "
                               f"{time.monotonic() - t0:.0f} s")
        return json.loads(out.read_text())


def _call(spec: str, params: str, out: str) -> int:
    tree = os.environ.get(TREE_ENV)
    if tree:  # the tree under test first: its packages shadow the venv's editable install
        sys.path[:0] = [tree, str(BENCH_DIR)]
    module, func = spec.split(":")
    result = getattr(importlib.import_module(module), func)(**json.loads(params))
    Path(out).write_text(json.dumps(result, allow_nan=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    ap.add_argument("--materialise", action="store_true", help="extract the previous tree and print its path")
    ap.add_argument("--call", help=argparse.SUPPRESS)
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.call:
        return _call(args.call, args.params, args.out)
    print(materialise(args.previous))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def bench_main(argv: list[str] | None, doc: str, configure: Any, run: Any, *, quick_help: str,
               worker: bool = False, extra: Any = None) -> int:
    """The command line of a side-by-side benchmark script: cluster options (``worker``: also the
    worker experiment flags), this module's tree options, the script's ``configure(parser)``,
    ``--quick``, then ``run(args)``'s target rows printed."""
    import harness as H
    import targets as T

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    H.add_cluster_args(ap, worker=worker)
    add_args(ap)
    configure(ap)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    if extra is not None:
        extra(ap)
    T.print_rows(run(ap.parse_args(argv)))
    return 0
