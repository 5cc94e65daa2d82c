"""TLS and authentication settings for the Hazelcast client, passed through from the environment.

The open-source member has neither TLS nor authentication (both are Enterprise features); against
an Enterprise cluster these settings turn them on for our clients. Variables (all optional):

    HZ_SSL_ENABLED=true|false     HZ_SSL_CAFILE=path   HZ_SSL_CERTFILE=path   HZ_SSL_KEYFILE=path
    HZ_SSL_PASSWORD=...           HZ_SSL_CHECK_HOSTNAME=true|false   HZ_SSL_PROTOCOL=TLSv1_2|TLSv1_3
    HZ_USERNAME=...               HZ_PASSWORD=...

They map one to one onto ``hazelcast.HazelcastClient`` keyword arguments (``ssl_*``,
``creds_username``/``creds_password``). Any SSL option without ``HZ_SSL_ENABLED=true`` is an error
rather than a silently unencrypted connection. Secrets never appear in ``describe()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_FILES = {"HZ_SSL_CAFILE": "ssl_cafile", "HZ_SSL_CERTFILE": "ssl_certfile", "HZ_SSL_KEYFILE": "ssl_keyfile"}
_PROTOCOLS = ("TLSv1_2", "TLSv1_3")
_SECRET_KEYS = frozenset({"ssl_password", "creds_password"})


def tls_auth_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Client keyword arguments from ``env`` (default ``os.environ``); {} when none is set.

    Raises ValueError naming the variable for a bad value, a missing file, an SSL option without
    ``HZ_SSL_ENABLED=true``, or a username without a password (and the other way round).
    """
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    enabled_raw = env.get("HZ_SSL_ENABLED", "").strip()
    enabled = _bool("HZ_SSL_ENABLED", enabled_raw) if enabled_raw else False
    ssl_vars = [k for k in (*_FILES, "HZ_SSL_PASSWORD", "HZ_SSL_CHECK_HOSTNAME", "HZ_SSL_PROTOCOL")
                if env.get(k, "").strip()]
    if ssl_vars and not enabled:
        raise ValueError(f"{', '.join(ssl_vars)} set but HZ_SSL_ENABLED is not true: refusing to connect "
                         "without TLS while TLS options are configured")
    if enabled:
        out["ssl_enabled"] = True
        for var, kwarg in _FILES.items():
            path = env.get(var, "").strip()
            if path:
                if not os.path.isfile(path) or not os.access(path, os.R_OK):
                    raise ValueError(f"{var}={path!r} is not a readable file")
                out[kwarg] = path
        if env.get("HZ_SSL_PASSWORD"):
            out["ssl_password"] = env["HZ_SSL_PASSWORD"]
        check = env.get("HZ_SSL_CHECK_HOSTNAME", "").strip()
        if check:
            out["ssl_check_hostname"] = _bool("HZ_SSL_CHECK_HOSTNAME", check)
        protocol = env.get("HZ_SSL_PROTOCOL", "").strip()
        if protocol:
            if protocol not in _PROTOCOLS:
                raise ValueError(f"HZ_SSL_PROTOCOL must be one of {', '.join(_PROTOCOLS)}, got {protocol!r}")
            out["ssl_protocol"] = protocol
    user, password = env.get("HZ_USERNAME", ""), env.get("HZ_PASSWORD", "")
    if bool(user) != bool(password):
        raise ValueError("HZ_USERNAME and HZ_PASSWORD must be set together")
    if user:
        out["creds_username"] = user
        out["creds_password"] = password
    return out


def describe(settings: Mapping[str, Any]) -> str:
    """A log-safe one-line summary (secrets redacted), e.g. ``ssl_enabled=True creds_password=***``."""
    if not settings:
        return "tls=off auth=off"
    return " ".join(f"{k}={'***' if k in _SECRET_KEYS else v}" for k, v in sorted(settings.items()))


def _bool(var: str, raw: str) -> bool:
    value = _BOOL.get(raw.lower())
    if value is None:
        raise ValueError(f"{var} must be true or false, got {raw!r}")
    return value
