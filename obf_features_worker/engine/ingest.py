"""SnapshotBook: the latest valid snapshot per asset, fed by map entry events.

``offer()`` is what the Hazelcast listener callback calls: it never raises. Bad input is
counted by reason (``RejectStats``) and a rejected snapshot never replaces the last good one.
Per asset, snapshots are ordered by timestamp, ``_push_seq`` breaking ties and catching
duplicates (see ``SnapshotBook``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any

from obf_features_worker.engine.producer_clock import DEFAULT_THRESHOLD_S, ProducerClocks
from obf_features_worker.engine.snapshot import (
    RejectReason,
    Snapshot,
    SnapshotRejected,
    parse_payload,
    symbol_from_key,
)
from obf_features_worker.logs import RateLimiter

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal"  # counter name for an unexpected exception inside offer()
REJECT_LOG_INTERVAL_S = 10.0  # at most one log line per reason per interval
# bad_symbol is logged once per distinct key (an operator must learn every asset that never
# arrives), not once per interval; past this many keys it falls back to the rate limit.
MAX_LOGGED_BAD_KEYS = 10_000
_SAMPLE_TEXT_LIMIT = 160
# A _push_seq this much above the last accepted one in a single step is counted as a jump
# (a per-key counter moves by 1 per push; a global one by the pushes of all keys in between).
SEQ_JUMP_LIMIT = 1 << 20


def present_at(latest: Mapping[str, Snapshot], bar_ts: float, max_age_s: float) -> dict[str, Snapshot]:
    """The snapshots present in the bar closing at ``bar_ts`` (unix s): those at most ``max_age_s``
    old then. The one presence rule of live bars, the stale re-read and replay."""
    return {s: snap for s, snap in latest.items() if bar_ts - snap.ts <= max_age_s}


class RejectStats:
    """Thread-safe reject counters per reason plus the last few samples, with rate-limited logging."""

    def __init__(self, sample_size: int = 20, *, clock: Callable[[], float] = time.time,
                 log_interval_s: float = REJECT_LOG_INTERVAL_S) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._samples: deque[dict[str, Any]] = deque(maxlen=max(0, int(sample_size)))
        self._clock = clock
        self._limiter = RateLimiter(log_interval_s, clock=clock)
        self._bad_symbol_keys: set[str] = set()

    def record(self, reason: RejectReason | str, key: object, detail: str) -> None:
        """Count one reject; ``reason`` is a RejectReason or ``"internal"``."""
        name = reason.value if isinstance(reason, RejectReason) else str(reason)
        now = self._clock()
        key_text = key if type(key) is str else repr(key)
        key_text = key_text[:_SAMPLE_TEXT_LIMIT]
        detail = detail[:_SAMPLE_TEXT_LIMIT]
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1
            self._samples.append({"reason": name, "key": key_text, "detail": detail, "at": now})
            logged_before = first_of_key = False
            if name == RejectReason.BAD_SYMBOL.value:
                logged_before = key_text in self._bad_symbol_keys
                first_of_key = not logged_before and len(self._bad_symbol_keys) < MAX_LOGGED_BAD_KEYS
                if first_of_key:
                    self._bad_symbol_keys.add(key_text)
        if logged_before:
            return
        if first_of_key:
            log.warning("asset key rejected reason=bad_symbol key=%r detail=%s (logged once per key)",
                        key_text, detail)
            return
        suppressed = self._limiter.allow(name)
        if suppressed is None:
            return
        log_fn = log.error if name == INTERNAL_ERROR else log.warning
        log_fn("snapshot rejected reason=%s key=%s detail=%s suppressed_since_last=%d",
               name, key_text, detail, suppressed)

    @property
    def total(self) -> int:
        """Rejects of every reason so far."""
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        """Rejects per reason name (only reasons seen so far)."""
        with self._lock:
            return dict(self._counts)

    def snapshot(self) -> dict[str, Any]:
        """``{"total": n, "by_reason": {reason: n}, "samples": [{reason, key, detail, at}, ...]}``."""
        with self._lock:
            return {
                "total": sum(self._counts.values()),
                "by_reason": dict(self._counts),
                "samples": [dict(s) for s in self._samples],
            }


class SnapshotBook:
    """Thread-safe store of the latest valid snapshot per asset.

    Ordering, per asset: snapshots are ordered by their timestamp; ``_push_seq`` only breaks ties
    and catches duplicates. A snapshot older than the last accepted one is rejected
    (``stale_timestamp``); one with the same timestamp is accepted only if its ``_push_seq`` is
    greater (else ``stale_seq``, a duplicate; without a seq on either side it is accepted). Under a
    newer timestamp any ``_push_seq`` is accepted, so no single message can block an asset: a seq
    not greater than the last one is counted as ``seq_resets`` (an upstream restart), one more
    than ``seq_jump_limit`` above it as ``seq_jumps``.

    assets: when given, events for other symbols are counted as ignored (not rejected).
    max_future_skew_s: how far (s) a snapshot timestamp may be ahead of ``clock()``; also the
    longest a snapshot stamped in the future can hold back the asset's next pushes.
    clock_offset_threshold_s: producer clocks whose median offset is beyond this (s) are flagged.
    """

    def __init__(
        self,
        *,
        assets: Collection[str] | None = None,
        max_future_skew_s: float = 5.0,
        max_payload_bytes: int = 65_536,
        clock: Callable[[], float] = time.time,
        sample_size: int = 20,
        seq_jump_limit: int = SEQ_JUMP_LIMIT,
        clock_offset_threshold_s: float = DEFAULT_THRESHOLD_S,
    ) -> None:
        if max_future_skew_s < 0:
            raise ValueError(f"max_future_skew_s must be >= 0, got {max_future_skew_s!r}")
        if max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be >= 1, got {max_payload_bytes!r}")
        if seq_jump_limit < 1:
            raise ValueError(f"seq_jump_limit must be >= 1, got {seq_jump_limit!r}")
        self._assets = frozenset(assets) if assets is not None else None
        self._max_future_skew_s = float(max_future_skew_s)
        self._max_payload_bytes = int(max_payload_bytes)
        self._clock = clock
        self._seq_jump_limit = int(seq_jump_limit)
        self._lock = threading.Lock()
        self._latest: dict[str, Snapshot] = {}
        self._received_at: dict[str, float] = {}
        self._seqs: dict[str, int] = {}
        self._received = 0
        self._accepted = 0
        self._ignored = 0
        self._seq_resets = 0
        self._seq_jumps = 0
        self._read_echoes = 0
        self._superseded = 0
        self._read_refreshed = 0
        self._unused: set[str] = set()  # symbols whose held snapshot no bar close has seen yet
        self._read_unechoed: set[str] = set()  # symbols whose stored snapshot came from a read, no event since
        self._seq_log = RateLimiter(REJECT_LOG_INTERVAL_S, clock=clock)
        self.rejects = RejectStats(sample_size, clock=clock)
        self.clocks = ProducerClocks(threshold_s=clock_offset_threshold_s)

    def offer(self, key: object, value: object, *, received_at: float | None = None, from_read: bool = False,
              parsed: Snapshot | None = None) -> bool:
        """Validate and store one map entry; True if accepted. Never raises.

        parsed: the caller already validated ``value`` into this snapshot (``parse_snapshot`` with
        this book's limits): it is counted, ordered and stored the same way, not decoded again.

        from_read: the value was read from the map (initial read, bar-close re-read), not
        delivered as an event. Reads and events race: a read of a push the listener already
        delivered (or a newer one), and the events a read overtook (older pushes, and the first
        event of the push it took) are counted as ``read_echoes``, not rejects. An echo is never
        newer than the held snapshot, so no good data is dropped. Only events feed the producer
        clock offsets (a read's receive time says nothing about the producer's clock)."""
        try:
            return self._offer(key, value, received_at, from_read, parsed)
        except Exception as exc:  # noqa: BLE001 - the listener thread must survive anything
            try:
                self.rejects.record(INTERNAL_ERROR, key, f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("snapshot reject accounting failed")
            return False

    def _offer(self, key: object, value: object, received_at: float | None, from_read: bool,
               parsed: Snapshot | None) -> bool:
        with self._lock:
            self._received += 1
        symbol: str | None = None
        now = self._clock()
        at = now if received_at is None else float(received_at)
        try:
            symbol = symbol_from_key(key) if parsed is None else parsed.symbol
            if self._assets is not None and symbol not in self._assets:
                with self._lock:
                    self._ignored += 1
                return False
            snap = parsed if parsed is not None else parse_payload(
                symbol, value, now=now, max_future_skew_s=self._max_future_skew_s,
                max_payload_bytes=self._max_payload_bytes)
            with self._lock:
                if self._is_read_echo(snap, from_read):
                    self._read_echoes += 1
                    return False
                try:
                    self._check_order(snap)
                except SnapshotRejected as exc:
                    exc.ts = snap.ts
                    raise
                if from_read:
                    self._read_unechoed.add(symbol)
                    self._read_refreshed += 1
                else:
                    self._read_unechoed.discard(symbol)
                if symbol in self._unused:
                    self._superseded += 1  # coalesced: the snapshot it replaces was never in a bar
                else:
                    self._unused.add(symbol)
                self._latest[symbol] = snap
                self._received_at[symbol] = at
                if snap.seq is not None:
                    self._seqs[symbol] = snap.seq
                self._accepted += 1
            if not from_read:
                self.clocks.observe(symbol, at - snap.ts, accepted=True)
            return True
        except SnapshotRejected as exc:
            self.rejects.record(exc.reason, key, exc.detail)
            if symbol is not None and not from_read:
                if exc.ts is not None:
                    self.clocks.observe(symbol, at - exc.ts, accepted=False, reject_reason=exc.reason.value)
                else:
                    self.clocks.rejected(symbol, exc.reason.value)
            return False

    def _is_read_echo(self, snap: Snapshot, from_read: bool) -> bool:
        # A map read (initial read, bar-close re-read) races the entry events: the same push can
        # reach the book twice, or an older push after the newer one the read took. Neither is a
        # duplicate or reordered push of the producer, so neither is a reject. Only a value no
        # newer than the held one (timestamp, then seq) qualifies.
        last = self._latest.get(snap.symbol)
        if last is None or snap.ts > last.ts:
            return False
        if from_read:  # the listener already delivered this push or a newer one
            return snap.ts < last.ts or snap.seq is None or last.seq is None or snap.seq <= last.seq
        if snap.seq is None or last.seq is None or snap.symbol not in self._read_unechoed:
            return False  # the held value came from an event: a real duplicate or reorder
        if snap.seq < last.seq:
            return True  # a push the read overtook
        if snap.seq == last.seq and snap.ts == last.ts:
            self._read_unechoed.discard(snap.symbol)  # the read push's own event; a second is a duplicate
            return True
        return False

    def _check_order(self, snap: Snapshot) -> None:
        # Called with the lock held, so ordering holds across listener threads. Timestamp first:
        # a seq can never hold an asset back, so a wild one (2^62, a restart) costs nothing.
        last = self._latest.get(snap.symbol)
        if last is not None:
            if snap.ts < last.ts:
                raise SnapshotRejected(RejectReason.STALE_TIMESTAMP,
                                       f"timestamp {snap.ts:.6f} older than last accepted {last.ts:.6f}")
            if snap.ts == last.ts and snap.seq is not None and last.seq is not None and snap.seq <= last.seq:
                raise SnapshotRejected(RejectReason.STALE_SEQ,
                                       f"same timestamp {snap.ts:.6f}, _push_seq {snap.seq} <= last {last.seq}")
        # Counted against the held snapshot only: after a restart, the seqs imported from the
        # checkpoint meet the very pushes they came from (the initial read), which is no reset.
        last_seq = last.seq if last is not None else None
        if snap.seq is None or last_seq is None:
            return
        if snap.seq <= last_seq:
            self._seq_resets += 1
            kind = "reset"
        elif snap.seq - last_seq > self._seq_jump_limit:
            self._seq_jumps += 1
            kind = "jump"
        else:
            return
        suppressed = self._seq_log.allow(kind)
        if suppressed is not None:
            log.info("upstream push sequence %s accepted symbol=%s last_seq=%d seq=%d suppressed_since_last=%d",
                     kind, snap.symbol, last_seq, snap.seq, suppressed)

    def latest(self, *, bar_close: bool = False) -> dict[str, Snapshot]:
        """Shallow copy: symbol -> latest valid snapshot. ``bar_close``: a bar takes these (the
        snapshots it returns count as used; one replaced before the next such call counts as
        ``superseded``)."""
        with self._lock:
            if bar_close:
                self._unused.clear()
            return dict(self._latest)

    def get(self, symbol: str) -> Snapshot | None:
        """The latest valid snapshot of ``symbol``, or None."""
        with self._lock:
            return self._latest.get(symbol)

    def last_received_at(self, symbol: str) -> float | None:
        """Unix s at which the latest valid snapshot of ``symbol`` was received, or None."""
        with self._lock:
            return self._received_at.get(symbol)

    def stats(self) -> dict[str, Any]:
        """``{"received", "accepted", "ignored", "seq_resets", "seq_jumps", "read_echoes", "superseded",
        "read_refreshed", "rejected": {reason: n}, "samples": [...]}``; received = accepted + ignored +
        read_echoes + rejected. ``seq_resets`` / ``seq_jumps`` are accepted snapshots, counted again there.
        ``superseded``: accepted snapshots replaced by a newer one before any bar close took them
        (the surplus coalesced away: ``latest(bar_close=True)``). ``read_refreshed``: accepted
        snapshots that came from a map read, not an event (the initial read, and the bar-close
        re-read of stale assets: pushes whose event the member or client never delivered, or late).
        ``producer_clock``: ``ProducerClocks.summary()`` (per-asset clock offsets, flagged assets)."""
        rejects = self.rejects.snapshot()
        clocks = self.clocks.summary()
        with self._lock:
            return {
                "received": self._received,
                "accepted": self._accepted,
                "ignored": self._ignored,
                "seq_resets": self._seq_resets,
                "seq_jumps": self._seq_jumps,
                "read_echoes": self._read_echoes,
                "superseded": self._superseded,
                "read_refreshed": self._read_refreshed,
                "rejected": rejects["by_reason"],
                "samples": rejects["samples"],
                "producer_clock": clocks,
            }

    def export_seqs(self) -> dict[str, int]:
        """Last accepted ``_push_seq`` per symbol (for checkpoints)."""
        with self._lock:
            return dict(self._seqs)

    def import_seqs(self, seqs: Mapping[str, int]) -> None:
        """Restore last accepted seqs (e.g. from a checkpoint) for ``export_seqs``; a higher known
        seq is kept. They do not order the next pushes: ordering is by timestamp, against the
        held snapshot (none after a restart)."""
        clean: dict[str, int] = {}
        for symbol, seq in seqs.items():
            if type(symbol) is not str or type(seq) is not int or seq < 0:
                raise ValueError(f"bad seq entry {symbol!r}: {seq!r}")
            clean[symbol] = seq
        with self._lock:
            for symbol, seq in clean.items():
                self._seqs[symbol] = max(seq, self._seqs.get(symbol, seq))
