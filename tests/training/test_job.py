"""The retrain worker's entry point: a plain function with a progress callback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.core.modelcard import ModelCard
from training.job import run_training


def test_run_training_reports_progress_and_returns_a_summary(color_dataset: Path, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    export = tmp_path / "models" / "colors" / "7"
    result = run_training(
        {
            "data": str(color_dataset),
            "out": str(tmp_path / "run"),
            "backbone": "tiny_cnn",
            "pretrained": False,
            "mode": "linear",
            "views": 1,
            "epochs": 2,
            "batch_size": 8,
            "workers": 0,
            "threads": 1,
            "holdout": 0.2,
            "name": "colors",
            "version": "7",
            "export_dir": str(export),
        },
        events.append,
    )
    assert result["status"] == "succeeded" and result["export"] == str(export)
    json.dumps(result)  # JSON-serialisable for the job row
    assert ModelCard.load(export).version == "7"
    stages = [e["stage"] for e in events]
    assert stages[0] == "data" and stages[-1] == "done"
    assert {"cache", "train", "calibrate", "export", "evaluate"} <= set(stages)
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert sum(1 for e in events if e["stage"] == "train") == 2


def test_run_training_refuses_unknown_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown training option"):
        run_training({"data": str(tmp_path), "epochz": 3})
