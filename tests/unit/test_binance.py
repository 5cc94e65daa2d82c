"""Binance book rebuild, gap detection and band aggregation on small hand-made streams."""

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
from obf_features_worker.offline.import_binance import (
    BandSpec,
    DepthBook,
    DepthDiff,
    DepthSnapshot,
    GapPolicy,
    Market,
    Outcome,
)

T0 = 1_700_000_000_000  # exchange event time origin, unix ms (on a 100 ms grid)


# ---------------------------------------------------------------------------- helpers


def spot_diff(U: int, u: int, E: int, bids=(), asks=(), sym: str = "BTCUSDT") -> dict:
    return {"stream": f"{sym.lower()}@depth@100ms",
            "data": {"e": "depthUpdate", "E": E, "s": sym, "U": U, "u": u,
                     "b": [list(x) for x in bids], "a": [list(x) for x in asks]}}


def fut_diff(U: int, u: int, pu: int, E: int, bids=(), asks=(), sym: str = "BTCUSDT") -> dict:
    msg = spot_diff(U, u, E, bids, asks, sym)
    msg["stream"] = f"{sym.lower()}@depth@0ms"
    msg["data"].update(pu=pu, T=E - 1)
    return msg


def rest_snapshot(last_id: int, bids, asks) -> dict:
    return {"lastUpdateId": last_id, "bids": [list(x) for x in bids], "asks": [list(x) for x in asks]}


def write_recording(path: Path, messages: list[dict], *, t0_ns: int = 1_699_999_999_000_000_000,
                    noise: bool = True) -> Path:
    """Write messages as recorder lines ``<recv ns> <json>`` (gzip), with unrelated streams mixed in."""
    with gzip.open(path, "wt") as fh:
        for i, msg in enumerate(messages):
            recv = t0_ns + i * 1_000_000
            if noise:
                fh.write(f'{recv} {{"stream":"btcusdt@trade","data":{{"e":"trade","p":"1","q":"1"}}}}\n')
            fh.write(f"{recv} {json.dumps(msg)}\n")
    return path


def mk_diff(U, u, E, bids=(), asks=(), pu=None) -> DepthDiff:
    return DepthDiff(E, U, u, pu, [list(x) for x in bids], [list(x) for x in asks], 0, "mem", 0)


def mk_snap(last_id, bids, asks) -> DepthSnapshot:
    return DepthSnapshot(last_id, [list(x) for x in bids], [list(x) for x in asks], 0, "mem", 0)


def payloads(lines: list[bytes]) -> list[tuple[str, snapshot.Snapshot]]:
    out = []
    for raw in lines:
        obj = json.loads(raw)
        out.append((obj["key"], snapshot.parse_snapshot(obj["key"], obj["value"], now=float("inf"))))
    return out


# ---------------------------------------------------------------------------- band aggregation


def test_band_spec_validation():
    assert BandSpec(100.0, 4).width_bps == 25.0
    for bad in (dict(band_span_bps=0.0, levels=4), dict(band_span_bps=float("nan"), levels=4),
                dict(band_span_bps=10.0, levels=0), dict(band_span_bps=10.0, levels=65),
                dict(band_span_bps=10.0, levels=2.0)):
        with pytest.raises(ValueError):
            BandSpec(**bad)


def test_aggregate_bands_by_hand_including_edges():
    # best bid 99.9, best ask 100.1 -> mid 100.0; 4 bands of 25 bps = 0.25 price units each.
    bids = {99.9: 1.0,    # 10 bps -> band 0
            99.7: 2.0,    # 30 bps -> band 1
            99.5: 3.0,    # 50 bps, exactly the outer edge of band 1 (25, 50]
            99.2: 4.0,    # 80 bps -> band 3
            98.9: 5.0}    # 110 bps -> beyond the span
    asks = {100.1: 1.5,   # 10 bps -> band 0
            100.25: 2.5,  # 25 bps, outer edge of band 0
            100.26: 0.5,  # 26 bps -> band 1
            101.0: 7.0,   # 100 bps, outer edge of the last band: included
            101.01: 9.0}  # beyond the span
    spec = BandSpec(100.0, 4)
    b = binance.aggregate_bands(np.array(list(bids)), np.array(list(bids.values())),
                                np.array(list(asks)), np.array(list(asks.values())), spec)
    assert b is not None
    assert b.mid == pytest.approx(100.0)
    np.testing.assert_allclose(b.bid_notional, [99.9 * 1, 99.7 * 2 + 99.5 * 3, 0.0, 99.2 * 4], rtol=1e-12)
    np.testing.assert_allclose(b.bid_depth, [1.0, 5.0, 0.0, 4.0], rtol=1e-12)
    np.testing.assert_allclose(b.ask_notional, [100.1 * 1.5 + 100.25 * 2.5, 100.26 * 0.5, 0.0, 101.0 * 7],
                               rtol=1e-12)
    np.testing.assert_allclose(b.ask_depth, [4.0, 0.5, 0.0, 7.0], rtol=1e-12)


def test_decimal_prices_exactly_on_a_band_edge_go_to_the_inner_band():
    # mid (99.8 + 100.04) / 2 = 99.92; 99.6702 is exactly 25 bps below it and 98.9208 exactly 100 bps
    # (in decimal), but binary floating point puts both a hair beyond the edge.
    bids = {99.8: 1.0, 99.6702: 2.0, 98.9208: 3.0}
    b = binance.aggregate_bands(np.array(list(bids)), np.array(list(bids.values())),
                                np.array([100.04]), np.array([1.0]), BandSpec(100.0, 4))
    assert b is not None
    np.testing.assert_allclose(b.bid_depth, [3.0, 0.0, 0.0, 3.0])
    np.testing.assert_allclose(b.bid_notional, [99.8 + 99.6702 * 2, 0.0, 0.0, 98.9208 * 3], rtol=1e-12)


def test_aggregate_bands_without_usable_mid():
    spec = BandSpec(10.0, 2)
    one = np.array([100.0])
    empty = np.array([])
    assert binance.aggregate_bands(empty, empty, one, one, spec) is None
    assert binance.aggregate_bands(one, one, empty, empty, spec) is None
    # locked (bid == ask) and crossed books have no mid
    assert binance.aggregate_bands(one, one, one, one, spec) is None
    assert binance.aggregate_bands(np.array([101.0]), one, one, one, spec) is None


# ---------------------------------------------------------------------------- rebuild: spot chain


def synced_spot_book() -> DepthBook:
    book = DepthBook(Market.SPOT)
    book.load_snapshot(mk_snap(100, [("99.9", "1"), ("99.8", "2")], [("100.1", "1"), ("100.2", "2")]))
    return book


def test_spot_diffs_update_insert_and_delete_levels():
    book = synced_spot_book()
    d = mk_diff(101, 103, T0, bids=[("99.9", "0.00000000"), ("99.85", "4.5")],
                asks=[("100.2", "3.25"), ("100.3", "1")])
    assert book.check(d) is Outcome.APPLY
    book.apply(d)
    assert book.bids == {99.8: 2.0, 99.85: 4.5}
    assert book.asks == {100.1: 1.0, 100.2: 3.25, 100.3: 1.0}
    # deleting a level that is not in the book is harmless
    d2 = mk_diff(104, 104, T0 + 10, asks=[("100.7", "0")])
    assert book.check(d2) is Outcome.APPLY
    book.apply(d2)
    assert book.asks == {100.1: 1.0, 100.2: 3.25, 100.3: 1.0}
    assert book.last_id == 104


def test_spot_chain_stale_straddle_and_gap():
    book = synced_spot_book()  # lastUpdateId 100
    assert book.check(mk_diff(90, 100, T0)) is Outcome.STALE  # u <= lastUpdateId
    assert book.check(mk_diff(95, 105, T0)) is Outcome.APPLY  # straddles 101
    assert book.check(mk_diff(102, 105, T0)) is Outcome.GAP  # 101 never seen
    book.apply(mk_diff(101, 105, T0))
    assert book.check(mk_diff(106, 110, T0)) is Outcome.APPLY
    assert book.check(mk_diff(107, 110, T0)) is Outcome.GAP
    assert book.check(mk_diff(103, 105, T0)) is Outcome.STALE


def test_diffs_before_the_snapshot_are_buffered_then_replayed():
    book = DepthBook(Market.SPOT)
    early = [mk_diff(95, 99, T0, bids=[("99.9", "7")]),  # fully before the snapshot: stale
             mk_diff(100, 102, T0 + 100, bids=[("99.7", "1")])]  # straddles lastUpdateId 100
    for d in early:
        assert book.check(d) is Outcome.BUFFER
        book.buffer(d)
    pending = book.load_snapshot(mk_snap(100, [("99.9", "1")], [("100.1", "1")]))
    assert pending == early
    assert [book.check(d) for d in pending] == [Outcome.STALE, Outcome.APPLY]


# ---------------------------------------------------------------------------- rebuild: futures chain


def test_futures_chain_uses_previous_u():
    book = DepthBook(Market.FUTURES)
    book.load_snapshot(mk_snap(1000, [("99.9", "1")], [("100.1", "1")]))
    assert book.check(mk_diff(980, 995, T0, pu=970)) is Outcome.STALE
    # first diff: its predecessor ended at or before lastUpdateId
    assert book.check(mk_diff(990, 1010, T0, pu=995)) is Outcome.APPLY
    assert book.check(mk_diff(1003, 1010, T0, pu=1001)) is Outcome.GAP  # a diff ending at 1001 was missed
    book.apply(mk_diff(990, 1010, T0, pu=995))
    # futures ids are not contiguous: U may jump as long as pu links to the previous u
    assert book.check(mk_diff(1050, 1060, T0, pu=1010)) is Outcome.APPLY
    assert book.check(mk_diff(1050, 1060, T0, pu=1020)) is Outcome.GAP
    assert book.check(mk_diff(1050, 1060, T0, pu=None)) is Outcome.GAP


# ---------------------------------------------------------------------------- files -> payloads


SNAP_BIDS = [("99.9", "1"), ("99.6", "2")]
SNAP_ASKS = [("100.1", "3"), ("100.4", "4")]
SPEC = BandSpec(50.0, 2)  # bands of 25 bps around mid 100: (0, 0.25] and (0.25, 0.5] price units


def test_spot_payloads_across_file_boundary(tmp_path):
    # File 1: a diff before the snapshot (buffered), the snapshot, two diffs. File 2 continues the chain.
    f1 = write_recording(tmp_path / "btcusdt_1.gz", [
        spot_diff(95, 101, T0 + 0, bids=[("99.9", "1.5")]),  # straddles lastUpdateId 100
        rest_snapshot(100, SNAP_BIDS, SNAP_ASKS),
        spot_diff(102, 103, T0 + 50, asks=[("100.1", "0")]),  # delete best ask -> mid moves to 100.15
        spot_diff(104, 104, T0 + 150, bids=[("99.8", "1")]),
    ])
    f2 = write_recording(tmp_path / "btcusdt_2.gz", [
        spot_diff(105, 107, T0 + 420, asks=[("100.2", "2")]),
    ], t0_ns=1_700_000_000_000_000_000)
    src, = binance.group_files([f2, f1])  # argument order does not matter
    assert src.files == (f1, f2) and src.symbol == "BTCUSDT" and src.market is Market.SPOT
    rep = binance.BookReport(src.symbol, src.market, ())
    out = list(binance.iter_book_payloads(src, SPEC, every_ms=100, report=rep))
    assert rep.gaps == [] and rep.snapshots_used == 1 and rep.diffs_applied == 4
    # grid points 0, 100 (emitted by E=150), 200..400 (emitted by E=420); nothing after the last diff
    assert [e.ts_ms for e in out] == [T0, T0 + 100, T0 + 200, T0 + 300, T0 + 400]
    snaps = payloads([e.line for e in out])
    assert {k for k, _ in snaps} == {"asset_BTCUSDT_ob"}
    assert [s.seq for _, s in snaps] == [1, 2, 3, 4, 5]
    assert [s.ts for _, s in snaps] == [(T0 + d) / 1000 for d in (0, 100, 200, 300, 400)]

    # t = T0: bids 99.9 x1.5, 99.6 x2; asks 100.1 x3, 100.4 x4; mid 100 -> 99.9/100.1 at 10 bps (band 0),
    # 99.6/100.4 at 40 bps (band 1)
    s = snaps[0][1]
    np.testing.assert_allclose(s.bid_notional, [99.9 * 1.5, 99.6 * 2], rtol=1e-12)
    np.testing.assert_allclose(s.ask_notional, [100.1 * 3, 100.4 * 4], rtol=1e-12)
    np.testing.assert_allclose(s.bid_depth, [1.5, 2.0], rtol=1e-12)
    np.testing.assert_allclose(s.ask_depth, [3.0, 4.0], rtol=1e-12)
    # t = T0+100: best ask deleted -> asks 100.4 only; mid (99.9 + 100.4)/2 = 100.15;
    # 99.9 is 24.96 bps away (band 0), 99.6 is 54.9 bps (beyond 50), 100.4 is 24.96 bps (band 0)
    s = snaps[1][1]
    np.testing.assert_allclose(s.bid_notional, [99.9 * 1.5, 0.0], rtol=1e-12)
    np.testing.assert_allclose(s.ask_notional, [100.4 * 4, 0.0], rtol=1e-12)
    # t = T0+200..400: bid 99.8 x1 added (mid 100.15, 34.9 bps -> band 1); the 2nd file's diff is at 420
    for _, s in snaps[2:]:
        np.testing.assert_allclose(s.bid_notional, [99.9 * 1.5, 99.8 * 1], rtol=1e-12)
        np.testing.assert_allclose(s.ask_notional, [100.4 * 4, 0.0], rtol=1e-12)


def gap_recording(tmp_path: Path, with_resnapshot: bool) -> Path:
    msgs = [
        rest_snapshot(100, SNAP_BIDS, SNAP_ASKS),
        spot_diff(101, 101, T0 + 0),
        spot_diff(102, 102, T0 + 100),
        spot_diff(110, 110, T0 + 200, bids=[("99.95", "1")]),  # 103..109 missing: gap
        spot_diff(111, 111, T0 + 300),
        spot_diff(112, 112, T0 + 400),
    ]
    if with_resnapshot:
        msgs.append(rest_snapshot(112, SNAP_BIDS, SNAP_ASKS))
        msgs += [spot_diff(113, 113, T0 + 500), spot_diff(114, 114, T0 + 600)]
    return write_recording(tmp_path / "gap.gz", msgs)


def test_gap_is_reported_and_emission_stops_until_a_new_snapshot(tmp_path):
    src, = binance.group_files([gap_recording(tmp_path, with_resnapshot=True)])
    rep = binance.BookReport(src.symbol, src.market, ())
    out = list(binance.iter_book_payloads(src, SPEC, report=rep))
    assert len(rep.gaps) == 1
    gap = rep.gaps[0]
    assert (gap.after_id, gap.first_id, gap.event_ms) == (102, 110, T0 + 200)
    assert gap.line == 8  # recorder line of the diff (each message follows one unrelated trade line)
    assert "gap.gz:8" in gap.describe()
    # emitted: T0 (by the diff at T0+100); nothing while unsynced; after the re-snapshot, T0+500
    assert [e.ts_ms for e in out] == [T0, T0 + 500]
    assert [s.seq for _, s in payloads([e.line for e in out])] == [1, 2]  # _push_seq keeps increasing
    assert rep.snapshots_used == 2


def test_gap_without_resnapshot_leaves_diffs_unsynced(tmp_path):
    src, = binance.group_files([gap_recording(tmp_path, with_resnapshot=False)])
    rep = binance.BookReport(src.symbol, src.market, ())
    out = list(binance.iter_book_payloads(src, SPEC, report=rep))
    assert [e.ts_ms for e in out] == [T0]
    assert len(rep.gaps) == 1 and rep.diffs_unsynced == 3


def test_gap_policy_continue_keeps_emitting(tmp_path):
    src, = binance.group_files([gap_recording(tmp_path, with_resnapshot=False)])
    rep = binance.BookReport(src.symbol, src.market, ())
    out = list(binance.iter_book_payloads(src, SPEC, on_gap=GapPolicy.CONTINUE, report=rep))
    assert len(rep.gaps) == 1
    assert [e.ts_ms for e in out] == [T0, T0 + 100, T0 + 200, T0 + 300]
    # the diff after the gap was applied: 99.95 is the new best bid
    last = payloads([out[-1].line])[0][1]
    mid = (99.95 + 100.1) / 2
    assert (mid - 99.9) / mid * 1e4 < 25  # band 0 on the bid side holds 99.95 and 99.9
    np.testing.assert_allclose(last.bid_notional[0], 99.95 * 1 + 99.9 * 1, rtol=1e-12)


def test_futures_recording_symbol_suffix_and_chain(tmp_path):
    f = write_recording(tmp_path / "fut.gz", [
        fut_diff(990, 1005, 980, T0 + 0, bids=[("99.9", "5")]),  # buffered, straddles 1000
        rest_snapshot(1000, SNAP_BIDS, SNAP_ASKS),
        fut_diff(1006, 1020, 1005, T0 + 100),
        fut_diff(1030, 1040, 1025, T0 + 200),  # pu should be 1020: gap
    ])
    src, = binance.group_files([f])
    assert (src.symbol, src.market) == ("BTCUSDTPERP", Market.FUTURES)
    rep = binance.BookReport(src.symbol, src.market, ())
    out = list(binance.iter_book_payloads(src, SPEC, report=rep))
    assert [e.ts_ms for e in out] == [T0]
    assert [(g.after_id, g.prev_id) for g in rep.gaps] == [(1020, 1025)]
    (key, s), = payloads([out[0].line])
    assert key == "asset_BTCUSDTPERP_ob"
    np.testing.assert_allclose(s.bid_notional, [99.9 * 5, 99.6 * 2], rtol=1e-12)


def test_group_files_separates_markets_and_rejects_collisions(tmp_path):
    spot = write_recording(tmp_path / "s.gz", [spot_diff(1, 2, T0)])
    fut = write_recording(tmp_path / "f.gz", [fut_diff(1, 2, 0, T0)])
    eth = write_recording(tmp_path / "e.gz", [spot_diff(1, 2, T0, sym="ETHUSDT")])
    groups = binance.group_files([eth, fut, spot, spot])
    assert [(g.symbol, g.market, g.files) for g in groups] == [
        ("BTCUSDT", Market.SPOT, (spot,)), ("BTCUSDTPERP", Market.FUTURES, (fut,)), ("ETHUSDT", Market.SPOT, (eth,))]
    with pytest.raises(ValueError, match="share the key symbol"):
        binance.group_files([spot, fut], futures_suffix="")
    with pytest.raises(ValueError, match="does not match"):
        binance.group_files([fut], futures_suffix="_perp")
    empty = tmp_path / "empty.gz"
    write_recording(empty, [rest_snapshot(1, SNAP_BIDS, SNAP_ASKS)])
    with pytest.raises(ValueError, match="no depthUpdate"):
        binance.group_files([empty])


def test_undecodable_depth_line_is_counted_not_fatal(tmp_path):
    path = tmp_path / "bad.txt"  # plain text works too
    lines = [f"1 {json.dumps(rest_snapshot(100, SNAP_BIDS, SNAP_ASKS))}",
             f"2 {json.dumps(spot_diff(101, 101, T0))}",
             '3 {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate", truncated',
             f"4 {json.dumps(spot_diff(102, 102, T0 + 100))}"]
    path.write_text("\n".join(lines) + "\n")
    src, = binance.group_files([path])
    rep = binance.BookReport(src.symbol, src.market, ())
    out = list(binance.iter_book_payloads(src, SPEC, report=rep))
    assert rep.bad_lines == 1 and rep.diffs_applied == 2 and len(out) == 1


def test_import_merges_books_in_time_order_and_cli_exit_codes(tmp_path):
    spot = write_recording(tmp_path / "s.gz", [rest_snapshot(100, SNAP_BIDS, SNAP_ASKS)] + [
        spot_diff(101 + i, 101 + i, T0 + 100 * i) for i in range(4)])
    fut = write_recording(tmp_path / "f.gz", [rest_snapshot(1000, SNAP_BIDS, SNAP_ASKS)] + [
        fut_diff(1001 + 10 * i, 1010 + 10 * i, 1000 + 10 * i, T0 + 50 + 100 * i) for i in range(4)])
    buf = io.BytesIO()
    rep = binance.import_binance([spot, fut], buf, SPEC)
    keys_ts = [(json.loads(v)["timestamp"], snapshot.symbol_from_key(k)) for k, v in
               ((o["key"], o["value"]) for o in map(json.loads, buf.getvalue().splitlines()))]
    assert keys_ts == sorted(keys_ts)  # ordered by (time, symbol)
    assert rep.lines_written == len(keys_ts) == 3 + 3
    assert rep.gaps == []

    out = tmp_path / "out.jsonl"
    assert cli.main(["import-binance", str(spot), str(fut), "--band-span-bps", "50", "--levels", "2",
                     "--output", str(out)]) == 0
    assert out.read_bytes() == buf.getvalue()
    gap = gap_recording(tmp_path, with_resnapshot=False)
    assert cli.main(["import-binance", str(gap), "--output", str(tmp_path / "g.jsonl")]) == 1
    assert cli.main(["import-binance", str(gap), "--levels", "0", "--output", str(tmp_path / "x.jsonl")]) == 2
    assert cli.main(["import-binance", str(tmp_path / "missing.gz"), "--output", str(tmp_path / "x.jsonl")]) == 2
