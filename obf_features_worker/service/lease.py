"""Leader lease for hot standby, built from atomic IMap operations only.

The CP Subsystem (FencedLock) is Enterprise-only since Hazelcast 5.5, so leadership is one
entry (key ``leader``) in ``DOLPHIN_OBF_STATE`` whose JSON value is::

    {"holder": worker_id, "token": uuid of the process, "epoch": n, "renewals": k,
     "ttl_s": lease seconds, "renewed_at": unix s, "expires_at": unix s}
    or, after a clean release: {"holder": null, "token": null, "epoch": n, "released_by": id, ...}

Protocol (every contender calls ``LeaderLease.tick()`` at least once per bar, leader or not; a
worker on standby ticks every quarter bar, so it takes over within ttl + half a bar of a crash):
- read the entry, then ``decide()`` (pure) what to do;
- mine                         -> ``replace_if_same(current, renewed)`` (a refresh);
- released                     -> ``replace_if_same(released, mine)`` at once (epoch + 1);
- anything else (someone else's lease, an absent entry, garbage) -> wait until this process has
  seen that exact state unchanged for the lease's ``ttl_s`` on its own monotonic clock, then
  ``replace_if_same(current, mine)`` or, if absent, ``put_if_absent(mine)`` (epoch + 1).
An absent entry is waited out too: it may be the result of grid data loss while a leader is
still in its term. The price is that a cold start on an empty map writes after ``ttl_s``.
Epochs: a new term takes the highest epoch this process has seen (or was seeded with, e.g. from
a checkpoint) + 1, so they keep increasing across a lost entry.

Why observation time and not ``expires_at``: wall clocks of two hosts may disagree; the
monotonic clock of one process does not. The holder's term runs from the *send* time of its
successful write to ``send + ttl_s - guard_s``; a contender starts counting after its *read
returned* the value, which is after that write landed. So the holder stops believing it leads
before any contender may take over, whatever the hosts' wall clocks say. ``expires_at`` is only
for people and dashboards.

``replace_if_same`` resets the entry's TTL on Hazelcast 5.5 (measured), so after every write the
entry's server-side TTL is set again with ``set_ttl`` (the backstop that removes a lease nobody
holds any more; it plays no part in safety).

Residual risk (no server-side fencing in the open-source edition): a leader that stalls between
its ``may_write()`` check and its write (GC pause, frozen VM) can still land that one write after
its term ended; ``guard_s`` covers ordinary write latency. Records carry the writer's epoch so a
reader can tell which term wrote them. See docs/reliability.md.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeGuard

import orjson
from hazelcast.core import HazelcastJsonValue

log = logging.getLogger(__name__)

LEASE_KEY = "leader"
_MAX_EPOCH = 2**63 - 1
_MAX_ID_LEN = 200


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Lease timing, in seconds.

    ttl_s: a lease not refreshed for this long may be taken over (> 0); after the holder's last
        refresh, a contender ticking every T seconds takes over within ttl_s + 2 T (one T to see
        that refresh, one to reach its first tick after ttl_s).
    guard_s: the holder stops writing this long before its term ends, covering the latency of
        the write it gates (0 <= guard_s < ttl_s / 2).
    backstop_ttl_s: server-side TTL of the entry, only so a lease nobody holds disappears
        (>= 2 * ttl_s, or 0 for none).
    reclaim_own: a lease held by this worker_id under another process token (this worker's own
        previous incarnation, e.g. after a crash and a supervisord restart) is taken over at once
        instead of after ttl_s. Only safe when worker_id is unique per running process.
    """

    ttl_s: float = 15.0
    guard_s: float = 1.0
    backstop_ttl_s: float = 300.0
    reclaim_own: bool = False
    key: str = LEASE_KEY

    def __post_init__(self) -> None:
        for name in ("ttl_s", "guard_s", "backstop_ttl_s"):
            value = getattr(self, name)
            if type(value) not in (int, float) or not math.isfinite(value):
                raise ValueError(f"LeaseSettings.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 < self.ttl_s <= 3600.0:
            raise ValueError(f"LeaseSettings.ttl_s must be in (0, 3600], got {self.ttl_s!r}")
        if not 0.0 <= self.guard_s < self.ttl_s / 2:
            raise ValueError(f"LeaseSettings.guard_s must be in [0, ttl_s/2), got {self.guard_s!r} "
                             f"with ttl_s={self.ttl_s!r}")
        if self.backstop_ttl_s != 0.0 and self.backstop_ttl_s < 2 * self.ttl_s:
            raise ValueError(f"LeaseSettings.backstop_ttl_s must be 0 or >= 2 * ttl_s, got "
                             f"{self.backstop_ttl_s!r} with ttl_s={self.ttl_s!r}")
        if type(self.reclaim_own) is not bool:
            raise ValueError(f"LeaseSettings.reclaim_own must be a bool, got {self.reclaim_own!r}")
        if type(self.key) is not str or not self.key:
            raise ValueError(f"LeaseSettings.key must be a non-empty string, got {self.key!r}")

    @classmethod
    def for_bar_seconds(cls, bar_seconds: float, **overrides: Any) -> LeaseSettings:
        """Defaults for a bar clock: ttl = 3 bars (>= 3 s), guard = min(1 s, bar / 4)."""
        ttl = max(3.0 * bar_seconds, 3.0)
        settings: dict[str, Any] = {"ttl_s": ttl, "guard_s": min(1.0, bar_seconds / 4),
                                    "backstop_ttl_s": max(20.0 * ttl, 300.0)}
        settings.update(overrides)
        return cls(**settings)

    def check_tick_interval(self, tick_s: float) -> None:
        """ValueError unless a holder ticking every ``tick_s`` seconds keeps its lease with a margin."""
        if not 2.0 * tick_s + self.guard_s <= self.ttl_s:
            raise ValueError(f"lease ttl_s={self.ttl_s} is too short for a refresh every {tick_s} s "
                             f"(needs ttl_s >= 2 * {tick_s} + guard_s={self.guard_s})")


# -- the lease value -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LeaseValue:
    """A decoded lease entry. holder/token are None for a released lease; times are unix s."""

    holder: str | None
    token: str | None
    epoch: int
    renewals: int = 0
    ttl_s: float = 0.0
    renewed_at: float = 0.0
    expires_at: float = 0.0
    released_by: str | None = None

    @property
    def released(self) -> bool:
        return self.holder is None

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys): equal values give byte-equal entries."""
        if self.released:
            obj: dict[str, Any] = {"holder": None, "token": None, "epoch": self.epoch,
                                   "released_by": self.released_by, "released_at": self.renewed_at}
        else:
            obj = {"holder": self.holder, "token": self.token, "epoch": self.epoch,
                   "renewals": self.renewals, "ttl_s": self.ttl_s, "renewed_at": self.renewed_at,
                   "expires_at": self.expires_at}
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()


def parse_lease(text: str) -> LeaseValue | None:
    """Decode a lease entry's text; None if it is not a well-formed lease (never raises)."""
    try:
        obj = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if type(obj) is not dict:
        return None
    epoch = obj.get("epoch")
    if type(epoch) is not int or not 0 <= epoch <= _MAX_EPOCH:
        return None
    holder = obj.get("holder")
    if holder is None:
        by = obj.get("released_by")
        at = obj.get("released_at")
        return LeaseValue(None, None, epoch, released_by=by if type(by) is str else None,
                          renewed_at=float(at) if _finite(at) else 0.0)
    token = obj.get("token")
    ttl = obj.get("ttl_s")
    if (type(holder) is not str or not 0 < len(holder) <= _MAX_ID_LEN or type(token) is not str
            or not _finite(ttl) or not 0 < ttl <= 3600.0):
        return None
    renewed_at, expires_at, renewals = obj.get("renewed_at"), obj.get("expires_at"), obj.get("renewals")
    if not (_finite(renewed_at) and _finite(expires_at)) or type(renewals) is not int:
        return None
    return LeaseValue(holder, token, epoch, renewals, float(ttl), float(renewed_at), float(expires_at))


def _finite(v: object) -> TypeGuard[int | float]:
    return type(v) in (int, float) and math.isfinite(v)  # type: ignore[arg-type]  # int or float here


# -- the pure decision -----------------------------------------------------------------------------

class Action(str, enum.Enum):
    """What a contender does after reading the lease entry."""

    WAIT = "wait"  # the entry's holder (if any) may still be in its term
    ACQUIRE = "acquire"  # put_if_absent(new)
    TAKE_OVER = "take_over"  # replace_if_same(current, new) on an expired, released or garbage lease
    REFRESH = "refresh"  # replace_if_same(current, renewed) on my own lease


@dataclass(frozen=True, slots=True)
class Identity:
    """Who I am: worker_id (shared by a process's restarts) and token (unique per process)."""

    worker_id: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True, slots=True)
class View:
    """What one contender has observed of the lease entry (times in monotonic seconds).

    observed: False until the first read. text: the entry's text at the last read (None = absent).
    seen_at: when ``text`` was first read (taken after the read returned).
    blocked_until: before this, an entry still equal to ``text`` must not be taken: its holder
        may still be in its term.
    max_epoch: the highest epoch seen (or seeded, e.g. from a checkpoint).
    max_ttl_s: the longest lease ttl_s seen; how long an absent or unreadable entry is waited out.
    """

    observed: bool = False
    text: str | None = None
    seen_at: float = -math.inf
    blocked_until: float = -math.inf
    max_epoch: int = 0
    max_ttl_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of ``decide``: the action, the value to write (if any), the updated view."""

    action: Action
    new_value: LeaseValue | None
    view: View
    reason: str
    settle: bool = False  # the term this begins may write only after ttl_s (see ``decide``)


def decide(text: str | None, now: float, wall: float, view: View, me: Identity,
           settings: LeaseSettings, held_epoch: int | None = None) -> Decision:
    """Pure lease decision after a read of the entry.

    text: the entry's current text (None = absent). now: monotonic s, taken *after* the read
    returned. wall: unix s (only for the informational fields of a new value). view: the
    caller's previous View. held_epoch: the epoch of my term if it is still within its deadline
    (None otherwise). Returns what to do; the caller performs it atomically and reports the
    outcome with ``after_write``.

    An absent entry while I hold a live term is re-created at once with my epoch (the entry
    was lost, e.g. a member restarted empty): no other contender can have begun a term while
    mine runs, and every other contender restarts its wait when it sees the new entry.

    Any other absent or unreadable entry is taken at once, but the term it begins may write
    only after ``ttl_s`` (``Decision.settle``): such a state can recur (absent, written, lost;
    or the same foreign text written twice), so "seen unchanged" cannot prove that no holder is
    inside its term. A lease value of ours never recurs (token, epoch, renewal count, wall time),
    so seeing one unchanged for ``ttl_s`` does prove it. A holder still inside its term fails
    its next refresh on my entry, and its term ends within ``ttl_s - guard_s`` anyway.
    """
    value = parse_lease(text) if text is not None else None
    live = value is not None and not value.released
    max_epoch = max(view.max_epoch, value.epoch if value is not None else 0)
    max_ttl = max(view.max_ttl_s, value.ttl_s if live else 0.0)  # type: ignore[union-attr]

    if not view.observed or text != view.text:
        # A new state of the entry: its lifetime counts from now (after the read returned).
        hold = max(settings.ttl_s, value.ttl_s if live else max_ttl)  # type: ignore[union-attr]
        v = View(True, text, now, now + hold, max_epoch, max_ttl)
    else:
        v = replace(view, max_epoch=max_epoch, max_ttl_s=max_ttl)

    def fresh() -> LeaseValue:
        return LeaseValue(me.worker_id, me.token, min(max_epoch + 1, _MAX_EPOCH), 0, settings.ttl_s, wall,
                          wall + settings.ttl_s)

    if value is not None and value.released:
        return Decision(Action.TAKE_OVER, fresh(), v, f"released by {value.released_by}")
    if value is not None and value.token == me.token and value.holder == me.worker_id:
        renewed = LeaseValue(me.worker_id, me.token, value.epoch, value.renewals + 1, settings.ttl_s,
                             wall, wall + settings.ttl_s)
        return Decision(Action.REFRESH, renewed, v, "my lease")
    if value is not None and settings.reclaim_own and value.holder == me.worker_id:
        return Decision(Action.TAKE_OVER, fresh(), v, "my previous incarnation's lease")
    if text is None and held_epoch is not None:
        recreated = LeaseValue(me.worker_id, me.token, held_epoch, 0, settings.ttl_s, wall, wall + settings.ttl_s)
        return Decision(Action.ACQUIRE, recreated, v, "my lease entry vanished during my term")
    if text is None:
        return Decision(Action.ACQUIRE, fresh(), v, "no lease entry (writes after ttl_s)", settle=True)
    if value is None:
        return Decision(Action.TAKE_OVER, fresh(), v, "unreadable lease entry (writes after ttl_s)", settle=True)
    what = f"lease of {value.holder} epoch {value.epoch}"
    if now >= v.blocked_until:
        return Decision(Action.TAKE_OVER, fresh(), v, f"{what} unchanged for {now - v.seen_at:.3f} s")
    return Decision(Action.WAIT, None, v, f"{what}, seen for {now - v.seen_at:.3f} s")


@dataclass(frozen=True, slots=True)
class Term:
    """A term as leader: ``epoch``, the text I wrote, from ``started_at`` (send time of the write
    that began or last renewed it) to ``deadline`` (monotonic s) after which I must not write.
    ``writable_from``: before it I hold the lease but must not write yet (an absent entry was
    acquired: a previous holder's term may still run, see ``decide``)."""

    epoch: int
    text: str
    started_at: float
    deadline: float
    writable_from: float = -math.inf

    def writable(self, now: float) -> bool:
        return self.writable_from <= now < self.deadline


def after_write(decision: Decision, ok: bool, sent_at: float, settings: LeaseSettings,
                previous: Term | None = None) -> tuple[Term | None, View]:
    """The term and view after performing ``decision``; ``sent_at`` is monotonic s taken *before*
    the write was sent; ``previous`` is the term held before it, if any. ok=False (lost the race)
    leaves no term: the next read shows the winner."""
    if not ok or decision.new_value is None:
        if decision.new_value is not None:
            # Lost the race: the entry now holds a value I have not read. Forget what I saw, so
            # a later absent entry (data loss) is waited out afresh rather than taken at once.
            return None, replace(decision.view, observed=False, text=None, seen_at=-math.inf,
                                 blocked_until=-math.inf)
        return None, decision.view
    new = decision.new_value
    text = new.to_json()
    if previous is not None and previous.epoch == new.epoch:
        writable_from = previous.writable_from  # renewed or re-created: same term, same wait
    elif decision.action is Action.TAKE_OVER and not decision.settle:
        writable_from = sent_at  # took over a lease of ours seen unchanged for ttl_s, or released
    else:
        # Took an absent/unreadable entry (see decide), or refreshed my entry without holding its
        # term (e.g. after a release): nothing proves that no other term runs, so settle first.
        writable_from = sent_at + settings.ttl_s
    term = Term(new.epoch, text, sent_at, sent_at + settings.ttl_s - settings.guard_s, writable_from)
    view = View(True, text, sent_at, sent_at + settings.ttl_s, max(decision.view.max_epoch, new.epoch),
                max(decision.view.max_ttl_s, new.ttl_s))
    return term, view


# -- the grid part ---------------------------------------------------------------------------------

class LeaseMap(Protocol):
    """The blocking IMap operations the lease uses (``client.get_map(name).blocking()``)."""

    def get(self, key: Any) -> Any: ...
    def put_if_absent(self, key: Any, value: Any, ttl: float | None = None) -> Any: ...
    def replace_if_same(self, key: Any, old_value: Any, new_value: Any) -> bool: ...
    def set_ttl(self, key: Any, ttl: float) -> None: ...


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """For health and logs: role, my epoch when leading, the holder I last saw."""

    role: str  # "leader" | "standby"
    epoch: int | None
    holder: str | None
    holder_epoch: int | None
    acquisitions: int
    losses: int
    errors: int
    last_error: str | None


class LeaderLease:
    """One contender for the lease in ``state_map`` (a blocking IMap proxy).

    Call ``tick()`` at least once per bar (leader or standby), ``may_write()`` right before each write,
    ``release()`` on a clean shutdown. tick() never raises: grid errors are logged and counted,
    and leadership then ends at the term's local deadline at the latest. ``tick``/``release``
    are serialised by a lock; ``may_write``/``epoch`` never wait for it (no I/O, no lock).
    """

    def __init__(self, state_map: LeaseMap, worker_id: str, settings: LeaseSettings | None = None, *,
                 min_epoch: int = 0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, token: str | None = None) -> None:
        if type(worker_id) is not str or not 0 < len(worker_id) <= _MAX_ID_LEN:
            raise ValueError(f"worker_id must be a non-empty string of <= {_MAX_ID_LEN} chars, got {worker_id!r}")
        if type(min_epoch) is not int or not 0 <= min_epoch <= _MAX_EPOCH:
            raise ValueError(f"min_epoch must be an int >= 0, got {min_epoch!r}")
        self._map = state_map
        self.settings = settings if settings is not None else LeaseSettings()
        self.me = Identity(worker_id, token) if token else Identity(worker_id)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._view = View(max_epoch=min_epoch)
        # Replaced as a whole (Term is immutable), so readers need no lock.
        self._term: Term | None = None
        self._seen: LeaseValue | None = None
        self._acquisitions = 0
        self._losses = 0
        self._errors = 0
        self._last_error: str | None = None

    # -- what the worker loop calls -----------------------------------------------------------

    def may_write(self) -> bool:
        """True while I hold a writable term that has not reached its deadline (local, no I/O)."""
        term = self._term
        return term is not None and term.writable(self._clock())

    @property
    def epoch(self) -> int | None:
        """My epoch while ``may_write()``; else None."""
        term = self._term
        return term.epoch if term is not None and term.writable(self._clock()) else None

    @property
    def term(self) -> Term | None:
        """My current term (possibly past its deadline), or None."""
        return self._term

    def tick(self) -> LeaseStatus:
        """Read the lease, then refresh / acquire / take over / wait. Never raises."""
        with self._lock:
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - grid trouble must not kill the bar loop
                self._note_error("tick", exc)
            self._expire_term()
        return self.status()

    def release(self) -> bool:
        """On clean shutdown: stop leading now and hand the lease over (a standby takes it on its
        next tick instead of after ttl_s). True if a lease of mine was released. Never raises."""
        with self._lock:
            term = self._term
            self._term = None  # stop writing before the handover becomes visible
            if term is None or not term.writable(self._clock()):
                # Only a writable term is known to be the only one: a settling or expired term
                # must not hand over at once (another holder may be inside its term). Its entry
                # is waited out like any other.
                return False
            try:
                current = self._map.get(self.settings.key)
                value = parse_lease(_text_of(current) or "")
                if value is None or value.token != self.me.token:
                    return False
                released = LeaseValue(None, None, value.epoch, released_by=self.me.worker_id,
                                      renewed_at=self._wall())
                ok = bool(self._map.replace_if_same(self.settings.key, current,
                                                    HazelcastJsonValue(released.to_json())))
            except Exception as exc:  # noqa: BLE001
                self._note_error("release", exc)
                return False
            log.info("lease released worker_id=%s epoch=%s ok=%s", self.me.worker_id, term.epoch, ok)
            return ok

    def status(self) -> LeaseStatus:
        """Role and counters for health (no I/O)."""
        epoch = self.epoch
        seen = self._seen
        return LeaseStatus(
            role="leader" if epoch is not None else "standby",
            epoch=epoch,
            holder=seen.holder if seen else None,
            holder_epoch=seen.epoch if seen else None,
            acquisitions=self._acquisitions, losses=self._losses, errors=self._errors,
            last_error=self._last_error,
        )

    # -- internals ------------------------------------------------------------------------------

    def _tick(self) -> None:
        key = self.settings.key
        current = self._map.get(key)
        now = self._clock()  # after the read returned: see the module docstring
        text = _text_of(current)
        held = self._term
        held_epoch = held.epoch if held is not None and now < held.deadline else None
        decision = decide(text, now, self._wall(), self._view, self.me, self.settings, held_epoch)
        self._view = decision.view
        self._seen = parse_lease(text) if text is not None else None
        if decision.action is Action.WAIT:
            if held is not None:
                self._lose(held, decision.reason)
            return

        assert decision.new_value is not None  # noqa: S101 - narrows the type; holds by construction
        new = HazelcastJsonValue(decision.new_value.to_json())
        sent_at = self._clock()  # before the write is sent: the term may not outlive it
        if decision.action is Action.ACQUIRE:
            ok = self._map.put_if_absent(key, new, ttl=self.settings.backstop_ttl_s) is None
        else:
            ok = bool(self._map.replace_if_same(key, current, new))
        term, self._view = after_write(decision, ok, sent_at, self.settings, held)
        if term is None:
            if held is not None:
                self._lose(held, f"{decision.action.value} lost the race")
            else:
                log.debug("lease %s lost the race worker_id=%s", decision.action.value, self.me.worker_id)
            return
        self._seen = decision.new_value
        if held is None or held.epoch != term.epoch:
            self._acquisitions += 1
            log.info("lease acquired worker_id=%s epoch=%d how=%s reason=%s", self.me.worker_id, term.epoch,
                     decision.action.value, decision.reason)
        elif decision.action is Action.ACQUIRE:
            log.warning("lease entry re-created worker_id=%s epoch=%d reason=%s", self.me.worker_id, term.epoch,
                        decision.reason)
        self._term = term
        if decision.action is not Action.ACQUIRE and self.settings.backstop_ttl_s:
            try:  # replace_if_same drops the entry's TTL (measured on 5.5): restore the backstop
                self._map.set_ttl(key, self.settings.backstop_ttl_s)
            except Exception as exc:  # noqa: BLE001 - the backstop is cleanup only
                self._note_error("set_ttl", exc)

    def _note_error(self, what: str, exc: Exception) -> None:
        self._errors += 1
        self._last_error = f"{what}: {type(exc).__name__}: {exc}"[:300]
        log.warning("lease %s failed worker_id=%s error=%s leading=%s", what, self.me.worker_id,
                    self._last_error, self.may_write())

    def _lose(self, held: Term, why: str) -> None:
        self._term = None
        self._losses += 1
        log.warning("lease lost worker_id=%s epoch=%d reason=%s", self.me.worker_id, held.epoch, why)

    def _expire_term(self) -> None:
        term = self._term
        if term is not None and self._clock() >= term.deadline:
            self._lose(term, "term ended without a successful refresh")


def _text_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    to_string = getattr(value, "to_string", None)
    if to_string is not None:
        text = to_string()
        return text if isinstance(text, str) else repr(text)
    return repr(value)  # a foreign object: unparseable, so treated as a garbage lease
