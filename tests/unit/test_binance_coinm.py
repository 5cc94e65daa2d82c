"""Binance COIN-M (inverse) recordings: book rebuild across files, face-value notional, symbols, keys.

The input is generated here in the recorder format of ../shared/data/binance-hftbacktest
(``<recv ns> <json>`` lines, gzip): a COIN-M depthUpdate carries the pair ``ps`` and chains by
``pu``; quantities are contracts (BTC: 100 USD each, other coins: 10 USD each). Expected values are
written out by hand from the levels, not computed with the code under test.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from obf_features_worker import cli
from obf_features_worker.engine import snapshot
from obf_features_worker.offline import import_binance as binance
from obf_features_worker.offline.import_binance import BandSpec, Market

T0 = 1_700_000_000_000  # exchange event time origin, unix ms (on a 100 ms grid)
NS0 = 1_699_999_999_000_000_000
SPEC = BandSpec(10.0, 2)  # 2 bands of 5 bps: at a mid of 60 000, 30 price units each


def coinm_diff(U: int, u: int, pu: int, E: int, bids=(), asks=(), sym: str = "BTCUSD_PERP",
               pair: str | None = "BTCUSD") -> dict:
    data = {"e": "depthUpdate", "E": E, "T": E - 2, "s": sym, "U": U, "u": u, "pu": pu,
            "b": [list(x) for x in bids], "a": [list(x) for x in asks]}
    if pair is not None:
        data["ps"] = pair
    return {"stream": f"{sym.lower()}@depth@0ms", "data": data}


def usdm_diff(U: int, u: int, pu: int, E: int, sym: str) -> dict:
    return {"stream": f"{sym.lower()}@depth@0ms",
            "data": {"e": "depthUpdate", "E": E, "T": E - 1, "s": sym, "U": U, "u": u, "pu": pu, "b": [], "a": []}}


def spot_diff(U: int, u: int, E: int, sym: str) -> dict:
    return {"stream": f"{sym.lower()}@depth@100ms",
            "data": {"e": "depthUpdate", "E": E, "s": sym, "U": U, "u": u, "b": [], "a": []}}


def rest_snapshot(last_id: int, bids, asks) -> dict:
    return {"lastUpdateId": last_id, "E": T0, "T": T0, "bids": [list(x) for x in bids],
            "asks": [list(x) for x in asks]}


def write_recording(path: Path, messages: list[dict], t0_ns: int = NS0) -> Path:
    with gzip.open(path, "wt") as fh:
        for i, msg in enumerate(messages):
            recv = t0_ns + i * 1_000_000
            fh.write(f'{recv} {{"stream":"{path.stem}@trade","data":{{"e":"trade","p":"1","q":"1"}}}}\n')
            fh.write(f"{recv} {json.dumps(msg)}\n")
    return path


def payloads(raw: bytes) -> list[tuple[str, snapshot.Snapshot]]:
    out = []
    for line in raw.splitlines():
        obj = json.loads(line)
        out.append((obj["key"], snapshot.parse_snapshot(obj["key"], obj["value"], now=float("inf"))))
    return out


def btc_perp_files(tmp_path: Path, *, second_pu: int = 110) -> tuple[Path, Path]:
    """BTCUSD_PERP over two files: a diff before the snapshot (buffered, straddles lastUpdateId 100),
    the snapshot, a diff; the second file continues the pu chain (``second_pu`` = 110 chains)."""
    f1 = write_recording(tmp_path / "btcusd_perp_20250101.gz", [
        coinm_diff(95, 105, 90, T0 + 0, bids=[("59990.0", "15")]),
        rest_snapshot(100, [("59990.0", "10"), ("59960.0", "20")], [("60010.0", "30"), ("60040.0", "40")]),
        coinm_diff(106, 110, 105, T0 + 50, asks=[("60010.0", "0")]),  # best ask deleted
    ])
    f2 = write_recording(tmp_path / "btcusd_perp_20250102.gz", [
        coinm_diff(111, 120, second_pu, T0 + 250, bids=[("59995.0", "5")]),
        coinm_diff(121, 125, 120, T0 + 380),
    ], t0_ns=NS0 + 10**9)
    return f1, f2


def test_coin_m_perpetual_rebuilds_across_files_with_face_value_notional(tmp_path):
    f1, f2 = btc_perp_files(tmp_path)
    src, = binance.group_files([f2, f1])
    assert (src.symbol, src.market, src.files, src.contract_usd) == ("BTCUSD_PERP", Market.FUTURES, (f1, f2), 100.0)
    buf = io.BytesIO()
    rep = binance.import_binance([f1, f2], buf, SPEC)
    book, = rep.books
    assert book.gaps == [] and book.snapshots_used == 1 and book.diffs_applied == 4 and book.contract_usd == 100.0
    assert "coin-m, 100 USD/contract" in book.summary()
    snaps = payloads(buf.getvalue())
    assert {k for k, _ in snaps} == {"asset_BTCUSD_PERP_ob"}
    assert [s.ts for _, s in snaps] == [(T0 + d) / 1000 for d in (0, 100, 200, 300)]

    # T0: bids 59990 x15, 59960 x20 contracts; asks 60010 x30, 60040 x40; mid 60000.
    # 59990 / 60010 are 1.7 bps away (band 0), 59960 / 60040 6.7 bps (band 1).
    # USD = contracts x 100; coins = USD / price (never price x contracts).
    s = snaps[0][1]
    np.testing.assert_allclose(s.bid_notional, [1500.0, 2000.0], rtol=1e-12)
    np.testing.assert_allclose(s.ask_notional, [3000.0, 4000.0], rtol=1e-12)
    np.testing.assert_allclose(s.bid_depth, [1500.0 / 59990.0, 2000.0 / 59960.0], rtol=1e-12)
    np.testing.assert_allclose(s.ask_depth, [3000.0 / 60010.0, 4000.0 / 60040.0], rtol=1e-12)
    # T0+100, T0+200: best ask gone, mid (59990 + 60040) / 2 = 60015: 59990 and 60040 at 4.2 bps (band 0),
    # 59960 at 9.2 bps (band 1).
    for _, s in snaps[1:3]:
        np.testing.assert_allclose(s.bid_notional, [1500.0, 2000.0], rtol=1e-12)
        np.testing.assert_allclose(s.ask_notional, [4000.0, 0.0], rtol=1e-12)
        np.testing.assert_allclose(s.ask_depth, [4000.0 / 60040.0, 0.0], rtol=1e-12)
    # T0+300: the second file's diff added 59995 x5; mid 60017.5: 59995 (3.75 bps) and 59990 (4.6 bps) band 0.
    s = snaps[3][1]
    np.testing.assert_allclose(s.bid_notional, [2000.0, 2000.0], rtol=1e-12)
    np.testing.assert_allclose(s.bid_depth, [500.0 / 59995.0 + 1500.0 / 59990.0, 2000.0 / 59960.0], rtol=1e-12)


def test_coin_m_pu_chain_break_at_the_file_boundary_is_a_gap(tmp_path):
    f1, f2 = btc_perp_files(tmp_path, second_pu=109)
    buf = io.BytesIO()
    rep = binance.import_binance([f1, f2], buf, SPEC)
    assert [(g.after_id, g.prev_id, g.file) for g in rep.gaps] == [(110, 109, str(f2))]
    assert [s.ts for _, s in payloads(buf.getvalue())] == [T0 / 1000]  # nothing after the gap (resync)


def test_coin_m_delivery_without_pair_field_and_other_coins_at_10_usd(tmp_path):
    # No "ps" in the message: the COIN-M delivery symbol itself says inverse (<COIN>USD_yymmdd).
    eth = write_recording(tmp_path / "ethusd_250328.gz", [
        rest_snapshot(500, [("2999.0", "7")], [("3001.0", "9")]),
        coinm_diff(501, 502, 499, T0 + 0, sym="ETHUSD_250328", pair=None),
        coinm_diff(503, 504, 502, T0 + 100, sym="ETHUSD_250328", pair=None),
    ])
    src, = binance.group_files([eth])
    assert (src.symbol, src.contract_usd) == ("ETHUSD_250328", 10.0)
    buf = io.BytesIO()
    binance.import_binance([eth], buf, SPEC)
    (key, s), = payloads(buf.getvalue())
    assert key == "asset_ETHUSD_250328_ob"
    np.testing.assert_allclose(s.bid_notional, [70.0, 0.0], rtol=1e-12)  # 7 contracts x 10 USD
    np.testing.assert_allclose(s.ask_depth, [90.0 / 3001.0, 0.0], rtol=1e-12)


def test_symbols_keep_their_spelling_and_only_colliding_futures_get_the_suffix(tmp_path):
    files = [
        write_recording(tmp_path / "spot.gz", [spot_diff(1, 2, T0, "BTCUSDT")]),
        write_recording(tmp_path / "usdm.gz", [usdm_diff(1, 2, 0, T0, "BTCUSDT")]),
        write_recording(tmp_path / "usdm_q.gz", [usdm_diff(1, 2, 0, T0, "BTCUSDT_250328")]),
        write_recording(tmp_path / "coinm_p.gz", [coinm_diff(1, 2, 0, T0)]),
        write_recording(tmp_path / "coinm_q.gz", [coinm_diff(1, 2, 0, T0, sym="BTCUSD_250328")]),
        write_recording(tmp_path / "coinm_eth.gz", [coinm_diff(1, 2, 0, T0, sym="ETHUSD_PERP", pair="ETHUSD")]),
    ]
    got = {(g.symbol, g.contract_usd) for g in binance.group_files(files)}
    assert got == {("BTCUSDT", None), ("BTCUSDTPERP", None), ("BTCUSDT_250328", None),
                   ("BTCUSD_PERP", 100.0), ("BTCUSD_250328", 100.0), ("ETHUSD_PERP", 10.0)}
    # Without a suffix only the USD-M perpetual collides with spot; COIN-M alone needs none.
    assert [g.symbol for g in binance.group_files(files[3:], futures_suffix="")] == [
        "BTCUSD_250328", "BTCUSD_PERP", "ETHUSD_PERP"]
    with pytest.raises(ValueError, match="share the key symbol"):
        binance.group_files(files[:2], futures_suffix="")
    with pytest.raises(ValueError, match="does not match"):  # never an invalid key
        binance.group_files(files[1:2], futures_suffix="-perp")


def test_contract_size_overrides_by_symbol_or_pair(tmp_path):
    perp = write_recording(tmp_path / "p.gz", [coinm_diff(1, 2, 0, T0)])
    quarter = write_recording(tmp_path / "q.gz", [coinm_diff(1, 2, 0, T0, sym="BTCUSD_250328")])
    sizes = {g.symbol: g.contract_usd for g in binance.group_files([perp, quarter], contract_sizes={"BTCUSD": 50.0})}
    assert sizes == {"BTCUSD_PERP": 50.0, "BTCUSD_250328": 50.0}
    sizes = {g.symbol: g.contract_usd for g in binance.group_files(
        [perp, quarter], contract_sizes={"BTCUSD": 50.0, "BTCUSD_PERP": 25.0})}
    assert sizes == {"BTCUSD_PERP": 25.0, "BTCUSD_250328": 50.0}  # the symbol wins over its pair
    with pytest.raises(ValueError, match="no COIN-M book"):
        binance.group_files([perp], contract_sizes={"ETHUSD_PERP": 10.0})
    assert binance.parse_contract_sizes(["BTCUSD_PERP=100", "ETHUSD=10.5"]) == {"BTCUSD_PERP": 100.0,
                                                                                "ETHUSD": 10.5}
    for bad in (["BTCUSD_PERP"], ["btcusd_perp=100"], ["BTCUSD_PERP=0"], ["BTCUSD_PERP=nan"], ["X=1"],
                ["BTCUSD_PERP=abc"], ["BTCUSD=1", "BTCUSD=2"]):
        with pytest.raises(ValueError, match="contract-size"):
            binance.parse_contract_sizes(bad)


def test_cli_imports_and_replays_coin_m_with_no_extra_flags(tmp_path):
    f1, f2 = btc_perp_files(tmp_path)
    out = tmp_path / "snaps.jsonl"
    assert cli.main(["import-binance", str(f1), str(f2), "--band-span-bps", "10", "--levels", "2",
                     "-o", str(out)]) == 0
    buf = io.BytesIO()
    binance.import_binance([f1, f2], buf, SPEC)
    assert out.read_bytes() == buf.getvalue()
    # an override through the flag: half the face value, half the USD notional
    half = tmp_path / "half.jsonl"
    assert cli.main(["import-binance", str(f1), str(f2), "--band-span-bps", "10", "--levels", "2",
                     "--contract-size", "BTCUSD_PERP=50", "-o", str(half)]) == 0
    np.testing.assert_allclose(payloads(half.read_bytes())[0][1].bid_notional, [750.0, 1000.0], rtol=1e-12)
    assert cli.main(["import-binance", str(f1), "--contract-size", "ETHUSD=10", "-o", str(half)]) == 2
    assert cli.main(["import-binance", str(f1), "--contract-size", "BTCUSD_PERP=-1", "-o", str(half)]) == 2

    records = tmp_path / "bars.jsonl"
    assert cli.main(["replay", str(out), "--bar-seconds", "0.1", "--no-progress", "-o", str(records)]) == 0
    bars = [json.loads(line) for line in records.read_text().splitlines()]
    assert bars and all(b["symbols"] == ["BTCUSD_PERP"] for b in bars if b["n_present"])
    assert any(b["n_present"] == 1 for b in bars)


def test_usd_depth_is_the_true_depth_of_a_random_coin_m_book(tmp_path):
    """A seeded random COIN-M stream over two files; a reference book kept here by plain dict updates.
    With one band wider than the whole book, each emitted payload's USD notional per side must be
    the book's contracts x 100 USD, and its coin depth the sum of contracts x 100 / price."""
    import random

    rng = random.Random(15)
    bids = {round(59990.0 - 0.5 * i, 1): rng.randint(1, 500) for i in range(60)}
    asks = {round(60010.0 + 0.5 * i, 1): rng.randint(1, 500) for i in range(60)}
    snap = rest_snapshot(1000, [(f"{p:.1f}", str(q)) for p, q in bids.items()],
                         [(f"{p:.1f}", str(q)) for p, q in asks.items()])
    diffs: list[dict] = [coinm_diff(990, 995, 980, T0 - 30)]  # before the snapshot, stale: u <= 1000
    ref_at: list[tuple[int, dict[float, int], dict[float, int]]] = []  # (E, bids, asks) after each diff
    book_b, book_a = dict(bids), dict(asks)
    last_u, t = 1000, T0
    for n in range(200):
        side, book, base, step = (("b", book_b, 59990.0, -0.5) if rng.random() < 0.5
                                  else ("a", book_a, 60010.0, 0.5))
        changes = []
        for _ in range(rng.randint(1, 4)):
            price = round(base + step * rng.randint(0, 80), 1)
            qty = 0 if rng.random() < 0.3 else rng.randint(1, 900)
            changes.append((f"{price:.1f}", str(qty)))
            if qty:
                book[price] = qty
            else:
                book.pop(price, None)
        t += rng.randint(5, 80)
        u = last_u + rng.randint(1, 9)
        diffs.append(coinm_diff(last_u + 1, u, last_u if n else 999, t,
                                bids=changes if side == "b" else (), asks=changes if side == "a" else ()))
        ref_at.append((t, dict(book_b), dict(book_a)))
        last_u = u
    f1 = write_recording(tmp_path / "btcusd_perp_a.gz", [diffs[0], snap, *diffs[1:101]])
    f2 = write_recording(tmp_path / "btcusd_perp_b.gz", diffs[101:], t0_ns=NS0 + 10**9)
    buf = io.BytesIO()
    rep = binance.import_binance([f2, f1], buf, BandSpec(5000.0, 1))
    assert rep.gaps == [] and rep.books[0].diffs_applied == 200 and rep.books[0].diffs_stale == 1
    snaps = payloads(buf.getvalue())
    first_grid = -(-ref_at[0][0] // 100) * 100  # every 100 ms grid point from the first diff to the last
    assert [round(s.ts * 1000) for _, s in snaps] == list(range(first_grid, ref_at[-1][0], 100))
    for _, s in snaps:
        t_ms = round(s.ts * 1000)
        _, ref_b, ref_a = [r for r in ref_at if r[0] <= t_ms][-1]
        assert s.bid_notional[0] == pytest.approx(100.0 * sum(ref_b.values()), rel=1e-12)
        assert s.ask_notional[0] == pytest.approx(100.0 * sum(ref_a.values()), rel=1e-12)
        assert s.bid_depth[0] == pytest.approx(sum(100.0 * q / p for p, q in ref_b.items()), rel=1e-9)
        assert s.ask_depth[0] == pytest.approx(sum(100.0 * q / p for p, q in ref_a.items()), rel=1e-9)
