"""Where the grid is and what its maps are called: defaults, and one validator per kind of value.

Every configuration of ours (worker, adapter, inspection commands, feeder) validates member
addresses with ``check_member`` and map names with ``check_map_name``, so a value is accepted or
refused the same way everywhere.
"""

from __future__ import annotations

import re

DEFAULT_CLUSTER_NAME = "dev"
DEFAULT_MEMBER = "127.0.0.1:5701"
INPUT_MAP = "DOLPHIN_FEATURES"
FEATURES_MAP = "DOLPHIN_OBF_FEATURES"
HEALTH_MAP = "DOLPHIN_OBF_HEALTH"
LATEST_MAP = "DOLPHIN_OBF_LATEST"
STATE_MAP = "DOLPHIN_OBF_STATE"

MAP_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_MEMBER_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(?P<port>[0-9]{1,5}))?$")


def check_member(address: object) -> str:
    """A member address ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (port 1..65535);
    returns it unchanged, raises ValueError naming the value otherwise."""
    m = _MEMBER_RE.fullmatch(address) if type(address) is str else None
    if m is None or (m.group("port") is not None and not 1 <= int(m.group("port")) <= 65535):
        raise ValueError(f"bad member address {address!r}: expected host or host:port with port 1..65535")
    return address  # type: ignore[return-value]  # a str: the regex matched it


def check_members(addresses: object) -> tuple[str, ...]:
    """One address or a sequence of them (at least one), each checked by ``check_member``."""
    seq = (addresses,) if isinstance(addresses, str) else tuple(addresses)  # type: ignore[arg-type]
    if not seq:
        raise ValueError("at least one member address (host:port) is required")
    return tuple(check_member(a) for a in seq)


def check_map_name(name: object) -> str:
    """A map name of letters, digits, ``_``, ``.``, ``-`` (1..200 characters): safe as a SQL
    mapping name; returns it unchanged, raises ValueError naming the value otherwise."""
    if type(name) is not str or MAP_NAME_RE.fullmatch(name) is None:
        raise ValueError(f"bad map name {name!r}: must match {MAP_NAME_RE.pattern}")
    return name


def check_cluster_name(name: object) -> str:
    """A non-empty cluster name; returns it unchanged, raises ValueError otherwise."""
    if type(name) is not str or not name.strip():
        raise ValueError(f"bad cluster name {name!r}: must be a non-empty string")
    return name
