"""All Hazelcast I/O of the package: the worker (``Grid``: client, listeners, reads, writes), its
feeder (``Publisher``: upstream-format payloads into the input map) and the read-only inspection
commands (``connect``, ``InspectionReader``, ``BarListener``: status, watch, plot, sql).

Threading: listener callbacks run on the client's reactor thread; they only hand the event to
the callback given (which must not block) and count what escapes it, because an exception
escaping a callback makes the client drop its connection. Every blocking call below is made
from the worker's bar loop thread and waits at most ``op_timeout_s``.

Connection: the client is started asynchronously and reconnects forever by default
(``cluster_connect_timeout=-1``) with ``ReconnectMode.ASYNC``, so while the cluster is away
calls fail at once with ``ClientOfflineError`` instead of blocking the bar loop; the worker
keeps a backlog. The client re-registers listeners on every new connection by itself
(``hazelcast.listener.ListenerService._connection_added``).

Security: every client built here refuses pickled values (``pickle_guard.refuse_pickle``, before
any listener or read) and takes the TLS/authentication settings of ``client_security`` (from the
worker's config, or from the environment for the feeder).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson
from hazelcast import predicate as P
from hazelcast.aggregator import max_
from hazelcast.client import HazelcastClient
from hazelcast.config import ReconnectMode
from hazelcast.core import HazelcastJsonValue
from hazelcast.errors import HazelcastError, HazelcastSerializationError
from hazelcast.future import Future
from hazelcast.lifecycle import LifecycleState
from hazelcast.proxy.map import BlockingMap, Map

from obf_contract.client import make_client, reconnect_settings
from obf_contract.cluster import check_cluster_name, check_members
from obf_contract.keys import ASSET_KEY_FILTER, asset_key
from obf_contract.record import loads_record
from obf_contract.security import describe, tls_auth_settings
from obf_features_worker.logs import RateLimiter
from obf_features_worker.service.config import WorkerConfig

if TYPE_CHECKING:
    from obf_features_worker.service.lease import LeaseMap

log = logging.getLogger(__name__)

# Every asset_..._ob key, malformed symbols included (counted as bad_symbol by ingest, never
# dropped silently on the member); other keys (the scan key, etc.) stay on the member.
ASSET_KEY_PATTERN = ASSET_KEY_FILTER
# Key of the checkpoint entry in DOLPHIN_OBF_STATE (one shared entry: a standby restores the
# leader's checkpoint on takeover); the lease is the other entry (lease.LEASE_KEY).
CHECKPOINT_KEY = "checkpoint"


class GridError(RuntimeError):
    """A grid call failed or timed out (``what`` names the call)."""

    def __init__(self, what: str, cause: BaseException | str) -> None:
        detail = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{what} failed: {detail}")
        self.what = what


class GridClosed(GridError):
    """The client shut down by itself (e.g. the connect timeout ran out)."""


@dataclass(frozen=True, slots=True)
class UnreadableValue:
    """Stands in for a map value the client could not deserialise (e.g. a Java object of an
    unknown type); ingest rejects it like any other non-JSON value (``bad_json``)."""

    detail: str


def asset_key_regex(assets: Iterable[str] | None) -> str:
    """Server-side key filter (a full-match Java regex on ``__key``): every key shaped
    ``asset_..._ob`` (``ASSET_KEY_FILTER``), or exactly the keys of ``assets``."""
    if assets is None:
        return ASSET_KEY_PATTERN
    keys = sorted(asset_key(s) for s in assets)  # validates the symbols
    return "^(" + "|".join(keys) + ")$"


def client_settings(cluster_name: str, members: Iterable[str], client_name: str, *,
                    connect_timeout_s: float | None = None, reconnect_backoff_max_s: float = 5.0,
                    security: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The worker's and the feeder's client: start without blocking, never block calls while
    disconnected (they fail at once), reconnect with backoff up to ``reconnect_backoff_max_s``,
    forever (``connect_timeout_s`` None). security: TLS/authentication keywords, passed through."""
    return dict(
        cluster_name=cluster_name,
        members=list(members),
        client_name=client_name,
        security=dict(security or {}),
        async_start=True,
        reconnect_mode=ReconnectMode.ASYNC,
        **reconnect_settings(connect_timeout_s, reconnect_backoff_max_s),
    )


class _Connection:
    """A client with connection-state tracking and bounded waits; base of Grid and Publisher."""

    def __init__(self, settings: dict[str, Any], *, op_timeout_s: float,
                 client_factory: Callable[..., Any] | None = None, role: str = "client") -> None:
        self._settings = settings
        self.role = role  # in log lines and health: which of a process's connections this is
        self.op_timeout_s = op_timeout_s
        self._client_factory = client_factory
        self._client: Any = None
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._ever_connected = False
        self._lock = threading.Lock()
        self._maps: dict[str, Any] = {}
        self.map_names: tuple[str, ...] = ()  # proxies opened once connected
        self.disconnects = 0
        # Listener registration ids by name: each registered once per connection however often a
        # registration is retried (the client re-registers them itself after a reconnect).
        self.listeners: dict[str, str] = {}

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def closed(self) -> bool:
        """True once the client has shut down (by us or because it gave up)."""
        return self._closed.is_set()

    def connect(self, stop: threading.Event) -> bool:
        """Start the client and wait until it is connected (True) or ``stop`` is set (False).

        Raises GridClosed if the client gives up (its connect timeout ran out).
        """
        self.start()
        return self.wait_connected(stop)

    def start(self) -> None:
        """Build the client (it connects in the background: ``async_start``)."""
        s = self._settings
        timeout = s["cluster_connect_timeout"]
        log.info("connecting cluster=%s members=%s connect_timeout_s=%s security=%s connection=%s",
                 s["cluster_name"], ",".join(s["members"]), "never" if timeout == -1 else timeout,
                 describe(s["security"]), self.role)
        self._client = make_client(**s, factory=self._client_factory, lifecycle_listeners=[self._on_lifecycle])

    def wait_connected(self, stop: threading.Event) -> bool:
        """After ``start()``: wait until connected (True, its map proxies open) or ``stop`` is set
        (False); GridClosed if the client gives up."""
        while not stop.is_set():
            if self._connected.wait(0.2):
                self._open_maps()
                return True
            if self._closed.is_set():
                raise GridClosed("connect", f"{self.role} client shut down before connecting "
                                            "(connect timeout ran out)")
        return False

    def state(self) -> dict[str, Any]:
        """``{"connected": bool, "disconnects": n}`` (health)."""
        return {"connected": self.connected, "disconnects": self.disconnects}

    def _open_maps(self) -> None:
        # get_map() blocks on a create-proxy call the first time; do it once while connected so
        # the loops only ever use cached proxies.
        for name in self.map_names:
            self._map(name)

    def _on_lifecycle(self, state: str) -> None:
        # Reactor / connection thread: flags and a log line only.
        try:
            name = self._settings["cluster_name"]
            if state == LifecycleState.CONNECTED:
                first = not self._ever_connected
                self._ever_connected = True
                self._connected.set()
                if first:
                    log.info("connected cluster=%s connection=%s", name, self.role)
                else:
                    log.warning("reconnected cluster=%s disconnects=%d connection=%s", name, self.disconnects,
                                self.role)
            elif state == LifecycleState.DISCONNECTED:
                self._connected.clear()
                if not self._closed.is_set():  # not our own shutdown
                    self.disconnects += 1
                    log.warning("disconnected from cluster=%s, reconnecting connection=%s", name, self.role)
            elif state in (LifecycleState.SHUTTING_DOWN, LifecycleState.SHUTDOWN):
                self._connected.clear()
                self._closed.set()
        except Exception:  # noqa: BLE001,S110 - never into the client's threads
            pass

    def shutdown(self) -> None:
        """Disconnect (idempotent)."""
        client = self._client
        if client is not None:
            try:
                client.shutdown()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.warning("client shutdown connection=%s error=%r", self.role, exc)
        self._closed.set()

    def _map(self, name: str) -> Any:
        proxy = self._maps.get(name)
        if proxy is not None:
            return proxy
        if self._client is None:
            raise GridError(f"map {name}", "not connected (connect() not called)")
        try:
            proxy = self._client.get_map(name)
        except Exception as exc:
            raise GridError(f"open map {name}", exc) from exc
        self._maps[name] = proxy
        return proxy

    def _wait(self, fut: Future[Any], what: str, timeout: float | None = None) -> Any:
        """The future's result within ``timeout`` (default op_timeout_s), else GridError."""
        done = threading.Event()
        fut.add_done_callback(lambda _f: done.set())
        limit = self.op_timeout_s if timeout is None else timeout
        if not done.wait(limit):
            raise GridError(what, f"no answer within {limit:g} s")
        try:
            return fut.result()
        except Exception as exc:
            raise GridError(what, exc) from exc


@runtime_checkable
class WorkerGrid(Protocol):
    """What the worker needs of the cluster: the real ``Grid`` and the unit tests' fake
    (``tests/fakes.py``) both implement it (checked by mypy and by a test).

    Every call but ``connect`` / ``shutdown`` waits at most ``op_timeout_s`` and raises
    ``GridError`` (``GridClosed`` once the client gave up); listener callbacks run on the
    client's reactor thread."""

    listener_errors: int  # listener callbacks that raised (counted, never propagated)

    @property
    def disconnects(self) -> int: ...  # connections lost since start (a reconnect may follow a member restarted empty)
    @property
    def connected(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def connection_states(self) -> dict[str, dict[str, Any]]: ...
    def events_live(self) -> bool: ...
    def connect(self, stop: threading.Event) -> bool: ...
    def shutdown(self) -> None: ...
    def add_asset_listener(self, on_entry: Callable[[Any, Any, float], None]) -> None: ...
    def add_scan_listener(self, on_update: Callable[[Any, float], None]) -> None: ...
    def read_assets(self) -> dict[Any, Any]: ...
    def get_assets(self, keys: Iterable[str]) -> dict[Any, Any]: ...
    def get_scan_value(self) -> Any: ...
    def get_checkpoint(self) -> Any: ...
    def put_checkpoint(self, text: str) -> None: ...
    def lease_map(self) -> LeaseMap: ...
    def write_bar(self, bar_idx: int, record_json: str) -> None: ...
    def put_bar_if_absent(self, bar_idx: int, record_json: str) -> bool: ...
    def has_bar(self, bar_idx: int) -> bool: ...
    def get_records(self, bar_idxs: Iterable[int]) -> dict[int, Any]: ...
    def bar_keys_between(self, low_exclusive: int, high_exclusive: int) -> list[int]: ...
    def remove_bars_outside(self, low_exclusive: int, high_inclusive: int) -> None: ...
    def put_latest(self, entries: Mapping[str, str]) -> None: ...
    def put_health(self, doc_json: str, updated_at: float | None = None) -> None: ...


class Grid:
    """The worker's view of the cluster: two client connections, each with its own reactor thread.

    ``events``: the asset entry listener and the initial read, nothing else. Above the ingest
    ceiling its reactor is busy decoding events and its socket holds thousands of them; a call
    made on it would wait behind them. ``bars``: everything the bar loop does (the stale re-read,
    records, LATEST, checkpoint, health, lease, retention) and the scan listener (the bar clock's
    trigger must not queue behind asset events either). So a bar's writes are answered however
    many events are in flight. Create, ``connect()`` (both), use, ``shutdown()`` (events first,
    then bars: the last writes and the lease release go out on ``bars`` before it closes).

    Overload (events offered faster than the events reactor decodes them): the member queues the
    surplus for this connection (in its heap, without bound) and every event arrives later. The
    events connection also listens to this worker's own health entry (written on ``bars`` every
    bar): the time from the write's acknowledgement to its event's arrival (``time.monotonic()``)
    is the events backlog, in seconds (``events_lag_s``; ``updated_at`` only matches the event to
    its write). Two documents acknowledged more than ``shed_lag_s`` (one bar) ago whose events
    have not come back show a backlog past ``shed_lag_s`` without waiting for it (one alone may be
    a lost event: delivered at most once); then a supervisor thread
    drops the events connection (the member discards its queue), waits ``shed_cooldown_s``
    (doubled for each shed within a cool-down of listening again, up to ``shed_cooldown_max_s``)
    and listens again on a new one; meanwhile ``events_live()`` is False and the worker re-reads
    every asset at bar close (one read: the newest value of each asset, whatever the offered rate).
    No shedding within ``shed_grace_s`` (5 bars) of the first listening, nor of an events reconnect:
    the first bars stall the whole process (compiles), and a reconnected client re-registers its
    listeners in the background. ``events_sheds`` counts the drops."""

    def __init__(self, config: WorkerConfig, *,
                 client_factory: Callable[..., Any] | None = None) -> None:
        def connection(role: str, name: str, map_names: Iterable[str]) -> _Connection:
            conn = _Connection(
                client_settings(config.cluster_name, config.members, name,
                                connect_timeout_s=config.connect_timeout_s,
                                reconnect_backoff_max_s=config.reconnect_backoff_max_s,
                                security=dict(config.tls_auth)),
                op_timeout_s=config.op_timeout_s, client_factory=client_factory, role=role)
            conn.map_names = tuple(sorted(set(map_names)))
            return conn

        c = config
        client_name = f"obf-features-worker:{config.worker_id}"
        self.bars = connection("bars", client_name,
                               (c.input_map, c.features_map, c.health_map, c.latest_map, c.scan_map, c.state_map))
        self._new_events: Callable[[], _Connection] = lambda: connection("events", client_name + ":events",
                                                                         (c.input_map, c.health_map))
        self.events = self._new_events()
        self.config = config
        self.op_timeout_s = config.op_timeout_s
        self.listener_errors = 0
        self._lock = threading.Lock()
        self._limiter = RateLimiter(10.0)
        self._asset_regex = asset_key_regex(config.assets)
        # Overload shedding (class docstring).
        self.shed_lag_s = max(float(config.bar_seconds), 1.0)
        self.shed_cooldown_s = max(10.0 * float(config.bar_seconds), 10.0)  # the first; doubled per shed in a row
        self.shed_cooldown_max_s = 30.0 * self.shed_cooldown_s
        self._cooldown_s = self.shed_cooldown_s
        self._relistened_at = -math.inf  # time.monotonic() of the last listening again
        # No shedding this long after (re)listening: the first bars stall the whole process (numba
        # compiles, the initial read), which delays the probe without any event backlog.
        self.shed_grace_s = max(5.0 * float(config.bar_seconds), 10.0)
        self._no_shed_before = math.inf  # time.monotonic(): never before listening, then the grace
        self._events_disconnects_seen = 0  # of the current events connection, at the last check
        self.events_sheds = 0
        self.events_lag_s: float | None = None  # the last probe's backlog, s
        self._on_entry: Callable[[Any, Any, float], None] | None = None
        self._shed = threading.Event()  # set on the events reactor when its backlog passes shed_lag_s
        self._shedding = False  # the events connection is down on purpose
        self._retired_disconnects = 0  # of events connections replaced after a shed
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        # The health documents written whose probe event has not come back yet, oldest first, each
        # [updated_at (only the key an echo is matched by), acked (time.monotonic() the write
        # returned; None until then)]. Appended BEFORE the write: its echo may come back on the
        # events reactor before the write's answer reaches the bar thread.
        self._unechoed: deque[list[float | None]] = deque(maxlen=256)

    # --- connections -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """The bar path's connection is up (writes can go out)."""
        return self.bars.connected

    @property
    def closed(self) -> bool:
        """True once either client has shut down (by us, or because it gave up); not while the
        events connection is dropped on purpose (overload)."""
        return self.bars.closed or (self.events.closed and not self._shedding)

    @property
    def disconnects(self) -> int:
        """Connections lost since start, both clients together (a reconnect may follow a member
        that restarted empty)."""
        with self._lock:  # the events connection and its retired count change together (a shed)
            events = self._retired_disconnects + self.events.disconnects
        return self.bars.disconnects + events

    def events_live(self) -> bool:
        """The asset events are coming: the events connection is up and not shed."""
        return self.events.connected and not self._shedding

    def connection_states(self) -> dict[str, dict[str, Any]]:
        """Per connection: ``bars`` ``{"connected", "disconnects"}``; ``events`` also ``"shed"``
        (True while dropped on purpose for overload: ``connected`` stays True then, a designed state
        is not a lost connection), ``"sheds"`` (drops so far) and ``"lag_s"`` (its backlog at the
        last probe, s; None before one)."""
        with self._lock:
            events = self.events.state()
            retired = self._retired_disconnects
        shed = self._shedding
        events.update(connected=events["connected"] or shed, shed=shed, disconnects=retired + events["disconnects"],
                      sheds=self.events_sheds,
                      lag_s=None if self.events_lag_s is None else round(self.events_lag_s, 3))
        return {"bars": self.bars.state(), "events": events}

    def connect(self, stop: threading.Event) -> bool:
        """Start both clients and wait until both are connected (True) or ``stop`` is set (False).

        Raises GridClosed if a client gives up (its connect timeout ran out)."""
        self.bars.start()
        self.events.start()
        return self.bars.wait_connected(stop) and self.events.wait_connected(stop)

    def shutdown(self) -> None:
        """Disconnect both (idempotent): events first (no more input), then the bar path.

        The events connection is shut down before the supervisor is joined (a supervisor waiting
        on it returns at once), and again after: one the supervisor swapped in meanwhile is shut
        down too (and a supervisor that starts one after ``_stopping`` shuts it down itself)."""
        self._stopping.set()
        self.events.shutdown()
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(self.op_timeout_s + 1.0)
        self.events.shutdown()
        self.bars.shutdown()

    # --- overload: shedding the events connection -------------------------------------

    # Between failed attempts of the supervisor (a new events connection that did not listen).
    _RETRY_S = 1.0

    def _supervise(self) -> None:
        """Supervisor thread: on a shed request, drop the events connection, wait the cool-down,
        listen again on a new one (the same callback). Never raises: an error is logged
        (rate-limited) and the loop goes on after ``_RETRY_S``."""
        while not self._stopping.is_set():
            try:
                if not self._shed.wait(0.25):
                    self._check_backlog()
                elif not self._stopping.is_set():
                    self._shed_and_relisten()
            except Exception as exc:  # noqa: BLE001 - the thread must survive, or no shedding ever again
                suppressed = self._limiter.allow("supervisor")
                if suppressed is not None:
                    log.error("events supervisor failed error=%r suppressed_since_last=%d", exc, suppressed)
                self._stopping.wait(self._RETRY_S)

    def _shed_and_relisten(self) -> None:
        old = self.events
        self._shedding = True
        self.events_sheds += 1
        # Overload that persists sheds again soon after listening again: each such shed doubles the
        # cool-down (fewer floods of a bar loop that keeps up by pulling); a calm spell resets it.
        if time.monotonic() - self._relistened_at < self._cooldown_s:
            self._cooldown_s = min(2.0 * self._cooldown_s, self.shed_cooldown_max_s)
        else:
            self._cooldown_s = self.shed_cooldown_s
        log.warning("events listener behind lag_s=%.1f > shed_lag_s=%.1f: dropping the events connection (the "
                    "member discards its queue); every asset re-read at bar close for cooldown_s=%g sheds=%d",
                    self.events_lag_s or math.nan, self.shed_lag_s, self._cooldown_s, self.events_sheds)
        self._retire(old)
        delay = self._cooldown_s
        while not self._stopping.wait(delay):
            if self._relisten():
                return
            delay = self._RETRY_S

    def _retire(self, conn: _Connection) -> None:
        """Shut ``conn`` down and put a new (not started) events connection in its place."""
        conn.shutdown()
        with self._lock:  # one step: its disconnects are never counted twice (nor go down)
            self._retired_disconnects += conn.disconnects
            self.events = self._new_events()  # started when listening again

    def _relisten(self) -> bool:
        """Start the new events connection and listen on it: True once listening (or when the
        client gave up: GridClosed, the worker sees ``closed`` and exits); False to try again on
        a fresh connection (this one is shut down: no half-registered listeners stay) or when
        stopping. Stays shed until it returns True."""
        new = self.events
        try:
            new.start()
            if self._stopping.is_set():  # shutdown() may have passed this connection already
                new.shutdown()
                return False
            if not new.wait_connected(self._stopping):
                new.shutdown()
                return False
            self._listen(new)
        except GridClosed as exc:
            log.error("events connection gave up error=%s", exc)
            self._shedding = False  # ``closed`` is True now: the worker exits
            self._shed.clear()
            return True
        except Exception as exc:  # noqa: BLE001 - any failure: a fresh connection, after _RETRY_S
            log.warning("listening again failed, retrying on a new events connection error=%r", exc)
            self._retire(new)
            return False
        self.events_lag_s = None
        with self._lock:
            self._unechoed.clear()  # written while shed: no event will come for them
        self._relistened_at = time.monotonic()
        self._shedding = False
        self._shed.clear()
        log.warning("events listener back after shedding sheds=%d", self.events_sheds)
        return True

    def _check_backlog(self) -> None:
        # Health documents acknowledged more than shed_lag_s ago whose events have not come back:
        # the events are at least that far behind (found without waiting for the backlog to
        # drain). Judged from the acknowledgement (time.monotonic()), not from updated_at: a slow
        # write (a migration, a member GC pause) is not an events backlog. Two such documents, not
        # one: an event is delivered at most once, and a single lost probe event is no backlog
        # (the next document's echo clears it).
        events = self.events
        if not events.connected or events.disconnects != self._events_disconnects_seen:
            # Away or reconnected: writes made meanwhile have no event to come (the client
            # re-registers its listeners after reconnecting); start the grace period again.
            self._events_disconnects_seen = events.disconnects
            self._no_shed_before = time.monotonic() + self.shed_grace_s
            with self._lock:
                self._unechoed.clear()
            return
        now = time.monotonic()
        with self._lock:
            overdue = [acked for _, acked in self._unechoed if acked is not None and now - acked > self.shed_lag_s]
        if (len(overdue) >= 2 and self.events_live()
                and now >= self._no_shed_before):
            self.events_lag_s = max(self.events_lag_s or 0.0, now - overdue[0])
            self._shed.set()

    def _on_probe(self, event: Any) -> None:
        # Events reactor: this worker's own health document came back through the events
        # connection; how long after its write was acknowledged = how far the events are behind
        # (measured only; _check_backlog alone decides to shed).
        arrived = time.monotonic()
        text = json_text(event.value)
        if text is None:
            return
        updated_at = orjson.loads(text).get("updated_at")
        if not isinstance(updated_at, (int, float)):
            return
        matched: list[float | None] | None = None
        with self._lock:
            # Older documents whose events never came (at most once) go with it.
            while self._unechoed and (key := self._unechoed[0][0]) is not None and key <= updated_at:
                entry = self._unechoed.popleft()
                if key == updated_at:
                    matched = entry
        if matched is None:  # not a probe (written before listening, or while shed)
            return
        acked = matched[1]
        # None: echoed before its write's answer reached the bar thread, no backlog at all.
        self.events_lag_s = 0.0 if acked is None else max(arrived - acked, 0.0)

    # --- listeners -------------------------------------------------------------------

    def add_asset_listener(self, on_entry: Callable[[Any, Any, float], None]) -> None:
        """Entry added/updated events of ``asset_*_ob`` keys (filtered on the member) ->
        ``on_entry(key, value, received_at)`` on the events connection's reactor thread; and the
        overload probe (class docstring), whose supervisor thread starts here."""
        self._on_entry = on_entry
        self._listen(self.events)
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, name="obf-events-supervisor", daemon=True)
            self._supervisor.start()

    def _listen(self, conn: _Connection) -> None:
        on_entry = self._on_entry
        assert on_entry is not None  # noqa: S101 - set by add_asset_listener before any call
        handler = self._guard("asset listener", lambda e: on_entry(e.key, e.value, time.time()))
        _register(conn, "asset listener", self.config.input_map,
                  include_value=True, predicate=P.regex("__key", self._asset_regex),
                  added_func=handler, updated_func=handler)
        probe = self._guard("events probe", self._on_probe)
        _register(conn, "events probe", self.config.health_map,
                  include_value=True, key=self.config.worker_id, added_func=probe, updated_func=probe)
        self._events_disconnects_seen = conn.disconnects
        # The grace period is for the process's first bars; listening again after a shed the
        # process is warm, and a flood that returns must be shed as fast as the first time.
        self._no_shed_before = time.monotonic() + self.shed_grace_s if self.events_sheds == 0 else -math.inf
        log.info("listening map=%s key_regex=%s connection=events", self.config.input_map, self._asset_regex)

    def add_scan_listener(self, on_update: Callable[[Any, float], None]) -> None:
        """Every put of the scan key -> ``on_update(value, received_at)`` on the bar connection's
        reactor thread (the bar clock: never behind asset events)."""
        handler = self._guard("scan listener", lambda e: on_update(e.value, time.time()))
        m = self.bars._map(self.config.scan_map)
        fut = m.add_entry_listener(include_value=True, key=self.config.scan_key,
                                   added_func=handler, updated_func=handler)
        self.bars._wait(fut, "add scan listener")
        log.info("scan clock listening map=%s key=%s field=%s connection=bars", self.config.scan_map,
                 self.config.scan_key, self.config.scan_field)

    def _guard(self, name: str, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        def handler(event: Any) -> None:
            try:
                fn(event)
            except Exception as exc:  # noqa: BLE001 - an escaping exception drops the connection
                with self._lock:
                    self.listener_errors += 1
                suppressed = self._limiter.allow(name)
                if suppressed is not None:
                    log.error("%s callback failed error=%r suppressed_since_last=%d", name, exc, suppressed)

        return handler

    # --- reads -----------------------------------------------------------------------

    def read_assets(self) -> dict[Any, Any]:
        """Every current ``asset_*_ob`` entry (same server-side filter as the listener): the
        initial read (before the asset listener) on the events connection, every later one (the
        bar path's pull while the events are shed) on the bar path's: never behind a flood of
        events, even on a connection listening again since the pull was decided."""
        conn = self.events if self._on_entry is None else self.bars
        fut = conn._map(self.config.input_map).entry_set(P.regex("__key", self._asset_regex))
        return dict(conn._wait(fut, "read assets"))

    def get_assets(self, keys: Iterable[str]) -> dict[Any, Any]:
        """Current values of ``keys`` (one call); absent keys are missing from the result.

        If the client cannot deserialise one of the values (``HazelcastSerializationError``,
        e.g. a foreign Java object), the keys are read one by one and each unreadable value is
        returned as an ``UnreadableValue`` marker instead of failing the whole read."""
        keys = list(keys)
        if not keys:
            return {}
        m = self.bars._map(self.config.input_map)
        try:
            return dict(self.bars._wait(m.get_all(keys), "re-read assets"))
        except GridError as exc:
            if not isinstance(exc.__cause__, HazelcastSerializationError):
                raise
        out: dict[Any, Any] = {}
        for key in keys:
            try:
                value = self.bars._wait(m.get(key), f"re-read {key}")
            except GridError as exc:
                if not isinstance(exc.__cause__, HazelcastSerializationError):
                    raise
                value = UnreadableValue(f"{exc.__cause__}"[:160])
            if value is not None:
                out[key] = value
        return out

    def get_scan_value(self) -> Any:
        """The current value of the scan key (None if absent)."""
        return self.bars._wait(self.bars._map(self.config.scan_map).get(self.config.scan_key), "read scan key")

    def get_checkpoint(self) -> Any:
        """The raw checkpoint entry of the state map (None if absent)."""
        return self.bars._wait(self.bars._map(self.config.state_map).get(CHECKPOINT_KEY), "read checkpoint")

    def put_checkpoint(self, text: str) -> None:
        """One call: ``state_map["checkpoint"] = text`` (HazelcastJsonValue, no TTL)."""
        fut = self.bars._map(self.config.state_map).set(CHECKPOINT_KEY, HazelcastJsonValue(text))
        self.bars._wait(fut, "write checkpoint")

    def lease_map(self) -> BoundedMap:
        """The state map as the blocking map ``lease.LeaderLease`` needs, every call bounded by
        ``op_timeout_s`` (a hung member must not stall the lease past its term)."""
        return BoundedMap(self.bars, self.config.state_map)

    # --- writes ----------------------------------------------------------------------

    def write_bar(self, bar_idx: int, record_json: str) -> None:
        """One call: ``features_map[bar_idx] = record`` (HazelcastJsonValue, LONG key)."""
        fut = self.bars._map(self.config.features_map).set(int(bar_idx), HazelcastJsonValue(record_json))
        self.bars._wait(fut, f"write bar {bar_idx}")

    def put_bar_if_absent(self, bar_idx: int, record_json: str) -> bool:
        """One call: write the record only if the key is absent; True if it was written."""
        fut = self.bars._map(self.config.features_map).put_if_absent(int(bar_idx), HazelcastJsonValue(record_json))
        return self.bars._wait(fut, f"write bar {bar_idx} if absent") is None

    def has_bar(self, bar_idx: int) -> bool:
        """One call: is there a record under ``bar_idx`` (a data-loss probe, ``republish``)?"""
        fut = self.bars._map(self.config.features_map).contains_key(int(bar_idx))
        return bool(self.bars._wait(fut, f"probe bar {bar_idx}"))

    def get_records(self, bar_idxs: Iterable[int]) -> dict[int, Any]:
        """One call (get_all): the raw records of ``bar_idxs`` present in the features map, by bar
        (the changelog a successor applies after a checkpoint, ``service.changelog``)."""
        keys = [int(b) for b in bar_idxs]
        if not keys:
            return {}
        found = self.bars._wait(self.bars._map(self.config.features_map).get_all(keys), "read records")
        return {int(k): v for k, v in found.items()}

    def bar_keys_between(self, low_exclusive: int, high_exclusive: int) -> list[int]:
        """One call (key_set with a predicate): the bar keys strictly between the two, ascending."""
        pred = P.and_(P.greater("__key", int(low_exclusive)), P.less("__key", int(high_exclusive)))
        keys = self.bars._wait(self.bars._map(self.config.features_map).key_set(pred), "read bar keys")
        return sorted(int(k) for k in keys)

    def remove_bars_outside(self, low_exclusive: int, high_inclusive: int) -> None:
        """One call: remove every bar key ``<= low_exclusive`` or ``> high_inclusive``."""
        pred = P.or_(P.less_or_equal("__key", int(low_exclusive)), P.greater("__key", int(high_inclusive)))
        self.bars._wait(self.bars._map(self.config.features_map).remove_all(pred), "retention")

    def put_latest(self, entries: Mapping[str, str]) -> None:
        """One call: ``latest_map[symbol] = flat JSON`` for every entry."""
        if entries:
            values = {k: HazelcastJsonValue(v) for k, v in entries.items()}
            self.bars._wait(self.bars._map(self.config.latest_map).put_all(values), "write latest")

    def put_health(self, doc_json: str, updated_at: float | None = None) -> None:
        """``health_map[worker_id] = doc`` with TTL ``config.health_ttl_s``. ``updated_at``: the
        document's ``updated_at`` (unix s), which makes this write an overload probe (None: not one)."""
        probe: list[float | None] | None = None
        if updated_at is not None and self._supervisor is not None and self.events_live():
            probe = [float(updated_at), None]
            with self._lock:  # before the write: its echo may beat the write's answer
                self._unechoed.append(probe)
        fut = self.bars._map(self.config.health_map).set(self.config.worker_id, HazelcastJsonValue(doc_json),
                                                     ttl=self.config.health_ttl_s)
        self.bars._wait(fut, "write health")
        if probe is not None:
            probe[1] = time.monotonic()  # judged from here (a failed write stays unjudged)


def _register(conn: _Connection, name: str, map_name: str, **listener: Any) -> None:
    """Add an entry listener to ``map_name`` on ``conn`` unless ``name`` is registered there
    already (a retry after a later step failed). A registration that fails here but lands after
    all (the wait timed out) is removed when it lands, so a retry never leaves two."""
    if name in conn.listeners:
        return
    m = conn._map(map_name)
    fut = m.add_entry_listener(**listener)
    try:
        conn.listeners[name] = conn._wait(fut, f"add {name}")
    except GridError:
        def drop_late(f: Future[Any]) -> None:
            # Reactor thread: fire and forget, never raise.
            try:
                if f.is_success():
                    m.remove_entry_listener(f.result())
            except Exception:  # noqa: BLE001,S110 - nothing to remove, or the client is gone
                pass

        fut.add_done_callback(drop_late)
        raise


class BoundedMap:
    """Blocking get / put_if_absent / replace_if_same / set_ttl (the lease's ops) on one map of a
    connection, each waiting at most ``op_timeout_s`` (GridError otherwise)."""

    def __init__(self, conn: _Connection, name: str) -> None:
        self._conn = conn
        self._name = name

    def get(self, key: Any) -> Any:
        return self._conn._wait(self._conn._map(self._name).get(key), f"get {self._name}[{key}]")

    def put_if_absent(self, key: Any, value: Any, ttl: float | None = None) -> Any:
        fut = self._conn._map(self._name).put_if_absent(key, value, ttl=ttl)
        return self._conn._wait(fut, f"put_if_absent {self._name}[{key}]")

    def replace_if_same(self, key: Any, old_value: Any, new_value: Any) -> bool:
        fut = self._conn._map(self._name).replace_if_same(key, old_value, new_value)
        return bool(self._conn._wait(fut, f"replace_if_same {self._name}[{key}]"))

    def set_ttl(self, key: Any, ttl: float) -> None:
        self._conn._wait(self._conn._map(self._name).set_ttl(key, ttl), f"set_ttl {self._name}[{key}]")


class Publisher(_Connection):
    """The feeder's grid I/O: upstream-format payloads (JSON strings) into the input map.

    security: TLS/authentication client keywords; None = from the environment
    (``client_security.tls_auth_settings()``, ValueError on a bad setting)."""

    def __init__(self, cluster_name: str, members: Iterable[str], map_name: str, *, op_timeout_s: float = 5.0,
                 reconnect_backoff_max_s: float = 5.0, connect_timeout_s: float | None = None,
                 security: Mapping[str, Any] | None = None, client_factory: Callable[..., Any] | None = None) -> None:
        super().__init__(
            client_settings(cluster_name, members, "obf-features-feed", connect_timeout_s=connect_timeout_s,
                            reconnect_backoff_max_s=reconnect_backoff_max_s,
                            security=tls_auth_settings() if security is None else security),
            op_timeout_s=op_timeout_s, client_factory=client_factory,
        )
        self.map_name = map_name
        self.map_names = (map_name,)

    def put_payloads(self, entries: Mapping[str, str]) -> None:
        """One call: ``map[key] = payload`` for every entry; payloads stay JSON *strings*."""
        if entries:
            self._wait(self._map(self.map_name).put_all(dict(entries)), "publish")


# -- the inspection commands (status, watch, plot, sql): read-only ---------------------------------
# They never write map entries (``sql --apply`` creates mappings and views: catalogue objects, not
# data). Their clients start synchronously with a connect timeout: a command either gets a cluster
# or reports that it has none, it does not wait forever like the worker.

# What a grid call can raise once connected (member gone, timeout, SQL error): callers that
# report rather than crash catch these.
GRID_ERRORS: tuple[type[BaseException], ...] = (HazelcastError,)


class ClusterUnreachable(RuntimeError):
    """No member of the cluster answered within the connect timeout."""


@dataclass(frozen=True)
class ClusterTarget:
    """Where the inspection commands connect: members (``host:port``), cluster name, timeout (s, > 0),
    security: TLS/authentication client keywords (``client_security.tls_auth_settings``)."""

    members: tuple[str, ...]
    cluster_name: str
    connect_timeout_s: float = 5.0
    security: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", check_members(self.members))
        check_cluster_name(self.cluster_name)
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect timeout must be > 0 s, got {self.connect_timeout_s!r}")


def connect(target: ClusterTarget, **overrides: Any) -> HazelcastClient:
    """A connected client (``make_client``: LONG ints, pickled values refused);
    ClusterUnreachable after the timeout."""
    try:
        return make_client(target.cluster_name, target.members, security=target.security,
                           **{"cluster_connect_timeout": target.connect_timeout_s, **overrides})
    except HazelcastError as exc:
        raise ClusterUnreachable(
            f"cannot reach cluster {target.cluster_name!r} at {','.join(target.members)}: {exc}"
        ) from exc


def decode_value(value: Any) -> dict[str, Any] | None:
    """A map value (HazelcastJsonValue or JSON text) as a dict; None if it is not a JSON object."""
    if value is None:
        return None
    text = value.to_string() if isinstance(value, HazelcastJsonValue) else value
    try:
        return loads_record(text)
    except (ValueError, TypeError) as exc:
        log.warning("undecodable map value skipped error=%s", exc)
        return None


def json_text(value: Any) -> str | None:
    """The JSON text of an event/map value (HazelcastJsonValue or str), None otherwise."""
    if isinstance(value, HazelcastJsonValue):
        return value.to_string()
    if isinstance(value, str):
        return value
    return None


class InspectionReader:
    """Blocking reads of the obf maps through one client (not for a listener thread)."""

    def __init__(self, client: HazelcastClient) -> None:
        self._client = client

    def is_alive(self) -> bool:
        """False once the client has shut down (e.g. the cluster was gone past the connect timeout)."""
        return bool(self._client.lifecycle_service.is_running())

    def newest_bar_idx(self, features_map: str) -> int | None:
        """The highest bar_idx in the features map, or None if it is empty."""
        result: Any = self._client.get_map(features_map).blocking().aggregate(max_("__key"))
        return None if result is None else int(result)

    def bar(self, features_map: str, bar_idx: int) -> dict[str, Any] | None:
        features: BlockingMap[Any, Any] = self._client.get_map(features_map).blocking()
        return decode_value(features.get(bar_idx))

    def newest_bar(self, features_map: str) -> dict[str, Any] | None:
        """The record with the highest bar_idx, or None."""
        idx = self.newest_bar_idx(features_map)
        return None if idx is None else self.bar(features_map, idx)

    def last_bars(self, features_map: str, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` records with the highest bar_idx values present, ascending.

        Bars are contiguous except where the worker had nothing to write, so this reads
        the key window ``[newest - n + 1, newest]`` in one get_all, then widens it over
        gaps (at most 4 more windows) until ``n`` records are found or the map is exhausted.
        """
        if n <= 0:
            return []
        proxy: BlockingMap[Any, Any] = self._client.get_map(features_map).blocking()
        newest = self.newest_bar_idx(features_map)
        if newest is None:
            return []
        found: dict[int, dict[str, Any]] = {}
        hi = newest
        for _ in range(5):
            lo = hi - (n - len(found)) + 1
            for key, value in proxy.get_all(list(range(lo, hi + 1))).items():
                rec = decode_value(value)
                if rec is not None:
                    found[int(key)] = rec
            if len(found) >= n:
                break
            hi = lo - 1
            if hi < 0:
                break
        return [found[k] for k in sorted(found)[-n:]]

    def health_docs(self, health_map: str) -> list[dict[str, Any]]:
        """Every worker's health document (entries expire with the worker), sorted by worker_id."""
        docs = []
        health: BlockingMap[Any, Any] = self._client.get_map(health_map).blocking()
        for key, value in health.entry_set():
            doc = decode_value(value)
            if doc is not None:
                doc.setdefault("worker_id", str(key))
                docs.append(doc)
        return sorted(docs, key=lambda d: str(d.get("worker_id")))

    def get_values(self, map_name: str, keys: Iterable[Any]) -> dict[Any, Any]:
        """The raw values of ``keys`` present in ``map_name`` (one get_all); for ``verify``."""
        wanted = list(keys)
        return dict(self._client.get_map(map_name).blocking().get_all(wanted)) if wanted else {}

    def latest_docs(self, latest_map: str) -> dict[str, dict[str, Any]]:
        """Every asset's latest flat doc, by symbol."""
        out = {}
        latest: BlockingMap[Any, Any] = self._client.get_map(latest_map).blocking()
        for key, value in latest.entry_set():
            doc = decode_value(value)
            if doc is not None:
                out[str(key)] = doc
        return out

    def sql(self, statement: str, *params: Any, timeout_s: float | None = None) -> tuple[list[str], list[list[Any]]]:
        """Execute one SQL statement: (column names, rows) for a query, ([], []) otherwise.

        ``timeout_s`` applies to queries only (Hazelcast refuses a timeout on DDL).
        """
        kwargs: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        with self._client.sql.execute(statement, *params, **kwargs).result() as result:
            if not result.is_row_set():
                return [], []
            meta = result.get_row_metadata()
            names = [c.name for c in meta.columns]
            rows = [[row.get_object_with_index(i) for i in range(len(names))] for row in result]
        return names, rows


class BarListener:
    """Entry listener on the features map that hands each bar's JSON text to ``on_bar``.

    ``on_bar(bar_idx, json_text)`` runs on the client's reactor thread: it must only
    enqueue (the watch render thread does the decoding). Exceptions are counted, never raised.
    """

    def __init__(self, client: HazelcastClient, features_map: str,
                 on_bar: Callable[[int, str], None]) -> None:
        self._map: Map[Any, Any] = client.get_map(features_map)
        self._on_bar = on_bar
        self._registration: str | None = None
        self.errors = 0

    def _handle(self, event: Any) -> None:
        try:
            text = json_text(event.value)
            if text is not None:
                self._on_bar(int(event.key), text)
        except Exception:  # noqa: BLE001 - never into the reactor
            self.errors += 1

    def start(self) -> None:
        self._registration = self._map.add_entry_listener(
            include_value=True, added_func=self._handle, updated_func=self._handle,
        ).result()

    def stop(self) -> None:
        if self._registration is not None:
            try:
                self._map.remove_entry_listener(self._registration).result()
            except HazelcastError as exc:  # the client may already be disconnected
                log.debug("listener removal failed error=%s", exc)
            self._registration = None


def decode_json_column(value: Any) -> Any:
    """A SQL JSON column value (HazelcastJsonValue) as Python data; other values unchanged."""
    if isinstance(value, HazelcastJsonValue):
        return value.loads()
    return value
