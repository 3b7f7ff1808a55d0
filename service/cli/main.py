"""``pollinid``: one command line over the same functions as the Python API.

Each subcommand lives in a module that exposes ``register(subparsers)``; training subcommands import
PyTorch only when they run, so ``pollinid serve`` starts without it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules contributing subcommands. A module that is missing (e.g. training without torch installed is
# still importable: it imports torch lazily) is skipped with a debug message.
COMMAND_MODULES: tuple[str, ...] = (
    "service.cli.serve",
    "service.cli.data",
    "service.cli.worker",
    "training.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pollinid", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: POLLINID_LOG_LEVEL)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the database migrations' step-by-step log (quiet by default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def configure_logging(level: str, *, verbose: bool = False) -> None:
    """Log at ``level``; Alembic's per-step INFO lines only with ``verbose`` (or at DEBUG)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose and level.upper() != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from service.settings import get_settings

    configure_logging(args.log_level or get_settings().log_level, verbose=args.verbose)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
