"""The one in-memory grid of the unit tests, and the worker factory that closes what it built.

``FakeGrid`` implements ``service.grid.WorkerGrid`` (mypy checks the assignment at the bottom;
``tests/unit/test_fakes.py`` checks it at run time and against the real ``Grid``). Several fake
grids can share one ``FakeCluster`` (the features map, the state map with the lease entry, the
checkpoint), as workers on one cluster do. ``FakeClock`` / ``FakeMap`` model time and the
lease's IMap operations (Hazelcast 5.5 semantics). Pure logic: no member, no sockets.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hazelcast.core import HazelcastJsonValue

from obf_features_worker.service.config import WorkerConfig
from obf_features_worker.service.grid import GridError, WorkerGrid
from obf_features_worker.service.lease import LeaseMap
from obf_features_worker.service.worker import Worker


class FakeClock:
    """Monotonic and wall seconds the test moves by hand (``t``)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1.7e9 + self.t


class FakeMap:
    """The IMap operations the lease uses, with Hazelcast's semantics as measured on 5.5:
    values compare by serialized form (type + text); put_if_absent(ttl) sets a TTL, ttl=0 means
    none; replace_if_same clears the TTL; set_ttl sets one on a present entry; expired = absent."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.data: dict[Any, tuple[Any, float]] = {}
        self.fail: Exception | None = None

    @staticmethod
    def _ser(v: Any) -> tuple[str, str]:
        return (type(v).__name__, v.to_string() if isinstance(v, HazelcastJsonValue) else v)

    def _live(self, key: Any) -> Any:
        entry = self.data.get(key)
        if entry is None:
            return None
        if self.clock.t >= entry[1]:
            del self.data[key]
            return None
        return entry[0]

    def _fail_if_set(self) -> None:
        if self.fail is not None:
            raise self.fail

    def get(self, key: Any) -> Any:
        self._fail_if_set()
        return self._live(key)

    def put_if_absent(self, key: Any, value: Any, ttl: float | None = None) -> Any:
        self._fail_if_set()
        cur = self._live(key)
        if cur is not None:
            return cur
        self.data[key] = (value, self.clock.t + ttl if ttl else math.inf)
        return None

    def replace_if_same(self, key: Any, old_value: Any, new_value: Any) -> bool:
        self._fail_if_set()
        cur = self._live(key)
        if cur is None or self._ser(cur) != self._ser(old_value):
            return False
        self.data[key] = (new_value, math.inf)
        return True

    def set_ttl(self, key: Any, ttl: float) -> None:
        self._fail_if_set()
        cur = self._live(key)
        if cur is not None:
            self.data[key] = (cur, self.clock.t + ttl if ttl else math.inf)


class Killed(BaseException):
    """Stands for SIGKILL: raised inside a grid call, it unwinds the worker mid-bar."""


class FakeCluster:
    """The shared grid state; ``writes`` counts successful writes per bar key."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock if clock is not None else FakeClock()
        self.features: dict[int, str] = {}
        self.writes: Counter[int] = Counter()
        self.checkpoint: Any = None
        self.lease = FakeMap(self.clock)
        self.scan_value: Any = None
        self.retention: list[tuple[int, int]] = []


class FakeGrid:
    """One worker's connection to a ``FakeCluster`` (its own by default).

    ``kill_at=(op, bar_idx or None)`` raises ``Killed`` in that call, ``kill_at_op=n`` in the n-th
    call (``ops`` logs every call: the crash model test kills at each one); ``offline`` (alias
    ``failing``) makes every call fail like a lost connection (``GridError``). Records what the
    worker did: ``write_calls`` (bars, in call order), ``get_calls`` (re-read keys), ``latest``
    and ``health`` (decoded documents); ``bars`` is the features map decoded."""

    def __init__(self, cluster: FakeCluster | None = None) -> None:
        self.c = cluster if cluster is not None else FakeCluster()
        self.kill_at: tuple[str, int | None] | None = None
        self.ops: list[tuple[str, int | None]] = []  # every grid call, in order: (name, bar or None)
        self.kill_at_op: int | None = None  # raise Killed on entering the grid call numbered so (1-based)
        self.offline = False
        # Bars whose next write is applied and then reported failed (a timeout while partitions
        # migrate: the caller cannot tell whether it landed).
        self.ambiguous_writes: set[int] = set()
        self.connected = False  # as the real Grid before connect(); tests driving process_bar need not connect
        self.closed = False
        self.listener_errors = 0
        self.disconnects = 0
        self.events_shed = False
        self.inputs: dict[str, Any] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.health: list[dict[str, Any]] = []
        self.health_probes: list[float | None] = []  # put_health's updated_at (the overload probe)
        self.get_calls: list[list[str]] = []
        self.write_calls: list[int] = []
        self.asset_listeners: list[Callable[[Any, Any, float], None]] = []
        self.scan_listeners: list[Callable[[Any, float], None]] = []

    @property
    def failing(self) -> bool:
        return self.offline

    @failing.setter
    def failing(self, value: bool) -> None:
        self.offline = value

    @property
    def bars(self) -> dict[int, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.c.features.items()}

    @property
    def retention(self) -> list[tuple[int, int]]:
        return self.c.retention

    def _op(self, name: str, bar: int | None = None) -> None:
        self.ops.append((name, bar))
        if self.kill_at_op is not None and len(self.ops) == self.kill_at_op:
            raise Killed(f"{name} (op {self.kill_at_op})")
        if self.kill_at is not None and self.kill_at[0] == name and self.kill_at[1] in (None, bar):
            raise Killed(name)
        if self.offline:
            raise GridError(name, "ClientOfflineError: No connection found to cluster")

    # --- connection and listeners ------------------------------------------------------

    def connect(self, stop: threading.Event) -> bool:
        """Connected at once, unless ``stop`` is already set (then False, as the real one)."""
        self.connected = not stop.is_set()
        return self.connected

    def shutdown(self) -> None:
        self.connected = False
        self.closed = True

    def events_live(self) -> bool:
        """False while a test sets ``events_shed`` (the real Grid's overload shedding)."""
        return not self.events_shed

    def connection_states(self) -> dict[str, dict[str, Any]]:
        """The real Grid's shape: both connections share this fake's state."""
        state = {"connected": self.connected, "disconnects": self.disconnects}
        return {"bars": dict(state), "events": dict(state)}

    def add_asset_listener(self, on_entry: Callable[[Any, Any, float], None]) -> None:
        self._op("add_asset_listener")
        self.asset_listeners.append(on_entry)

    def add_scan_listener(self, on_update: Callable[[Any, float], None]) -> None:
        self._op("add_scan_listener")
        self.scan_listeners.append(on_update)

    # --- reads and writes --------------------------------------------------------------

    def read_assets(self) -> dict[Any, Any]:
        self._op("read_assets")
        return dict(self.inputs)

    def get_assets(self, keys: Iterable[str]) -> dict[Any, Any]:
        self._op("get_assets")
        keys = list(keys)
        self.get_calls.append(keys)
        return {k: self.inputs[k] for k in keys if k in self.inputs}

    def write_bar(self, bar_idx: int, record_json: str) -> None:
        self._op("write_bar", bar_idx)
        self.write_calls.append(bar_idx)
        self.c.features[bar_idx] = record_json
        self.c.writes[bar_idx] += 1
        if bar_idx in self.ambiguous_writes:
            self.ambiguous_writes.discard(bar_idx)
            raise GridError("write_bar", "OperationTimeoutError: applied, but no answer in time")

    def put_bar_if_absent(self, bar_idx: int, record_json: str) -> bool:
        self._op("write_bar", bar_idx)
        self.write_calls.append(bar_idx)
        if bar_idx in self.c.features:
            return False
        self.c.features[bar_idx] = record_json
        self.c.writes[bar_idx] += 1
        return True

    def has_bar(self, bar_idx: int) -> bool:
        self._op("has_bar", bar_idx)
        return bar_idx in self.c.features

    def get_records(self, bar_idxs: Iterable[int]) -> dict[int, Any]:
        keys = [int(b) for b in bar_idxs]
        self._op("get_records", keys[-1] if keys else None)
        return {k: HazelcastJsonValue(self.c.features[k]) for k in keys if k in self.c.features}

    def bar_keys_between(self, low_exclusive: int, high_exclusive: int) -> list[int]:
        self._op("bar_keys")
        return sorted(k for k in self.c.features if low_exclusive < k < high_exclusive)

    def remove_bars_outside(self, low_exclusive: int, high_inclusive: int) -> None:
        self._op("retention")
        self.c.retention.append((low_exclusive, high_inclusive))
        self.c.features = {k: v for k, v in self.c.features.items() if low_exclusive < k <= high_inclusive}

    def put_latest(self, entries: Mapping[str, str]) -> None:
        docs = {k: json.loads(v) for k, v in entries.items()}
        self._op("put_latest", next(iter(docs.values()))["bar_idx"] if docs else None)
        self.latest.update(docs)

    def put_health(self, doc_json: str, updated_at: float | None = None) -> None:
        self._op("put_health")
        self.health.append(json.loads(doc_json))
        self.health_probes.append(updated_at)

    def get_checkpoint(self) -> Any:
        self._op("get_checkpoint")
        return self.c.checkpoint

    def put_checkpoint(self, text: str) -> None:
        self._op("put_checkpoint", json.loads(text)["body"]["bar_idx"])
        self.c.checkpoint = HazelcastJsonValue(text)

    def get_scan_value(self) -> Any:
        self._op("get_scan_value")
        return self.c.scan_value

    def lease_map(self) -> LeaseMap:
        return _GuardedLeaseMap(self)


class _GuardedLeaseMap:
    """The cluster's lease map as one grid sees it: calls fail while that grid is offline."""

    def __init__(self, grid: FakeGrid) -> None:
        self._grid = grid

    def get(self, key: Any) -> Any:
        self._grid._op("lease")
        return self._grid.c.lease.get(key)

    def put_if_absent(self, key: Any, value: Any, ttl: float | None = None) -> Any:
        self._grid._op("lease")
        return self._grid.c.lease.put_if_absent(key, value, ttl)

    def replace_if_same(self, key: Any, old_value: Any, new_value: Any) -> bool:
        self._grid._op("lease")
        return self._grid.c.lease.replace_if_same(key, old_value, new_value)

    def set_ttl(self, key: Any, ttl: float) -> None:
        self._grid._op("lease")
        self._grid.c.lease.set_ttl(key, ttl)


class WorkerFactory:
    """Builds workers on fake grids and closes every one it built (``close_all``; the ``workers``
    fixture of ``tests/unit/conftest.py`` calls it at teardown, whatever the test did)."""

    def __init__(self) -> None:
        self.made: list[Worker] = []

    def __call__(self, config: WorkerConfig, grid: FakeGrid | None = None, *, cls: type[Worker] = Worker,
                 **kwargs: Any) -> tuple[Worker, FakeGrid]:
        grid = grid if grid is not None else FakeGrid()
        worker = cls(config, grid=grid, **kwargs)
        self.made.append(worker)
        return worker, grid

    def close_all(self) -> None:
        for worker in reversed(self.made):
            worker.close()
        self.made.clear()


def _implements_the_protocol(grid: FakeGrid) -> WorkerGrid:
    return grid  # mypy checks this: FakeGrid is a WorkerGrid
