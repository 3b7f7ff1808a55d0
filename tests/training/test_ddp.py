"""The same `pollinid train` command under torchrun with 2 CPU processes (DDP over gloo)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "mode",
    [["--mode", "full"], ["--mode", "partial", "--trainable-stages", "1", "--views", "2"]],
    ids=["full", "partial-cached"],
)
def test_ddp_two_cpu_processes(color_dataset: Path, tmp_path: Path, mode: list[str]) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "service.cli",
        "train",
        "--data",
        str(color_dataset),
        "--out",
        str(run),
        "--backbone",
        "tiny_cnn",
        "--no-pretrained",
        *mode,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--holdout",
        "0.2",
        "--name",
        "colors",
        "--version",
        "ddp",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "distributed: rank 0/2" in log and "distributed: rank 1/2" in log
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2
    # 24 training photos (30 minus the 20% held out), sharded: each process trains on half of them.
    assert int(rows[0]["images"]) == 12
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["n"] == 12
