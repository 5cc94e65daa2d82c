"""Trader-side cost per bar: the read-only adapter vs the original in-process OB engine.

Run: ``.venv/bin/python bench/bench_trader_path.py [--members host:port --cluster NAME] [--quick]
[--previous REF | --no-previous]`` (without ``--members`` a local member is started on a free port
and stopped at the end).

This checkout and the previous design (``bench/previous.py``) are measured one after the other
against the same member, each in a subprocess with its own ``FeatureEngine``, ``dumps_record``
and adapter: each tree's worker records are what its own adapter reads.

Per bar, for N assets, both sides do what the trader's scan does: ``step_live(assets, bar_idx)``
then ``get_placement`` + ``get_signal`` for every asset, ``get_market`` and ``get_macro``.

* ``adapter``: ``HazelcastOBEngine``, live: per bar the worker's record (real ``FeatureEngine``
  output) is written to ``DOLPHIN_OBF_FEATURES``, the adapter's listener takes it in
  (``wait_for_bar``), then the trader's reads are timed: ``step_live`` finds the newest bar
  cached, as it does in production (the worker writes at bar close, the listener decodes or
  prepares it on the reactor thread before the trader asks).
* ``in-process``: the original design: per bar one blocking ``map.get`` per asset from
  ``DOLPHIN_FEATURES`` + JSON parse + the per-asset feature loop in plain Python
  (``tests.reference.ReferenceFeatures``), then the same getters over the computed dicts.
* ``decode``: ``engine_adapter.features.decode_bar`` of that bar's record (the listener thread's
  work in the previous design; NaN when the tree has no such function).
* ``floor``: the same loop against an object whose methods do nothing: the cost of the Python
  calls alone, which no implementation of these getters can go below.
* ``bulk``: ``step_live`` + ``get_bar()`` once, then ``bar.assets.get(symbol)`` and its
  ``.placement`` / ``.signal`` per asset (``get_bar`` documents this for traders who want the
  minimum: one dict lookup per asset instead of two method calls; NaN if the tree's bar differs).
* ``in-process`` and ``floor`` are measured with this checkout only (they do not depend on the design).

Times are per bar, median (p99) over the timed bars, against the same real member.
``ratio`` = in-process median / adapter median. Nothing is asserted; numbers depend on the machine.
Targets: adapter >= 100x cheaper than in-process at 50 assets; < 100 us per bar at 400 (issue 14
keeps it while the cache changes shape).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from typing import Any

import harness as H
import numpy as np
import orjson
import previous as P
import targets as T
from hazelcast.core import HazelcastJsonValue

# The code under test (engine_adapter, the engine, dumps_record) is imported inside the functions
# that run in a tree's subprocess: each tree's own.

T0 = 1_723_161_000.0
LEVELS = 20  # bands per side in the synthetic books


class InProcessOBEngine:
    """The original design: reads every asset's book and computes its features on the trader thread."""

    def __init__(self, client: Any, input_map: str) -> None:
        from engine_adapter import features as F
        from tests.reference import ReferenceFeatures

        self._F = F
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

    def get_placement(self, asset: str, _key: Any = None) -> Any:
        f = self._bar["assets"].get(asset)
        return self._F.OBPlacementFeatures() if f is None else self._F.OBPlacementFeatures(
            f["depth_1pct_usd"], f["depth_quality"], f["fill_probability"], f["spread_proxy_bps"])

    def get_signal(self, asset: str, _key: Any = None) -> Any:
        f = self._bar["assets"].get(asset)
        return self._F.OBSignalFeatures() if f is None else self._F.OBSignalFeatures(
            f["imbalance"], f["imbalance_ma5"], f["imbalance_persistence"], f["depth_asymmetry"],
            f["withdrawal_velocity"])

    def get_market(self, _key: Any = None) -> Any:
        m = self._bar["market"]
        return self._F.OBMarketFeatures() if m is None else self._F.OBMarketFeatures(**m)

    def get_macro(self, _key: Any = None) -> Any:
        m = self._bar["macro"]
        return self._F.OBMacroFeatures() if m is None else self._F.OBMacroFeatures(**m)


def trader_bar(ob: Any, assets: list[str], bar_idx: int) -> None:
    """What the trader's scan does per bar against its OB engine."""
    ob.step_live(assets, bar_idx)
    for a in assets:
        ob.get_placement(a, bar_idx)
        ob.get_signal(a, bar_idx)
    ob.get_market(bar_idx)
    ob.get_macro(bar_idx)


def trader_bar_bulk(ob: Any, assets: list[str], bar_idx: int) -> None:
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


def timed(fn: Any, reps: list[Any]) -> list[float]:
    out = []
    for r in reps:
        t = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t)
    return out


def summary(xs: list[float]) -> dict[str, float]:
    """Median and p99 in seconds (NaN for no data)."""
    return {"median": statistics.median(xs) if xs else float("nan"), "p99": pct(xs, 0.99) if xs else float("nan")}


def bench_n(cluster: str, members: list[str], n: int, n_bars: int, n_inproc: int, seed: int,
            reference: bool) -> dict[str, dict[str, float]]:
    """In a tree's process: adapter, bulk and decode per bar for ``n`` assets (and, with
    ``reference``, the in-process design and the call floor), each as median / p99 seconds."""
    import hazelcast
    from hazelcast.config import IntType

    from engine_adapter import AdapterConfig, HazelcastOBEngine
    from obf_contract.record import dumps_record
    from obf_features_worker.engine.feature_engine import FeatureEngine
    from obf_features_worker.engine.snapshot import Snapshot, payload_json

    rng = np.random.default_rng(seed)
    client = hazelcast.HazelcastClient(cluster_name=cluster, cluster_members=members, default_int_type=IntType.LONG)
    suffix = H.map_suffix()
    input_name, bars_name = "DOLPHIN_FEATURES" + suffix, "DOLPHIN_OBF_FEATURES" + suffix
    assets = [f"A{i:04d}USDT" for i in range(n)]
    input_map = client.get_map(input_name).blocking()
    bars_map = client.get_map(bars_name).blocking()
    out: dict[str, dict[str, float]] = {}
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

        def live(step: Any, name: str) -> list[float]:
            """The live pattern, per bar: the record is written, becomes visible in the adapter (its
            listener has decoded or prepared it), then the trader steps it and reads every asset:
            only that last part is timed. A fresh adapter on a fresh map for each variant."""
            cfg = AdapterConfig(cluster_name=cluster, members=tuple(members), map_name=name, cache_bars=n_bars,
                                max_wait_ms=50)
            m = client.get_map(name).blocking()
            times = []
            try:
                with HazelcastOBEngine(cfg, client=client) as ob:
                    for b, data in enumerate(records, start=1):
                        m.set(b, HazelcastJsonValue(data.decode()))
                        ob.wait_for_bar(b, 10.0)
                        t = time.perf_counter()
                        step(ob, b)
                        times.append(time.perf_counter() - t)
                    exact = ob.stats().steps.get("exact", 0)
                    if exact != n_bars:
                        print(f"  {n} assets: only {exact}/{n_bars} bars were exact", file=sys.stderr)
            finally:
                m.destroy()
            return times[1:]  # the first bar warms up

        out["adapter"] = summary(live(lambda ob, b: trader_bar(ob, assets, b), bars_name))
        try:
            out["bulk"] = summary(live(lambda ob, b: trader_bar_bulk(ob, assets, b), bars_name + "_BULK"))
        except Exception as exc:  # the tree's get_bar differs from what this harness knows
            print(f"  bulk variant not measured on this tree: {exc!r}", file=sys.stderr)
            out["bulk"] = summary([])
        try:
            from engine_adapter.features import decode_bar

            out["decode"] = summary(timed(decode_bar, records))
        except Exception as exc:  # no decode_bar in this tree
            print(f"  decode not measured on this tree: {exc!r}", file=sys.stderr)
            out["decode"] = summary([])
        out["record_kB"] = {"median": statistics.median(len(r) for r in records) / 1000.0, "p99": float("nan")}
        if reference:
            empty = EmptyOBEngine()
            out["floor"] = summary(timed(lambda b: trader_bar(empty, assets, b), list(range(1, n_bars + 1))))
            inproc_ob = InProcessOBEngine(client, input_name)
            trader_bar(inproc_ob, assets, 1)  # warm-up
            out["inproc"] = summary(timed(lambda b: trader_bar(inproc_ob, assets, b), list(range(1, n_inproc + 1))))
        return out
    finally:
        input_map.destroy()
        bars_map.destroy()
        client.shutdown()


def measure(cluster: str, members: list[str], sizes: list[int], n_bars: int, inproc_budget: int,
            reference: bool) -> dict[str, Any]:
    """In a tree's process: every size; ``{"<n>": bench_n(...)}``."""
    logging.basicConfig(level=logging.WARNING)
    return {str(n): bench_n(cluster, members, n, n_bars, max(3, min(n_bars, inproc_budget // n)), 7, reference)
            for n in sizes}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def fmt_ms(x: dict[str, float] | None) -> str:
    if x is None:
        return "-"
    return f"{x['median'] * 1e3:9.3f} ({x['p99'] * 1e3:8.3f})"


def configure(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--trader-sizes", default=None, help="asset counts (default 4,50,400; --quick 50,400)")


def run(args: argparse.Namespace) -> list[T.Row]:
    sizes = [int(s) for s in (args.trader_sizes or ("50,400" if args.quick else "4,50,400")).split(",")]
    n_bars = 40 if args.quick else 200
    inproc_budget = 400 if args.quick else 2000
    res: dict[str, Any] = {}
    with H.cluster_from_args(args) as cl:
        for k, subj in enumerate(P.subjects(args)):
            res[subj.name] = (subj, P.run_in(subj, "bench_trader_path", "measure", cluster=cl.name,
                                             members=cl.members, sizes=sizes, n_bars=n_bars,
                                             inproc_budget=inproc_budget, reference=k == 0))
    cur = res["current"][1]
    print("trader-side cost per bar: step_live + get_placement/get_signal per asset + get_market + get_macro "
          "(ms, median (p99)); in-process and floor: this checkout's harness")
    rows = []
    for n in sizes:
        key = str(n)
        calls = 2 * n + 3  # step_live, 2 per asset, market, macro
        for name, (subj, r) in res.items():
            m = r[key]
            ratio = cur[key]["inproc"]["median"] / m["adapter"]["median"]
            rows.append([n, subj.label, fmt_ms(m["adapter"]), f"{m['adapter']['median'] / calls * 1e9:.0f}",
                         fmt_ms(m["bulk"]), fmt_ms(m["decode"]), f"{m['record_kB']['median']:.0f}",
                         fmt_ms(cur[key]["inproc"]) if name == "current" else "",
                         f"{ratio:.0f}x", fmt_ms(cur[key]["floor"]) if name == "current" else ""])
    H.print_table(f"trader path ({H.machine_line()})",
                  ["assets", "tree", "adapter ms/bar", "ns/call", "bulk ms/bar", "decode ms/bar", "record kB",
                   "in-process ms/bar", "in-process / adapter", "floor ms/bar"], rows)

    def figure(name: str, n: int, f: Any) -> float | None:
        r = res.get(name)
        return None if r is None or str(n) not in r[1] else float(f(r[1][str(n)]))

    out = []
    if 400 in sizes:
        out.append(T.Row("trader_path", "step_live + get_* for every asset, 400 assets", "<", 100.0, "us/bar",
                         figure("current", 400, lambda m: m["adapter"]["median"] * 1e6),
                         figure("previous", 400, lambda m: m["adapter"]["median"] * 1e6),
                         f"median of {n_bars} bars"))
    if 50 in sizes:
        out.append(T.Row("trader_path", "in-process design / adapter, 50 assets", ">=", 100.0, "x",
                         figure("current", 50, lambda m: cur["50"]["inproc"]["median"] / m["adapter"]["median"]),
                         figure("previous", 50, lambda m: cur["50"]["inproc"]["median"] / m["adapter"]["median"]),
                         "issue 12's target, kept"))
    return out


def main(argv: list[str] | None = None) -> int:
    return P.bench_main(argv, __doc__, configure, run, quick_help="fewer bars")


if __name__ == "__main__":
    raise SystemExit(main())
