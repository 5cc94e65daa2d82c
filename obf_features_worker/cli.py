"""Command-line entry points: ``obf-features-worker`` and ``obf-features <command>``.

Each ``obf-features`` sub-command lives in the module named for what it does and
exposes ``register(subparsers) -> None``; the registered parser sets ``func``
(``args -> exit code``). This module is the only place that prints.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules providing an `obf-features` sub-command, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "obf_features_worker.devmember",
    "obf_features_worker.binance",
    "obf_features_worker.replay",
    "obf_features_worker.plot",
    "obf_features_worker.sqlviews",
    "obf_features_worker.status",
    "obf_features_worker.watch",
    "obf_features_worker.feed",
    "obf_features_worker.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obf-features",
        description="Order-book feature pipeline tools (the worker itself is `obf-features-worker`).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


def worker_main(argv: Sequence[str] | None = None) -> int:
    from obf_features_worker import worker

    return worker.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
