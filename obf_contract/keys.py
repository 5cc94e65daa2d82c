"""The symbol grammar and the input map's keys: ``asset_{SYMBOL}_ob`` in ``DOLPHIN_FEATURES``.

One grammar for every part (worker config, engine, checkpoint, adapter, feeder, import, SQL):
a symbol is 2..40 characters of upper-case ASCII letters, digits, ``_`` and ``-``, starting and
ending with a letter or digit. That keeps exchange spellings as they are: Binance spot and
USD-M ``BTCUSDT``, ``1000PEPEUSDT``, USD-M delivery ``BTCUSDT_250328``, COIN-M ``BTCUSD_PERP``
and ``BTCUSD_250328``; ``-`` admits the dash-separated spellings of other venues and of
Binance options (``BTC-USD``, ``BTC-250328-60000-C``). A letter or digit at both ends keeps out
empty-base spellings such as ``_PERP`` (an upstream bug, better counted than kept) and labels
matplotlib would hide (a leading ``_``). Nothing downstream treats a symbol as an
identifier: it is a map key, a JSON object key and an SQL string value (``-`` and a leading
digit need a quoted JSON path member in SQL, see deploy/sql/obf_mappings.sql).

Keys are parsed by stripping ``asset_`` and ``_ob``, never by a pattern over the whole key, so
a symbol containing ``_`` (``asset_BTCUSD_PERP_ob``) is unambiguous.
"""

from __future__ import annotations

import re
from typing import TypeGuard

KEY_PREFIX = "asset_"
KEY_SUFFIX = "_ob"
SYMBOL_MIN_LEN = 2
SYMBOL_MAX_LEN = 40
SYMBOL_RE = re.compile(rf"^[A-Z0-9][A-Z0-9_-]{{{SYMBOL_MIN_LEN - 2},{SYMBOL_MAX_LEN - 2}}}[A-Z0-9]$")
# Member-side key filter (Hazelcast ``Predicates.regex`` on ``__key``: Java ``Matcher.matches``,
# i.e. a full match): every key that starts with ``asset_`` and ends with ``_ob``, whatever is
# between (``(?s)``: even a line break), so a malformed symbol reaches the worker and is counted
# there (``bad_symbol``) instead of being dropped silently on the member. A LIKE pattern cannot
# do this: ``_`` is a LIKE wildcard. Python's ``re.fullmatch`` reads the pattern the same way.
ASSET_KEY_FILTER = r"(?s)(?=asset_).*_ob"
_ASSET_KEY_FILTER_RE = re.compile(ASSET_KEY_FILTER)


def is_symbol(symbol: object) -> TypeGuard[str]:
    """True when ``symbol`` is a str that matches the symbol grammar (``SYMBOL_RE``)."""
    return type(symbol) is str and SYMBOL_RE.fullmatch(symbol) is not None


def is_asset_key_shape(key: object) -> TypeGuard[str]:
    """True when ``key`` is a str starting with ``asset_`` and ending with ``_ob`` (any symbol
    between, valid or not): the keys the member-side filter passes (``ASSET_KEY_FILTER``)."""
    return type(key) is str and _ASSET_KEY_FILTER_RE.fullmatch(key) is not None


def asset_key(symbol: str) -> str:
    """``BTCUSDT`` -> ``asset_BTCUSDT_ob``; raises ValueError for an invalid symbol."""
    if not is_symbol(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: must match {SYMBOL_RE.pattern}")
    return f"{KEY_PREFIX}{symbol}{KEY_SUFFIX}"


def symbol_of_key(key: object) -> str | None:
    """``asset_BTCUSD_PERP_ob`` -> ``BTCUSD_PERP`` (prefix and suffix stripped); None for anything
    that is not a valid asset key (use ``is_asset_key_shape`` to tell a bad symbol from a foreign key)."""
    if not is_asset_key_shape(key):
        return None
    symbol = key[len(KEY_PREFIX):-len(KEY_SUFFIX)]
    return symbol if is_symbol(symbol) else None
