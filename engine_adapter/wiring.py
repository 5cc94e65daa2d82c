"""``wire``: the one call the trader makes to get its OB engine, switched by ``OBF_ENGINE``.

``OBF_ENGINE=live`` (default): ``HazelcastOBEngine`` (settings from the environment, see
``AdapterConfig.from_env``); ``mock``: ``MockOBEngine`` (paper-trading static biases, no
cluster); ``off``: None (the trader's no-OB path). Rollback = set ``OBF_ENGINE=mock`` (or
``off``) and restart the trader; nothing else changes. Logs one line
``OBF wired: <mode> map=... cluster=... assets=N``.

Start-up never hangs: with ``live`` and the adapter's own client, ``wire`` first checks that the
cluster answers within ``OBF_CONNECT_TIMEOUT_S`` (default 30 s; ``0`` / ``inf`` = wait forever,
as before); if not it logs an ERROR and returns None, the trader's no-OB path (the reason is in
docs/trader-integration.md). That bound is for start-up only: once connected the client
reconnects after an outage without a limit (``AdapterConfig.connect_timeout_s`` sets one).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from hazelcast.client import HazelcastClient

from engine_adapter.adapter import AdapterConfig, HazelcastOBEngine
from engine_adapter.mock import MockOBEngine
from obf_contract.client import make_client, reconnect_settings

log = logging.getLogger(__name__)

MODES = ("live", "mock", "off")
ENV_VAR = "OBF_ENGINE"
CONNECT_TIMEOUT_VAR = "OBF_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S = 30.0


def startup_timeout(environ: Mapping[str, str] | None = None) -> float | None:
    """``OBF_CONNECT_TIMEOUT_S`` in s (default 30); None = wait forever (``0``, ``inf``, ``none``).
    ValueError naming the variable for anything else that is not a number >= 0."""
    env = os.environ if environ is None else environ
    raw = env.get(CONNECT_TIMEOUT_VAR, "").strip().lower()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT_S
    if raw in ("none", "inf", "forever"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{CONNECT_TIMEOUT_VAR}={env.get(CONNECT_TIMEOUT_VAR)!r} is not a number of s") from None
    if math.isnan(value) or value < 0:
        raise ValueError(f"{CONNECT_TIMEOUT_VAR}={env.get(CONNECT_TIMEOUT_VAR)!r} must be >= 0")
    return None if value == 0 or math.isinf(value) else value


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
    Raises ValueError for a bad ``OBF_ENGINE`` or setting, before connecting. Returns None (and
    logs an ERROR) if the live engine cannot connect: within ``OBF_CONNECT_TIMEOUT_S`` with its
    own client, or its start raised.
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
    timeout = startup_timeout(environ)
    try:
        if client is None and timeout is not None:
            _probe(cfg, timeout if cfg.connect_timeout_s is None else min(timeout, cfg.connect_timeout_s))
        live = HazelcastOBEngine(cfg, client=client)
    except Exception as exc:  # noqa: BLE001 - any failure to connect: the no-OB path, never a hang or a crash
        log.error("OBF wired: off (live engine unavailable) map=%s cluster=%s members=%s assets=%d timeout_s=%s "
                  "error=%s: the trader runs without OB features; fix the cluster (or set OBF_ENGINE) and restart",
                  cfg.map_name, cfg.cluster_name, ",".join(cfg.members), len(symbols), timeout,
                  f"{type(exc).__name__}: {exc}"[:300])
        return None
    log.info("OBF wired: live map=%s cluster=%s members=%s assets=%d bars=%d", cfg.map_name, cfg.cluster_name,
             ",".join(cfg.members) if client is None else "(trader's client)", len(symbols),
             live.stats().cache.bars)
    return live


def _probe(config: AdapterConfig, timeout_s: float) -> None:
    """Connect a throw-away client that gives up after ``timeout_s``; raises if the cluster does
    not answer. The adapter's own client then connects with no limit on later reconnects (a
    Hazelcast client has one timeout for both)."""
    probe_cfg = dataclasses.replace(config, connect_timeout_s=timeout_s)
    probe = make_client(cluster_name=probe_cfg.cluster_name, members=probe_cfg.members,
                        client_name="obf-engine-adapter-probe",
                        **reconnect_settings(timeout_s, min(probe_cfg.reconnect_backoff_max_s, 1.0)))
    probe.shutdown()
