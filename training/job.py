"""The retrain job's pieces that both of its strategies share.

The retrain child (:mod:`training.worker_entry`) trains with a base dataset (:func:`run_training`, a plain
function over :func:`training.pipeline.train`) or, without one, fits a new last layer
(:mod:`training.head_retrain`); both split the validated observations the same way (:func:`split_observations`)
and record the retrain's provenance in the model card (:func:`amend_card`). The spec both read is
:class:`service.jobs.protocol.RetrainSpec`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.jobs.protocol import RetrainSpec

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
    return jsonable(result)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def split_observations(spec: RetrainSpec, base_classes: list[str], taxonomy: dict[str, Any]) -> dict[str, Any]:
    """The validated observations' photos: which classes they bring, and the train / held-out split.

    A label the base (or the active model) lacks becomes a new class with ``min_new_class_photos`` photos;
    fewer are listed in ``below``, never dropped silently. The split is by observer (and observation); each new
    class keeps training photos and, when it has photos of two groups or more, gets held-out photos of its own
    (up to ``gate_min_class_support``) so that the gate judges it on photos it never trained on.
    """
    from service.core.taxonomy import read_taxonomy_csv
    from training.data import Sample, group_split, read_manifest

    seed = spec.seed
    obs: list[Any] = []
    if spec.observations_manifest:
        for s in read_manifest(Path(spec.observations_manifest)).get("train", []):
            # Prefix the service's ids so they never collide with the base dataset's groups.
            obs.append(Sample(s.path, s.label, f"pollinid-observation-{s.observation_id}",
                              f"pollinid-user-{s.observer}"))
    if spec.observations_taxonomy and Path(spec.observations_taxonomy).is_file():
        for label, info in read_taxonomy_csv(Path(spec.observations_taxonomy)).items():
            taxonomy.setdefault(label, info)

    counts = Counter(s.label for s in obs)
    minimum = int(spec.min_new_class_photos)
    new_classes = sorted(label for label, n in counts.items() if label not in base_classes and n >= minimum)
    below = {label: n for label, n in sorted(counts.items()) if label not in base_classes and n < minimum}
    obs = [s for s in obs if s.label not in below]
    obs_train, obs_held = (group_split(obs, float(spec.gate_holdout), seed=seed) if obs else ([], []))
    # A new class must keep training photos: if the split sent all of them to the held-out side, keep
    # them for training.
    train_labels = {s.label for s in obs_train}
    moved = [s for s in obs_held if s.label in new_classes and s.label not in train_labels]
    if moved:
        obs_held = [s for s in obs_held if s not in moved]
        obs_train += moved
    # And it needs held-out photos of its own for the gate: move whole groups (observers, else observations)
    # of that class to the held-out side while the class keeps more training photos than it holds out.
    want = max(1, int(spec.gate_min_class_support))
    for label in new_classes:
        held = sum(1 for s in obs_held if s.label == label)
        groups: dict[str, list[Any]] = {}
        for s in obs_train:
            if s.label == label:
                groups.setdefault(s.observer or s.observation_id or str(s.path), []).append(s)
        order = sorted(groups, key=lambda g: (len(groups[g]), g))
        while held < want and len(order) > 1:
            group = groups[order.pop(0)]
            kept = sum(len(groups[g]) for g in order)
            if kept < held + len(group):
                break
            obs_train = [s for s in obs_train if s not in group]
            obs_held += group
            held += len(group)
    return {"all": obs, "train": obs_train, "held": obs_held, "counts": counts, "minimum": minimum,
            "new_classes": new_classes, "below": below}


def amend_card(export_dir: Path, spec: RetrainSpec, report: dict[str, Any]) -> None:
    """Record the retrain's data provenance in the model card (``training.retrain``)."""
    from service.core.modelcard import ModelCard
    from training.export import write_card

    card = ModelCard.load(export_dir)
    card.training["retrain"] = {
        "job_id": spec.job_id,
        "base_dataset": report["base_dataset"],
        "base_photos": report["base_photos"],
        "validated_observations": report["validated_observations"],
        "validated_photos": report["validated_photos"],
        "observations_since": (report.get("validated_observations_exported") or {}).get("since"),
        "observers": report["observers"],
        "new_classes": report["new_classes"],
        "classes_below_minimum": report["classes_below_minimum"],
        "previous_model": spec.active_model_ref,
        "strategy": report.get("strategy", "train"),
    }
    write_card(export_dir, card)
