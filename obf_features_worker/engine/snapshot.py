"""One validated L2 order-book snapshot: pure decode + validation of one upstream payload.

Upstream contract (map ``DOLPHIN_FEATURES``, key ``asset_{SYMBOL}_ob``), value JSON::

    {"timestamp": ISO-8601 | unix s (int/float; > 1e11 means unix ms),
     "bid_notional": [USD per band], "ask_notional": [USD per band],      # same length L, 1..64
     "bid_depth": [base qty per band], "ask_depth": [base qty per band],  # optional, length L
     "_pushed_at": ISO-8601, "_push_seq": int}                            # optional

Band k (0-based, k = 0 nearest the mid) covers (k*w, (k+1)*w] bps from the mid, w = band span / L.
Every failure raises ``SnapshotRejected`` with a ``RejectReason``; nothing here touches the grid.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numba import njit

from obf_contract import timestamps
from obf_contract.keys import KEY_PREFIX, KEY_SUFFIX, SYMBOL_RE, is_asset_key_shape, symbol_of_key
from obf_contract.timestamps import format_timestamp

MAX_LEVELS = 64
# Values above this are not a plausible USD notional or base quantity; the cap also keeps
# every feature sum finite over thousands of assets.
MAX_VALUE = 1e18
# Values below this are float dust from upstream arithmetic and are treated as 0; it keeps
# ratios of depths (withdrawal velocity, depth quality) finite.
MIN_VALUE = 1e-12

_MAX_SEQ = 2**63 - 1


class RejectReason(str, enum.Enum):
    """Why a snapshot was rejected; the value is the name used in counters, logs and health."""

    BAD_KEY = "bad_key"
    # An ``asset_..._ob`` key whose symbol breaks the grammar (obf_contract.keys.SYMBOL_RE).
    BAD_SYMBOL = "bad_symbol"
    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    BAD_FIELD = "bad_field"
    BAD_LENGTH = "bad_length"
    NON_FINITE = "non_finite"
    NEGATIVE = "negative"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    # The timestamp is older than the last accepted snapshot's of the same asset.
    STALE_TIMESTAMP = "stale_timestamp"
    # Same timestamp as the last accepted snapshot and a _push_seq not greater than its: a duplicate.
    STALE_SEQ = "stale_seq"


class SnapshotRejected(ValueError):
    """A payload failed validation; ``reason`` names the rule, ``detail`` says what was wrong."""

    def __init__(self, reason: RejectReason, detail: str, *, ts: float | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.ts = ts  # the payload's timestamp (unix s) when it was parsed before the failure


_F64 = np.dtype(np.float64)
_UNIT_STRIDE = (8,)  # one float64 per step: C-contiguous


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """One validated snapshot. Arrays are float64[L], level 0 nearest the mid, all finite and >= 0.

    ts / pushed_at are unix seconds; bid/ask_notional are USD per band; bid/ask_depth base qty per band.
    """

    symbol: str
    ts: float
    bid_notional: np.ndarray
    ask_notional: np.ndarray
    bid_depth: np.ndarray | None = None
    ask_depth: np.ndarray | None = None
    seq: int | None = None
    pushed_at: float | None = None

    def __post_init__(self) -> None:
        # The engine packs the bands of a bar by joining their bytes, so it relies on native
        # float64 C-contiguous arrays of equal length 1..MAX_LEVELS: parse_snapshot's already are
        # (no copy; the identity checks keep this under a microsecond); anything else (a list,
        # ints, a strided view) is converted once here, off the bar path, and bad lengths are
        # refused here rather than once per bar.
        b, a = self.bid_notional, self.ask_notional
        if (b.__class__ is not np.ndarray or a.__class__ is not np.ndarray or b.dtype is not _F64
                or a.dtype is not _F64 or b.strides != _UNIT_STRIDE or a.strides != _UNIT_STRIDE):
            b = np.ascontiguousarray(b, dtype=np.float64)
            a = np.ascontiguousarray(a, dtype=np.float64)
            object.__setattr__(self, "bid_notional", b)
            object.__setattr__(self, "ask_notional", a)
        n = b.shape
        if n != a.shape or len(n) != 1 or not 1 <= n[0] <= MAX_LEVELS:
            raise ValueError(f"bid/ask notional need equal lengths in 1..{MAX_LEVELS}, got {b.shape} / {a.shape}")

    @property
    def n_levels(self) -> int:
        """Number of bands L (1..64)."""
        return int(self.bid_notional.shape[0])


def symbol_from_key(key: object) -> str:
    """``asset_BTCUSDT_ob`` -> ``BTCUSDT``; raises SnapshotRejected: BAD_SYMBOL for an
    ``asset_..._ob`` key whose symbol breaks the grammar, BAD_KEY for anything else."""
    if type(key) is not str:
        raise SnapshotRejected(RejectReason.BAD_KEY, f"key is not a string: {type(key).__name__}")
    symbol = symbol_of_key(key)
    if symbol is None:
        if is_asset_key_shape(key):
            text = key[len(KEY_PREFIX):-len(KEY_SUFFIX)][:80]
            raise SnapshotRejected(RejectReason.BAD_SYMBOL, f"symbol {text!r} does not match {SYMBOL_RE.pattern}")
        raise SnapshotRejected(RejectReason.BAD_KEY, f"key does not match asset_<SYMBOL>_ob: {key[:80]!r}")
    return symbol


def parse_timestamp(value: object) -> float:
    """``obf_contract.timestamps.parse_timestamp``, raising SnapshotRejected(BAD_TIMESTAMP)."""
    try:
        return timestamps.parse_timestamp(value)
    except timestamps.BadTimestamp as exc:
        raise SnapshotRejected(RejectReason.BAD_TIMESTAMP, str(exc)) from None


def parse_snapshot(
    key: object,
    value: object,
    *,
    now: float,
    max_future_skew_s: float = 5.0,
    max_payload_bytes: int = 65_536,
) -> Snapshot:
    """Validate one map entry into a Snapshot, or raise SnapshotRejected.

    value: JSON ``str``/``bytes``, a HazelcastJsonValue (anything with ``to_string()``), or an
    already-decoded dict. now: unix s, for the future-timestamp check. Booleans are not numbers.
    """
    return parse_payload(
        symbol_from_key(key), value, now=now, max_future_skew_s=max_future_skew_s,
        max_payload_bytes=max_payload_bytes,
    )


def parse_payload(
    symbol: str,
    value: object,
    *,
    now: float,
    max_future_skew_s: float = 5.0,
    max_payload_bytes: int = 65_536,
) -> Snapshot:
    """``parse_snapshot`` for an already-validated symbol (the key check done by the caller)."""
    obj = _decode(value, max_payload_bytes)

    if "timestamp" not in obj:
        raise SnapshotRejected(RejectReason.BAD_FIELD, "missing field 'timestamp'")
    ts = parse_timestamp(obj["timestamp"])
    if ts > now + max_future_skew_s:
        raise SnapshotRejected(
            RejectReason.FUTURE_TIMESTAMP, f"timestamp {ts:.6f} is {ts - now:.3f} s ahead of now", ts=ts
        )

    bid = obj.get("bid_notional")
    ask = obj.get("ask_notional")
    if type(bid) is not list or type(ask) is not list:
        raise SnapshotRejected(RejectReason.BAD_FIELD, "bid_notional and ask_notional must be lists")
    n = len(bid)
    if len(ask) != n:
        raise SnapshotRejected(RejectReason.BAD_LENGTH, f"bid_notional has {n} levels, ask_notional {len(ask)}")
    if not 1 <= n <= MAX_LEVELS:
        raise SnapshotRejected(RejectReason.BAD_LENGTH, f"{n} levels, need 1..{MAX_LEVELS}")
    flat = bid + ask
    bid_depth = obj.get("bid_depth")
    ask_depth = obj.get("ask_depth")
    has_bid_depth = bid_depth is not None
    has_ask_depth = ask_depth is not None
    for name, lst in (("bid_depth", bid_depth), ("ask_depth", ask_depth)):
        if lst is None:
            continue
        if type(lst) is not list:
            raise SnapshotRejected(RejectReason.BAD_FIELD, f"{name} must be a list")
        if len(lst) != n:
            raise SnapshotRejected(RejectReason.BAD_LENGTH, f"{name} has {len(lst)} levels, expected {n}")
        flat += lst

    arr = _numbers(flat)
    status = _check_levels(arr, MIN_VALUE, MAX_VALUE)
    if status:
        if status == _NON_FINITE:
            raise SnapshotRejected(RejectReason.NON_FINITE, "NaN or infinite level value")
        if status == _NEGATIVE:
            raise SnapshotRejected(RejectReason.NEGATIVE, f"negative level value {arr.min()!r}")
        raise SnapshotRejected(RejectReason.BAD_FIELD, f"level value {arr.max()!r} above {MAX_VALUE:g}")
    arr.flags.writeable = False

    seq = obj.get("_push_seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq <= _MAX_SEQ):
        raise SnapshotRejected(RejectReason.BAD_FIELD, f"_push_seq must be an int in [0, 2^63), got {seq!r:.40}")
    pushed_raw = obj.get("_pushed_at")
    pushed_at: float | None = None
    if pushed_raw is not None:
        try:
            pushed_at = parse_timestamp(pushed_raw)
        except SnapshotRejected as exc:
            raise SnapshotRejected(RejectReason.BAD_TIMESTAMP, f"_pushed_at: {exc.detail}") from None

    k = 2
    bd = ad = None
    if has_bid_depth:
        bd = arr[k * n:(k + 1) * n]
        k += 1
    if has_ask_depth:
        ad = arr[k * n:(k + 1) * n]
    return Snapshot(symbol, ts, arr[:n], arr[n:2 * n], bd, ad, seq, pushed_at)


def payload_json(
    ts: float | str,
    bid_notional: Sequence[float] | np.ndarray,
    ask_notional: Sequence[float] | np.ndarray,
    bid_depth: Sequence[float] | np.ndarray | None = None,
    ask_depth: Sequence[float] | np.ndarray | None = None,
    *,
    seq: int | None = None,
    pushed_at: str | None = None,
) -> str:
    """Build an upstream payload exactly as the order-book flow writes it.

    ts: unix seconds (rendered ISO-8601 UTC with microseconds) or a string used verbatim.
    """
    obj: dict[str, Any] = {
        "timestamp": ts if isinstance(ts, str) else format_timestamp(ts),
        "bid_notional": _float_list(bid_notional),
        "ask_notional": _float_list(ask_notional),
    }
    if bid_depth is not None:
        obj["bid_depth"] = _float_list(bid_depth)
    if ask_depth is not None:
        obj["ask_depth"] = _float_list(ask_depth)
    if pushed_at is not None:
        obj["_pushed_at"] = pushed_at
    if seq is not None:
        obj["_push_seq"] = seq
    return orjson.dumps(obj).decode()


def _float_list(values: Sequence[float] | np.ndarray) -> list[float]:
    out: list[float] = np.asarray(values, dtype=np.float64).tolist()
    return out


def _decode(value: object, max_payload_bytes: int) -> dict[str, Any]:
    if type(value) is dict:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw: bytes | str = bytes(value)
        size = len(raw)
    elif isinstance(value, str):
        raw = value
        size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    else:
        to_string = getattr(value, "to_string", None)
        if to_string is None:
            if isinstance(value, dict):
                return value
            raise SnapshotRejected(RejectReason.BAD_JSON, f"unsupported value type {type(value).__name__}")
        try:
            raw = to_string()
        except Exception as exc:  # noqa: BLE001 - a broken JSON wrapper is bad input, not our failure
            raise SnapshotRejected(RejectReason.BAD_JSON, f"to_string() failed: {exc!r:.80}") from None
        if not isinstance(raw, str):
            raise SnapshotRejected(RejectReason.BAD_JSON, "to_string() did not return a string")
        size = len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_payload_bytes:
        raise SnapshotRejected(RejectReason.TOO_LARGE, f"{size} bytes > {max_payload_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        obj = _decode_lenient(raw, exc)
    if type(obj) is not dict:
        raise SnapshotRejected(RejectReason.BAD_JSON, f"payload is a JSON {type(obj).__name__}, not an object")
    return obj


def _decode_lenient(raw: bytes | str, exc: Exception) -> Any:
    """Second chance with the stdlib decoder, which accepts what orjson refuses but a producer
    may still write: NaN/Infinity literals (Python's json.dumps), numbers overflowing a double
    and integers beyond 64 bits. The value checks then reject them by the precise reason."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text)
    except Exception:  # noqa: BLE001 - any failure here means undecodable (incl. RecursionError)
        raise SnapshotRejected(RejectReason.BAD_JSON, f"undecodable JSON: {exc}"[:200]) from None


_NUMBER_TYPES = frozenset((int, float))
_NON_FINITE = 1
_NEGATIVE = 2
_TOO_LARGE = 3


@njit(cache=True)
def _check_levels(values: np.ndarray, min_value: float, max_value: float) -> int:
    """One pass over all level values: 0 if valid, else the worst problem (non-finite >
    negative > too large). Valid values below ``min_value`` (and -0.0) are set to 0.0 in place.
    A numba loop because three numpy reductions cost more than the JSON decode."""
    status = 0
    for i in range(values.shape[0]):
        x = values[i]
        if not np.isfinite(x):
            return _NON_FINITE
        if x < 0.0:
            status = _NEGATIVE
        elif x > max_value:
            if status == 0:
                status = _TOO_LARGE
        elif x < min_value:
            values[i] = 0.0
    return status


def _numbers(flat: list[Any]) -> np.ndarray:
    types = set(map(type, flat))
    if not types <= _NUMBER_TYPES:
        for t in types:
            if t is bool or not issubclass(t, (int, float)):
                raise SnapshotRejected(RejectReason.BAD_FIELD, f"level value of type {t.__name__}")
    try:
        return np.array(flat, dtype=np.float64)
    except OverflowError:
        raise SnapshotRejected(RejectReason.BAD_FIELD, "level value out of float range") from None
