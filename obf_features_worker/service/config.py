"""WorkerConfig: the one frozen, validated configuration of ``obf-features-worker``.

Every option comes from, in this order of precedence: a command-line flag, an environment
variable (``HZ_CLUSTER``, ``HZ_MEMBERS``, otherwise ``OBF_<OPTION_NAME_UPPER>``), the default.
A bad value raises ``ConfigError`` naming the flag and the variable; ``cli.worker_main`` turns it
into exit code 2 before anything connects.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from obf_contract.cluster import DEFAULT_CLUSTER_NAME, DEFAULT_MEMBER
from obf_contract.keys import SYMBOL_RE
from obf_contract.security import describe, tls_auth_settings
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.service.bars import BAR_IDX_LIMIT
from obf_features_worker.service.health import stale_after_s
from obf_features_worker.service.lease import LeaseSettings

CLOCKS = ("interval", "scan")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_MAP_NAME_RE = re.compile(r"^[A-Za-z0-9_.$\-]{1,200}$")
_WORKER_ID_RE = re.compile(r"^[A-Za-z0-9_.:@\-]{1,128}$")
_FIELD_RE = re.compile(r"^[^\s\"']{1,100}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_.\-]+$|^\[[0-9A-Fa-f:.]+\]$")
MAX_BAR_SECONDS = 86_400.0


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag / env var and the value."""


def default_worker_id() -> str:
    """``{hostname}-{pid}``: unique per process on a host, readable in health and records."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname()) or "host"
    return f"{host[:100]}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything the worker needs; map names already carry ``map_suffix``.

    bar_seconds: bar length in s, (0, 86400]. max_age_s: an asset is present in a bar if its
    snapshot is at most this old at bar close (s, >= 0). retain_bars: bars kept in the features
    map (>= 1). connect_timeout_s: give up connecting after this long (s); None = never give up.
    op_timeout_s: longest wait (s) for any single grid call from the bar loop.
    checkpoint_max_age_bars: a restart closes again the scan the previous process did not finish
    only within this many bars (>= 0); a starting worker restores the newest checkpoint (plus the
    records since) whatever its age. checkpoint_every_bars: the leader writes its checkpoint every
    this many bars (1 .. 100000, default 10; at most ``changelog_max_bars``), after the bar's
    record: a successor applies the records since (docs/reliability.md). 10 keeps the checkpoint's cost
    (the largest write, ~2x the record) to a tenth of the bars while a successor replays at most
    ~10 records (about a millisecond each at 400 assets). changelog_max_bars: retention keeps the
    records after the last checkpoint, older than ``retain_bars`` or not (bar numbers can jump,
    checkpoint writes can fail), while at most this many bars were stepped since it (1 ..
    10000000, default 1000); also the most records a successor applies in one catch-up. The
    features map holds at most max(retain_bars, changelog_max_bars) of the leader's records.
    lease_ttl_s: the leader lease's ttl in s (None = 3 bars, at least 3 s); see ``lease_settings``.
    tls_auth: Hazelcast client TLS/authentication keyword arguments
    (``client_security.tls_auth_settings``, from HZ_SSL_* / HZ_USERNAME / HZ_PASSWORD only, never
    flags).
    """

    cluster_name: str = DEFAULT_CLUSTER_NAME
    members: tuple[str, ...] = (DEFAULT_MEMBER,)
    worker_id: str = field(default_factory=default_worker_id)
    input_map: str = "DOLPHIN_FEATURES"
    features_map: str = "DOLPHIN_OBF_FEATURES"
    health_map: str = "DOLPHIN_OBF_HEALTH"
    latest_map: str = "DOLPHIN_OBF_LATEST"
    state_map: str = "DOLPHIN_OBF_STATE"
    assets: tuple[str, ...] | None = None
    clock: str = "interval"
    bar_seconds: float = 5.0
    max_age_s: float = 10.0
    scan_map: str = "DOLPHIN_FEATURES"
    scan_key: str = "latest_eigen_scan"
    scan_field: str | None = None
    retain_bars: int = 500
    max_catchup_bars: int = 10
    write_latest: bool = True
    max_payload_bytes: int = 65_536
    max_future_skew_s: float = 5.0
    clock_offset_warn_s: float = 2.0
    connect_timeout_s: float | None = None
    reconnect_backoff_max_s: float = 5.0
    op_timeout_s: float = 5.0
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int | None = None
    checkpoint_max_age_bars: int = 3
    checkpoint_every_bars: int = 10
    changelog_max_bars: int = 1000
    lease_ttl_s: float | None = None
    tls_auth: tuple[tuple[str, Any], ...] = ()
    params: FeatureParams = field(default_factory=FeatureParams)

    def __post_init__(self) -> None:
        _require(bool(self.cluster_name) and len(self.cluster_name) <= 200 and self.cluster_name.isprintable(),
                 "cluster", f"must be a non-empty printable name, got {self.cluster_name!r}")
        _require(len(self.members) >= 1, "members", "needs at least one host[:port]")
        for m in self.members:
            _check_member(m)
        _require(_WORKER_ID_RE.fullmatch(self.worker_id) is not None, "worker_id",
                 f"must match {_WORKER_ID_RE.pattern}, got {self.worker_id!r}")
        for name in ("input_map", "features_map", "health_map", "latest_map", "state_map", "scan_map"):
            value = getattr(self, name)
            _require(_MAP_NAME_RE.fullmatch(value) is not None, name,
                     f"must match {_MAP_NAME_RE.pattern}, got {value!r}")
        if self.assets is not None:
            _require(len(self.assets) >= 1, "assets", "must name at least one symbol (or be unset for all)")
            for s in self.assets:
                _require(SYMBOL_RE.fullmatch(s) is not None, "assets",
                         f"symbol {s!r} does not match {SYMBOL_RE.pattern}")
            _require(len(set(self.assets)) == len(self.assets), "assets", "lists a symbol twice")
        _require(self.clock in CLOCKS, "clock", f"must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        _require(_finite(self.bar_seconds) and 0 < self.bar_seconds <= MAX_BAR_SECONDS, "bar_seconds",
                 f"must be in (0, {MAX_BAR_SECONDS:g}], got {self.bar_seconds!r}")
        if self.clock == "interval":
            # bar_idx = unix time / bar_seconds must read as a bar_idx on the trader side.
            shortest = math.ceil(time.time() / BAR_IDX_LIMIT * 10) / 10
            _require(time.time() / self.bar_seconds < BAR_IDX_LIMIT, "bar_seconds",
                     f"interval bars of {self.bar_seconds:g} s give bar_idx = unix time / bar_seconds >= "
                     f"{BAR_IDX_LIMIT:.0e}, which trader lookups read as a timestamp: use bar_seconds >= "
                     f"{shortest:g} or the scan clock")
        _require(_finite(self.max_age_s) and self.max_age_s >= 0, "max_age_s",
                 f"must be a finite number >= 0, got {self.max_age_s!r}")
        _require(bool(self.scan_key) and len(self.scan_key) <= 500, "scan_key",
                 f"must be a non-empty key, got {self.scan_key!r}")
        if self.scan_field is not None:
            _require(_FIELD_RE.fullmatch(self.scan_field) is not None, "scan_field",
                     f"must be a JSON field name without spaces or quotes, got {self.scan_field!r}")
        _require(type(self.retain_bars) is int and 1 <= self.retain_bars <= 10_000_000, "retain_bars",
                 f"must be an int in [1, 10000000], got {self.retain_bars!r}")
        _require(type(self.max_catchup_bars) is int and 0 <= self.max_catchup_bars <= 100_000,
                 "max_catchup_bars", f"must be an int in [0, 100000], got {self.max_catchup_bars!r}")
        _require(type(self.max_payload_bytes) is int and 64 <= self.max_payload_bytes <= 64 * 2**20,
                 "max_payload_bytes", f"must be an int in [64, {64 * 2**20}], got {self.max_payload_bytes!r}")
        _require(_finite(self.max_future_skew_s) and self.max_future_skew_s >= 0, "max_future_skew_s",
                 f"must be a finite number >= 0, got {self.max_future_skew_s!r}")
        _require(_finite(self.clock_offset_warn_s) and self.clock_offset_warn_s > 0, "clock_offset_warn_s",
                 f"must be a finite number > 0, got {self.clock_offset_warn_s!r}")
        if self.connect_timeout_s is not None:
            _require(_finite(self.connect_timeout_s) and self.connect_timeout_s > 0, "connect_timeout_s",
                     f"must be > 0 (or -1 for never give up), got {self.connect_timeout_s!r}")
        _require(_finite(self.reconnect_backoff_max_s) and 0.1 <= self.reconnect_backoff_max_s <= 600,
                 "reconnect_backoff_max_s", f"must be in [0.1, 600], got {self.reconnect_backoff_max_s!r}")
        _require(_finite(self.op_timeout_s) and 0.1 <= self.op_timeout_s <= 600, "op_timeout_s",
                 f"must be in [0.1, 600], got {self.op_timeout_s!r}")
        _require(self.log_level in LOG_LEVELS, "log_level",
                 f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        _require(self.log_format in LOG_FORMATS, "log_format",
                 f"must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.metrics_port is not None:
            _require(type(self.metrics_port) is int and 0 <= self.metrics_port <= 65535, "metrics_port",
                     f"must be a port in [0, 65535] (0 = any free port), got {self.metrics_port!r}")
        _require(type(self.checkpoint_max_age_bars) is int and 0 <= self.checkpoint_max_age_bars <= 1_000_000,
                 "checkpoint_max_age_bars", f"must be an int in [0, 1000000], got {self.checkpoint_max_age_bars!r}")
        _require(type(self.checkpoint_every_bars) is int and 1 <= self.checkpoint_every_bars <= 100_000,
                 "checkpoint_every_bars", f"must be an int in [1, 100000], got {self.checkpoint_every_bars!r}")
        _require(type(self.changelog_max_bars) is int and 1 <= self.changelog_max_bars <= 10_000_000,
                 "changelog_max_bars", f"must be an int in [1, 10000000], got {self.changelog_max_bars!r}")
        if self.lease_ttl_s is not None:
            _require(_finite(self.lease_ttl_s) and 0 < self.lease_ttl_s <= 3600, "lease_ttl_s",
                     f"must be in (0, 3600] s, got {self.lease_ttl_s!r}")
        try:
            self.lease_settings().check_tick_interval(self.bar_seconds)
        except ValueError as exc:
            raise ConfigError(f"{_field_source('lease_ttl_s')}: {exc}") from None
        _require(isinstance(self.params, FeatureParams), "params", "must be FeatureParams")

    def lease_settings(self) -> LeaseSettings:
        """The leader lease for this bar length: ttl = ``lease_ttl_s`` or 3 bars (>= 3 s), guard =
        min(1 s, bar / 4); a leader ticking every bar keeps it (checked at construction)."""
        if self.lease_ttl_s is None:
            return LeaseSettings.for_bar_seconds(self.bar_seconds)
        return LeaseSettings.for_bar_seconds(self.bar_seconds, ttl_s=self.lease_ttl_s,
                                             backstop_ttl_s=max(20.0 * self.lease_ttl_s, 300.0))

    @property
    def lease_tick_s(self) -> float:
        """How often (s) a standby reads the lease between bars: a quarter bar. It then sees a
        leader's last refresh within a quarter bar and takes over within ttl + half a bar of the
        leader's crash (docs/reliability.md, "Takeover bound"). A leader refreshes once per bar."""
        return self.bar_seconds / 4.0

    @property
    def health_interval_s(self) -> float:
        """How often (s) the health entry is rewritten while no bar closes."""
        return min(self.bar_seconds, self.health_ttl_s / 3.0)

    @property
    def health_ttl_s(self) -> float:
        """TTL of the health entry (s): a dead worker's entry disappears after this long."""
        return stale_after_s(self.bar_seconds)

    def summary(self) -> dict[str, Any]:
        """Plain dict of every setting (for the start-up log line and ``--check-config``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}
        out["members"] = list(self.members)
        out["assets"] = None if self.assets is None else list(self.assets)
        out["health_ttl_s"] = self.health_ttl_s
        out["lease_tick_s"] = self.lease_tick_s
        out["params"] = self.params.to_dict()
        out["tls_auth"] = describe(dict(self.tls_auth))  # secrets redacted
        out["lease_ttl_s"] = self.lease_settings().ttl_s
        return out


# --- option table ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    name: str  # WorkerConfig field (or params.<field>)
    flag: str
    env: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = "VALUE"
    choices: tuple[str, ...] | None = None


def _text(s: str) -> str:
    return s.strip()


def _int(s: str) -> int:
    try:
        return int(s.strip())
    except ValueError:
        raise ValueError(f"not an integer: {s!r}") from None


def _float(s: str) -> float:
    try:
        return float(s.strip())
    except ValueError:
        raise ValueError(f"not a number: {s!r}") from None


def comma_list(s: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the comma-separated lists of flags and env vars."""
    return tuple(p.strip() for p in s.split(",") if p.strip())


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean (true/false/1/0/yes/no/on/off): {s!r}")


def _optional_text(s: str) -> str | None:
    return s.strip() or None


def _assets(s: str) -> tuple[str, ...] | None:
    v = s.strip()
    if v in {"", "*", "all"}:
        return None
    return comma_list(v)


def _metrics_port(s: str) -> int | None:
    return None if s.strip().lower() in ("", "off", "none") else _int(s)


def _connect_timeout(s: str) -> float | None:
    v = _float(s)
    return None if v == -1 else v


_OPTIONS: tuple[_Option, ...] = (
    _Option("members", "--members", "HZ_MEMBERS", comma_list,
            "comma-separated host[:port] of cluster members (default 127.0.0.1:5701)", "HOST:PORT,..."),
    _Option("cluster_name", "--cluster", "HZ_CLUSTER", _text, "cluster name (default dev)", "NAME"),
    _Option("worker_id", "--worker-id", "OBF_WORKER_ID", _text,
            "id in health and records (default <hostname>-<pid>)", "ID"),
    _Option("clock", "--clock", "OBF_CLOCK", _text,
            "bar clock: interval = every multiple of --bar-seconds of unix time; scan = each update of "
            "--scan-key (default interval)", "KIND", CLOCKS),
    _Option("bar_seconds", "--bar-seconds", "OBF_BAR_SECONDS", _float, "bar length in seconds (default 5)", "S"),
    _Option("max_age_s", "--max-age-s", "OBF_MAX_AGE_S", _float,
            "an asset is present in a bar if its snapshot is at most this old at bar close "
            "(default 2 x bar seconds)", "S"),
    _Option("assets", "--assets", "OBF_ASSETS", _assets,
            "comma-separated symbols to process (default: every asset_*_ob key seen)", "SYM,..."),
    _Option("scan_map", "--scan-map", "OBF_SCAN_MAP", _text, "scan clock: map holding the scan key "
            "(default: the input map)", "MAP"),
    _Option("scan_key", "--scan-key", "OBF_SCAN_KEY", _text,
            "scan clock: each update of this key closes a bar (default latest_eigen_scan)", "KEY"),
    _Option("scan_field", "--scan-field", "OBF_SCAN_FIELD", _optional_text,
            "scan clock: integer JSON field of the scan value used as bar_idx (e.g. scan_number); "
            "unset = count bars from 0, reset at UTC midnight", "FIELD"),
    _Option("retain_bars", "--retain-bars", "OBF_RETAIN_BARS", _int,
            "bars kept in the features map; older ones are removed after each write (default 500)", "N"),
    _Option("max_catchup_bars", "--max-catchup-bars", "OBF_MAX_CATCHUP_BARS", _int,
            "interval clock: after a stall, close at most this many missed bars, skip older ones "
            "(default 10)", "N"),
    _Option("write_latest", "--write-latest", "OBF_WRITE_LATEST", _bool,
            "also write the flat per-symbol view to the latest map (default true)", "BOOL"),
    _Option("input_map", "--input-map", "OBF_INPUT_MAP", _text, "map of upstream snapshots "
            "(default DOLPHIN_FEATURES)", "MAP"),
    _Option("features_map", "--features-map", "OBF_FEATURES_MAP", _text, "map of bar records "
            "(default DOLPHIN_OBF_FEATURES)", "MAP"),
    _Option("health_map", "--health-map", "OBF_HEALTH_MAP", _text, "map of worker health "
            "(default DOLPHIN_OBF_HEALTH)", "MAP"),
    _Option("latest_map", "--latest-map", "OBF_LATEST_MAP", _text, "map of the latest features per symbol "
            "(default DOLPHIN_OBF_LATEST)", "MAP"),
    _Option("state_map", "--state-map", "OBF_STATE_MAP", _text, "map of the engine checkpoint and "
            "the leader lease (default DOLPHIN_OBF_STATE)", "MAP"),
    _Option("map_suffix", "--map-suffix", "OBF_MAP_SUFFIX", _text,
            "appended to every map name above, incl. the scan map (default none; for tests/isolation)",
            "SUFFIX"),
    _Option("max_payload_bytes", "--max-payload-bytes", "OBF_MAX_PAYLOAD_BYTES", _int,
            "larger snapshot payloads are rejected as too_large (default 65536)", "N"),
    _Option("max_future_skew_s", "--max-future-skew-s", "OBF_MAX_FUTURE_SKEW_S", _float,
            "snapshots timestamped further ahead of this host's clock are rejected (default 5)", "S"),
    _Option("clock_offset_warn_s", "--clock-offset-warn-s", "OBF_CLOCK_OFFSET_WARN_S", _float,
            "flag an asset whose producer clock (median of receive time - snapshot time) is off by "
            "more than this, either way (default 2)", "S"),
    _Option("connect_timeout_s", "--connect-timeout-s", "OBF_CONNECT_TIMEOUT_S", _connect_timeout,
            "give up (exit 1) if no member is reachable for this long; -1 = keep trying forever "
            "(default -1)", "S"),
    _Option("reconnect_backoff_max_s", "--reconnect-backoff-max-s", "OBF_RECONNECT_BACKOFF_MAX_S", _float,
            "longest pause between connection attempts (default 5)", "S"),
    _Option("op_timeout_s", "--op-timeout-s", "OBF_OP_TIMEOUT_S", _float,
            "longest wait for one grid call from the bar loop; a write that times out goes to the "
            "backlog (default 5)", "S"),
    _Option("log_level", "--log-level", "OBF_LOG_LEVEL", lambda s: s.strip().upper(),
            "DEBUG, INFO, WARNING, ERROR (default INFO)", "LEVEL"),
    _Option("log_format", "--log-format", "OBF_LOG_FORMAT", lambda s: s.strip().lower(),
            "text or json (one JSON object per line) (default text)", "FORMAT", LOG_FORMATS),
    _Option("checkpoint_max_age_bars", "--checkpoint-max-age-bars", "OBF_CHECKPOINT_MAX_AGE_BARS", _int,
            "a restarted worker closes again the scan its previous process did not finish only within "
            "this many bars; it restores the newest state whatever its age (default 3)", "N"),
    _Option("checkpoint_every_bars", "--checkpoint-every-bars", "OBF_CHECKPOINT_EVERY_BARS", _int,
            "the leader writes its state checkpoint every N bars, after the records (at most "
            "--changelog-max-bars); a successor replays the records since (default 10)", "N"),
    _Option("changelog_max_bars", "--changelog-max-bars", "OBF_CHANGELOG_MAX_BARS", _int,
            "the records after the last checkpoint stay in the features map, even older than "
            "--retain-bars, while at most N bars were stepped since it; the most records a "
            "successor replays (default 1000)", "N"),
    _Option("lease_ttl_s", "--lease-ttl-s", "OBF_LEASE_TTL_S", _float,
            "leader lease: a leader not heard of for this long is replaced by a standby; must be >= "
            "2 bars + guard (default 3 x bar seconds, at least 3)", "S"),
    _Option("metrics_port", "--metrics-port", "OBF_METRICS_PORT", _metrics_port,
            "serve Prometheus metrics on this port at /metrics (0 = any free port; default off)", "PORT"),
)

_MAP_FIELDS = ("input_map", "features_map", "health_map", "latest_map", "state_map")


def _param_descriptions() -> dict[str, str]:
    # One "name[ / name]: text" line per field in FeatureParams' docstring: the help stays in sync.
    out: dict[str, str] = {}
    for line in (FeatureParams.__doc__ or "").splitlines():
        m = re.match(r"^\s*([a-z_]+(?:\s*/\s*[a-z_]+)*):\s*(.+?)\.?$", line)
        if m:
            for name in m.group(1).split("/"):
                out[name.strip()] = m.group(2).replace("``", "")
    return out


def _param_options() -> tuple[_Option, ...]:
    defaults = FeatureParams()
    text = _param_descriptions()
    out = []
    for f in dataclasses.fields(FeatureParams):
        default = getattr(defaults, f.name)
        parse = _int if type(default) is int else _float
        out.append(_Option(f"params.{f.name}", "--" + f.name.replace("_", "-"), "OBF_" + f.name.upper(),
                           parse, f"{text.get(f.name, 'engine parameter')} (default {default})",
                           "INT" if parse is _int else "FLOAT"))
    return tuple(out)


def all_options() -> tuple[_Option, ...]:
    """Every option: (field, flag, env var) — used by --help, the docs and the tests."""
    return _OPTIONS + _param_options()


def build_parser(prog: str = "obf-features-worker") -> argparse.ArgumentParser:
    """The worker's argument parser; every value is a raw string resolved by ``config_from_args``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Compute per-bar order-book features from asset_<SYMBOL>_ob snapshots in Hazelcast and write "
            "them to the features map, until SIGTERM/SIGINT/SIGHUP. Every option can also be set by the "
            "environment variable shown; a flag wins over the variable, the variable over the default."
        ),
        epilog="Exit codes: 0 = stopped by SIGTERM/SIGINT/SIGHUP, 1 = crashed, could not connect or a second "
               "signal forced the exit, 2 = invalid configuration, 141 = its log output closed (after a clean stop).",
    )
    groups = {
        "cluster": parser.add_argument_group("cluster"),
        "bars": parser.add_argument_group("bars and input"),
        "maps": parser.add_argument_group("maps"),
        "limits": parser.add_argument_group("input limits and grid timeouts"),
        "logging": parser.add_argument_group("logging"),
        "reliability": parser.add_argument_group("warm restart and hot standby (docs/reliability.md)"),
        "engine": parser.add_argument_group("engine parameters (docs/features.md)"),
    }
    group_of = {
        "members": "cluster", "cluster_name": "cluster", "worker_id": "cluster",
        "connect_timeout_s": "limits", "reconnect_backoff_max_s": "limits", "op_timeout_s": "limits",
        "max_payload_bytes": "limits", "max_future_skew_s": "limits", "clock_offset_warn_s": "limits",
        "log_level": "logging", "log_format": "logging", "metrics_port": "logging", "map_suffix": "maps",
        "checkpoint_max_age_bars": "reliability", "checkpoint_every_bars": "reliability",
        "changelog_max_bars": "reliability",
        "lease_ttl_s": "reliability",
    }
    for opt in all_options():
        if opt.name.startswith("params."):
            g = groups["engine"]
        elif opt.name.endswith("_map") and opt.name != "scan_map":
            g = groups["maps"]
        else:
            g = groups[group_of.get(opt.name, "bars")]
        choices = f" {{{','.join(opt.choices)}}}" if opt.choices else ""
        g.add_argument(opt.flag, dest=opt.name.replace(".", "__"), default=None, metavar=opt.metavar,
                       help=f"{opt.help}{choices} [env {opt.env}]")
    parser.add_argument("--check-config", action="store_true",
                        help="print the resolved configuration as JSON and exit 0 (nothing connects)")
    return parser


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Resolve flags > env vars > defaults into a WorkerConfig; ConfigError on any bad value."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for opt in all_options():
        raw = getattr(args, opt.name.replace(".", "__"), None)
        source = opt.flag
        if raw is None:
            raw = env.get(opt.env)
            source = opt.env
            if raw is None or (raw.strip() == "" and opt.name != "assets"):
                continue
        try:
            value = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if opt.choices and value not in opt.choices:
            raise ConfigError(f"{source}: must be one of {', '.join(opt.choices)}, got {raw!r}")
        if opt.name.startswith("params."):
            params[opt.name.split(".", 1)[1]] = value
        else:
            values[opt.name] = value

    suffix = values.pop("map_suffix", "")
    if suffix and not _MAP_NAME_RE.fullmatch(suffix):
        raise ConfigError(f"--map-suffix / OBF_MAP_SUFFIX: must match {_MAP_NAME_RE.pattern}, got {suffix!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(WorkerConfig)
                if f.default is not dataclasses.MISSING}
    values.setdefault("scan_map", values.get("input_map", defaults["input_map"]))
    for name in (*_MAP_FIELDS, "scan_map"):
        values[name] = values.get(name, defaults[name]) + suffix
    try:
        values["tls_auth"] = tuple(sorted(tls_auth_settings(env).items()))
    except ValueError as exc:
        raise ConfigError(f"TLS/auth settings: {exc}") from None
    if "max_age_s" not in values:
        bar = values.get("bar_seconds", defaults["bar_seconds"])
        values["max_age_s"] = 2.0 * bar if _finite(bar) else bar
    try:
        values["params"] = FeatureParams(**params)
    except ValueError as exc:
        raise ConfigError(_with_flag(str(exc))) from None
    try:
        return WorkerConfig(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def load_config(argv: Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[WorkerConfig, argparse.Namespace]:
    """Parse ``argv`` (SystemExit(2) on unknown flags) and resolve; ConfigError on a bad value."""
    args = build_parser().parse_args(argv)
    return config_from_args(args, environ), args


# --- helpers -----------------------------------------------------------------------------


def _field_source(name: str) -> str:
    for opt in all_options():
        if opt.name == name:
            return f"{opt.flag} / {opt.env}"
    return name


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{_field_source(name)}: {message}")


def _with_flag(message: str) -> str:
    # FeatureParams messages start "FeatureParams.<field> ..."; name the flag/env instead.
    m = re.match(r"FeatureParams\.(\w+)", message)
    if m:
        return f"{_field_source('params.' + m.group(1))}: {message}"
    return message


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_member(m: str) -> None:
    host, sep, port = m.rpartition(":") if not m.endswith("]") else (m, "", "")
    if not sep:
        host, port = m, ""
    ok = bool(host) and _HOST_RE.fullmatch(host) is not None
    if sep:
        ok = ok and port.isdigit() and 1 <= int(port) <= 65535
    _require(ok, "members", f"bad member address {m!r}: expected host or host:port with port 1..65535")

