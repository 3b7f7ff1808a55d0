"""The retrain child's body when there is no base dataset: a new last layer on the active network.

Run by :func:`training.worker_entry.run` when the spec's ``strategy`` is ``head`` (the request gave no base
dataset; the service checked that the active model has a replay kit). See :mod:`training.replay` for the
method. The result has the same shape as a full retrain's, so the service's gate and registration are the same:
the old classes are compared on the replay kit's evaluation features and the held-out validated photos of old
classes (the backbone is the same network, so features give exactly the logits ONNX Runtime gives), the new
classes on their own held-out photos.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.jobs.protocol import EventKind, RetrainSpec, emit
from training.job import amend_card, split_observations


def _strip(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, float) or v == v}  # drop NaN


def carry_kit(kit_path: Path, export_dir: Path, meta: dict[str, Any]) -> None:
    """The candidate keeps the release's backbone, so the release's kit serves it too: copy it, bound to the
    candidate's network (a next retrain without base photos then starts from the candidate)."""
    import json
    import shutil

    from service.core.modelcard import ONNX_FILENAME
    from training.replay import REPLAY_FILENAME, REPLAY_META_FILENAME, file_sha256

    shutil.copyfile(kit_path, export_dir / REPLAY_FILENAME)
    carried = {**meta, "model_sha256": file_sha256(export_dir / ONNX_FILENAME),
               "carried_from": meta.get("carried_from") or meta.get("model")}
    (export_dir / REPLAY_META_FILENAME).write_text(json.dumps(carried, indent=2) + "\n", encoding="utf-8")


def run_head(spec: RetrainSpec) -> dict[str, Any]:
    """Fit, export and evaluate the candidate; return ``{"data", "training", "gate_evaluation"}``."""
    from service.core.modelcard import ModelCard
    from training.metrics import compute_metrics
    from training.replay import FeatureExtractor, fit_head, load_kit, logits_of, write_head_model

    start = time.perf_counter()
    if not spec.active_model or not spec.replay_kit:
        raise ValueError("a retrain without a base dataset needs the active model and its replay kit")
    active_dir = Path(spec.active_model)
    export_dir = Path(spec.export_dir)
    threads = int(spec.train.get("threads") or 0)
    card = ModelCard.load(active_dir)
    kit = load_kit(Path(spec.replay_kit))
    # The kit's labels are the release's: their rows stay fixed. Classes an earlier last-layer retrain added
    # (after them in the active card) are learnt again from all validated photos, so that they improve as
    # photos arrive; one with no photo now keeps its row.
    frozen = list(kit.labels)
    if list(card.labels[:len(frozen)]) != frozen:
        raise ValueError(f"the replay kit {spec.replay_kit} does not hold the first labels of "
                         f"{card.name}/{card.version}")
    emit(EventKind.progress, stage="data", progress=0.0,
         message="reading the validated observations (no base dataset: last-layer retrain)")
    taxonomy: dict[str, Any] = {}
    split = split_observations(spec, list(card.labels), taxonomy)
    new_classes: list[str] = split["new_classes"]
    learnt = list(card.labels[len(frozen):])
    with_photos = {s.label for s in split["train"]}
    kept = frozen + [label for label in learnt if label not in with_photos]
    refit = [label for label in learnt if label in with_photos] + new_classes
    labels = kept + refit
    index = {label: i for i, label in enumerate(labels)}
    extractor = FeatureExtractor(active_dir, threads=threads)
    active_index = {label: i for i, label in enumerate(card.labels)}
    fixed_rows = [active_index[label] for label in kept]
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train = split["train"]
    emit(EventKind.progress, stage="features", progress=0.05,
         message=f"features of {len(train)} training photos (and their mirror views)")
    train_f, train_k = extractor.features([s.path for s in train], flip=True)
    held = split["held"]
    held_f, held_k = extractor.features([s.path for s in held])
    timings["features_seconds"] = round(time.perf_counter() - t0, 2)

    x = np.concatenate([kit.train_features, train_f])
    y = np.concatenate([kit.train_labels, np.array([index[train[i].label] for i in train_k], np.int64)])
    emit(EventKind.progress, stage="train", progress=0.5,
         message=f"fitting the last layer: {len(kept)} rows kept, {len(refit)} learnt "
                 f"({len(new_classes)} new classes)")
    t0 = time.perf_counter()
    weight, bias, fit = fit_head(extractor.head.weight[fixed_rows], extractor.head.bias[fixed_rows], x, y,
                                 len(refit), seed=spec.seed)
    fit.update(rows_kept=len(kept), rows_learnt=refit)
    timings["fit_seconds"] = round(time.perf_counter() - t0, 2)

    # The gate's photos: the kit's evaluation features plus the held-out validated photos.
    t = card.calibration.temperature
    held_labels = [held[i].label for i in held_k]
    old_mask = np.array([label in card.labels for label in held_labels], dtype=bool)
    eval_f = np.concatenate([kit.eval_features, held_f[old_mask]]) if len(held_f) else kit.eval_features
    old_held = [label for label, m in zip(held_labels, old_mask, strict=True) if m]
    # Kit labels are the first labels of both networks: the same indices in both.
    eval_y = np.concatenate([kit.eval_labels, np.array([index[label] for label in old_held], np.int64)])
    eval_y_active = np.concatenate([kit.eval_labels, np.array([active_index[label] for label in old_held],
                                                              np.int64)])
    cand = _strip(compute_metrics(logits_of(eval_f, weight, bias), eval_y, labels, {}, temperature=t))
    active = _strip(compute_metrics(logits_of(eval_f, extractor.head.weight, extractor.head.bias), eval_y_active,
                                    card.labels, {}, temperature=t))
    common = set(card.labels)
    for metrics in (cand, active):
        metrics["per_class"] = {k: v for k, v in metrics["per_class"].items() if k in common}
    new_mask = ~old_mask if len(held_f) else np.zeros(0, bool)
    new_eval: dict[str, Any] = {"photos": int(new_mask.sum()), "per_class": {}}
    if new_mask.any():
        new_y = np.array([index[label] for label, m in zip(held_labels, new_mask, strict=True) if m], np.int64)
        new_logits = logits_of(held_f[new_mask], weight, bias)
        preds = new_logits.argmax(axis=1)
        new_eval["top1"] = float((preds == new_y).mean())
    for label in new_classes:
        k = index[label]
        if new_mask.any():
            support = int((new_y == k).sum())
            new_eval["per_class"][label] = {"support": support,
                                            "recall": float((preds[new_y == k] == k).mean()) if support else None}
        else:
            new_eval["per_class"][label] = {"support": 0, "recall": None}
    all_f = np.concatenate([eval_f, held_f[new_mask]]) if new_mask.any() else eval_f
    all_y = np.concatenate([eval_y, new_y]) if new_mask.any() else eval_y
    cand_all = _strip(compute_metrics(logits_of(all_f, weight, bias), all_y, labels, {}, temperature=t))

    new_taxonomy = {**card.taxonomy, **{label: taxonomy[label] for label in new_classes if label in taxonomy}}
    data = card.model_dump(mode="python")
    data.update(version=spec.version, name=spec.name, created=datetime.now(UTC), labels=labels,
                taxonomy=new_taxonomy, metrics={k: v for k, v in cand_all.items() if k != "per_class"},
                status=None, status_reason=None, variants={})  # the base's int8 file is not this network
    data["training"] = {
        "strategy": "head",
        "base_model": f"{card.name}/{card.version}",
        "replay_kit": {"path": spec.replay_kit, **{k: kit.meta.get(k) for k in
                                                     ("train_photos", "eval_photos", "per_class", "bytes")}},
        "head_fit": fit,
        "evaluation_photos": len(all_y),
        "timings": timings,
        "base_training": {k: card.training.get(k) for k in ("data_source", "data_hash", "config")
                          if k in card.training},
    }
    new_card = ModelCard.model_validate(data)
    emit(EventKind.progress, stage="export", progress=0.85, message="writing the candidate")
    write_head_model(active_dir, export_dir, weight, bias, new_card)

    # Parity: the exported network gives the logits the features said it would.
    parity = None
    if len(held_f):
        from service.core.imaging import decode_image
        from service.core.preprocess import decode_min_side, preprocess
        from service.inference.classifier import RuntimeOptions, load_classifier

        clf = load_classifier(export_dir, RuntimeOptions(providers="cpu"))
        photos = [held[i].path for i in held_k[:4]]
        batch = np.stack([preprocess(decode_image(Path(p).read_bytes(),
                                                  min_side=decode_min_side(new_card.input)).image, new_card.input)
                          for p in photos])
        parity = float(np.abs(clf.run(batch) - logits_of(held_f[:4], weight, bias)).max())
        if parity > 1e-2:
            raise RuntimeError(f"the exported last layer does not reproduce its logits (max diff {parity:.4f})")
    report = {
        "strategy": "head",
        "base_dataset": None,
        "base_classes": list(card.labels),
        "base_photos": {"replay_train": len(kit.train_labels), "replay_eval": len(kit.eval_labels)},
        "validated_observations": len({s.observation_id for s in split["all"]}),
        "validated_photos": len(split["all"]),
        "validated_observations_exported": spec.observations_exported,
        "observation_photos": {"train": len(train), "held_out": len(held)},
        "observers": len({s.observer for s in split["all"]}),
        "new_classes": new_classes,
        "new_class_photos": {c: split["counts"][c] for c in new_classes},
        "min_new_class_photos": split["minimum"],
        "classes_below_minimum": split["below"],
        "classes": labels,
        "evaluation_photos": {"replay_eval": len(kit.eval_labels), "observations_held_out": len(held_k)},
    }
    amend_card(export_dir, spec, report)
    carry_kit(Path(spec.replay_kit), export_dir, kit.meta)  # last: binds the kit to the final model.onnx
    evaluation = {"candidate": cand, "active": active, "candidate_all": cand_all, "new_classes": new_eval,
                  "photos": len(eval_y), "common_labels": sorted(common)}
    emit(EventKind.progress, stage="gate", progress=0.98, message=(
        f"gate set: {len(eval_y)} photos of old classes; top-1 candidate {cand['top1']:.4f}, active "
        f"{active['top1']:.4f}; new classes {new_eval.get('top1', float('nan')):.4f} on {new_eval['photos']}"))
    training = {"status": "succeeded", "strategy": "head", "fit": fit, "timings": timings, "parity_max_diff": parity,
                "seconds": round(time.perf_counter() - start, 2), "export": str(export_dir)}
    return {"data": report, "training": training, "gate_evaluation": evaluation}
