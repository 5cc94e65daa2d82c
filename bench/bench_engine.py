"""Micro-benchmark: the engine's whole step per bar (compute + record encoding) vs a naive
per-asset pure-Python loop, on this checkout and on the previous design side by side.

Run: ``.venv/bin/python bench/bench_engine.py [--quick] [--previous REF | --no-previous]``

Each tree is measured in its own subprocess (``bench/previous.py``) with its own
``FeatureEngine`` and ``dumps_record``. Columns per tree: ``step`` = ``FeatureEngine.step()``
(packing the snapshots, the numba kernel, building the record); ``encode`` = ``dumps_record``
of that record; ``whole`` = the two together, timed as one call per bar (what the worker's bar
path pays); ``kernel`` = the numba call alone (NaN when the tree's internals differ from what
this harness knows). ``naive`` = the same feature math written as a plain Python loop over
assets and bands (inputs pre-converted to lists) building the previous design's per-asset
record dicts and encoding them with ``orjson.dumps`` (sorted keys): the straightforward
implementation, identical for both trees (it is harness code, using the tree's
``FeatureParams``). ``ratio`` = naive / whole; the two alternate bar by bar, so a change of the
machine's load reaches both alike. Each asset has a random band count L in 1..64
and is present in ~90 % of bars. Times are medians per bar (a garbage collection landing in
one bar does not skew them). Numbers depend on the machine; nothing here is asserted.
Target (issue 14): whole step >= 20x the naive loop at 400 assets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from typing import Any

import numpy as np
import orjson
import previous as P
import targets as T

T0 = 1_723_161_000.0
TARGET_RATIO = 20.0


class NaiveFeatures:
    """The feature math as a straightforward Python loop (the thing the kernel replaces)."""

    def __init__(self, p: Any, *, records: bool = True) -> None:
        self.p = p
        self.records = records
        self.ref: dict[str, float] = {}
        self.imbs: dict[str, deque[float]] = {}
        self.depths: dict[str, deque[float]] = {}
        self.market: deque[float] = deque(maxlen=p.depth_lookback)
        self.prev_velocity: float | None = None

    def step(self, bar_ts: float, books: dict[str, tuple[float, list[float], list[float]]]) -> dict:
        p = self.p
        out = {}
        assets = {}
        for sym, (ts, bid, ask) in books.items():
            B = sum(bid)
            A = sum(ask)
            depth = B + A
            imb = (B - A) / depth if depth else 0.0
            nb = sum(x / (k + 1) for k, x in enumerate(bid))
            na = sum(x / (k + 1) for k, x in enumerate(ask))
            asym = (nb - na) / (nb + na) if nb + na else 0.0
            ref = self.ref.get(sym)
            ref = depth if ref is None else (1 - p.ema_alpha) * ref + p.ema_alpha * depth
            self.ref[sym] = ref
            quality = depth / ref if ref else 1.0
            w = p.band_span_bps / len(bid)
            spread = self._cost(bid, w) + self._cost(ask, w)
            imbs = self.imbs.setdefault(sym, deque(maxlen=p.imbalance_lookback))
            depths = self.depths.setdefault(sym, deque(maxlen=p.depth_lookback))
            imbs.append(imb)
            depths.append(depth)
            last = list(imbs)[-p.ma_window:]
            k = len(depths) - 1
            velocity = (depth - depths[0]) / depths[0] / k if k and depths[0] > 0 else 0.0
            out[sym] = (depth, imb, asym, quality, quality / (1 + quality), spread, sum(last) / len(last),
                        sum((x > 0) - (x < 0) for x in imbs) / len(imbs), velocity, B, A)
            if not self.records:
                continue
            assets[sym] = {
                "ts": ts, "age_ms": (bar_ts - ts) * 1000.0, "seq": None,
                "placement": {"depth_1pct_usd": depth, "depth_quality": quality,
                              "fill_probability": out[sym][4], "spread_proxy_bps": spread},
                "signal": {"imbalance": imb, "imbalance_ma5": out[sym][6], "imbalance_persistence": out[sym][7],
                           "depth_asymmetry": asym, "withdrawal_velocity": velocity},
            }
        if not out:
            return {"assets": assets, "market": None, "macro": None}
        n = len(out)
        imbs_now = sorted(v[1] for v in out.values())
        median = imbs_now[n // 2] if n % 2 else (imbs_now[n // 2 - 1] + imbs_now[n // 2]) / 2
        sm = (median > 0) - (median < 0)
        agreement = 100 * sum(1 for v in out.values() if ((v[1] > 0) - (v[1] < 0)) == sm) / n
        sb = sum(v[9] for v in out.values())
        sa = sum(v[10] for v in out.values())
        notional = (sb - sa) / (sb + sa) if sb + sa else 0.0
        pressure = sum(v[1] for v in out.values())  # the in-process engine's: plain sum of imbalances
        cascades = sum(1 for v in out.values() if v[8] < -p.cascade_threshold)
        depth_ref = sum(self.ref.values()) / len(self.ref)  # mean reference depth over every asset seen
        self.market.append(depth_ref)
        k = len(self.market) - 1
        oldest = self.market[0]
        velocity = (depth_ref - oldest) / oldest / k if k and oldest > 0 else 0.0
        accel = 0.0 if self.prev_velocity is None else velocity - self.prev_velocity
        self.prev_velocity = velocity
        regime = ("CASCADE" if cascades / n >= p.cascade_share
                  else "STRESS" if cascades / n >= p.stress_share else "CALM")
        return {
            "assets": assets, "n_present": n,
            "market": {"median_imbalance": median, "agreement_pct": agreement, "depth_pressure": pressure,
                       "notional_pressure": notional},
            "macro": {"cascade_count": cascades, "cascade_regime": regime, "depth_velocity": velocity,
                      "acceleration": accel, "depth_ref_usd": depth_ref},
        }

    def _cost(self, side: list[float], w: float) -> float:
        cum = 0.0
        for k, x in enumerate(side):
            if x > 0 and cum + x >= self.p.ref_notional_usd:
                return w * k + w * (self.p.ref_notional_usd - cum) / x
            cum += x
        return w * len(side)


def make_bars(n_assets: int, n_bars: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Random books as the tree's ``Snapshot``s (imported from the tree under test)."""
    from obf_features_worker.engine.snapshot import Snapshot

    symbols = [f"A{i:05d}" for i in range(n_assets)]
    levels = rng.integers(1, 65, size=n_assets)
    bars = []
    for b in range(n_bars):
        present = rng.random(n_assets) < 0.9
        bar = {}
        for sym, L, here in zip(symbols, levels, present):
            if here:
                bid = rng.gamma(2.0, 5_000.0, size=L)
                ask = rng.gamma(2.0, 5_000.0, size=L)
                bar[sym] = Snapshot(sym, T0 + b, bid, ask)
        bars.append(bar)
    return bars


def _median_per_bar(fn: Any, bars: list[Any], start: int) -> float:
    per_bar = []
    for i, bar in enumerate(bars, start=start):
        t = time.perf_counter()
        fn(i, bar)
        per_bar.append(time.perf_counter() - t)
    return statistics.median(per_bar)


def bench_size(n_assets: int, n_bars: int, rng: np.random.Generator) -> dict[str, float]:
    """Medians in seconds per bar: step, encode, whole, kernel, naive, naive_math (tree's code)."""
    from obf_contract.record import dumps_record
    from obf_features_worker.engine.feature_engine import FeatureEngine
    from obf_features_worker.engine.params import FeatureParams

    bars = make_bars(n_assets, n_bars + 5, rng)
    warm, timed = bars[:5], bars[5:]
    p = FeatureParams()

    def whole_engine() -> Any:
        engine = FeatureEngine(p)
        for i, bar in enumerate(warm):
            dumps_record(engine.step(i, T0 + i, bar))
        return engine

    as_lists = [{s: (x.ts, x.bid_notional.tolist(), x.ask_notional.tolist()) for s, x in bar.items()}
                for bar in bars]
    # The whole step and the naive loop alternate bar by bar, so that a change of the machine's
    # load during the measurement reaches both sides of the ratio alike.
    engine = whole_engine()
    naive = NaiveFeatures(p, records=True)
    for i, bar in enumerate(as_lists[:5]):
        _naive_one(naive, i, bar, encode=True)
    whole_s, naive_s = [], []
    for i, (bar, lists) in enumerate(zip(timed, as_lists[5:]), start=len(warm)):
        t = time.perf_counter()
        dumps_record(engine.step(i, T0 + i, bar))
        whole_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        _naive_one(naive, i, lists, encode=True)
        naive_s.append(time.perf_counter() - t)

    engine = whole_engine()
    recs: list[Any] = []
    step = _median_per_bar(lambda i, bar: recs.append(engine.step(i, T0 + i, bar)), timed, len(warm))
    encode = _median_per_bar(lambda i, rec: dumps_record(rec), recs, 0)
    try:
        kernel = _kernel_time(engine, timed[-1])
    except Exception as exc:  # the tree's engine internals differ from what this harness knows
        print(f"kernel time not measured on this tree: {exc!r}", file=sys.stderr)
        kernel = float("nan")
    naive_math = _naive_time(NaiveFeatures(p, records=False), as_lists, encode=False)
    return {"step": step, "encode": encode, "whole": statistics.median(whole_s), "kernel": kernel,
            "naive": statistics.median(naive_s), "naive_math": naive_math}


def _naive_one(naive: NaiveFeatures, i: int, bar: dict, *, encode: bool) -> None:
    rec = naive.step(T0 + i, bar)
    if encode:
        orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)


def _naive_time(naive: NaiveFeatures, as_lists: list[dict], *, encode: bool) -> float:
    for i, bar in enumerate(as_lists[:5]):
        _naive_one(naive, i, bar, encode=encode)
    return _median_per_bar(lambda i, bar: _naive_one(naive, i, bar, encode=encode), as_lists[5:], 5)


def _kernel_time(engine: Any, bar: dict[str, Any], repeat: int = 20) -> float:
    """The numba call alone, on a private copy of the engine's state."""
    from obf_features_worker.engine import kernels as K
    from obf_features_worker.engine.feature_engine import FeatureEngine

    symbols = sorted(bar)
    snaps = [bar[s] for s in symbols]
    n = len(snaps)
    slots = np.array([engine.assets.index(s) for s in symbols], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(s.bid_notional) for s in snaps])]).astype(np.int64)
    bid = np.concatenate([s.bid_notional for s in snaps])
    ask = np.concatenate([s.ask_notional for s in snaps])
    st = FeatureEngine.from_state(engine.export_state(), engine.params, universe=engine.universe)
    st.universe_info()  # builds the universe slots the kernel sums the reference depth over
    p = st.params
    asset_out = np.empty((n, K.N_ASSET_COLS))
    market_out = np.empty(K.N_MARKET_COLS)
    args = (slots, offsets, bid, ask, p.band_span_bps, p.ref_notional_usd, p.ema_alpha, p.ma_window,
            p.cascade_threshold, p.stress_share, p.cascade_share, st._ref_depth, st._n_obs, st._imb_hist,
            st._depth_hist, st._universe_slots, st._market_hist, st._market_n, st._prev_velocity, asset_out,
            market_out)
    K.step_bar(*args)
    t = time.perf_counter()
    for _ in range(repeat):
        K.step_bar(*args)
    return (time.perf_counter() - t) / repeat


def bench_parse(rng: np.random.Generator, n: int) -> dict[str, float]:
    """``parse_snapshot`` seconds per payload for L = 5, 20, 64 levels (the tree's parser)."""
    from obf_features_worker.engine.snapshot import parse_snapshot, payload_json

    out = {}
    for L in (5, 20, 64):
        payloads = [
            payload_json(T0 + i * 0.1, rng.random(L) * 1e5, rng.random(L) * 1e5, rng.random(L), rng.random(L),
                         seq=i, pushed_at="2024-08-08T23:54:14.200000+00:00")
            for i in range(200)
        ]
        parse_snapshot("asset_BTCUSDT_ob", payloads[0], now=T0 + 100)
        t = time.perf_counter()
        for i in range(n):
            parse_snapshot("asset_BTCUSDT_ob", payloads[i % 200], now=T0 + 100)
        out[str(L)] = (time.perf_counter() - t) / n
    return out


def measure(sizes: dict[str, int], parse_n: int, seed: int = 42) -> dict[str, Any]:
    """In the subject's process: every size (assets -> timed bars), then the parser."""
    from obf_features_worker.engine.feature_engine import FeatureEngine

    rng = np.random.default_rng(seed)
    FeatureEngine().step(0, T0, make_bars(2, 1, rng)[0])  # numba compile / cache load outside the timing
    out: dict[str, Any] = {"sizes": {}}
    for n, bars in sizes.items():
        out["sizes"][n] = bench_size(int(n), bars, rng)
        print(f"  engine {n} assets measured", file=sys.stderr, flush=True)
    out["parse"] = bench_parse(rng, parse_n)
    return out


def configure(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--engine-sizes", default=None,
                    help="assets:bars,... (default 4:400,50:200,400:40,2000:10; --quick 50:20,400:10,2000:3)")


def run(args: argparse.Namespace) -> list[T.Row]:
    spec = args.engine_sizes or ("50:20,400:10,2000:3" if args.quick else "4:400,50:200,400:40,2000:10")
    sizes = {a: int(b) for a, b in (x.split(":") for x in spec.split(","))}
    parse_n = 5_000 if args.quick else 50_000
    res = {s.name: (s, P.run_in(s, "bench_engine", "measure", sizes=sizes, parse_n=parse_n))
           for s in P.subjects(args)}
    print("engine per bar, ms (median): whole = step + dumps_record; ratio = naive / whole "
          "(naive: per-asset Python loop + dicts + orjson.dumps)")
    hdr = f"{'tree':>22} {'assets':>7} {'step':>8} {'encode':>8} {'whole':>8} {'naive':>8} {'ratio':>7} " \
          f"{'kernel':>8} {'naive math':>10} {'math ratio':>10}"
    print(hdr)
    print("-" * len(hdr))
    for n in sizes:
        for subj, r in res.values():
            m = r["sizes"][n]
            print(f"{subj.label:>22} {n:>7} {m['step'] * 1e3:8.3f} {m['encode'] * 1e3:8.3f} {m['whole'] * 1e3:8.3f} "
                  f"{m['naive'] * 1e3:8.3f} {m['naive'] / m['whole']:6.1f}x {m['kernel'] * 1e3:8.3f} "
                  f"{m['naive_math'] * 1e3:10.3f} {m['naive_math'] / m['kernel']:9.1f}x")
    print("parse_snapshot us/payload: " + "; ".join(
        f"{subj.label}: " + ", ".join(f"L={L} {v * 1e6:.2f}" for L, v in r["parse"].items())
        for subj, r in res.values()))
    print(flush=True)

    def ratio(name: str) -> float | None:
        if name not in res or "400" not in res[name][1]["sizes"]:
            return None
        m = res[name][1]["sizes"]["400"]
        return float(m["naive"] / m["whole"])

    return [T.Row("engine", "whole step (compute + dumps_record) vs naive loop, 400 assets", ">=", TARGET_RATIO,
                  "x", ratio("current"), ratio("previous"), "naive / whole, medians per bar")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer bars per size (a rough number in seconds)")
    P.add_args(ap)
    configure(ap)
    rows = run(ap.parse_args(argv))
    T.print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
