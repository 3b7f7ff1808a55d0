"""What a retrain request would train on, worked out at request time, so that a request bound to fail gets a
clear 4xx instead of a queued job that fails later.

:func:`plan_retrain` counts the validated photos per training label (the same rows as the training manifest),
reads the base dataset's classes (or, without a base dataset, the active model's labels and its replay kit),
and decides which labels become new classes and which have too few photos (listed, never dropped silently).
It refuses:

* a request with nothing to learn (fewer than two classes in all; no base dataset and no validated photo);
* no base dataset and no way to keep the old classes (no active version of the model, or no replay kit);
* labels that clash with the taxonomy (a base label the database knows as another taxon; two labels, one
  taxon).

The service never imports PyTorch nor the training package: the base dataset is read here by its layout only.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.errors import InvalidRequest
from service.core.hashing import file_sha256
from service.core.modelcard import CARD_FILENAME, ONNX_FILENAME, ModelCard
from service.exports.training_manifest import training_rows
from service.inference.versions import REPLAY_FILENAME, REPLAY_META_FILENAME
from service.jobs.params import RetrainParams
from service.settings import Settings
from service.store.tables import ModelVersion, Taxon, TaxonLabel

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".bmp", ".gif", ".tif", ".tiff"})
TRAIN_SPLITS = frozenset({"train", "training"})


def replay_kit(settings: Settings, name: str, version: str, folder: Path) -> Path | None:
    """The replay kit of a model version: ``<version folder>/replay.npz``, else
    ``<data_dir>/replay/<name>/<version>/replay.npz`` (a release folder may be read only)."""
    for candidate in (folder / REPLAY_FILENAME, settings.data_dir / "replay" / name / version / REPLAY_FILENAME):
        if candidate.is_file() and candidate.with_name(REPLAY_META_FILENAME).is_file():
            return candidate
    return None


def base_classes(base: Path) -> dict[str, int]:
    """Training photos per class of a base dataset, from its layout (ImageFolder or CSV manifest).

    A COCO/iNat JSON file gives its category names with an unknown count (-1).
    """
    counts: Counter[str] = Counter()
    if base.is_dir():
        splits = [d for d in base.iterdir() if d.is_dir() and d.name.lower() in TRAIN_SPLITS]
        has_splits = any(d.is_dir() and d.name.lower() in {"train", "training", "valid", "val", "validation",
                                                            "test"} for d in base.iterdir())
        folders = splits if has_splits else [base]
        for folder in folders:
            for class_dir in folder.iterdir():
                if class_dir.is_dir():
                    counts[class_dir.name] += sum(1 for p in class_dir.iterdir()
                                                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return dict(counts)
    if base.suffix.lower() == ".csv":
        with base.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                split = (row.get("split") or "train").strip().lower()
                label = (row.get("label") or "").strip()
                if label and split in TRAIN_SPLITS:
                    counts[label] += 1
        return dict(counts)
    try:
        data = json.loads(base.read_text(encoding="utf-8"))
        return {str(c.get("name")): -1 for c in data.get("categories", []) if c.get("name")}
    except (OSError, ValueError, AttributeError):
        return {}


def _base_taxonomy(base: Path) -> dict[str, str]:
    """label -> scientific name from the base dataset's ``taxonomy.csv`` (next to it), if any."""
    path = (base if base.is_dir() else base.parent) / "taxonomy.csv"
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            label, name = (row.get("label") or "").strip(), (row.get("scientific_name") or "").strip()
            if label and name:
                out[label] = name
    return out


def observation_counts(session: Session, settings: Settings, since: datetime | None) -> dict[str, int]:
    """Validated photos per training label (the rows the training manifest will hold)."""
    return dict(Counter(row["label"] for row in training_rows(session, settings, since=since)))


def _taxonomy_clashes(session: Session, known: dict[str, str], new_labels: list[str]) -> list[str]:
    """Labels the database names differently, and new labels naming a taxon a known label already is."""
    db: dict[str, str] = {str(r[0]): str(r[1]) for r in session.execute(
        select(TaxonLabel.label, Taxon.scientific_name).join(Taxon, Taxon.id == TaxonLabel.taxon_id))}
    problems = []
    for label, name in sorted(known.items()):
        if label in db and db[label].casefold() != name.casefold():
            problems.append(f"label {label!r} is {name!r} in the base taxonomy but {db[label]!r} in this "
                            "service's taxonomy")
    by_name: dict[str, str] = {name.casefold(): label for label, name in known.items()}
    for label in new_labels:
        name = db.get(label, label)
        other = by_name.get(name.casefold())
        if other is not None and other != label:
            problems.append(f"validated observations name {name!r} with the label {label!r}, but the model "
                            f"already has it as {other!r}: one taxon would become two classes")
    return problems


def plan_retrain(params: RetrainParams, *, session: Session, settings: Settings) -> dict[str, Any]:
    """Check that the retrain can succeed and return its plan (also stored in the job's params).

    Returns:
        ``{"strategy": "train"|"head", "base_classes", "new_classes": {label: photos}, "below_minimum":
        {label: photos}, "known_class_photos", "validated_photos", "min_new_class_photos", "replay_kit"?}``.

    Raises:
        InvalidRequest: the request is bound to fail (the message says why and what to change).
    """
    name = params.name
    minimum = params.min_new_class_photos
    counts = (observation_counts(session, settings, params.observations_since)
              if params.include_observations else {})
    plan: dict[str, Any] = {"min_new_class_photos": minimum, "validated_photos": sum(counts.values())}
    if params.base_dataset:
        base = Path(params.base_dataset)
        classes = base_classes(base)
        plan["strategy"] = "train"
        known_taxonomy = _base_taxonomy(base)
        empty = sorted(label for label, n in classes.items() if n == 0)
        if empty:
            raise InvalidRequest(f"base dataset {base.name!r}: classes without a training photo: {empty[:10]}",
                                 detail={"empty_classes": empty})
    else:
        row = session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True),
                                                         ModelVersion.name == name)).first()
        if row is None:
            raise InvalidRequest(
                f"no base dataset and no active version of model {name!r} to keep the old classes from: give "
                "base_dataset (the photos the model was trained on), or activate a version of this model first")
        folder = Path(row.path)
        if not (folder / ONNX_FILENAME).is_file() or not (folder / CARD_FILENAME).is_file():
            raise InvalidRequest(f"the active model {name}/{row.version} is not on this server's disk")
        kit = replay_kit(settings, name, row.version, folder)
        if kit is None:
            raise InvalidRequest(
                f"no base dataset, and the active model {name}/{row.version} has no replay kit (replay.npz: "
                "features of its training and evaluation photos) to keep the old classes: give base_dataset, "
                f"or build one with `pollinid replay build --model {folder} --data <its training photos>`",
                detail={"model": f"{name}/{row.version}"})
        meta = json.loads(kit.with_name(REPLAY_META_FILENAME).read_text(encoding="utf-8"))
        if meta.get("model_sha256") != file_sha256(folder / ONNX_FILENAME):
            raise InvalidRequest(f"the replay kit {kit} was built for another network than {name}/{row.version}'s "
                                 "model.onnx: rebuild it")
        card = ModelCard.load(folder)
        classes = {label: -1 for label in card.labels}
        with np.load(kit, allow_pickle=False) as data:  # the release's labels: their rows never change
            frozen = {str(label) for label in data["labels"]}
        plan["learnt_classes"] = [label for label in card.labels if label not in frozen]
        known_taxonomy = {label: card.taxon_of(label).scientific_name or label for label in card.labels
                          if card.taxon_of(label).is_taxon}
        plan.update(strategy="head", replay_kit=str(kit), active_model=f"{name}/{row.version}")
        if params.options:
            raise InvalidRequest("training options do not apply without a base dataset (only the model's last "
                                 "layer is retrained)", detail={"field": "options"})
    new = {label: n for label, n in sorted(counts.items()) if label not in classes and n >= minimum}
    below = {label: n for label, n in sorted(counts.items()) if label not in classes and n < minimum}
    known = {label: n for label, n in sorted(counts.items()) if label in classes}
    plan.update(base_classes=len(classes), new_classes=new, below_minimum=below, known_class_photos=known)
    if len(classes) + len(new) < 2:
        raise InvalidRequest(f"too few classes to train: {len(classes)} in the base data and {len(new)} new "
                             f"(labels below the minimum of {minimum} validated photos: {below or 'none'})",
                             detail=plan)
    if plan["strategy"] == "head" and not new and not any(known.get(c) for c in plan["learnt_classes"]):
        # Without base photos only the rows of classes added by retrains are learnt; the release's are kept.
        raise InvalidRequest(
            "nothing to learn: no new class reaches the minimum of "
            f"{minimum} validated photos ({'below it: ' + str(below) if below else 'none at all'}), and a retrain "
            "without base_dataset keeps the release's classes as they are", detail=plan)
    clashes = _taxonomy_clashes(session, known_taxonomy, sorted(new))
    if clashes:
        raise InvalidRequest("labels clash with the taxonomy: " + "; ".join(clashes[:5]),
                             detail={"clashes": clashes})
    return plan
