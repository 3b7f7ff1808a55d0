"""``pollinid``'s subcommands come from the ``pollinid.commands`` entry points: the service never names training."""

from __future__ import annotations

import ast
import re
from importlib.metadata import entry_points
from pathlib import Path

from service.cli.main import COMMANDS_GROUP, build_parser, command_modules


def test_the_commands_come_from_the_entry_point_group() -> None:
    names = [name for name, _ in command_modules()]
    assert set(names) == {ep.value for ep in entry_points(group=COMMANDS_GROUP)}
    assert {"service.cli.serve", "service.cli.data", "service.cli.worker", "training.cli"} <= set(names)
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"serve", "worker", "db", "users", "train", "predict", "evaluate"} <= set(commands)


def test_the_service_command_line_does_not_name_training() -> None:
    """No import of training and no module name of it in a string (what importlib would load)."""
    for path in (Path(__file__).resolve().parents[3] / "service" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named = [a.name + "." for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                named = [f"{node.module}."]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = [node.value]  # "training" alone is a word (the export kind); "training.cli" a module
            else:
                continue
            assert not [n for n in named if re.fullmatch(r"training\.(\w+\.?)*", n)], (path, node.lineno)
