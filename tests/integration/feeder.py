"""Test feeder and worker-process helpers shared by the worker integration tests.

``TestFeeder`` publishes snapshots for several assets at ~10 Hz from a thread, in the exact
upstream payload format as JSON *strings*, and keeps every payload it published by
``(symbol, _push_seq)`` so a test can rebuild the snapshots a bar record says it used. The
payload JSON is built here with the stdlib (not with the product's encoder), so the tests do
not depend on the code under test to produce their input.

``WorkerProcess`` runs ``obf-features-worker`` as a subprocess with its log in a file.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from hazelcast.core import HazelcastJsonValue

from obf_features_worker.engine.snapshot import Snapshot, parse_snapshot

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")


def json_value(value: Any) -> Any:
    """A map or event value (HazelcastJsonValue or JSON text) decoded."""
    return json.loads(value.to_string() if isinstance(value, HazelcastJsonValue) else value)


def wait_for(predicate: Callable[[], Any], timeout: float, message: str = "condition", interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


class TestFeeder:
    """Publishes ``symbols`` to ``map_name`` every ``1/hz`` s until ``stop()``."""

    __test__ = False  # not a pytest test class

    def __init__(self, client: Any, map_name: str, symbols: Iterable[str] = DEFAULT_SYMBOLS, *,
                 hz: float = 10.0, levels: int = 5, seed: int = 7) -> None:
        self.map = client.get_map(map_name).blocking()
        self.symbols = tuple(symbols)
        self.hz = hz
        self.levels = levels
        self._rng = np.random.default_rng(seed)
        self._seq = {s: 0 for s in self.symbols}
        self.payloads: dict[tuple[str, int], str] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-feeder", daemon=True)
        self._lock = threading.Lock()
        self.ticks = 0

    def payload(self, symbol: str) -> tuple[int, str]:
        """The next payload of ``symbol`` (JSON string) and its seq; recorded."""
        with self._lock:
            self._seq[symbol] += 1
            seq = self._seq[symbol]
            bid = (self._rng.lognormal(12.0, 0.4, self.levels)).tolist()
            ask = (self._rng.lognormal(12.0, 0.4, self.levels)).tolist()
            now = time.time()
            text = json.dumps({
                "timestamp": iso(now), "bid_notional": bid, "ask_notional": ask,
                "bid_depth": [b / 100.0 for b in bid], "ask_depth": [a / 100.0 for a in ask],
                "_pushed_at": iso(now), "_push_seq": seq,
            })
            self.payloads[(symbol, seq)] = text
            return seq, text

    def publish_once(self) -> None:
        entries = {f"asset_{s}_ob": self.payload(s)[1] for s in self.symbols}
        self.map.put_all(entries)
        self.ticks += 1

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            try:
                self.publish_once()
            except Exception:
                self.errors += 1
            n += 1
            self._stop.wait(max(0.0, start + n / self.hz - time.monotonic()))

    def start(self) -> TestFeeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def snapshot(self, symbol: str, seq: int) -> Snapshot:
        """The Snapshot the worker parsed from payload ``(symbol, seq)``."""
        return parse_snapshot(f"asset_{symbol}_ob", self.payloads[(symbol, seq)], now=math.inf)


class WorkerProcess:
    """``obf-features-worker`` as a subprocess (log file in ``log_dir``)."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: Path, name: str = "worker") -> None:
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OBF_", "HZ_"))}
        full_env.update(env)
        full_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen([sys.executable, "-m", "obf_features_worker.service.worker", *args], env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        self.stop_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait; returns the exit code (and records how long it took)."""
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.stop_seconds = time.monotonic() - t0
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
