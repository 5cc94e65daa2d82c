"""Small helpers for the fault and soak tests: a feeder whose assets and rate can be changed while
it runs, a scanner (scan-clock source), a witness of the bars written, process memory from /proc,
and the adapter probe process.

``ControlledFeeder`` extends ``feeder.TestFeeder`` (same payloads, same per-symbol ``_push_seq``
that keeps increasing across on/off switches, so a returning asset is never a ``stale_seq``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.integration.feeder import REPO_ROOT, TestFeeder, json_value


def proc_status_kb(pid: int, field: str = "VmRSS") -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS: resident now; VmHWM: peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (Linux ``clear_refs`` value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class ControlledFeeder(TestFeeder):
    """``TestFeeder`` publishing only the symbols in ``active``, at a rate ``hz`` that may change.

    ``symbols`` is the whole pool (every symbol that may ever be published); ``active`` starts as
    all of them. Assign ``active`` (any iterable; stored as a frozenset) and ``hz`` at any time.
    ``published`` counts payloads actually put (one per active symbol per tick). Unlike
    ``TestFeeder`` it forgets its payloads unless ``keep_payloads`` (a long burst would hold
    hundreds of thousands).
    """

    __test__ = False

    def __init__(self, client: Any, map_name: str, symbols: Iterable[str], *, hz: float = 10.0,
                 keep_payloads: bool = False, **kw: Any) -> None:
        super().__init__(client, map_name, symbols, hz=hz, **kw)
        self._active: frozenset[str] = frozenset(self.symbols)
        self.keep_payloads = keep_payloads
        self.published = 0

    @property
    def active(self) -> frozenset[str]:
        return self._active

    @active.setter
    def active(self, symbols: Iterable[str]) -> None:
        chosen = frozenset(symbols)
        unknown = chosen - set(self.symbols)
        if unknown:
            raise ValueError(f"not in the feeder's pool: {sorted(unknown)}")
        self._active = chosen  # one reference swap: the publishing thread sees old or new, never a mix

    def publish_once(self) -> None:
        active = self._active
        entries = {f"asset_{s}_ob": self.payload(s)[1] for s in self.symbols if s in active}
        if not self.keep_payloads:
            with self._lock:
                self.payloads.clear()
        if entries:
            self.map.put_all(entries)
            self.published += len(entries)
        self.ticks += 1

    def _run(self) -> None:
        # Due times advance by the *current* 1/hz, so a rate change takes effect at the next tick;
        # a publisher that falls behind does not try to catch up more than 50 ms.
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                self.publish_once()
            except Exception:
                self.errors += 1
            due = max(due + 1.0 / self.hz, time.monotonic() - 0.05)
            self._stop.wait(max(0.0, due - time.monotonic()))


class Scanner:
    """The upstream scanner: puts ``{field: n}`` (n = 1, 2, ...) under ``key`` every ``period`` s,
    closing one scan-clock bar each. The period is the scenario's bar cadence."""

    def __init__(self, client: Any, map_name: str, period: float, *, key: str = "latest_eigen_scan",
                 field: str = "scan_number") -> None:
        self.map = client.get_map(map_name).blocking()
        self.period = period
        self.key = key
        self.field = field
        self.last = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-scanner", daemon=True)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            try:
                self.map.put(self.key, json.dumps({self.field: self.last + 1}))
                self.last += 1
            except Exception:
                self.errors += 1
            due += self.period

    def start(self) -> Scanner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


class BarWitness:
    """Entry listener on a bar map: which bars were written, with their asset sets.

    ``bars[bar_idx] = (frozenset(assets), tuple(producer.stale_assets), degraded)``. The callback
    runs on the client's reactor thread: it decodes and notifies, nothing else.
    """

    def __init__(self, client: Any, map_name: str) -> None:
        self._map = client.get_map(map_name)
        self._cond = threading.Condition()
        self.bars: dict[int, tuple[frozenset[str], tuple[str, ...], bool]] = {}
        self.errors = 0
        self._reg = self._map.add_entry_listener(include_value=True, added_func=self._on,
                                                 updated_func=self._on).result()

    def _on(self, event: Any) -> None:
        try:
            value = event.value
            rec = json_value(value)
            entry = (frozenset(rec["symbols"]), tuple(rec["producer"]["stale_assets"]), bool(rec["degraded"]))
            with self._cond:
                self.bars[int(event.key)] = entry
                self._cond.notify_all()
        except Exception:
            self.errors += 1

    def wait_for(self, bar_idx: int, timeout: float) -> bool:
        """True once bar ``bar_idx`` was seen, False after ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(lambda: bar_idx in self.bars, timeout)

    def close(self) -> None:
        try:
            self._map.remove_entry_listener(self._reg).result()
        except Exception:
            pass


class AdapterProbe:
    """``tests.integration.adapter_probe`` as a subprocess: a trader loop over the adapter.

    It prints one JSON line per ``report_every`` bars and a final one (``"final": true``) on
    SIGTERM; ``lines`` collects them (decoded) from a reader thread.
    """

    def __init__(self, *, cluster_name: str, members: Iterable[str], map_name: str, assets: Iterable[str],
                 start_bar: int, cache_bars: int, report_every: int, log_dir: Path) -> None:
        self.log_path = log_dir / "adapter_probe.log"
        self._log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OBF_", "HZ_"))}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "tests.integration.adapter_probe", "--cluster", cluster_name,
               "--members", ",".join(members), "--map", map_name, "--assets", ",".join(assets),
               "--start-bar", str(start_bar), "--cache-bars", str(cache_bars), "--report-every",
               str(report_every)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO_ROOT)
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="adapter-probe-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_line(self, predicate: Any, timeout: float) -> dict[str, Any] | None:
        """The first report line satisfying ``predicate``, waiting up to ``timeout`` s."""
        def found() -> dict[str, Any] | None:
            return next((ln for ln in self.lines if predicate(ln)), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None or self.proc.poll() is not None, timeout)
            return found()

    def stop(self, timeout: float = 20.0) -> dict[str, Any] | None:
        """SIGTERM, wait, return the final report line (None if it never came)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        self._log.close()
        return next((ln for ln in reversed(self.lines) if ln.get("final")), None)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> AdapterProbe:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
