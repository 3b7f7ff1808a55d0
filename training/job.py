"""The retrain worker's job body: a plain function over :func:`training.pipeline.train`.

The worker (issue 5) claims a job row, calls :func:`run_training` with the job's config and a callback that
records progress and a log tail, and stores the returned dict on the row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def run_training(
    config: dict[str, Any], progress_callback: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train, calibrate, export and evaluate a model; return a JSON-serialisable summary.

    Args:
        config: :class:`training.pipeline.TrainConfig` fields, e.g. ``{"data": "export.csv", "out": "runs/7",
            "name": "lepidoptera100", "version": "8", "export_dir": "models/lepidoptera100/8"}``.
            Progress bars
            are off unless the config turns them on.
        progress_callback: receives ``{"stage", "progress" (0..1), "message", ...}`` events.

    Returns:
        ``{"status": "succeeded", "export", "name", "version", "metrics", "calibration", "timings",
        "history", "data_problems", "seconds"}``.

    Raises:
        ValueError: a bad option or unusable data (the message says which).
    """
    from training.pipeline import TrainConfig, train

    values = {"progress": False, **config}
    cfg = TrainConfig.from_dict(values)
    start = time.perf_counter()
    result = train(cfg, progress_callback)
    result = {"status": "succeeded", **result, "seconds": round(time.perf_counter() - start, 2)}
    return _jsonable(result)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
