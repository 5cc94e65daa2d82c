"""``wire``: the one call the trader makes to get its OB engine, switched by ``OBF_ENGINE``.

``OBF_ENGINE=live`` (default): ``HazelcastOBEngine`` (settings from the environment, see
``AdapterConfig.from_env``); ``mock``: ``MockOBEngine`` (paper-trading static biases, no
cluster); ``off``: None (the trader's no-OB path). Rollback = set ``OBF_ENGINE=mock`` (or
``off``) and restart the trader; nothing else changes. Logs one line
``OBF wired: <mode> map=... cluster=... assets=N``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from hazelcast.client import HazelcastClient

from engine_adapter.adapter import AdapterConfig, HazelcastOBEngine
from engine_adapter.mock import MockOBEngine

log = logging.getLogger(__name__)

MODES = ("live", "mock", "off")
ENV_VAR = "OBF_ENGINE"


def engine_mode(environ: Mapping[str, str] | None = None) -> str:
    """``OBF_ENGINE`` lower-cased (default ``live``); ValueError naming the variable if unknown."""
    env = os.environ if environ is None else environ
    mode = env.get(ENV_VAR, "").strip().lower() or "live"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={env.get(ENV_VAR)!r}: must be one of {', '.join(MODES)}")
    return mode


def wire(assets: Iterable[str], *, environ: Mapping[str, str] | None = None,
         client: HazelcastClient | None = None, config: AdapterConfig | None = None,
         **overrides: Any) -> HazelcastOBEngine | MockOBEngine | None:
    """The trader's OB engine for ``assets`` per ``OBF_ENGINE`` (see the module docstring).

    client: the trader's existing Hazelcast client (live only; the engine then leaves it running
    on ``close()``). config: explicit adapter settings (default: ``AdapterConfig.from_env`` with
    ``overrides``). Call once at start-up, off the trading path: it connects and seeds (live).
    Raises ValueError for a bad ``OBF_ENGINE`` or setting, before connecting.
    """
    symbols = tuple(dict.fromkeys(assets))
    mode = engine_mode(environ)
    if mode == "off":
        log.info("OBF wired: off map=- cluster=- assets=%d", len(symbols))
        return None
    if mode == "mock":
        engine = MockOBEngine()
        biased = sum(1 for s in symbols if s in engine.biases)
        log.info("OBF wired: mock map=- cluster=- assets=%d biased=%d", len(symbols), biased)
        return engine
    cfg = config if config is not None else AdapterConfig.from_env(environ, **overrides)
    live = HazelcastOBEngine(cfg, client=client)
    log.info("OBF wired: live map=%s cluster=%s members=%s assets=%d bars=%d", cfg.map_name, cfg.cluster_name,
             ",".join(cfg.members) if client is None else "(trader's client)", len(symbols),
             live.stats().cache.bars)
    return live
