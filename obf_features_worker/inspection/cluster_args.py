"""Cluster options of the inspection commands (``status``, ``watch``, ``plot``, ``sql``):
``--members``, ``--cluster``, ``--connect-timeout``, the map names, and the connection they
give (``connect_from_args``). The grid I/O itself is ``grid.connect``.

TLS and authentication come from the environment (``client_security``: HZ_SSL_*, HZ_USERNAME,
HZ_PASSWORD).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable

from hazelcast.client import HazelcastClient

from obf_contract.cluster import DEFAULT_CLUSTER_NAME, DEFAULT_MEMBER
from obf_contract.security import tls_auth_settings
from obf_features_worker.service.config import WorkerConfig, comma_list
from obf_features_worker.service.grid import ClusterTarget, ClusterUnreachable, connect

# The worker's own map-name defaults (``features_map``, ``health_map``, ...): one source.
_WORKER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(WorkerConfig)}
DEFAULT_MEMBERS = DEFAULT_MEMBER
DEFAULT_CLUSTER = DEFAULT_CLUSTER_NAME


def add_cluster_options(parser: argparse.ArgumentParser, *, maps: Iterable[str] = ("features",),
                        connect_timeout: float = 5.0) -> None:
    """Add ``--members``, ``--cluster``, ``--connect-timeout`` and the requested ``--<name>-map`` options."""
    # HZ_HOST (one host or host:port, the trader's variable) when HZ_MEMBERS is unset.
    members = os.environ.get("HZ_MEMBERS", "").strip() or os.environ.get("HZ_HOST", "").strip() or DEFAULT_MEMBERS
    parser.add_argument("--members", default=members,
                        help=f"comma-separated host:port list (env HZ_MEMBERS, else HZ_HOST; "
                             f"default {DEFAULT_MEMBERS})")
    parser.add_argument("--cluster", default=os.environ.get("HZ_CLUSTER", DEFAULT_CLUSTER),
                        help=f"cluster name (env HZ_CLUSTER, default {DEFAULT_CLUSTER})")
    parser.add_argument("--connect-timeout", type=float, default=connect_timeout, metavar="SECONDS",
                        help=f"give up connecting after this many seconds (default {connect_timeout:g})")
    for name in maps:
        default = _WORKER_DEFAULTS[f"{name}_map"]
        parser.add_argument(f"--{name}-map", default=os.environ.get(f"OBF_{name.upper()}_MAP", default),
                            help=f"{name} map name (env OBF_{name.upper()}_MAP, default {default})")
    parser.add_argument("--map-suffix", default=os.environ.get("OBF_MAP_SUFFIX", ""),
                        help="appended to every map name, as for the worker (env OBF_MAP_SUFFIX)")


def map_name(args: argparse.Namespace, kind: str) -> str:
    """The effective map name of ``kind`` ("features", "health", "latest"): option value + --map-suffix."""
    return str(getattr(args, f"{kind}_map")) + str(getattr(args, "map_suffix", "") or "")


def target_from_args(args: argparse.Namespace) -> ClusterTarget:
    """The validated target from parsed ``add_cluster_options`` arguments and the TLS/auth
    environment (ValueError if bad)."""
    return ClusterTarget(comma_list(args.members), args.cluster, float(args.connect_timeout),
                         tls_auth_settings())


class ConnectFailed(RuntimeError):
    """A command could not connect: bad cluster settings (``exit_code`` 2) or no member
    reachable (``exit_code`` 3). The message is for the user."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def connect_from_args(args: argparse.Namespace) -> HazelcastClient:
    """``connect(target_from_args(args))`` with both failure modes as ConnectFailed."""
    try:
        target = target_from_args(args)
    except ValueError as exc:
        raise ConnectFailed(f"bad cluster settings: {exc}", 2) from None
    try:
        return connect(target)
    except ClusterUnreachable as exc:
        raise ConnectFailed(str(exc), 3) from None
