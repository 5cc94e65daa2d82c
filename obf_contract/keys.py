"""The symbol grammar and the input map's keys: ``asset_{SYMBOL}_ob`` in ``DOLPHIN_FEATURES``."""

from __future__ import annotations

import re

KEY_PREFIX = "asset_"
KEY_SUFFIX = "_ob"
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")
KEY_RE = re.compile(r"^asset_([A-Z0-9]{2,30})_ob$")


def is_symbol(symbol: object) -> bool:
    """True when ``symbol`` is a str that matches the symbol grammar (``SYMBOL_RE``)."""
    return type(symbol) is str and SYMBOL_RE.fullmatch(symbol) is not None


def asset_key(symbol: str) -> str:
    """``BTCUSDT`` -> ``asset_BTCUSDT_ob``; raises ValueError for an invalid symbol."""
    if not is_symbol(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: must match {SYMBOL_RE.pattern}")
    return f"{KEY_PREFIX}{symbol}{KEY_SUFFIX}"


def symbol_of_key(key: object) -> str | None:
    """``asset_BTCUSDT_ob`` -> ``BTCUSDT``; None for anything that is not a valid asset key."""
    if type(key) is not str:
        return None
    m = KEY_RE.fullmatch(key)
    return None if m is None else m.group(1)
