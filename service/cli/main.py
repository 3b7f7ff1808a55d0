"""``pollinid``: one command line over the same functions as the Python API.

Subcommands come from plugins: each module named in the ``pollinid.commands`` entry-point group (see
``pyproject.toml``) exposes ``register(subparsers)``. The service's own commands and the training ones
(``pollinid train``, ``predict``...) are found the same way, so nothing here names the training package;
training subcommands import PyTorch only when they run, so ``pollinid serve`` starts without it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from importlib import import_module
from importlib.metadata import entry_points
from types import ModuleType

logger = logging.getLogger(__name__)

COMMANDS_GROUP = "pollinid.commands"
# The service's own commands, used when the package's entry points are not installed (a bare checkout).
OWN_COMMANDS: tuple[str, ...] = ("service.cli.serve", "service.cli.data", "service.cli.worker",
                                 "service.cli.occurrences")


def command_modules() -> Iterator[tuple[str, Callable[[], ModuleType]]]:
    """``(module name, loader)`` for each module contributing subcommands, in the entry points' order."""
    found = entry_points(group=COMMANDS_GROUP)
    if not found:
        logger.debug("no %r entry points (is the package installed?); only the service's own commands",
                     COMMANDS_GROUP)
        for name in OWN_COMMANDS:
            yield name, partial(import_module, name)
        return
    seen: set[str] = set()
    for ep in found:
        if ep.value not in seen:
            seen.add(ep.value)
            yield ep.value, ep.load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pollinid", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: POLLINID_LOG_LEVEL)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the database migrations' step-by-step log (quiet by default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, load in command_modules():
        try:
            module = load()
        except ModuleNotFoundError as exc:
            # A plugin whose package is absent from this installation is skipped (a module it imports
            # that is missing is a real error and is raised).
            if exc.name and name.startswith(exc.name):
                logger.debug("commands of %s skipped: %s", name, exc)
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
