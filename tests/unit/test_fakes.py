"""The unit tests' fake grid is a ``WorkerGrid`` like the real ``Grid`` (same methods, same
parameters), and workers built by the ``workers`` fixture are closed in order: the lease
released before the client shuts down, once."""

from __future__ import annotations

import inspect
import re
import threading
from typing import Any

import pytest

from obf_features_worker.service.config import WorkerConfig
from obf_features_worker.service.grid import Grid, WorkerGrid
from obf_features_worker.service.lease import LeaderLease
from obf_features_worker.service.worker import Worker
from tests.fakes import FakeClock, FakeCluster, FakeGrid, WorkerFactory

PROTOCOL_METHODS = sorted(name for name, v in vars(WorkerGrid).items()
                          if callable(v) and not name.startswith("_"))


def _params(fn: Any) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@pytest.mark.parametrize("cls", [Grid, FakeGrid])
def test_grid_and_fake_implement_the_protocol_with_the_same_parameters(cls: type) -> None:
    grid = cls(WorkerConfig(worker_id="w")) if cls is Grid else cls()
    assert isinstance(grid, WorkerGrid)
    for name in PROTOCOL_METHODS:
        assert _params(getattr(cls, name)) == _params(getattr(WorkerGrid, name)), name
    assert isinstance(grid.connected, bool) and isinstance(grid.closed, bool)


def test_the_protocol_covers_every_grid_call_of_the_worker() -> None:
    # Every `self.grid.X` in the worker is a Protocol member (so a fake that passes is enough).
    source = inspect.getsource(inspect.getmodule(Worker))  # type: ignore[arg-type]
    used = set(re.findall(r"self\.grid\.(\w+)", source))
    members = set(PROTOCOL_METHODS) | {"connected", "closed", "listener_errors", "disconnects"}
    assert used and used <= members, used - members


def test_close_releases_the_lease_then_shuts_the_client_once(workers: WorkerFactory) -> None:
    order: list[str] = []
    clock = FakeClock()
    grid = FakeGrid(FakeCluster(clock))

    class Recorded(Worker):
        def make_lease(self, min_epoch: int) -> LeaderLease:
            lease = LeaderLease(self.grid.lease_map(), self.config.worker_id, self.config.lease_settings(),
                                min_epoch=min_epoch, clock=clock.mono, wall=clock.wall)
            release = lease.release
            lease.release = lambda: (order.append("lease"), release())[1]  # type: ignore[method-assign]
            return lease

    shutdown = grid.shutdown
    grid.shutdown = lambda: (order.append("client"), shutdown())[1]  # type: ignore[method-assign]
    w, _ = workers(WorkerConfig(worker_id="w", clock="scan", bar_seconds=1.0), grid, cls=Recorded,
                   monotonic=clock.mono)
    assert grid.connect(threading.Event())
    w.before_first_bar()
    w.close()
    w.close()
    assert order == ["lease", "client"] and grid.closed


def test_the_factory_closes_every_worker_it_built() -> None:
    factory = WorkerFactory()
    grids = [factory(WorkerConfig(worker_id=f"w{i}", clock="scan", bar_seconds=1.0))[1] for i in range(3)]
    assert not any(g.closed for g in grids)
    factory.close_all()
    assert all(g.closed for g in grids) and factory.made == []
