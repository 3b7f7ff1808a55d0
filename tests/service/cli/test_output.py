"""The command line speaks briefly: `pollinid users create` prints the key, not the migrations' step log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POLLINID_DATA_DIR": str(tmp_path / "data"), "POLLINID_LOG_LEVEL": "INFO"}
    env.pop("POLLINID_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=True)


def test_users_create_is_quiet_by_default_and_verbose_on_request(tmp_path: Path) -> None:
    quiet = _run(tmp_path, "users", "create", "--name", "alice", "--role", "admin")
    assert quiet.stdout.splitlines()[-1].startswith("pk_")
    assert "alembic" not in quiet.stderr and len(quiet.stderr.splitlines()) <= 2
    loud = _run(tmp_path / "second", "-v", "users", "create", "--name", "bob", "--role", "admin")
    assert "alembic" in loud.stderr and len(loud.stderr.splitlines()) > 5
