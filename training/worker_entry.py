"""The retrain job's child process: ``python -m training.worker_entry <spec.json>``.

The service's worker (:mod:`service.jobs.worker`) prepares ``spec.json`` (a
:class:`service.jobs.protocol.RetrainSpec`, see :func:`service.jobs.retrain.prepare`) and runs this module in a
child process, so the service itself never imports PyTorch. Without a base dataset (strategy ``head``) the body
is :func:`training.head_retrain.run_head`; with one:

1. merge the base dataset with the validated observations' photos into one manifest. Labels may sit at
   any rank (a species, ``bombus`` at genus, ``vespidae`` at family, ``coleoptera`` at order) or be
   ``no_insect`` (photos the specialists found no insect in); their taxonomy, ``rank`` column included, goes
   into the merged taxonomy CSV. A class the base dataset lacks joins only with ``min_new_class_photos``
   validated photos; the others are listed. The
   validated observations are split by observer (and observation) with the training package's group-aware
   split: a held-out slice joins the base validation split to form the gate's evaluation set;
2. train, calibrate, export and evaluate with :func:`training.job.run_training`;
3. evaluate the candidate and the active model on the same evaluation photos through ONNX Runtime with the
   service's preprocessing (:func:`training.evaluation.evaluate_model_dir`), on the classes both know;
4. add the data provenance (base dataset, validated observations used, new classes) to the model card;
5. write ``result.json`` in the work folder.

Progress goes to stdout as event lines (:mod:`service.jobs.protocol`); anything else printed is log. The
process exits when its parent (the worker) dies, so a killed worker never leaves training running.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.jobs.protocol import RESULT_FILENAME, EventKind, RetrainSpec, emit
from training.head_retrain import run_head
from training.job import amend_card, jsonable, run_training, split_observations


def _watch_parent(interval: float = 0.5) -> None:
    """Exit (with the whole process group) as soon as the worker that started us is gone."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                try:
                    os.killpg(os.getpgid(0), signal.SIGKILL)
                finally:
                    os._exit(137)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _read_base(source: Path) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Samples by split and taxonomy of the base dataset (ImageFolder, CSV manifest or COCO JSON)."""
    from service.core.taxonomy import read_taxonomy_csv
    from training.data import read_coco, read_imagefolder, read_manifest

    taxonomy: dict[str, Any] = {}
    if source.is_dir():
        splits, _, _ = read_imagefolder(source)
        if (source / "taxonomy.csv").is_file():
            taxonomy.update(read_taxonomy_csv(source / "taxonomy.csv"))
    elif source.suffix.lower() == ".csv":
        splits = read_manifest(source)
        if (source.parent / "taxonomy.csv").is_file():
            taxonomy.update(read_taxonomy_csv(source.parent / "taxonomy.csv"))
    elif source.suffix.lower() == ".json":
        splits, taxonomy = read_coco(source)
    else:
        raise ValueError(f"{source}: expected a folder, a .csv manifest or a COCO .json file")
    if not splits.get("train"):
        raise ValueError(f"{source}: the base dataset has no training photos")
    return splits, taxonomy


def build_dataset(spec: RetrainSpec | Mapping[str, Any]) -> dict[str, Any]:
    """Write the merged manifest and taxonomy for training; return what went in (the data report)."""
    from training.data import group_split

    spec = RetrainSpec.of(spec)
    if not spec.base_dataset:
        raise ValueError("merging a base dataset with the validated observations needs a base dataset")
    work = Path(spec.work_dir)
    seed = spec.seed
    base_splits, taxonomy = _read_base(Path(spec.base_dataset))
    base_train = list(base_splits.get("train", []))
    base_valid = list(base_splits.get("valid", []))
    base_test = list(base_splits.get("test", []))
    base_classes = sorted({s.label for s in base_train})
    if not base_valid:  # no validation split: hold one out of the base training photos, by group
        base_train, base_valid = group_split(base_train, float(spec.gate_holdout), seed=seed)

    obs_split = split_observations(spec, base_classes, taxonomy)
    obs, obs_train, obs_held = obs_split["all"], obs_split["train"], obs_split["held"]
    counts, minimum = obs_split["counts"], obs_split["minimum"]
    new_classes, below = obs_split["new_classes"], obs_split["below"]

    manifest = work / "train_manifest.csv"
    rows = ([(s, "train") for s in base_train + obs_train] + [(s, "valid") for s in base_valid + obs_held]
            + [(s, "test") for s in base_test])
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "observation_id", "observer", "split"])
        for s, split in rows:
            writer.writerow([str(Path(s.path).resolve()), s.label, s.observation_id or "", s.observer or "",
                             split])
    classes = sorted(set(base_classes) | set(new_classes))
    tax_file = work / "taxonomy.csv"
    # ``rank`` keeps labels at any rank (``bombus`` genus, ``coleoptera`` order) and ``no_insect`` (rank none)
    # what they are; a label without a row would be read as a species named by its label.
    columns = ["label", "scientific_name", "common_name", "rank", "genus", "family", "order", "group"]
    # Names in other languages (common_name_<code>) go along, so the new card keeps them.
    columns += sorted({f"common_name_{code}" for label in classes if taxonomy.get(label) is not None
                       for code in taxonomy[label].common_names})
    with tax_file.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for label in classes:
            info = taxonomy.get(label)
            if info is None:
                continue
            values = info.model_dump()
            writer.writerow([label, *[values.get(c) or "" for c in columns[1:]]])
    gate_samples = base_valid + obs_held
    used_obs = {s.observation_id for s in obs}
    return {
        "manifest": str(manifest),
        "taxonomy": str(tax_file),
        "gate_samples": gate_samples,
        "report": {
            "base_dataset": spec.base_dataset,
            "base_classes": base_classes,
            "base_photos": {"train": len(base_train), "valid": len(base_valid), "test": len(base_test)},
            "validated_observations": len(used_obs),
            "validated_photos": len(obs),
            "validated_observations_exported": spec.observations_exported,
            "observation_photos": {"train": len(obs_train), "held_out": len(obs_held)},
            "observers": len({s.observer for s in obs}),
            "new_classes": new_classes,
            "new_class_photos": {c: counts[c] for c in new_classes},
            "min_new_class_photos": minimum,
            "classes_below_minimum": below,
            "classes": classes,
            "evaluation_photos": {"base_valid": len(base_valid), "observations_held_out": len(obs_held)},
        },
    }


def new_class_evaluation(candidate_dir: Path, samples: list[Any], new_classes: list[str]) -> dict[str, Any]:
    """The candidate on the held-out photos of its new classes: ``{label: {recall, support}}`` and top-1."""
    from training.evaluation import evaluate_model_dir

    held = [s for s in samples if s.label in set(new_classes)]
    if not held:
        return {"photos": 0, "per_class": {label: {"recall": None, "support": 0} for label in new_classes}}
    metrics = evaluate_model_dir(candidate_dir, held)["metrics"]
    per_class = {label: {"recall": metrics["per_class"][label]["recall"] if label in metrics["per_class"] else None,
                         "support": metrics["per_class"].get(label, {}).get("support", 0)}
                 for label in new_classes}
    return {"photos": len(held), "top1": metrics["top1"], "per_class": per_class}


def gate_evaluation(candidate_dir: Path, active_dir: Path | None, samples: list[Any],
                    new_classes: list[str] | None = None) -> dict[str, Any]:
    """Metrics of both models on the same photos (the classes both know), through ONNX Runtime; and the
    candidate's on the held-out photos of its new classes (the active model has no score for them)."""
    from service.core.modelcard import ModelCard
    from training.evaluation import evaluate_model_dir

    def strip(metrics: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in metrics.items() if not isinstance(v, float) or v == v}  # drop NaN

    cand_labels = set(ModelCard.load(candidate_dir).labels)
    out: dict[str, Any] = {}
    if new_classes:
        out["new_classes"] = new_class_evaluation(candidate_dir, samples, new_classes)
    full = [s for s in samples if s.label in cand_labels]
    if full:
        out["candidate_all"] = strip(evaluate_model_dir(candidate_dir, full)["metrics"])
    if active_dir is None:
        out["candidate"] = out.get("candidate_all", {})
        out["active"] = None
        out["photos"] = len(full)
        out["common_labels"] = sorted(cand_labels)
        return out
    active_labels = set(ModelCard.load(active_dir).labels)
    common_labels = cand_labels & active_labels
    common = [s for s in samples if s.label in common_labels]
    out["common_labels"] = sorted(common_labels)
    out["photos"] = len(common)
    if not common:
        raise ValueError("the candidate and the active model share no class with evaluation photos; "
                         "the gate cannot compare them")
    out["candidate"] = strip(evaluate_model_dir(candidate_dir, common)["metrics"])
    out["active"] = strip(evaluate_model_dir(active_dir, common)["metrics"])
    for key in ("candidate", "active"):  # keep only the shared classes in the per-class table
        out[key]["per_class"] = {k: v for k, v in out[key]["per_class"].items() if k in common_labels}
    return out


def run(spec: RetrainSpec) -> dict[str, Any]:
    """Do the whole child job; return the result written to ``result.json``."""
    if spec.strategy == "head":  # no base dataset: a new last layer on the active network
        return run_head(spec)
    work = Path(spec.work_dir)
    emit(EventKind.progress, stage="data", progress=0.0,
         message="merging the base dataset with the validated observations")
    data = build_dataset(spec)
    report = data["report"]
    emit(EventKind.log, message=(
        f"data: {len(report['classes'])} classes; {report['validated_observations']} validated observations "
        f"({report['validated_photos']} photos) from {report['observers']} observers; new classes "
        f"{report['new_classes'] or 'none'}; below the minimum of {report['min_new_class_photos']} photos: "
        f"{report['classes_below_minimum'] or 'none'}"))
    epochs = int(spec.train.get("epochs", 10))
    config = {
        **spec.train,
        "data": data["manifest"],
        "taxonomy": data["taxonomy"],
        "out": str(work / "run"),
        "name": spec.name,
        "version": spec.version,
        "export_dir": spec.export_dir,
        "progress": False,
    }

    history = work / "run" / "metrics.csv"

    def on_progress(event: dict[str, Any]) -> None:
        # Training is 0.02 .. 0.92 of the job; the gate takes the rest.
        extra: dict[str, Any] = {}
        if event.get("stage") == "train" and event.get("epoch") is not None and history.is_file():
            with history.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            if rows:
                extra["metrics"] = {k: float(v) for k, v in rows[-1].items()
                                    if k in ("train_loss", "train_accuracy", "held_nll", "held_accuracy")}
        emit(EventKind.progress, **{**event, **extra, "progress": 0.02 + 0.9 * float(event.get("progress", 0.0)),
                                    "epochs": epochs})

    training = run_training(config, on_progress)
    export_dir = Path(spec.export_dir)
    emit(EventKind.progress, stage="gate", progress=0.93,
         message="evaluating the candidate and the active model on the same photos")
    active = Path(spec.active_model) if spec.active_model else None
    evaluation = gate_evaluation(export_dir, active, data["gate_samples"], report["new_classes"])
    amend_card(export_dir, spec, report)
    emit(EventKind.progress, stage="gate", progress=0.98, message=(
        f"gate set: {evaluation['photos']} photos; top-1 candidate "
        f"{evaluation['candidate'].get('top1', float('nan')):.4f}"
        + (f", active {evaluation['active'].get('top1', float('nan')):.4f}" if evaluation.get("active") else
           ", no active model")))
    return {"data": report, "training": training, "gate_evaluation": evaluation}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m training.worker_entry SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    _watch_parent()
    try:
        spec = RetrainSpec.read(Path(argv[0]))
        result = run(spec)
    except Exception as exc:
        traceback.print_exc(file=sys.stdout)
        emit(EventKind.error, message=f"{type(exc).__name__}: {exc}")
        return 1
    out = Path(spec.work_dir) / RESULT_FILENAME
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(result), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    emit(EventKind.progress, stage="done", progress=1.0, message="candidate ready")
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process
    sys.exit(main())
