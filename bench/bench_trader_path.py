"""Trader-side cost per bar: the read-only adapter vs the original in-process OB engine.

Run: ``.venv/bin/python bench/bench_trader_path.py [--members host:port --cluster NAME] [--quick]``
(without ``--members`` a local member is started on a free port and stopped at the end).

Per bar, for N assets, both sides do what the trader's scan does: ``step_live(assets, bar_idx)``
then ``get_placement`` + ``get_signal`` for every asset, ``get_market`` and ``get_macro``.

* ``adapter``: ``HazelcastOBEngine``; the worker's records (real ``FeatureEngine`` output) are
  already in ``DOLPHIN_OBF_FEATURES``, so ``step_live`` finds its bar cached (the normal case:
  the worker writes at bar close, the listener decodes it on the reactor thread).
* ``in-process``: the original design: per bar one blocking ``map.get`` per asset from
  ``DOLPHIN_FEATURES`` + JSON parse + the per-asset feature loop in plain Python
  (``tests.reference.ReferenceFeatures``), then the same getters over the computed dicts.
* ``decode``: the adapter's one-time decode of that bar's record, paid on the listener thread,
  not the trader's (shown for completeness).
* ``floor``: the same loop against an object whose methods do nothing: the cost of the Python
  calls alone, which no implementation of these getters can go below.
* ``bulk``: ``step_live`` + ``get_bar()`` once, then ``bar.assets.get(symbol)`` and its
  ``.placement`` / ``.signal`` per asset (``get_bar`` documents this for traders who want the
  minimum: one dict lookup per asset instead of two method calls).

Times are per bar, median (p99) over the timed bars, against the same real member.
``ratio`` = in-process median / adapter median. Nothing is asserted; numbers depend on the machine.
Targets: adapter >= 100x cheaper than in-process at 50 assets, < 100 us per bar at 400.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import harness as H
import numpy as np
import orjson
from hazelcast.core import HazelcastJsonValue

from engine_adapter import AdapterConfig, HazelcastOBEngine
from engine_adapter.features import (
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
    decode_bar,
)
from obf_contract.record import dumps_record
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.snapshot import Snapshot, payload_json
from tests.reference import ReferenceFeatures

T0 = 1_723_161_000.0
LEVELS = 20  # bands per side in the synthetic books


class InProcessOBEngine:
    """The original design: reads every asset's book and computes its features on the trader thread."""

    def __init__(self, client: Any, input_map: str) -> None:
        self._map = client.get_map(input_map).blocking()
        self._ref = ReferenceFeatures()
        self._bar: dict[str, Any] = {"assets": {}, "market": None, "macro": None}

    def step_live(self, assets: list[str], bar_idx: int) -> None:
        books = {}
        for sym in assets:
            value = self._map.get(f"asset_{sym}_ob")
            if value is None:
                continue
            snap = orjson.loads(value.to_string() if isinstance(value, HazelcastJsonValue) else value)
            books[sym] = (snap["bid_notional"], snap["ask_notional"])
        self._bar = self._ref.bar(books)

    def get_placement(self, asset: str, _key: Any = None) -> OBPlacementFeatures:
        f = self._bar["assets"].get(asset)
        return OBPlacementFeatures() if f is None else OBPlacementFeatures(
            f["depth_1pct_usd"], f["depth_quality"], f["fill_probability"], f["spread_proxy_bps"])

    def get_signal(self, asset: str, _key: Any = None) -> OBSignalFeatures:
        f = self._bar["assets"].get(asset)
        return OBSignalFeatures() if f is None else OBSignalFeatures(
            f["imbalance"], f["imbalance_ma5"], f["imbalance_persistence"], f["depth_asymmetry"],
            f["withdrawal_velocity"])

    def get_market(self, _key: Any = None) -> OBMarketFeatures:
        m = self._bar["market"]
        return OBMarketFeatures() if m is None else OBMarketFeatures(**m)

    def get_macro(self, _key: Any = None) -> OBMacroFeatures:
        m = self._bar["macro"]
        return OBMacroFeatures() if m is None else OBMacroFeatures(**m)


def trader_bar(ob: Any, assets: list[str], bar_idx: int) -> None:
    """What the trader's scan does per bar against its OB engine."""
    ob.step_live(assets, bar_idx)
    for a in assets:
        ob.get_placement(a, bar_idx)
        ob.get_signal(a, bar_idx)
    ob.get_market(bar_idx)
    ob.get_macro(bar_idx)


def trader_bar_bulk(ob: HazelcastOBEngine, assets: list[str], bar_idx: int) -> None:
    """The same reads through the bulk accessor: one get_bar, then plain lookups."""
    ob.step_live(assets, bar_idx)
    bar = ob.get_bar(bar_idx)
    feats = bar.assets if bar is not None else {}
    for a in assets:
        f = feats.get(a)
        if f is not None:  # None: the neutral defaults
            f.placement  # noqa: B018 - the attribute reads are what is measured
            f.signal  # noqa: B018 - the attribute reads are what is measured
    if bar is not None:
        bar.market  # noqa: B018 - the attribute reads are what is measured
        bar.macro  # noqa: B018 - the attribute reads are what is measured


class EmptyOBEngine:
    """Methods with the adapter's signatures that do nothing: the floor of the call pattern."""

    def step_live(self, assets: Any, bar_idx: int) -> None:
        return None

    def get_placement(self, asset: str, timestamp_or_idx: Any = None) -> None:
        return None

    def get_signal(self, asset: str, timestamp_or_idx: Any = None) -> None:
        return None

    def get_market(self, asset_or_key: Any = None, timestamp_or_idx: Any = None) -> None:
        return None

    def get_macro(self, asset_or_key: Any = None, timestamp_or_idx: Any = None) -> None:
        return None


@dataclass
class Row:
    n: int
    adapter: list[float]
    inproc: list[float]
    decode: list[float]
    floor: list[float]
    bulk: list[float]


def timed(fn: Any, reps: list[Any]) -> list[float]:
    out = []
    for r in reps:
        t = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t)
    return out


def bench_n(client: Any, cluster: str, members: list[str], n: int, n_bars: int, n_inproc: int,
            rng: np.random.Generator) -> Row:
    suffix = H.map_suffix()
    input_name, bars_name = "DOLPHIN_FEATURES" + suffix, "DOLPHIN_OBF_FEATURES" + suffix
    assets = [f"A{i:04d}USDT" for i in range(n)]
    input_map = client.get_map(input_name).blocking()
    bars_map = client.get_map(bars_name).blocking()
    try:
        # Upstream books (what the in-process design reads) and the worker's records for them.
        engine = FeatureEngine()
        payloads: dict[str, str] = {}
        records: list[bytes] = []
        for b in range(1, n_bars + 1):
            snaps = {}
            for sym in assets:
                bid, ask = rng.gamma(2.0, 5_000.0, LEVELS), rng.gamma(2.0, 5_000.0, LEVELS)
                snaps[sym] = Snapshot(sym, T0 + b - 0.1, bid, ask, seq=b)
                if b == n_bars:
                    payloads[f"asset_{sym}_ob"] = payload_json(T0 + b - 0.1, bid, ask, seq=b)
            records.append(dumps_record(engine.step(b, T0 + b, snaps)))
        input_map.put_all(payloads)
        for b, data in enumerate(records, start=1):
            bars_map.put(b, HazelcastJsonValue(data.decode()))

        cfg = AdapterConfig(cluster_name=cluster, members=tuple(members), map_name=bars_name,
                            cache_bars=n_bars, max_wait_ms=50)
        with HazelcastOBEngine(cfg, client=client) as ob:
            trader_bar(ob, assets, 1)  # warm-up
            adapter = timed(lambda b: trader_bar(ob, assets, b), list(range(1, n_bars + 1)))
            assert ob.stats().steps["exact"] == n_bars + 1, ob.stats()
        # A fresh trader for the bulk variant: stepping bar 1 again on the same adapter would be a
        # numbering restart (bar_idx going back), which answers neutral until the trader passes n_bars.
        with HazelcastOBEngine(cfg, client=client) as ob:
            trader_bar_bulk(ob, assets, 1)  # warm-up
            bulk = timed(lambda b: trader_bar_bulk(ob, assets, b), list(range(1, n_bars + 1)))
            assert ob.stats().steps["exact"] == n_bars + 1, ob.stats()
        empty = EmptyOBEngine()
        floor = timed(lambda b: trader_bar(empty, assets, b), list(range(1, n_bars + 1)))

        inproc_ob = InProcessOBEngine(client, input_name)
        trader_bar(inproc_ob, assets, 1)  # warm-up
        inproc = timed(lambda b: trader_bar(inproc_ob, assets, b), list(range(1, n_inproc + 1)))
        decode = timed(decode_bar, records)
        return Row(n, adapter, inproc, decode, floor, bulk)
    finally:
        input_map.destroy()
        bars_map.destroy()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def fmt_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:9.3f} ({pct(xs, 0.99) * 1e3:8.3f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    H.add_cluster_args(ap)
    ap.add_argument("--sizes", default="4,50,400", help="asset counts (default 4,50,400)")
    ap.add_argument("--quick", action="store_true", help="fewer bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    rng = np.random.default_rng(7)
    rows = []
    with H.cluster_from_args(args) as cl:
        cluster, members = cl.name, cl.members
        client = cl.client()
        try:
            for n in (int(s) for s in args.sizes.split(",")):
                n_bars = 40 if args.quick else 200
                n_inproc = max(3, min(n_bars, (400 if args.quick else 2000) // n))
                rows.append(bench_n(client, cluster, members, n, n_bars, n_inproc, rng))
        finally:
            client.shutdown()

    print(f"trader-side cost per bar: step_live + get_placement/get_signal per asset + get_market + get_macro "
          f"(member {','.join(members)}; ms, median (p99))")
    print(f"{'assets':>6} | {'adapter ms/bar':>20} | {'in-process ms/bar':>20} | {'ratio':>8} | "
          f"{'floor ms/bar':>20} | {'adapter ns/call':>15} | {'floor ns/call':>13} | {'bulk ms/bar':>20} | "
          f"{'decode ms/bar (listener)':>24}")
    for r in rows:
        ratio = statistics.median(r.inproc) / statistics.median(r.adapter)
        calls = 2 * r.n + 3  # step_live, 2 per asset, market, macro
        print(f"{r.n:>6} | {fmt_ms(r.adapter):>20} | {fmt_ms(r.inproc):>20} | {ratio:>7.1f}x | "
              f"{fmt_ms(r.floor):>20} | {statistics.median(r.adapter) / calls * 1e9:>15.0f} | "
              f"{statistics.median(r.floor) / calls * 1e9:>13.0f} | {fmt_ms(r.bulk):>20} | {fmt_ms(r.decode):>24}")
    at = {r.n: r for r in rows}
    if 50 in at and 400 in at:
        r50 = statistics.median(at[50].inproc) / statistics.median(at[50].adapter)
        us400 = statistics.median(at[400].adapter) * 1e6
        print(f"targets: >= 100x at 50 assets: {r50:.0f}x ({'met' if r50 >= 100 else 'NOT met'}); "
              f"< 100 us per bar at 400: {us400:.0f} us ({'met' if us400 < 100 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
