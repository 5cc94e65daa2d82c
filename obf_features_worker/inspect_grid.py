"""Read-only Hazelcast access for the inspection commands (``status``, ``watch``, ``plot``, ``sql``).

The only module of the inspection tools that talks to the grid: connection settings
shared by the commands, reads of bar records, health and latest docs, the bar entry
listener for ``watch``, and SQL execution. It never writes map entries (``sql --apply``
creates mappings and views, which are catalogue objects, not data).

Every client built here refuses pickled values (``pickle_guard``) and takes the TLS and
authentication settings from the environment (``client_security``: HZ_SSL_*, HZ_USERNAME,
HZ_PASSWORD).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import hazelcast
from hazelcast.aggregator import max_
from hazelcast.config import IntType
from hazelcast.core import HazelcastJsonValue
from hazelcast.errors import HazelcastError

from obf_features_worker.client_security import tls_auth_settings
import obf_features_worker.reactor_fix  # noqa: F401 - installs the client fix on import
from obf_features_worker.pickle_guard import refuse_pickle
from obf_features_worker.record import loads_record

log = logging.getLogger(__name__)

DEFAULT_FEATURES_MAP = "DOLPHIN_OBF_FEATURES"
DEFAULT_HEALTH_MAP = "DOLPHIN_OBF_HEALTH"
DEFAULT_LATEST_MAP = "DOLPHIN_OBF_LATEST"
DEFAULT_MEMBERS = "127.0.0.1:5701"
DEFAULT_CLUSTER = "dev"


# What a grid call can raise once connected (member gone, timeout, SQL error): callers that
# report rather than crash catch these.
GRID_ERRORS: tuple[type[BaseException], ...] = (HazelcastError,)


class ClusterUnreachable(RuntimeError):
    """No member of the cluster answered within the connect timeout."""


@dataclass(frozen=True)
class ClusterTarget:
    """Where the inspection commands connect: members (``host:port``), cluster name, timeout (s, > 0),
    security: TLS/authentication client keywords (``client_security.tls_auth_settings``)."""

    members: tuple[str, ...]
    cluster_name: str
    connect_timeout_s: float = 5.0
    security: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("members: at least one host:port is required")
        for m in self.members:
            host, sep, port = m.rpartition(":")
            if not m or (sep and (not host or not port.isdigit())):
                raise ValueError(f"members: {m!r} is not host or host:port")
        if not self.cluster_name.strip():
            raise ValueError("cluster name must not be empty")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect timeout must be > 0 s, got {self.connect_timeout_s!r}")


def parse_members(text: str) -> tuple[str, ...]:
    """``"a:5701, b:5701"`` -> ``("a:5701", "b:5701")``."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


def add_cluster_options(parser: argparse.ArgumentParser, *, maps: Iterable[str] = ("features",),
                        connect_timeout: float = 5.0) -> None:
    """Add ``--members``, ``--cluster``, ``--connect-timeout`` and the requested ``--<name>-map`` options."""
    parser.add_argument("--members", default=os.environ.get("HZ_MEMBERS", DEFAULT_MEMBERS),
                        help=f"comma-separated host:port list (env HZ_MEMBERS, default {DEFAULT_MEMBERS})")
    parser.add_argument("--cluster", default=os.environ.get("HZ_CLUSTER", DEFAULT_CLUSTER),
                        help=f"cluster name (env HZ_CLUSTER, default {DEFAULT_CLUSTER})")
    parser.add_argument("--connect-timeout", type=float, default=connect_timeout, metavar="SECONDS",
                        help=f"give up connecting after this many seconds (default {connect_timeout:g})")
    defaults = {"features": DEFAULT_FEATURES_MAP, "health": DEFAULT_HEALTH_MAP, "latest": DEFAULT_LATEST_MAP}
    for name in maps:
        parser.add_argument(f"--{name}-map", default=os.environ.get(f"OBF_{name.upper()}_MAP", defaults[name]),
                            help=f"{name} map name (env OBF_{name.upper()}_MAP, default {defaults[name]})")
    parser.add_argument("--map-suffix", default=os.environ.get("OBF_MAP_SUFFIX", ""),
                        help="appended to every map name, as for the worker (env OBF_MAP_SUFFIX)")


def map_name(args: argparse.Namespace, kind: str) -> str:
    """The effective map name of ``kind`` ("features", "health", "latest"): option value + --map-suffix."""
    return getattr(args, f"{kind}_map") + (getattr(args, "map_suffix", "") or "")


def target_from_args(args: argparse.Namespace) -> ClusterTarget:
    """The validated target from parsed ``add_cluster_options`` arguments and the TLS/auth
    environment (ValueError if bad)."""
    return ClusterTarget(parse_members(args.members), args.cluster, float(args.connect_timeout),
                         tls_auth_settings())


class ConnectFailed(RuntimeError):
    """A command could not connect: bad cluster settings (``exit_code`` 2) or no member
    reachable (``exit_code`` 3). The message is for the user."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def connect_from_args(args: argparse.Namespace) -> hazelcast.HazelcastClient:
    """``connect(target_from_args(args))`` with both failure modes as ConnectFailed."""
    try:
        target = target_from_args(args)
    except ValueError as exc:
        raise ConnectFailed(f"bad cluster settings: {exc}", 2) from None
    try:
        return connect(target)
    except ClusterUnreachable as exc:
        raise ConnectFailed(str(exc), 3) from None


def connect(target: ClusterTarget, **overrides: Any) -> hazelcast.HazelcastClient:
    """A connected client (IntType.LONG, as everywhere) that refuses pickled values;
    ClusterUnreachable after the timeout."""
    settings: dict[str, Any] = dict(
        **dict(target.security),
        cluster_members=list(target.members),
        cluster_name=target.cluster_name,
        default_int_type=IntType.LONG,
        cluster_connect_timeout=target.connect_timeout_s,
    )
    settings.update(overrides)
    try:
        client = hazelcast.HazelcastClient(**settings)
    except HazelcastError as exc:
        raise ClusterUnreachable(
            f"cannot reach cluster {target.cluster_name!r} at {','.join(target.members)}: {exc}"
        ) from exc
    try:
        # Connected synchronously, but no value has been read yet: guard before the first read.
        refuse_pickle(client)
    except RuntimeError:
        client.shutdown()
        raise
    return client


def _decode(value: Any) -> dict[str, Any] | None:
    """A map value (HazelcastJsonValue or JSON text) as a dict; None if it is not a JSON object."""
    if value is None:
        return None
    text = value.to_string() if isinstance(value, HazelcastJsonValue) else value
    try:
        return loads_record(text)
    except (ValueError, TypeError) as exc:
        log.warning("undecodable map value skipped error=%s", exc)
        return None


def json_text(value: Any) -> str | None:
    """The JSON text of an event/map value (HazelcastJsonValue or str), None otherwise."""
    if isinstance(value, HazelcastJsonValue):
        return value.to_string()
    if isinstance(value, str):
        return value
    return None


class InspectionReader:
    """Blocking reads of the obf maps through one client (not for a listener thread)."""

    def __init__(self, client: hazelcast.HazelcastClient) -> None:
        self._client = client

    def is_alive(self) -> bool:
        """False once the client has shut down (e.g. the cluster was gone past the connect timeout)."""
        return bool(self._client.lifecycle_service.is_running())

    def newest_bar_idx(self, features_map: str) -> int | None:
        """The highest bar_idx in the features map, or None if it is empty."""
        result = self._client.get_map(features_map).blocking().aggregate(max_("__key"))
        return None if result is None else int(result)

    def bar(self, features_map: str, bar_idx: int) -> dict[str, Any] | None:
        return _decode(self._client.get_map(features_map).blocking().get(bar_idx))

    def newest_bar(self, features_map: str) -> dict[str, Any] | None:
        """The record with the highest bar_idx, or None."""
        idx = self.newest_bar_idx(features_map)
        return None if idx is None else self.bar(features_map, idx)

    def last_bars(self, features_map: str, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` records with the highest bar_idx values present, ascending.

        Bars are contiguous except where the worker had nothing to write, so this reads
        the key window ``[newest - n + 1, newest]`` in one get_all, then widens it over
        gaps (at most 4 more windows) until ``n`` records are found or the map is exhausted.
        """
        if n <= 0:
            return []
        proxy = self._client.get_map(features_map).blocking()
        newest = self.newest_bar_idx(features_map)
        if newest is None:
            return []
        found: dict[int, dict[str, Any]] = {}
        hi = newest
        for _ in range(5):
            lo = hi - (n - len(found)) + 1
            for key, value in proxy.get_all(list(range(lo, hi + 1))).items():
                rec = _decode(value)
                if rec is not None:
                    found[int(key)] = rec
            if len(found) >= n:
                break
            hi = lo - 1
            if hi < 0:
                break
        return [found[k] for k in sorted(found)[-n:]]

    def health_docs(self, health_map: str) -> list[dict[str, Any]]:
        """Every worker's health document (entries expire with the worker), sorted by worker_id."""
        docs = []
        for key, value in self._client.get_map(health_map).blocking().entry_set():
            doc = _decode(value)
            if doc is not None:
                doc.setdefault("worker_id", str(key))
                docs.append(doc)
        return sorted(docs, key=lambda d: str(d.get("worker_id")))

    def latest_docs(self, latest_map: str) -> dict[str, dict[str, Any]]:
        """Every asset's latest flat doc, by symbol."""
        out = {}
        for key, value in self._client.get_map(latest_map).blocking().entry_set():
            doc = _decode(value)
            if doc is not None:
                out[str(key)] = doc
        return out

    def sql(self, statement: str, *params: Any, timeout_s: float | None = None) -> tuple[list[str], list[list[Any]]]:
        """Execute one SQL statement: (column names, rows) for a query, ([], []) otherwise.

        ``timeout_s`` applies to queries only (Hazelcast refuses a timeout on DDL).
        """
        kwargs: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        with self._client.sql.execute(statement, *params, **kwargs).result() as result:
            if not result.is_row_set():
                return [], []
            meta = result.get_row_metadata()
            names = [c.name for c in meta.columns]
            rows = [[row.get_object_with_index(i) for i in range(len(names))] for row in result]
        return names, rows


class BarListener:
    """Entry listener on the features map that hands each bar's JSON text to ``on_bar``.

    ``on_bar(bar_idx, json_text)`` runs on the client's reactor thread: it must only
    enqueue (the watch render thread does the decoding). Exceptions are counted, never raised.
    """

    def __init__(self, client: hazelcast.HazelcastClient, features_map: str,
                 on_bar: Callable[[int, str], None]) -> None:
        self._map = client.get_map(features_map)
        self._on_bar = on_bar
        self._registration: str | None = None
        self.errors = 0

    def _handle(self, event: Any) -> None:
        try:
            text = json_text(event.value)
            if text is not None:
                self._on_bar(int(event.key), text)
        except Exception:  # never into the reactor
            self.errors += 1

    def start(self) -> None:
        self._registration = self._map.add_entry_listener(
            include_value=True, added_func=self._handle, updated_func=self._handle,
        ).result()

    def stop(self) -> None:
        if self._registration is not None:
            try:
                self._map.remove_entry_listener(self._registration).result()
            except HazelcastError as exc:  # the client may already be disconnected
                log.debug("listener removal failed error=%s", exc)
            self._registration = None


def rows_as_dicts(names: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    """SQL rows as dicts keyed by column name."""
    return [dict(zip(names, row, strict=True)) for row in rows]


def decode_json_column(value: Any) -> Any:
    """A SQL JSON column value (HazelcastJsonValue) as Python data; other values unchanged."""
    if isinstance(value, HazelcastJsonValue):
        return value.loads()
    return value

