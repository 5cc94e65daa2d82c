"""OBFeaturesActor: publishes each bar's order-book features as Nautilus custom data.

On each bar close (a timer on the Nautilus clock aligned to the bar clock: closes at multiples
of ``bar_seconds``, ``bar_idx = close / bar_seconds``, the worker's and replay's rule) it calls
``step_live(assets, bar_idx)`` on its OB engine and publishes the bar's ``OBAssetFeatures``
(one per asset) then its ``OBBarFeatures``. The engine is anything with the adapter's API: the
live ``HazelcastOBEngine`` (live trading) or the ``OfflineOBEngine`` (paper, backtest), so the
actor runs unchanged in the three modes. Strategies subscribe with
``self.subscribe_data(DataType(OBBarFeatures))`` / ``DataType(OBAssetFeatures)``.

Live: ``step_live`` waits up to the adapter's ``max_wait_ms`` for the bar's record on the actor's
thread; ``publish_delay_ms`` fires the timer that much after the close instead, leaving the
worker time to write the bar so the wait is normally not needed.
Never raises out of the timer callback: an engine error is logged and counted (``errors``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Protocol

import pandas as pd
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig

from engine_adapter.cache import Resolution
from engine_adapter.features import BarFeatures
from obf_nautilus.data import ASSET_DATA_TYPE, BAR_DATA_TYPE, to_nautilus

log = logging.getLogger(__name__)


class OBEngine(Protocol):
    """The part of the adapter's API the actor uses (HazelcastOBEngine and OfflineOBEngine have it)."""

    def step_live(self, assets: Iterable[str] | None, bar_idx: int) -> Resolution: ...

    def resolve(self, timestamp_or_idx: Any = None) -> Resolution: ...

    def get_bar(self, timestamp_or_idx: Any = None) -> BarFeatures | None: ...


class OBFeaturesActorConfig(ActorConfig, frozen=True):  # type: ignore[misc,call-arg]  # untyped base
    """bar_seconds: the worker's interval bar length, s (> 0; a close is a multiple of it in unix
    time); None: no timer, the owner calls ``publish_bar(bar_idx, ts_ns)`` itself (scan clock:
    ``bar_idx`` = the scan's number).
    assets: the symbols to publish each bar (None = every asset of the resolved bar).
    publish_delay_ms: fire this long after each close (>= 0; live: ~ the worker's write latency).
    """

    bar_seconds: float | None = 5.0
    assets: tuple[str, ...] | None = None
    publish_delay_ms: float = 0.0


class OBFeaturesActor(Actor):  # type: ignore[misc]  # nautilus_trader ships no type information
    """Publishes ``OBAssetFeatures`` + ``OBBarFeatures`` at every bar close from ``engine``."""

    TIMER = "obf-bar-close"

    def __init__(self, engine: OBEngine, config: OBFeaturesActorConfig | None = None) -> None:
        config = config if config is not None else OBFeaturesActorConfig()
        if config.bar_seconds is not None and not config.bar_seconds > 0:
            raise ValueError(f"OBFeaturesActorConfig.bar_seconds must be > 0, got {config.bar_seconds!r}")
        if not config.publish_delay_ms >= 0:
            raise ValueError(f"OBFeaturesActorConfig.publish_delay_ms must be >= 0, got {config.publish_delay_ms!r}")
        super().__init__(config)
        self.engine = engine
        self._bar_ns = 0 if config.bar_seconds is None else round(config.bar_seconds * 1e9)
        self._delay_ns = round(config.publish_delay_ms * 1e6)
        self._assets = None if config.assets is None else tuple(config.assets)
        self.published_bars = 0
        self.errors = 0

    def on_start(self) -> None:
        if not self._bar_ns:
            return  # publish_bar is called by the owner
        now = self.clock.timestamp_ns()
        first = (now - self._delay_ns) // self._bar_ns * self._bar_ns + self._delay_ns  # the timer fires at +1 bar
        self.clock.set_timer(self.TIMER, timedelta(microseconds=self._bar_ns / 1000),
                             start_time=pd.Timestamp(first, unit="ns", tz="UTC"), callback=self._on_close)

    def on_stop(self) -> None:
        if self.TIMER in self.clock.timer_names:
            self.clock.cancel_timer(self.TIMER)

    def _on_close(self, event: Any) -> None:
        close_ns = event.ts_event - self._delay_ns
        try:
            self.publish_bar(round(close_ns / self._bar_ns), close_ns)
        except Exception:  # the actor's thread must survive anything the engine does
            self.errors += 1
            log.exception("publishing features failed close_ns=%d", close_ns)

    def publish_bar(self, bar_idx: int, ts_event: int) -> None:
        """Step the engine to ``bar_idx`` and publish its features (ts_event = the close, unix ns)."""
        res = self.engine.step_live(self._assets, bar_idx)
        bar = self.engine.get_bar()
        if (bar.bar_idx if bar is not None else None) != res.bar_idx:  # a record arrived in between
            res = self.engine.resolve()
        assets, bar_obj = to_nautilus(bar_idx, res, bar, self._assets, ts_event, self.clock.timestamp_ns())
        for a in assets:
            self.publish_data(ASSET_DATA_TYPE, a)
        self.publish_data(BAR_DATA_TYPE, bar_obj)
        self.published_bars += 1
