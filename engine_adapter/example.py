"""Runnable example: a trader scan loop on HazelcastOBEngine (copy the ``run`` function).

    HZ_CLUSTER=dev HZ_MEMBERS=127.0.0.1:5701 \\
        python -m engine_adapter.example --assets BTCUSDT,ETHUSDT --bar-seconds 5 --bars 12

It follows the worker's interval clock: bar ``k`` closes at unix time ``k * bar_seconds``, so
the trader's bar_idx for a scan at time ``t`` is ``floor(t / bar_seconds)``. With the worker's
scan clock, use the scan's own bar_idx instead (see docs/trader-integration.md).
"""

from __future__ import annotations

import argparse
import logging
import math
import threading
import time
from collections.abc import Sequence

from engine_adapter.adapter import AdapterConfig, HazelcastOBEngine

log = logging.getLogger(__name__)


class ExampleTradingEngine:
    """Stand-in for the trader's engine: it only reads features through the OB engine it is given."""

    def __init__(self) -> None:
        self.ob_engine: HazelcastOBEngine | None = None

    def set_ob_engine(self, ob_engine: HazelcastOBEngine) -> None:
        self.ob_engine = ob_engine

    def step_bar(self, bar_idx: int, assets: Sequence[str]) -> None:
        ob = self.ob_engine
        assert ob is not None, "call set_ob_engine first"  # noqa: S101 - narrows the type; holds by construction
        macro = ob.get_macro(bar_idx)
        market = ob.get_market(bar_idx)
        for asset in assets:
            placement = ob.get_placement(asset, bar_idx)
            signal = ob.get_signal(asset, bar_idx)
            log.info("bar=%d asset=%s imbalance=%+.3f depth_quality=%.3f fill_p=%.3f spread_bps=%.2f "
                     "regime=%s median_imb=%+.3f", bar_idx, asset, signal.imbalance, placement.depth_quality,
                     placement.fill_probability, placement.spread_proxy_bps, macro.cascade_regime,
                     market.median_imbalance)


def run(config: AdapterConfig, assets: Sequence[str], bar_seconds: float, bars: int,
        stop: threading.Event | None = None) -> int:
    """Scan loop: once per bar close, ``step_live`` then ``step_bar``; returns bars stepped."""
    stop = stop or threading.Event()
    stepped = 0
    # Construct once, for the life of the trader: it seeds its cache and keeps it live.
    with HazelcastOBEngine(config) as ob_eng:
        eng = ExampleTradingEngine()
        eng.set_ob_engine(ob_eng)
        while not stop.is_set() and (bars <= 0 or stepped < bars):
            bar_idx = math.floor(time.time() / bar_seconds)  # the last closed bar, as the worker numbers it
            res = ob_eng.step_live(assets, bar_idx)  # waits up to max_wait_ms for the worker's record
            if res.kind != "exact":
                log.warning("bar=%d features kind=%s from_bar=%s age_bars=%s", bar_idx, res.kind,
                            res.bar_idx, res.age_bars)
            eng.step_bar(bar_idx, assets)
            stepped += 1
            stop.wait(max(0.0, (bar_idx + 1) * bar_seconds - time.time()))  # until the next close
        s = ob_eng.stats()
        log.info("done steps=%s lookups=%s lag_bars=%s connected=%s", s.steps, s.cache.lookups, s.lag_bars,
                 s.grid.connected)
    return stepped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Example trader loop on the read-only OB engine.")
    parser.add_argument("--assets", default="BTCUSDT,ETHUSDT", help="comma-separated symbols")
    parser.add_argument("--bar-seconds", type=float, default=5.0, help="the worker's bar length (s)")
    parser.add_argument("--bars", type=int, default=0, help="stop after this many bars (0 = run until Ctrl-C)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    assets = [a.strip() for a in args.assets.split(",") if a.strip()]
    try:
        run(AdapterConfig.from_env(), assets, args.bar_seconds, args.bars)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
