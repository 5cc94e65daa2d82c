"""Command-line entry points: ``obf-features-worker`` and ``obf-features <command>``.

Each ``obf-features`` command lives in the module named for it and exposes
``configure(parser) -> None``, which adds its options and sets ``func`` (``args -> exit code``).
Only the chosen command's module is imported, so ``obf-features status --help`` never loads
numba or matplotlib. Commands print their own output (this is the CLI layer); library modules
log.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    help: str


# The `obf-features` commands, in help order.
COMMANDS: dict[str, Command] = {
    "member": Command("obf_features_worker.dev.member",
                      "start/stop/status of a local development Hazelcast member (JVM; a deliberate daemon)"),
    "import-binance": Command("obf_features_worker.offline.import_binance",
                              "rebuild Binance books from recorded snapshot + depth diffs into replay input (JSONL)"),
    "replay": Command("obf_features_worker.offline.replay",
                      "replay snapshot JSONL through the feature engine into BarRecord JSONL (backtest parity)"),
    "plot": Command("obf_features_worker.inspection.plot",
                    "PNG of the last N bars (from the features map or a replay output file)"),
    "sql": Command("obf_features_worker.inspection.sql",
                   "SQL mappings/views for Management Center: list, print, apply, run examples"),
    "status": Command("obf_features_worker.inspection.status",
                      "one-screen health of the pipeline; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"),
    "verify": Command("obf_features_worker.inspection.verify",
                      "the trader's go-live checklist: one ✓/✗ line per check; exit 0 only when all hold"),
    "watch": Command("obf_features_worker.inspection.watch",
                     "live terminal table of the features, refreshed on every bar (Ctrl-C, SIGTERM, SIGHUP: exit 0)"),
    "feed": Command("obf_features_worker.dev.feed",
                    "publish synthetic (or recorded) order-book snapshots to the input map"),
    "demo": Command("obf_features_worker.dev.demo",
                    "run member + worker + synthetic feeder + live view locally "
                    "(Ctrl-C or closing the terminal stops all)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``obf-features`` parser; only ``command``'s module is imported and configured (all of
    them when None, e.g. for documentation)."""
    parser = argparse.ArgumentParser(
        prog="obf-features",
        description="Order-book feature pipeline tools (the worker itself is `obf-features-worker`).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help)
        if command is None or command == name:
            importlib.import_module(cmd.module).configure(p)
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    # The command is the first argument that is not an option (the top level has only -h).
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = _chosen(argv)
    parser = build_parser(chosen if chosen in COMMANDS else "")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `obf-features status | head`: the reader left; no traceback
        from obf_features_worker import lifecycle

        lifecycle.silence_stdout()
        return lifecycle.EXIT_OUTPUT_CLOSED


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``obf-features-worker``: 0 = stopped by a signal, 1 = fatal error, 2 = bad configuration.
    ``--help`` and ``--check-config`` never load the engine."""
    from obf_features_worker.service.config import ConfigError, load_config

    try:
        config, args = load_config(argv)
    except ConfigError as exc:
        print(f"obf-features-worker: error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        import orjson

        print(orjson.dumps(config.summary(), default=str, option=orjson.OPT_INDENT_2).decode())
        return 0
    from obf_features_worker.service import worker

    return worker.serve(config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
