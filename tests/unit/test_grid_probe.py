"""The overload probe of ``service.grid.Grid`` (review 2, finding 1): the events backlog is judged
from the bars write's acknowledgement on a monotonic clock, never from ``updated_at``; the probe is
recorded before the write (its echo may come first); a single lost probe event never sheds.

Pure logic: the Grid's probe methods driven directly, with a fake clock (the module's ``time``)
and a fake health map on the bars connection (no member, no threads started)."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from hazelcast.future import Future

import obf_features_worker.service.grid as grid_mod
from obf_features_worker.service.config import WorkerConfig
from obf_features_worker.service.grid import Grid


class FakeTime:
    """Stands in for the ``time`` module inside grid.py: both clocks advance only when told."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += s


class Event:
    def __init__(self, value: Any) -> None:
        self.value = value
        self.key = "w"


class HealthMap:
    """The bars connection's health map: ``set`` runs ``during`` (a slow write, an early echo)
    and answers at once."""

    def __init__(self) -> None:
        self.during: Any = None
        self.docs: list[str] = []

    def set(self, key: Any, value: Any, ttl: float | None = None) -> Future[Any]:
        self.docs.append(value.to_string())
        if self.during is not None:
            self.during(value.to_string())
        fut: Future[Any] = Future()
        fut.set_result(None)
        return fut


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(grid_mod, "time", fake)
    return fake


@pytest.fixture()
def grid(clock: FakeTime) -> tuple[Grid, HealthMap]:
    g = Grid(WorkerConfig(worker_id="w"))
    health = HealthMap()
    g.bars._maps[g.config.health_map] = health
    g.events._connected.set()  # listening, past the grace period
    g._supervisor = threading.Thread(target=lambda: None)  # never started: only "shedding is on"
    g._no_shed_before = -float("inf")
    return g, health


def write(g: Grid, clock: FakeTime, stamped_ago: float = 0.0) -> str:
    updated_at = clock.wall - stamped_ago
    doc = orjson.dumps({"worker_id": "w", "updated_at": updated_at}).decode()
    g.put_health(doc, updated_at)
    return doc


def test_a_slow_bars_write_is_not_an_events_backlog(grid, clock) -> None:
    g, health = grid
    # The document was stamped, then its write took 3 bars (a migration, a member GC pause); the
    # echo comes back right after the answer: the events are not behind at all.
    health.during = lambda _doc: clock.advance(3 * g.shed_lag_s)
    doc = write(g, clock)
    g._on_probe(Event(doc))
    assert g.events_lag_s == 0.0
    clock.advance(0.5)
    g._check_backlog()
    assert not g._shed.is_set()


def test_an_echo_that_beats_the_write_answer_is_matched(grid, clock) -> None:
    g, health = grid
    health.during = lambda doc: g._on_probe(Event(doc))  # the events reactor was faster
    for _ in range(5):  # a bar each: every echo came back, nothing is pending
        write(g, clock)
        clock.advance(g.shed_lag_s * 1.5)
        g._check_backlog()
    assert not g._unechoed
    assert not g._shed.is_set()


def test_a_single_lost_probe_event_never_sheds(grid, clock) -> None:
    g, _ = grid
    write(g, clock)  # its event is lost (delivered at most once)
    clock.advance(g.shed_lag_s * 1.5)
    g._check_backlog()
    assert not g._shed.is_set()
    doc = write(g, clock)
    clock.advance(0.01)
    g._on_probe(Event(doc))  # the next one comes back at once: clears the lost one too
    assert not g._unechoed
    clock.advance(g.shed_lag_s * 3)
    g._check_backlog()
    assert not g._shed.is_set()


def test_a_real_backlog_sheds_and_reports_its_lag(grid, clock) -> None:
    g, _ = grid
    write(g, clock)
    clock.advance(1.0)
    write(g, clock)
    clock.advance(g.shed_lag_s * 0.5)
    g._check_backlog()
    assert not g._shed.is_set()  # the second is not overdue yet
    clock.advance(g.shed_lag_s)
    g._check_backlog()
    assert g._shed.is_set()
    assert g.events_lag_s == pytest.approx(1.0 + 1.5 * g.shed_lag_s)


def test_a_late_echo_measures_the_lag_from_the_acknowledgement(grid, clock) -> None:
    g, _ = grid
    doc = write(g, clock, stamped_ago=5.0)  # stamped long before (a slow bar): not counted
    clock.advance(0.4)
    g._on_probe(Event(doc))
    assert g.events_lag_s == pytest.approx(0.4)


class ListenerMap:
    """A map proxy of the events connection: ``add_entry_listener`` answers with the next of
    ``answers`` (a registration id, an exception, or None: no answer yet)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.added: list[Future[Any]] = []
        self.removed: list[str] = []

    def add_entry_listener(self, **_listener: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            fut.set_exception(answer)
        elif answer is not None:
            fut.set_result(answer)
        self.added.append(fut)
        return fut

    def remove_entry_listener(self, registration_id: str) -> Future[Any]:
        self.removed.append(registration_id)
        fut: Future[Any] = Future()
        fut.set_result(True)
        return fut


def _listening_grid(inputs: ListenerMap, health: ListenerMap) -> Grid:
    g = Grid(WorkerConfig(worker_id="w"))
    g.events._maps = {g.config.input_map: inputs, g.config.health_map: health}
    g.events.op_timeout_s = 0.0  # an answer not there yet is a timeout at once
    g._on_entry = lambda key, value, received_at: None
    return g


def test_a_retried_registration_never_adds_the_asset_listener_twice() -> None:
    # review 2, finding 2: the probe's registration failed after the asset listener's succeeded.
    inputs, health = ListenerMap(["asset-1"]), ListenerMap([RuntimeError("member busy"), "probe-1"])
    g = _listening_grid(inputs, health)
    with pytest.raises(grid_mod.GridError):
        g._listen(g.events)
    g._listen(g.events)  # the retry
    assert len(inputs.added) == 1 and len(health.added) == 2
    assert g.events.listeners == {"asset listener": "asset-1", "events probe": "probe-1"}
    g._listen(g.events)  # and again (the re-listen path): nothing new
    assert len(inputs.added) == 1 and len(health.added) == 2


def test_a_registration_that_lands_after_its_timeout_is_removed() -> None:
    inputs, health = ListenerMap([None, "asset-2"]), ListenerMap(["probe-1"])
    g = _listening_grid(inputs, health)
    with pytest.raises(grid_mod.GridError):
        g._listen(g.events)  # no answer within op_timeout_s
    g._listen(g.events)  # the retry registers a new one
    inputs.added[0].set_result("asset-late")  # the first lands after all
    assert inputs.removed == ["asset-late"]
    assert g.events.listeners["asset listener"] == "asset-2"


def test_a_shed_never_counts_the_events_disconnects_twice() -> None:
    # review 2, finding 3: the retired connection's disconnects were added while it was still
    # the current one, so Grid.disconnects (a Prometheus counter) went up, then down.
    g = Grid(WorkerConfig(worker_id="w"))
    g.events.disconnects = 2
    g.bars.disconnects = 1
    g._stopping.set()  # return right after dropping the connection (in the cool-down)
    g._shed_and_relisten()
    assert g.disconnects == 3
    assert g.connection_states()["events"]["disconnects"] == 2


class EntrySetMap:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def entry_set(self, _predicate: Any) -> Future[Any]:
        self.calls.append(self.name)
        fut: Future[Any] = Future()
        fut.set_result([("asset_AAAUSDT_ob", "{}")])
        return fut


def test_only_the_initial_read_goes_over_the_events_connection() -> None:
    # review 2, finding 4: a pull decided while shed must not go over an events connection that
    # listens again in the meantime (its full entry_set would wait behind a flood of events).
    g = Grid(WorkerConfig(worker_id="w"))
    calls: list[str] = []
    g.events._maps[g.config.input_map] = EntrySetMap("events", calls)
    g.bars._maps[g.config.input_map] = EntrySetMap("bars", calls)
    g.events._connected.set()
    g.read_assets()  # the initial read
    g._on_entry = lambda key, value, received_at: None  # listening (add_asset_listener)
    assert g.events_live()
    g.read_assets()  # the bar path's pull
    assert calls == ["events", "bars"]


class ConnectingClient:
    """Stands in for HazelcastClient: connected as soon as built (its lifecycle listener told),
    maps that register listeners (or raise, for the clients ``failing`` names)."""

    made: list[ConnectingClient] = []
    failing: set[int] = set()  # indexes in ``made`` whose listener registration raises

    def __init__(self, **settings: Any) -> None:
        from hazelcast.config import Config
        from hazelcast.lifecycle import LifecycleState
        from hazelcast.serialization.service import SerializationServiceV1

        self._serialization_service = SerializationServiceV1(Config())
        self.index = len(ConnectingClient.made)
        ConnectingClient.made.append(self)
        self.shut_down = False
        for listener in settings.get("lifecycle_listeners", []):
            listener(LifecycleState.CONNECTED)

    def get_map(self, name: str) -> Any:
        client = self

        class M:
            def add_entry_listener(self, **_listener: Any) -> Future[Any]:
                if client.index in ConnectingClient.failing:
                    raise RuntimeError("registration exploded")  # not a GridError
                fut: Future[Any] = Future()
                fut.set_result(f"reg-{client.index}-{name}")
                return fut

        return M()

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.fixture()
def connecting() -> type[ConnectingClient]:
    ConnectingClient.made = []
    ConnectingClient.failing = set()
    return ConnectingClient


def test_the_supervisor_survives_an_error_of_its_backlog_check() -> None:
    # review 2, finding 5: an exception in _check_backlog killed the thread silently.
    g = Grid(WorkerConfig(worker_id="w"))
    g._RETRY_S = 0.0
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")
        g._stopping.set()

    g._check_backlog = check  # type: ignore[method-assign]
    g._supervise()  # returns (stopping) instead of raising
    assert len(calls) == 2


def test_a_failed_relisten_stays_shed_and_retries_on_a_fresh_connection(connecting) -> None:
    # review 2, finding 5: a registration that raised (not a GridError) left the grid "listening"
    # on a connection with half its listeners.
    g = Grid(WorkerConfig(worker_id="w"), client_factory=connecting)
    g._on_entry = lambda key, value, received_at: None
    g.shed_cooldown_s, g._RETRY_S = 0.0, 0.0
    connecting.failing = {0}  # the first new events connection fails to listen
    g._shed_and_relisten()
    first, second = connecting.made
    assert first.shut_down and not second.shut_down  # the failed one is gone, no half listeners
    assert g.events._client is second and g.events.listeners == {
        "asset listener": f"reg-1-{g.config.input_map}", "events probe": f"reg-1-{g.config.health_map}"}
    assert g.events_live() and g.events_sheds == 1 and not g._shed.is_set()


def test_a_connection_started_after_shutdown_began_is_shut_down(connecting) -> None:
    # review 2, finding 6: the supervisor started a client nobody would shut down.
    g = Grid(WorkerConfig(worker_id="w"), client_factory=connecting)
    g._on_entry = lambda key, value, received_at: None
    g._stopping.set()
    assert g._relisten() is False
    assert [c.shut_down for c in connecting.made] == [True]


def test_shutdown_closes_the_events_connection_before_joining_the_supervisor() -> None:
    # review 2, finding 6: a supervisor waiting on the events connection held shutdown up.
    g = Grid(WorkerConfig(worker_id="w"))
    seen: list[bool] = []

    class Supervisor:
        def join(self, timeout: float | None = None) -> None:
            seen.append(g.events.closed)
            g.events = g._new_events()  # swapped in meanwhile: shut down too

    g._supervisor = Supervisor()  # type: ignore[assignment]
    g.shutdown()
    assert seen == [True] and g.events.closed and g.bars.closed


def test_no_shedding_before_the_grace_deadline(grid, clock) -> None:
    g, _ = grid
    g._no_shed_before = clock.mono + 10.0  # just listening (the first bars stall the process)
    write(g, clock)
    write(g, clock)
    clock.advance(5.0)
    g._check_backlog()
    assert not g._shed.is_set()
    clock.advance(5.0)
    g._check_backlog()
    assert g._shed.is_set()


def test_only_a_write_given_its_updated_at_is_a_probe(grid, clock) -> None:
    g, _ = grid
    g.put_health('{"worker_id": "w", "updated_at": 5.0}')  # not parsed again: no probe
    assert not g._unechoed
    g.put_health('{"worker_id": "w", "updated_at": 5.0}', 5.0)
    assert [key for key, _ in g._unechoed] == [5.0]


def test_a_shed_is_reported_apart_from_a_lost_connection() -> None:
    # review 2, complexity: events "connected" was False while shed, so obf_connection_up paged.
    g = Grid(WorkerConfig(worker_id="w"))
    g._stopping.set()
    g._shed_and_relisten()  # dropped on purpose, in the cool-down
    events = g.connection_states()["events"]
    assert (events["connected"], events["shed"], events["sheds"]) == (True, True, 1)
    assert not g.events_live()  # the worker pulls meanwhile
    g._shedding = False  # listening again, but the connection is lost
    events = g.connection_states()["events"]
    assert (events["connected"], events["shed"]) == (False, False)
