"""Rebuild Binance L2 books from a REST depth snapshot plus depthUpdate diffs; emit upstream payloads.

Input: recorder files (gzip or plain text), one record per line ``<local receive time, unix ns> <json>``,
as published by hftbacktest: combined-stream messages (``depthUpdate``, ``bookTicker``, ``trade``) and a
REST depth snapshot ``{"lastUpdateId": N, "bids": [...], "asks": [...]}`` near the start of a recording.
Only depth messages and snapshots are decoded; every other line is skipped without parsing.

Rebuild (Binance's documented procedure): diffs seen before the snapshot are buffered; after the snapshot
with ``lastUpdateId = L`` every diff with ``u <= L`` (or ``u <=`` the last applied ``u``) is stale and
dropped; the rest must chain: spot ``U <= prev_u + 1`` (``U == L + 1`` or straddling ``L`` for the first),
futures ``pu == prev_u`` (``pu <= L`` for the first). A broken chain is a *gap*: it is recorded with its
file, line and ids, and by default the book waits for a new snapshot line (``on_gap="resync"``).

Output: every ``every_ms`` of exchange event time the book is reduced to ``levels`` equal-width price
bands per side out to ``band_span_bps`` from the mid (band k spans ``(k*w, (k+1)*w]`` bps, ``w =
band_span_bps / levels``) and emitted as one upstream payload (``snapshot.payload_json``) under the key
``asset_{SYMBOL}_ob``.

Markets (told apart by the first depthUpdate of a file, no flag needed):

- spot (``U`` chain): quantity in coins; notional = price x quantity (in the quote currency, USD for
  the USDT/USDC/FDUSD pairs).
- USD-M futures (``pu`` chain, linear): the same rule.
- COIN-M futures (``pu`` chain, inverse: the message carries the pair ``ps``, symbols such as
  ``BTCUSD_PERP`` / ``BTCUSD_250328``): quantity in contracts of a fixed USD face value (Binance: 100
  USD for BTC, 10 USD for every other coin; ``contract_sizes`` overrides per symbol or pair); notional
  = contracts x face value (USD), depth in coins = notional / the level's price.

Symbols keep their exchange spelling. Only a futures symbol spelled like a spot symbol (a USD-M
perpetual: ``BTCUSDT``, no ``_``) gets ``futures_suffix`` appended (default: ``BTCUSDTPERP``), so a
spot and a futures book never share a key; delivery and COIN-M symbols contain ``_`` and never
collide with a spot symbol. Every key symbol is checked against the one grammar (``obf_contract.keys``).
"""

from __future__ import annotations

import argparse
import enum
import gzip
import heapq
import logging
import math
import re
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import orjson

from obf_contract.keys import SYMBOL_RE, asset_key, is_symbol
from obf_contract.timestamps import format_timestamp
from obf_features_worker.engine import snapshot

log = logging.getLogger(__name__)

MAX_LEVELS = snapshot.MAX_LEVELS
# Buffered diffs while waiting for a snapshot; a real recording needs a few dozen.
DEFAULT_MAX_BUFFERED = 100_000
# Tolerance (in band widths) so a decimal price exactly on a band edge lands in the inner band, as the
# half-open (k*w, (k+1)*w] definition says, despite binary floating-point rounding of the distance.
_EDGE_TOL = 1e-9

_DEPTH_MARK = b'"depthUpdate"'
_SNAPSHOT_MARK = b'"lastUpdateId"'
# Binance COIN-M contract face values (USD per contract): BTC contracts 100 USD, every other coin 10 USD.
COIN_M_BTC_CONTRACT_USD = 100.0
COIN_M_DEFAULT_CONTRACT_USD = 10.0
# A COIN-M symbol when the message carries no pair (``ps``): <COIN>USD_PERP or <COIN>USD_<yymmdd>.
_COIN_M_SYMBOL_RE = re.compile(r"^([A-Z0-9]+USD)_(PERP|[0-9]{6})$")


class Market(str, enum.Enum):
    """Which update-id chain a book follows."""

    SPOT = "spot"  # U <= previous u + 1 (u > previous u)
    FUTURES = "futures"  # pu == previous u (USD-M / COIN-M)


class GapPolicy(str, enum.Enum):
    """What to do when the update-id chain breaks."""

    RESYNC = "resync"  # stop emitting; wait for the next snapshot line, as Binance documents
    CONTINUE = "continue"  # keep applying diffs to a book known to be missing updates (reported)


@dataclass(frozen=True)
class BandSpec:
    """Band geometry: ``levels`` equal-width bands per side covering (0, band_span_bps] from the mid."""

    band_span_bps: float
    levels: int

    def __post_init__(self) -> None:
        if not (isinstance(self.band_span_bps, (int, float)) and math.isfinite(self.band_span_bps)
                and self.band_span_bps > 0):
            raise ValueError(f"band_span_bps must be a finite number > 0, got {self.band_span_bps!r}")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels must be an int in [1, {MAX_LEVELS}], got {self.levels!r}")

    @property
    def width_bps(self) -> float:
        """Width of one band in bps."""
        return self.band_span_bps / self.levels


@dataclass(frozen=True)
class Bands:
    """One side-pair of band aggregates. Notional in USD (quote currency), depth in coins (base quantity)."""

    mid: float
    bid_notional: np.ndarray
    ask_notional: np.ndarray
    bid_depth: np.ndarray
    ask_depth: np.ndarray


def side_bands(prices: np.ndarray, qtys: np.ndarray, mid: float, is_bid: bool,
               spec: BandSpec, contract_usd: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Notional (USD) and depth (coins) per band for one side; levels beyond the span are ignored.

    Linear (``contract_usd`` None: spot, USD-M): notional ``price*qty``, depth ``qty``. Inverse
    (COIN-M, ``qty`` in contracts of ``contract_usd`` USD each): notional ``qty*contract_usd``,
    depth ``qty*contract_usd/price``."""
    dist_bps = ((mid - prices) if is_bid else (prices - mid)) / mid * 1e4
    idx = np.ceil(dist_bps / spec.width_bps - _EDGE_TOL) - 1.0
    # Any level strictly away from the mid belongs at least to band 0, even within the tolerance.
    idx = np.maximum(idx, 0.0)
    keep = (dist_bps > 0.0) & (idx < spec.levels)
    k = idx[keep].astype(np.int64)
    p = prices[keep]
    q = qtys[keep]
    if contract_usd is None:
        level_notional, level_depth = p * q, q
    else:
        level_notional = q * contract_usd
        level_depth = level_notional / p
    notional = np.bincount(k, weights=level_notional, minlength=spec.levels)
    depth = np.bincount(k, weights=level_depth, minlength=spec.levels)
    return notional, depth


def aggregate_bands(bid_prices: np.ndarray, bid_qtys: np.ndarray, ask_prices: np.ndarray,
                    ask_qtys: np.ndarray, spec: BandSpec, contract_usd: float | None = None) -> Bands | None:
    """Band aggregates of a book around its mid ``(best_bid + best_ask) / 2`` (``contract_usd``:
    see ``side_bands``).

    Returns None when the book has no usable mid: an empty side, or a crossed/locked book
    (best bid >= best ask), which a correctly rebuilt book never shows.
    """
    if bid_prices.size == 0 or ask_prices.size == 0:
        return None
    best_bid = float(bid_prices.max())
    best_ask = float(ask_prices.min())
    if not best_bid < best_ask:
        return None
    mid = (best_bid + best_ask) / 2.0
    bn, bd = side_bands(bid_prices, bid_qtys, mid, True, spec, contract_usd)
    an, ad = side_bands(ask_prices, ask_qtys, mid, False, spec, contract_usd)
    return Bands(mid=mid, bid_notional=bn, ask_notional=an, bid_depth=bd, ask_depth=ad)


@dataclass(frozen=True)
class DepthDiff:
    """One depthUpdate message with where it came from."""

    event_ms: int  # exchange event time E, unix ms
    first_id: int  # U
    last_id: int  # u
    prev_id: int | None  # pu (futures only)
    bids: list[Any]  # [[price, qty], ...] as decimal strings, as received
    asks: list[Any]
    recv_ns: int  # recorder's local receive time, unix ns
    file: str
    line: int


@dataclass(frozen=True)
class DepthSnapshot:
    """One REST depth snapshot."""

    last_update_id: int
    bids: list[Any]
    asks: list[Any]
    recv_ns: int
    file: str
    line: int


@dataclass(frozen=True)
class Gap:
    """A break in the update-id chain: updates between ``after_id`` and the diff were never seen."""

    symbol: str
    file: str
    line: int
    event_ms: int
    after_id: int  # last applied u (or the snapshot's lastUpdateId)
    first_id: int  # U of the diff that did not chain
    prev_id: int | None  # pu of that diff (futures)

    def describe(self) -> str:
        link = f"pu={self.prev_id}" if self.prev_id is not None else f"U={self.first_id}"
        return (f"{self.symbol} {self.file}:{self.line} E={self.event_ms} "
                f"expected continuation of u={self.after_id}, got {link}")


class Outcome(enum.Enum):
    """How a diff relates to the book."""

    BUFFER = "buffer"  # no snapshot yet: keep it
    STALE = "stale"  # already contained in the snapshot or applied
    APPLY = "apply"  # chains: apply
    GAP = "gap"  # does not chain


def _set_levels(side: dict[float, float], levels: Iterable[Sequence[str]]) -> None:
    for price_s, qty_s in levels:
        qty = float(qty_s)
        price = float(price_s)
        if qty == 0.0:
            side.pop(price, None)
        else:
            side[price] = qty


class DepthBook:
    """One market's L2 book (price -> quantity per side) kept in step with the update-id chain."""

    def __init__(self, market: Market, *, max_buffered: int = DEFAULT_MAX_BUFFERED) -> None:
        self.market = market
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.last_id: int | None = None  # u of the last applied diff, or the snapshot's lastUpdateId
        self.applied_since_snapshot = 0
        self.max_buffered = max_buffered
        self.buffered: deque[DepthDiff] = deque()
        self.dropped_from_buffer = 0

    @property
    def live(self) -> bool:
        """True once a snapshot is loaded and the chain has not broken since (under resync)."""
        return self.last_id is not None

    def check(self, diff: DepthDiff) -> Outcome:
        """Classify ``diff`` against the current book without changing it."""
        if self.last_id is None:
            return Outcome.BUFFER
        if diff.last_id <= self.last_id:
            return Outcome.STALE
        if self.market is Market.FUTURES:
            if diff.prev_id is None:
                return Outcome.GAP
            if self.applied_since_snapshot == 0:
                # The first diff after a snapshot straddles it: its predecessor ended at or before L.
                return Outcome.APPLY if diff.prev_id <= self.last_id else Outcome.GAP
            return Outcome.APPLY if diff.prev_id == self.last_id else Outcome.GAP
        return Outcome.APPLY if diff.first_id <= self.last_id + 1 else Outcome.GAP

    def apply(self, diff: DepthDiff) -> None:
        """Apply ``diff`` (absolute quantities; 0 deletes the level)."""
        _set_levels(self.bids, diff.bids)
        _set_levels(self.asks, diff.asks)
        self.last_id = diff.last_id
        self.applied_since_snapshot += 1

    def buffer(self, diff: DepthDiff) -> None:
        """Keep ``diff`` until a snapshot arrives (bounded: the oldest are dropped first)."""
        if len(self.buffered) >= self.max_buffered:
            self.buffered.popleft()
            self.dropped_from_buffer += 1
        self.buffered.append(diff)

    def load_snapshot(self, snap: DepthSnapshot) -> list[DepthDiff]:
        """Reset the book to ``snap``; return the buffered diffs, oldest first, to be offered again."""
        self.bids = {}
        self.asks = {}
        _set_levels(self.bids, snap.bids)
        _set_levels(self.asks, snap.asks)
        self.last_id = snap.last_update_id
        self.applied_since_snapshot = 0
        pending = list(self.buffered)
        self.buffered.clear()
        return pending

    def invalidate(self) -> None:
        """Forget the book after a gap; diffs are buffered again until the next snapshot."""
        self.bids = {}
        self.asks = {}
        self.last_id = None
        self.applied_since_snapshot = 0

    def bands(self, spec: BandSpec, contract_usd: float | None = None) -> Bands | None:
        """Band aggregates of the current book (None without a usable mid); ``contract_usd``: the
        USD face value of one contract for an inverse (COIN-M) book, None for a linear one."""
        return aggregate_bands(
            np.fromiter(self.bids.keys(), np.float64, len(self.bids)),
            np.fromiter(self.bids.values(), np.float64, len(self.bids)),
            np.fromiter(self.asks.keys(), np.float64, len(self.asks)),
            np.fromiter(self.asks.values(), np.float64, len(self.asks)),
            spec,
            contract_usd,
        )

    def coverage_bps(self) -> tuple[float, float]:
        """How far (bps from the mid) the bid and ask sides reach; (0, 0) without a usable mid."""
        if not self.bids or not self.asks:
            return 0.0, 0.0
        best_bid, best_ask = max(self.bids), min(self.asks)
        mid = (best_bid + best_ask) / 2.0
        return (mid - min(self.bids)) / mid * 1e4, (max(self.asks) - mid) / mid * 1e4


# ----------------------------------------------------------------------------------------------
# Reading recorder files


def _open_lines(path: Path) -> IO[bytes]:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def iter_depth_records(path: Path) -> Iterator[DepthDiff | DepthSnapshot | dict[str, Any]]:
    """Stream the depth diffs and snapshots of one recorder file; other lines are skipped unparsed.

    A line that looks like depth data but does not decode yields ``{"bad_line": n, "error": str}``.
    """
    name = str(path)
    with _open_lines(path) as fh:
        for n, raw in enumerate(fh, start=1):
            is_diff = _DEPTH_MARK in raw
            if not is_diff and _SNAPSHOT_MARK not in raw:
                continue
            try:
                ts_s, _, body = raw.partition(b" ")
                recv_ns = int(ts_s)
                msg = orjson.loads(body)
                if is_diff:
                    d = msg["data"] if "data" in msg else msg
                    pu = d.get("pu")
                    yield DepthDiff(int(d["E"]), int(d["U"]), int(d["u"]), None if pu is None else int(pu),
                                    d["b"], d["a"], recv_ns, name, n)
                else:
                    yield DepthSnapshot(int(msg["lastUpdateId"]), msg["bids"], msg["asks"], recv_ns, name, n)
            except (ValueError, KeyError, TypeError) as exc:
                yield {"bad_line": n, "error": f"{type(exc).__name__}: {exc}"}


@dataclass(frozen=True)
class SourceFile:
    """A recorder file and the book it belongs to (from its first depthUpdate)."""

    path: Path
    market: Market
    exchange_symbol: str
    first_recv_ns: int
    coin_pair: str | None = None  # COIN-M (inverse) only: the pair, e.g. "BTCUSD"


def coin_m_pair(data: Mapping[str, Any], exchange_symbol: str) -> str | None:
    """The pair of a COIN-M depthUpdate (``ps``, or read from a ``<COIN>USD_PERP|_yymmdd`` symbol);
    None for spot and USD-M messages."""
    if "pu" not in data:
        return None
    pair = data.get("ps")
    if isinstance(pair, str) and pair:
        return pair.upper()
    m = _COIN_M_SYMBOL_RE.fullmatch(exchange_symbol)
    return None if m is None else m.group(1)


def default_contract_usd(pair: str) -> float:
    """Binance COIN-M face value of one contract of ``pair`` in USD: 100 for BTCUSD, else 10."""
    coin = pair[:-3] if pair.endswith("USD") else pair
    return COIN_M_BTC_CONTRACT_USD if coin == "BTC" else COIN_M_DEFAULT_CONTRACT_USD


def parse_contract_sizes(items: Iterable[str]) -> dict[str, float]:
    """``["BTCUSD_PERP=100", "ETHUSD=10"]`` -> ``{symbol or pair: USD per contract}``.

    Raises ValueError naming the item for a missing ``=``, a symbol outside the grammar, a value
    that is not a finite number > 0, or a symbol given twice."""
    out: dict[str, float] = {}
    for item in items:
        sym, sep, value = item.partition("=")
        sym = sym.strip()
        if not sep or not is_symbol(sym):
            raise ValueError(f"--contract-size {item!r}: expected SYMBOL=USD with SYMBOL matching {SYMBOL_RE.pattern}")
        try:
            usd = float(value)
        except ValueError:
            usd = math.nan
        if not (math.isfinite(usd) and usd > 0):
            raise ValueError(f"--contract-size {item!r}: USD per contract must be a finite number > 0")
        if sym in out:
            raise ValueError(f"--contract-size {sym} given twice")
        out[sym] = usd
    return out


def probe_file(path: Path) -> SourceFile:
    """Identify the market and symbol of a recorder file from its first depthUpdate message.

    Raises ValueError if the file holds no depthUpdate message.
    """
    with _open_lines(path) as fh:
        first_ns: int | None = None
        for raw in fh:
            if first_ns is None:
                try:
                    first_ns = int(raw.partition(b" ")[0])
                except ValueError:
                    pass
            if _DEPTH_MARK not in raw:
                continue
            try:
                msg = orjson.loads(raw.partition(b" ")[2])
                d = msg["data"] if "data" in msg else msg
                market = Market.FUTURES if "pu" in d else Market.SPOT
                symbol = str(d["s"]).upper()
                return SourceFile(path, market, symbol, first_ns or 0, coin_m_pair(d, symbol))
            except (ValueError, KeyError, TypeError):
                continue
    raise ValueError(f"{path}: no depthUpdate message found")


@dataclass(frozen=True)
class BookSource:
    """All files of one book (market, symbol), in recording order."""

    symbol: str  # the key symbol: exchange symbol (+ futures suffix for a USD-M perpetual)
    market: Market
    files: tuple[Path, ...]
    contract_usd: float | None = None  # COIN-M: USD face value of one contract; None: linear book


def book_symbol(exchange_symbol: str, market: Market, futures_suffix: str) -> str:
    """Key symbol of a book: the exchange symbol, plus ``futures_suffix`` for a futures symbol that a
    spot symbol could share (no ``_``: a USD-M perpetual). Raises ValueError for an invalid symbol."""
    collides_with_spot = market is Market.FUTURES and "_" not in exchange_symbol
    sym = exchange_symbol + (futures_suffix if collides_with_spot else "")
    if not is_symbol(sym):
        raise ValueError(f"symbol {sym!r} does not match {SYMBOL_RE.pattern}")
    return sym


def group_files(paths: Iterable[Path | str], futures_suffix: str = "PERP",
                contract_sizes: Mapping[str, float] | None = None) -> list[BookSource]:
    """Group recorder files per (market, symbol), sorted by key symbol; files ordered by first receive time.

    contract_sizes: USD per contract of COIN-M books by exchange symbol (``BTCUSD_PERP``) or pair
    (``BTCUSD``: every contract of the pair), over ``default_contract_usd``.
    Raises ValueError for an unreadable file, a file without depth data, two markets that would
    share one key symbol (e.g. ``futures_suffix=""`` with spot and futures of the same pair), or a
    ``contract_sizes`` entry that names no COIN-M book of the input.
    """
    sizes = dict(contract_sizes or {})
    used: set[str] = set()
    groups: dict[tuple[Market, str], list[SourceFile]] = {}
    seen: set[Path] = set()
    for p in paths:
        path = Path(p)
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        src = probe_file(path)
        groups.setdefault((src.market, src.exchange_symbol), []).append(src)
    books: dict[str, BookSource] = {}
    for (market, exch), files in groups.items():
        sym = book_symbol(exch, market, futures_suffix)
        if sym in books:
            raise ValueError(f"spot and futures books would share the key symbol {sym!r}; "
                             f"use a non-empty futures suffix")
        files.sort(key=lambda s: (s.first_recv_ns, str(s.path)))
        pair = next((f.coin_pair for f in files if f.coin_pair is not None), None)
        contract_usd: float | None = None
        if pair is not None:
            given = exch if exch in sizes else pair if pair in sizes else None
            if given is not None:
                used.add(given)
            contract_usd = sizes[given] if given is not None else default_contract_usd(pair)
        books[sym] = BookSource(sym, market, tuple(f.path for f in files), contract_usd)
    unused = sorted(set(sizes) - used)
    if unused:
        raise ValueError(f"--contract-size given for {', '.join(unused)}: no COIN-M book of that symbol "
                         f"or pair in the input")
    return [books[sym] for sym in sorted(books)]


# ----------------------------------------------------------------------------------------------
# Rebuild + emission


@dataclass
class BookReport:
    """What happened to one book during an import."""

    symbol: str
    market: Market
    files: tuple[str, ...]
    contract_usd: float | None = None  # COIN-M: USD per contract used for the notional
    snapshots_used: int = 0
    snapshots_ignored: int = 0  # snapshots seen while the book was already live
    diffs_applied: int = 0
    diffs_stale: int = 0
    diffs_unsynced: int = 0  # buffered and never applied (no later snapshot)
    bad_lines: int = 0
    gaps: list[Gap] = field(default_factory=list)
    emitted: int = 0
    no_mid: int = 0  # grid points skipped: empty side or crossed book
    first_ts: float | None = None
    last_ts: float | None = None
    coverage_bps: tuple[float, float] | None = None  # reach of the first snapshot (bid, ask)

    def summary(self) -> str:
        cov = ("?" if self.coverage_bps is None
               else f"-{self.coverage_bps[0]:.1f}/+{self.coverage_bps[1]:.1f}bps")
        kind = self.market.value if self.contract_usd is None else f"coin-m, {self.contract_usd:g} USD/contract"
        return (f"{self.symbol} ({kind}): emitted={self.emitted} diffs_applied={self.diffs_applied} "
                f"stale={self.diffs_stale} unsynced={self.diffs_unsynced} snapshots={self.snapshots_used} "
                f"gaps={len(self.gaps)} no_mid={self.no_mid} bad_lines={self.bad_lines} snapshot_reach={cov}")


@dataclass(frozen=True)
class Emitted:
    """One emitted payload line."""

    ts_ms: int
    symbol: str
    line: bytes  # {"key": ..., "value": <payload JSON string>}\n


def iter_book_payloads(source: BookSource, spec: BandSpec, *, every_ms: int = 100,
                       on_gap: GapPolicy = GapPolicy.RESYNC, report: BookReport | None = None,
                       max_buffered: int = DEFAULT_MAX_BUFFERED) -> Iterator[Emitted]:
    """Rebuild one book from its files and yield a payload at every multiple of ``every_ms``.

    The payload at grid time t (unix ms) reflects every diff with event time E <= t; it is emitted
    when the first diff with E > t arrives (so nothing is emitted past the end of the recording).
    ``_pushed_at`` is the recorder's receive time of that diff. ``report`` (if given) is filled in.
    """
    if every_ms <= 0:
        raise ValueError(f"every_ms must be > 0, got {every_ms}")
    rep = report if report is not None else BookReport(source.symbol, source.market,
                                                       tuple(map(str, source.files)), source.contract_usd)
    book = DepthBook(source.market, max_buffered=max_buffered)
    key = asset_key(source.symbol)
    next_grid: int | None = None  # next grid time to emit, ms
    seq = 0

    def emit(t_ms: int, recv_ns: int) -> Emitted | None:
        nonlocal seq
        bands = book.bands(spec, source.contract_usd)
        if bands is None:
            rep.no_mid += 1
            return None
        seq += 1
        ts = t_ms / 1000.0
        payload = snapshot.payload_json(
            ts, bands.bid_notional, bands.ask_notional, bands.bid_depth, bands.ask_depth,
            seq=seq, pushed_at=format_timestamp(recv_ns / 1e9),
        )
        rep.emitted += 1
        if rep.first_ts is None:
            rep.first_ts = ts
        rep.last_ts = ts
        return Emitted(t_ms, source.symbol, orjson.dumps({"key": key, "value": payload}) + b"\n")

    def offer(diff: DepthDiff) -> Iterator[Emitted]:
        nonlocal next_grid
        outcome = book.check(diff)
        if outcome is Outcome.BUFFER:
            book.buffer(diff)
            return
        if outcome is Outcome.STALE:
            rep.diffs_stale += 1
            return
        if outcome is Outcome.GAP:
            gap = Gap(source.symbol, diff.file, diff.line, diff.event_ms, book.last_id or 0,
                      diff.first_id, diff.prev_id)
            rep.gaps.append(gap)
            log.warning("update-id gap symbol=%s file=%s line=%d E=%d after_id=%d U=%d pu=%s policy=%s",
                        gap.symbol, gap.file, gap.line, gap.event_ms, gap.after_id, gap.first_id,
                        gap.prev_id, on_gap.value)
            if on_gap is GapPolicy.RESYNC:
                book.invalidate()
                next_grid = None
                book.buffer(diff)
                return
        # APPLY (or a reported gap under CONTINUE): grid points before this event see the old book.
        if next_grid is None:
            next_grid = -(-diff.event_ms // every_ms) * every_ms
        else:
            while next_grid < diff.event_ms:
                out = emit(next_grid, diff.recv_ns)
                if out is not None:
                    yield out
                next_grid += every_ms
        book.apply(diff)
        rep.diffs_applied += 1

    for path in source.files:
        for rec in iter_depth_records(path):
            if isinstance(rec, DepthDiff):
                yield from offer(rec)
            elif isinstance(rec, DepthSnapshot):
                if book.live:
                    rep.snapshots_ignored += 1
                    continue
                pending = book.load_snapshot(rec)
                rep.snapshots_used += 1
                if rep.coverage_bps is None:
                    rep.coverage_bps = book.coverage_bps()
                log.info("snapshot loaded symbol=%s file=%s line=%d lastUpdateId=%d buffered=%d",
                         source.symbol, rec.file, rec.line, rec.last_update_id, len(pending))
                for diff in pending:
                    yield from offer(diff)
            else:
                rep.bad_lines += 1
                log.warning("undecodable depth line symbol=%s file=%s line=%s error=%s",
                            source.symbol, path, rec["bad_line"], rec["error"])
    rep.diffs_unsynced = len(book.buffered) + book.dropped_from_buffer


@dataclass
class ImportReport:
    """Per-book reports of one import plus totals."""

    books: list[BookReport]
    lines_written: int = 0
    seconds: float = 0.0

    @property
    def gaps(self) -> list[Gap]:
        return [g for b in self.books for g in b.gaps]


def import_binance(paths: Iterable[Path | str], out: IO[bytes], spec: BandSpec, *, every_ms: int = 100,
                   futures_suffix: str = "PERP", on_gap: GapPolicy = GapPolicy.RESYNC,
                   contract_sizes: Mapping[str, float] | None = None) -> ImportReport:
    """Rebuild every book in ``paths`` and write payload lines to ``out``, ordered by (time, symbol).

    Raises ValueError for files that cannot be grouped (see ``group_files``).
    """
    started = time.perf_counter()
    sources = group_files(paths, futures_suffix, contract_sizes)
    reports = [BookReport(s.symbol, s.market, tuple(map(str, s.files)), s.contract_usd) for s in sources]
    streams = [iter_book_payloads(s, spec, every_ms=every_ms, on_gap=on_gap, report=r)
               for s, r in zip(sources, reports)]
    rep = ImportReport(reports)
    for item in heapq.merge(*streams, key=lambda e: (e.ts_ms, e.symbol)):
        out.write(item.line)
        rep.lines_written += 1
    for r in reports:
        if r.snapshots_used == 0:
            log.warning("no depth snapshot found symbol=%s files=%s", r.symbol, ",".join(r.files))
        if r.coverage_bps is not None and min(r.coverage_bps) < spec.band_span_bps:
            log.warning("band span exceeds snapshot reach symbol=%s band_span_bps=%s reach_bid_bps=%.1f "
                        "reach_ask_bps=%.1f (outer bands undercounted)", r.symbol, spec.band_span_bps,
                        r.coverage_bps[0], r.coverage_bps[1])
    rep.seconds = time.perf_counter() - started
    return rep


# ----------------------------------------------------------------------------------------------
# CLI


def configure(p: argparse.ArgumentParser) -> None:
    """The `obf-features import-binance` options on the parser the CLI made for it."""
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("files", nargs="+", metavar="FILE", help="recorder files (.gz or plain), any order")
    p.add_argument("--band-span-bps", type=float, default=100.0,
                   help="bands cover (0, B] bps from the mid (default 100); keep B within the snapshot's reach")
    p.add_argument("--levels", type=int, default=10, help=f"bands per side, 1..{MAX_LEVELS} (default 10)")
    p.add_argument("--every-ms", type=int, default=100, help="emit a payload every N ms of event time (default 100)")
    p.add_argument("--output", "-o", required=True, help="output JSONL path ('-' for stdout)")
    p.add_argument("--futures-suffix", default="PERP",
                   help="appended to a futures symbol spelled like a spot one (USD-M perpetual BTCUSDT -> "
                        "BTCUSDTPERP) so spot and futures keys differ (default PERP); symbols with '_' "
                        "(delivery, COIN-M) keep their spelling")
    p.add_argument("--contract-size", action="append", default=[], metavar="SYMBOL=USD",
                   help="COIN-M face value in USD per contract of a symbol (BTCUSD_PERP=100) or of every "
                        "contract of a pair (ETHUSD=10); repeatable; default: BTC 100, others 10")
    p.add_argument("--on-gap", choices=[g.value for g in GapPolicy], default=GapPolicy.RESYNC.value,
                   help="resync: stop emitting a book until a new snapshot line (default); "
                        "continue: keep applying diffs (gaps still reported)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success, 1 if any book had gaps or never synced, 2 on bad arguments/files."""
    try:
        spec = BandSpec(float(args.band_span_bps), int(args.levels))
        if args.every_ms <= 0:
            raise ValueError(f"--every-ms must be > 0, got {args.every_ms}")
        sizes = parse_contract_sizes(args.contract_size)
        if args.output == "-":
            rep = import_binance(args.files, sys.stdout.buffer, spec, every_ms=args.every_ms,
                                 futures_suffix=args.futures_suffix, on_gap=GapPolicy(args.on_gap),
                                 contract_sizes=sizes)
        else:
            with open(args.output, "wb") as out:
                rep = import_binance(args.files, out, spec, every_ms=args.every_ms,
                                     futures_suffix=args.futures_suffix, on_gap=GapPolicy(args.on_gap),
                                     contract_sizes=sizes)
    except (OSError, ValueError) as exc:
        print(f"import-binance: error: {exc}", file=sys.stderr)
        return 2
    for b in rep.books:
        print(b.summary(), file=sys.stderr)
        for g in b.gaps:
            print(f"  gap: {g.describe()}", file=sys.stderr)
    n_gaps = len(rep.gaps)
    unsynced = [b.symbol for b in rep.books if b.snapshots_used == 0]
    print(f"import-binance: books={len(rep.books)} lines={rep.lines_written} gaps={n_gaps} "
          f"unsynced_books={len(unsynced)} seconds={rep.seconds:.2f}", file=sys.stderr)
    return 1 if n_gaps or unsynced else 0
