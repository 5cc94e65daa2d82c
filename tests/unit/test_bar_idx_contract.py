"""Contract between the worker's interval clock and the adapter's lookup keys.

The adapter reads an integer >= 1e9 as a unix timestamp (engine_adapter/cache.py parse_key),
while the interval clock numbers bars ``unix time / bar_seconds``: any bar length the worker
accepts must give bar indices the adapter reads as bar indices, or ``step_live(bar_idx)`` raises
and ``get_*(bar_idx)`` silently resolve a timestamp decades ahead (neutral defaults).
Found by the fault campaign; the worker now refuses such bar lengths (config.py, BAR_IDX_LIMIT).
"""

from __future__ import annotations

import time

import pytest

from engine_adapter.cache import parse_key
from obf_features_worker.service.bars import IntervalClock
from obf_features_worker.service.config import ConfigError, WorkerConfig


@pytest.mark.parametrize("bar_seconds", [
    0.2,
    1.0,
    2.0,
    5.0,
    60.0,
])
def test_every_accepted_interval_bar_idx_is_a_bar_idx_for_the_adapter(bar_seconds: float) -> None:
    try:
        cfg = WorkerConfig(clock="interval", bar_seconds=bar_seconds)
    except ConfigError:
        return  # refused up front: the contract holds
    clock = IntervalClock(cfg.bar_seconds)
    clock.start(time.time() - 10 * cfg.bar_seconds)
    tick = clock.poll(time.time())
    assert tick is not None
    is_timestamp, key = parse_key(tick.bar_idx)
    assert not is_timestamp and key == tick.bar_idx, (bar_seconds, tick.bar_idx)
