"""Worker checkpoint: everything a restarted (or promoted) worker needs to continue bit-identically.

A checkpoint holds the engine state (``FeatureEngine.export_state()``), the last accepted
``_push_seq`` per asset (``SnapshotBook.export_seqs()``), the last bar (``bar_idx``, ``bar_ts``),
the engine parameters, the writer's ``worker_id`` and lease ``epoch``, ``written_at``, the bar
records the writer had not yet confirmed written (``records``: normally none, the checkpoint
comes after the records; those whose writes failed, which a successor writes if absent) and a
SHA-256 checksum of the canonical body. The records written after the checkpoint bring its state
to the writer's (snapshot + changelog, ``service.changelog``). Pure: encoding and decoding only,
no grid I/O.

Wire format (UTF-8 JSON object)::

    {"kind": "obf_checkpoint", "version": 1, "sha256": "<hex of canonical body>", "body": {...}}

The canonical body is ``orjson.dumps(body, OPT_SORT_KEYS)``; orjson writes every float as its
shortest round-trip repr, so decoding and re-encoding yields the same bytes and the same hash.
``decode`` never raises anything but ``CheckpointRejected``, whatever the input.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from obf_contract.keys import SYMBOL_RE
from obf_features_worker.engine.feature_engine import (
    STATE_KIND,
    STATE_VERSION,
    FeatureEngine,
    StateMismatch,
    normalise_universe,
)
from obf_features_worker.engine.params import FeatureParams

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "obf_checkpoint"
CHECKPOINT_VERSION = 1
# Far above any real state (10k assets x lookback 10 x 2 histories is ~5 MB of JSON) and far
# below what would hurt the process.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_MAX_SEQ = 2**63 - 1
_MAX_ID_LEN = 200
# Pending records carried by one checkpoint: the writer's bounded write backlog (retain_bars).
MAX_RECORDS = 100_000
_BAR_KEY_RE = re.compile(r"[0-9]{1,19}")

RejectReasonName = Literal["missing", "corrupt", "version", "params", "too_old", "from_future"]
REJECT_REASONS: tuple[RejectReasonName, ...] = ("missing", "corrupt", "version", "params", "too_old", "from_future")


class CheckpointRejected(ValueError):
    """A checkpoint cannot be used; ``reason`` is one of ``REJECT_REASONS``, the message says why."""

    def __init__(self, reason: RejectReasonName, detail: str) -> None:
        super().__init__(f"checkpoint refused ({reason}): {detail}")
        self.reason: RejectReasonName = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, eq=False)
class Checkpoint:
    """One worker checkpoint.

    bar_idx / bar_ts: the last bar the engine stepped (unix s). written_at: unix s.
    seqs: symbol -> last accepted ``_push_seq`` (0 .. 2^63-1). epoch: the writer's lease epoch
    (None when it ran without a lease). engine_state: ``FeatureEngine.export_state()``.
    records: bar_idx -> bar record JSON text, the records the writer had computed but not yet
    seen written to the features map when it wrote this checkpoint (usually none).
    """

    worker_id: str
    written_at: float
    bar_idx: int
    bar_ts: float
    params: FeatureParams
    engine_state: Mapping[str, Any] = field(repr=False)
    seqs: Mapping[str, int] = field(repr=False)
    epoch: int | None = None
    records: Mapping[int, str] = field(default_factory=dict, repr=False)
    universe: tuple[str, ...] | None = None  # the engine's configured universe (None = every asset seen)

    def restore_engine(self) -> FeatureEngine:
        """A fresh engine in exactly the checkpointed state (its ``last_bar_idx`` == ``bar_idx``)."""
        return FeatureEngine.from_state(self.engine_state, self.params, universe=self.universe)


def capture(
    engine: FeatureEngine,
    *,
    seqs: Mapping[str, int],
    bar_ts: float,
    worker_id: str,
    written_at: float,
    epoch: int | None = None,
    records: Mapping[int, str] | None = None,
) -> Checkpoint:
    """Checkpoint ``engine`` right after it stepped the bar closing at ``bar_ts`` (unix s).

    records: bar_idx -> record JSON text not yet confirmed written (see ``Checkpoint.records``).

    Raises ValueError if the engine has not stepped a bar yet or an argument is invalid.
    """
    if engine.last_bar_idx is None:
        raise ValueError("cannot checkpoint an engine that has not stepped a bar")
    cp = Checkpoint(
        worker_id=worker_id,
        written_at=float(written_at),
        bar_idx=int(engine.last_bar_idx),
        bar_ts=float(bar_ts),
        params=engine.params,
        engine_state=engine.export_state(),
        seqs=dict(seqs),
        epoch=epoch,
        records=dict(records or {}),
        universe=engine.universe,
    )
    try:
        _check_fields(_body(cp))
    except CheckpointRejected as exc:
        raise ValueError(f"invalid checkpoint field: {exc.detail}") from None
    return cp


def encode(cp: Checkpoint) -> bytes:
    """The checkpoint as compact UTF-8 JSON bytes (see the module docstring for the format)."""
    body = _body(cp)
    canonical = _canonical(body)
    envelope = {
        "kind": CHECKPOINT_KIND,
        "version": CHECKPOINT_VERSION,
        "sha256": hashlib.sha256(canonical).hexdigest(),
        "body": body,
    }
    return orjson.dumps(envelope)


def decode(
    data: object,
    *,
    params: FeatureParams,
    now_bar_idx: int | None,
    max_age_bars: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    universe: Iterable[str] | None = None,
) -> Checkpoint:
    """Validate ``data`` (bytes, str, or anything with ``to_string()``) into a usable Checkpoint.

    now_bar_idx: the bar the caller is about to close next or has just closed; the checkpoint's
    bar must satisfy ``now_bar_idx - max_age_bars <= bar_idx <= now_bar_idx``. None skips the
    age checks (e.g. to read the epoch or the pending records of any valid checkpoint).
    universe: the caller's configured asset list (None = every asset seen); a checkpoint of
    another universe is refused with reason ``params``.
    Raises CheckpointRejected with reason ``missing`` (``data`` is None: no entry), ``corrupt``
    (undecodable, checksum mismatch, malformed fields or engine state), ``version`` (other format
    or engine-state version), ``params`` (engine parameters differ from ``params``), ``too_old``
    or ``from_future``. Never raises
    anything else for a bad checkpoint; a bad argument (caller bug) is a TypeError.
    """
    if (now_bar_idx is not None and type(now_bar_idx) is not int) or type(max_age_bars) is not int \
            or max_age_bars < 0:
        # A caller bug, not a bad checkpoint: fail loudly.
        raise TypeError(f"now_bar_idx must be an int and max_age_bars an int >= 0, "
                        f"got {now_bar_idx!r}, {max_age_bars!r}")
    try:
        wanted = normalise_universe(universe)
    except ValueError as exc:
        raise TypeError(f"universe: {exc}") from None
    try:
        return _decode(data, params, now_bar_idx, max_age_bars, max_bytes, wanted)
    except CheckpointRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - garbage must be refused, never crash the start-up
        raise CheckpointRejected("corrupt", f"unexpected {type(exc).__name__}: {exc}"[:300]) from None


def _decode(data: object, params: FeatureParams, now_bar_idx: int | None, max_age_bars: int,
            max_bytes: int, universe: tuple[str, ...] | None) -> Checkpoint:
    if data is None:
        raise CheckpointRejected("missing", "no checkpoint entry")
    raw = _raw_bytes(data)
    if len(raw) > max_bytes:
        raise CheckpointRejected("corrupt", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CheckpointRejected("corrupt", f"not JSON: {exc}"[:300]) from None
    if type(envelope) is not dict:
        raise CheckpointRejected("corrupt", f"a JSON {type(envelope).__name__}, not an object")
    kind = envelope.get("kind")
    version = envelope.get("version")
    if kind != CHECKPOINT_KIND:
        raise CheckpointRejected("corrupt", f"kind {kind!r:.60} is not {CHECKPOINT_KIND!r}")
    if type(version) is not int:
        raise CheckpointRejected("corrupt", f"version {version!r:.60} is not an int")
    if version != CHECKPOINT_VERSION:
        raise CheckpointRejected("version", f"format version {version}, this worker reads {CHECKPOINT_VERSION}")
    body = envelope.get("body")
    digest = envelope.get("sha256")
    if type(body) is not dict or type(digest) is not str:
        raise CheckpointRejected("corrupt", "missing body or sha256")
    actual = hashlib.sha256(_canonical(body)).hexdigest()
    if actual != digest:
        raise CheckpointRejected("corrupt", f"checksum mismatch: stored {digest[:16]!r}.., computed {actual[:16]}..")

    _check_fields(body)
    state = body["engine"]
    state_version = state.get("version")
    if state.get("kind") != STATE_KIND:
        raise CheckpointRejected("corrupt", f"engine state kind {state.get('kind')!r:.60}")
    if state_version != STATE_VERSION:
        raise CheckpointRejected("version", f"engine state version {state_version!r:.60} (an older schema whose "
                                            f"features are computed differently), this worker's engine is "
                                            f"version {STATE_VERSION}: not restored")

    try:
        stored_params = FeatureParams.from_dict(body["params"])
    except (ValueError, TypeError) as exc:
        raise CheckpointRejected("params", f"stored parameters are not valid here: {exc}"[:300]) from None
    if stored_params != params:
        diff = _param_diff(stored_params.to_dict(), params.to_dict())
        raise CheckpointRejected("params", f"engine parameters differ: {diff}")
    if state.get("params") != body["params"]:
        raise CheckpointRejected("corrupt", "engine state parameters differ from the checkpoint's")
    stored_universe = state.get("universe")
    if (tuple(stored_universe) if type(stored_universe) is list else stored_universe) != universe:
        have = "every asset seen" if stored_universe is None else f"{len(stored_universe)} configured assets"
        want = "every asset seen" if universe is None else f"{len(universe)} configured assets"
        raise CheckpointRejected("params", f"asset universe differs: checkpoint={have} worker={want}")

    bar_idx = body["bar_idx"]
    if now_bar_idx is not None and bar_idx > now_bar_idx:
        raise CheckpointRejected("from_future", f"checkpoint bar {bar_idx} is after the current bar {now_bar_idx} "
                                                "(clock skew, or a checkpoint from another bar clock)")
    if now_bar_idx is not None and now_bar_idx - bar_idx > max_age_bars:
        raise CheckpointRejected("too_old", f"checkpoint bar {bar_idx} is {now_bar_idx - bar_idx} bars old, "
                                            f"limit {max_age_bars}")
    if state.get("last_bar_idx") != bar_idx:
        raise CheckpointRejected("corrupt", f"engine state last bar {state.get('last_bar_idx')!r:.40} "
                                            f"!= checkpoint bar {bar_idx}")
    try:
        FeatureEngine.from_state(state, params, universe=universe)  # a state that cannot be restored is refused here
    except StateMismatch as exc:
        raise CheckpointRejected("corrupt", f"engine state: {exc}"[:300]) from None

    return Checkpoint(
        worker_id=body["worker_id"],
        written_at=float(body["written_at"]),
        bar_idx=bar_idx,
        bar_ts=float(body["bar_ts"]),
        params=stored_params,
        engine_state=state,
        seqs=dict(body["seqs"]),
        epoch=body["epoch"],
        records={int(k): v for k, v in body.get("records", {}).items()},
        universe=universe,
    )


def _raw_bytes(data: object) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError:
            raise CheckpointRejected("corrupt", "not valid UTF-8 text") from None
    to_string = getattr(data, "to_string", None)  # HazelcastJsonValue
    if to_string is None:
        raise CheckpointRejected("corrupt", f"unsupported value type {type(data).__name__}")
    text = to_string()
    if not isinstance(text, str):
        raise CheckpointRejected("corrupt", "to_string() did not return a string")
    return _raw_bytes(text)


def _body(cp: Checkpoint) -> dict[str, Any]:
    body = {
        "worker_id": cp.worker_id,
        "written_at": cp.written_at,
        "bar_idx": cp.bar_idx,
        "bar_ts": cp.bar_ts,
        "epoch": cp.epoch,
        "params": cp.params.to_dict(),
        "seqs": dict(cp.seqs),
        "engine": dict(cp.engine_state),
    }
    if cp.records:  # optional: a checkpoint without pending records reads as before
        body["records"] = {str(k): v for k, v in sorted(cp.records.items())}
    return body


def _canonical(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _check_fields(body: Mapping[str, Any]) -> None:
    """Shape and range checks of the body; CheckpointRejected("corrupt") on the first failure."""
    def bad(detail: str) -> CheckpointRejected:
        return CheckpointRejected("corrupt", detail)

    required = ("worker_id", "written_at", "bar_idx", "bar_ts", "epoch", "params", "seqs", "engine")
    missing = [k for k in required if k not in body]
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}")
    worker_id = body["worker_id"]
    if type(worker_id) is not str or not 0 < len(worker_id) <= _MAX_ID_LEN:
        raise bad(f"worker_id must be a non-empty string of <= {_MAX_ID_LEN} chars")
    for name in ("written_at", "bar_ts"):
        value = body[name]
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
            raise bad(f"{name} must be a finite unix time >= 0, got {value!r:.40}")
    bar_idx = body["bar_idx"]
    if type(bar_idx) is not int or not 0 <= bar_idx <= _MAX_SEQ:
        raise bad(f"bar_idx must be an int in [0, 2^63), got {bar_idx!r:.40}")
    epoch = body["epoch"]
    if epoch is not None and (type(epoch) is not int or not 0 <= epoch <= _MAX_SEQ):
        raise bad(f"epoch must be null or an int in [0, 2^63), got {epoch!r:.40}")
    if type(body["params"]) is not dict:
        raise bad("params must be an object")
    seqs = body["seqs"]
    if type(seqs) is not dict:
        raise bad("seqs must be an object")
    for symbol, seq in seqs.items():
        if SYMBOL_RE.fullmatch(symbol) is None:
            raise bad(f"seqs has an invalid symbol {symbol[:40]!r}")
        if type(seq) is not int or not 0 <= seq <= _MAX_SEQ:
            raise bad(f"seqs[{symbol}] must be an int in [0, 2^63), got {seq!r:.40}")
    if type(body["engine"]) is not dict:
        raise bad("engine must be an object")
    records = body.get("records", {})
    if type(records) is not dict or len(records) > MAX_RECORDS:
        raise bad(f"records must be an object of at most {MAX_RECORDS} entries")
    for key, text in records.items():
        if type(key) is not str or _BAR_KEY_RE.fullmatch(key) is None or int(key) > _MAX_SEQ:
            raise bad(f"records has a key that is not a bar_idx: {key!r:.40}")
        if type(text) is not str:
            raise bad(f"records[{key}] must be JSON text")
        try:
            rec = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise bad(f"records[{key}] is not JSON") from None
        if type(rec) is not dict or rec.get("bar_idx") != int(key):
            raise bad(f"records[{key}] is not the record of bar {key}")


def _param_diff(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    names = sorted(set(stored) | set(current))
    parts = [f"{n}: checkpoint={stored.get(n)!r} worker={current.get(n)!r}"
             for n in names if stored.get(n) != current.get(n)]
    return "; ".join(parts) or "(none)"
