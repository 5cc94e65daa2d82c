"""Real Binance recordings (../shared/data/binance-hftbacktest): import-binance -> replay, end to end.

Needs no Hazelcast member. The expectations come from an independent, deliberately naive rebuild of
each book from the raw JSON (stdlib json, plain dicts, no chain checks), itself validated against the
exchange's own bookTicker stream.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from obf_contract.record import asset_view, dumps_record
from obf_features_worker import cli
from obf_features_worker.engine import snapshot
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.offline import import_binance as binance
from obf_features_worker.offline import replay

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "binance-hftbacktest"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"recordings not found at {DATA}")

BAND_SPAN_BPS = 25.0  # within every recording's snapshot reach (see ../shared/README.md)
LEVELS = 10
BAR_SECONDS = 1.0
BOOKS = {  # key symbol -> files
    "BTCUSDT": ("spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"),
    "ETHUSDT": ("spot/ethusdt_20240808.gz", "spot/ethusdt_20240809.gz"),
    "BTCUSDTPERP": ("usdm/btcusdt_20240808.gz",),
    "ETHUSDTPERP": ("usdm/ethusdt_20240808.gz",),
}
# USD-M payloads run from 23:54:16.6 to 00:00:01.1; spot from 23:54:15.5 to 00:05:05.8
FUTURES_START, FUTURES_END = 1723161257, 1723161601
# Bar closes (unix s) at which the features are checked against the reference book; the last two
# are after midnight, i.e. only in the _20240809 spot files (across the file boundary).
INSTANTS = (1723161300, 1723161450, 1723161590, 1723161700, 1723161900)


def all_files() -> list[Path]:
    return [DATA / f for files in BOOKS.values() for f in files]


# ---------------------------------------------------------------------------- reference rebuild


@dataclass
class Reference:
    """What the naive rebuild saw for one book."""

    depth_at: dict[int, tuple[float, float]] = field(default_factory=dict)  # t s -> (B, A) USD within the span
    chain_breaks: int = 0
    ticker_matches: int = 0
    ticker_mismatches: int = 0


def naive_rebuild(files: list[Path], instants: list[int]) -> Reference:
    ref = Reference()
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    last: int | None = None  # last applied u (or the snapshot id)
    early: list[dict] = []
    tops: list[tuple[int, float, float]] = []  # (u, best bid, best ask) after each applied diff
    tickers: dict[int, tuple[float, float]] = {}
    todo = sorted(instants)

    def capture(t: int) -> None:
        best_bid, best_ask = max(bids), min(asks)
        mid = (best_bid + best_ask) / 2
        within = lambda d: 0 < d <= BAND_SPAN_BPS * (1 + 1e-12)  # noqa: E731
        b = sum(p * q for p, q in bids.items() if within((mid - p) / mid * 1e4))
        a = sum(p * q for p, q in asks.items() if within((p - mid) / mid * 1e4))
        ref.depth_at[t] = (b, a)

    def apply(d: dict) -> None:
        nonlocal last
        if d["u"] <= last:
            return
        prev_ok = (d["pu"] == last) if "pu" in d else (d["U"] == last + 1)
        if tops and not prev_ok:  # the first diff after the snapshot straddles it
            ref.chain_breaks += 1
        while todo and d["E"] > todo[0] * 1000:
            capture(todo.pop(0))
        for side, levels in ((bids, d["b"]), (asks, d["a"])):
            for p, q in levels:
                if float(q) == 0:
                    side.pop(float(p), None)
                else:
                    side[float(p)] = float(q)
        last = d["u"]
        tops.append((last, max(bids), min(asks)))

    for path in files:
        with gzip.open(path, "rt") as fh:
            for raw in fh:
                body = raw.partition(" ")[2]
                if '"depthUpdate"' in body:
                    d = json.loads(body)["data"]
                    if last is None:
                        early.append(d)
                    else:
                        apply(d)
                elif '"lastUpdateId"' in body:
                    s = json.loads(body)
                    bids = {float(p): float(q) for p, q in s["bids"]}
                    asks = {float(p): float(q) for p, q in s["asks"]}
                    last = s["lastUpdateId"]
                    for d in early:
                        apply(d)
                elif "@bookTicker" in body:
                    t = json.loads(body)["data"]
                    tickers[t["u"]] = (float(t["b"]), float(t["a"]))
    for u, best_bid, best_ask in tops:
        if u in tickers:
            if tickers[u] == (best_bid, best_ask):
                ref.ticker_matches += 1
            else:
                ref.ticker_mismatches += 1
    return ref


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def imported() -> tuple[bytes, binance.ImportReport]:
    buf = io.BytesIO()
    rep = binance.import_binance(all_files(), buf, binance.BandSpec(BAND_SPAN_BPS, LEVELS), every_ms=100)
    return buf.getvalue(), rep


@pytest.fixture(scope="module")
def replayed(imported) -> tuple[list[dict], replay.ReplayStats]:
    stats = replay.ReplayStats()
    recs = list(replay.replay_records(imported[0].splitlines(), BAR_SECONDS,
                                      params=FeatureParams(band_span_bps=BAND_SPAN_BPS), stats=stats))
    return recs, stats


@pytest.fixture(scope="module")
def references() -> dict[str, Reference]:
    out = {}
    for sym, files in BOOKS.items():
        instants = [t for t in INSTANTS if not sym.endswith("PERP") or t < FUTURES_END]
        out[sym] = naive_rebuild([DATA / f for f in files], instants)
    return out


# ---------------------------------------------------------------------------- tests


def test_reference_rebuild_agrees_with_the_exchange_book_ticker(references):
    for sym, ref in references.items():
        assert ref.ticker_mismatches == 0, sym
        assert ref.ticker_matches > 100, sym


def test_import_rebuilds_every_book_and_reports_the_chain(imported, references):
    data, rep = imported
    assert sorted(b.symbol for b in rep.books) == sorted(BOOKS)
    for b in rep.books:
        assert b.snapshots_used == 1 and b.bad_lines == 0 and b.no_mid == 0, b.summary()
        # gaps found == chain breaks the naive rebuild counts independently (none in these files)
        assert len(b.gaps) == references[b.symbol].chain_breaks, b.summary()
        assert b.diffs_unsynced == 0
    spot = {b.symbol: b for b in rep.books}
    assert spot["BTCUSDT"].last_ts > 1723161900 and spot["ETHUSDT"].last_ts > 1723161900  # 0809 file used

    per_symbol: dict[str, list[snapshot.Snapshot]] = {s: [] for s in BOOKS}
    for raw in data.splitlines():
        obj = json.loads(raw)
        snap = snapshot.parse_snapshot(obj["key"], obj["value"], now=math.inf)  # raises if not valid input
        assert snap.n_levels == LEVELS
        per_symbol[snap.symbol].append(snap)
    for sym, snaps in per_symbol.items():
        ms = [round(s.ts * 1000) for s in snaps]
        assert all(b - a == 100 for a, b in zip(ms, ms[1:])), f"{sym}: payload every 100 ms of event time"
        assert [s.seq for s in snaps] == list(range(1, len(snaps) + 1))
        assert len(snaps) > 3000


def test_import_is_deterministic_and_cli_matches_library(imported, tmp_path):
    out = tmp_path / "books.jsonl"
    code = cli.main(["import-binance", *map(str, reversed(all_files())), "--band-span-bps", str(BAND_SPAN_BPS),
                     "--levels", str(LEVELS), "--every-ms", "100", "--output", str(out)])
    assert code == 0
    assert out.read_bytes() == imported[0]


def test_replay_features_in_range_and_finite(replayed):
    recs, stats = replayed
    assert stats.rejected == {} and stats.used == stats.lines
    assert stats.assets == set(BOOKS)
    assert [r["bar_idx"] for r in recs] == list(range(recs[0]["bar_idx"], recs[0]["bar_idx"] + len(recs)))
    span = BAND_SPAN_BPS
    for r in recs:
        assert r["bar_ts"] == r["bar_idx"] * BAR_SECONDS
        _assert_finite(r)
        present = set(r["symbols"])
        assert r["n_present"] == len(present) <= r["n_assets"] <= 4
        if FUTURES_START <= r["bar_ts"] <= FUTURES_END:
            assert present == set(BOOKS), r["bar_idx"]
        elif r["bar_ts"] > FUTURES_END + 2 * BAR_SECONDS:
            assert present == {"BTCUSDT", "ETHUSDT"}, r["bar_idx"]
        for a in asset_view(r).values():
            p, s = a["placement"], a["signal"]
            assert 0 <= a["age_ms"] <= 2000
            assert p["depth_1pct_usd"] > 0 and p["depth_quality"] > 0
            assert 0 < p["fill_probability"] < 1
            assert 0 <= p["spread_proxy_bps"] <= 2 * span
            for k in ("imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry"):
                assert -1 <= s[k] <= 1, k
            assert s["withdrawal_velocity"] >= -1
        m, x = r["market"], r["macro"]
        assert -1 <= m["median_imbalance"] <= 1 and -1 <= m["notional_pressure"] <= 1
        assert abs(m["depth_pressure"]) <= r["n_present"]  # a plain sum of imbalances in [-1, 1]
        assert 0 <= m["agreement_pct"] <= 100
        assert 0 <= x["cascade_count"] <= r["n_present"]
        assert x["cascade_regime"] in ("CALM", "STRESS", "CASCADE")


def test_replay_matches_the_reference_book_at_chosen_instants(replayed, references):
    by_ts = {r["bar_ts"]: r for r in replayed[0]}
    checked = 0
    for sym, ref in references.items():
        for t, (b, a) in ref.depth_at.items():
            asset = asset_view(by_ts[float(t)])[sym]
            assert asset["ts"] == t and asset["age_ms"] == 0  # the payload emitted at exactly t
            imb = asset["signal"]["imbalance"]
            expected = (b - a) / (b + a)
            assert math.copysign(1, imb) == math.copysign(1, expected), (sym, t)
            assert imb == pytest.approx(expected, rel=1e-9, abs=1e-12), (sym, t)
            assert asset["placement"]["depth_1pct_usd"] == pytest.approx(b + a, rel=1e-9), (sym, t)
            checked += 1
    assert checked == 2 * len(INSTANTS) + 2 * sum(t < FUTURES_END for t in INSTANTS)


def test_replay_is_byte_identical_run_to_run(imported, replayed):
    again = replay.replay_records(imported[0].splitlines(), BAR_SECONDS,
                                  params=FeatureParams(band_span_bps=BAND_SPAN_BPS))
    assert [dumps_record(r) for r in again] == [dumps_record(r) for r in replayed[0]]


def _assert_finite(obj, path="$"):
    if isinstance(obj, float):
        assert math.isfinite(obj), path
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _assert_finite(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _assert_finite(v, f"{path}[{i}]")
