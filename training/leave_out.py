"""Leave-classes-out: a second model trained without some classes, to fit the committed answer's thresholds.

A model's confidence on photos of taxa it has never seen is what the committed answer must not trust. The
shipped model has seen all its classes, so it cannot tell us how it behaves on unknown ones. Here a second
model is trained the same way on the same cached activations, without about a fifth of the classes
(:func:`training.answers.choose_heldout_labels`: one species of every genus with several, and others at
random); its answers on photos of the held-out classes (they play the unknown taxa) and on held-out photos of
its own classes give the thresholds (:func:`training.answers.fit_thresholds`), which go into the shipped
model's card.

It runs on the feature caches of :mod:`training.pipeline` (partial and linear modes), so it costs a few
epochs of the trainable suffix, not a second pass over the photos.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from service.core.modelcard import LabelTaxon
from training import backbones
from training.answers import AnswerTable, answer_metrics, choose_heldout_labels, fit_thresholds
from training.calibration import energy_scores, fit_temperature
from training.engine import build_optimizer, train_one_epoch, warmup_cosine
from training.features import CachedLoader, FeatureCache
from training.losses import build_criterion
from training.metrics import softmax

logger = logging.getLogger(__name__)

# Energy-gate percentiles (of the known photos' energy) tried as part of the species decision.
OOD_PERCENTILES: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0)


def _logits(net: nn.Module, feats: np.ndarray, rows: np.ndarray, batch: int = 256) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            x = torch.from_numpy(np.asarray(feats[np.sort(rows[i : i + batch])], dtype=np.float32))
            out.append(net(x).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def leave_classes_out(
    *,
    classes: Sequence[str],
    taxonomy: dict[str, LabelTaxon],
    train_cache: FeatureCache,
    held_cache: FeatureCache,
    backbone: str,
    eval_cache: FeatureCache | None = None,
    start: int,
    input_size: int,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    taxonomy_smoothing: bool = False,
    dropout: float = 0.2,
    weights: str | None = None,
    pretrained: bool = True,
    share: float = 0.2,
    seed: int = 0,
    ood_percentile: float = 1.0,
    target_precision: float = 0.98,
    max_heldout_species: float = 0.05,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train the leave-classes-out model on cached activations and fit the answer thresholds with it.

    The training cache's view 0 of each held-out class's photo is used as an "unknown" photo, so the cache
    should have been built with a clean view 0 (``--clean-view``); the held-out slice's photos of every class
    are used too.

    With ``eval_cache`` (the evaluation split, used nowhere else here), the fitted thresholds are also checked
    out of sample on its photos of known and held-out labels (``fit["evaluation_photos"]``).

    The out-of-distribution energy gate (no species answer below it) is chosen with the thresholds: among
    gates at :data:`OOD_PERCENTILES` of the known photos' energy, the one that keeps the most known species named.

    Returns:
        ``{"thresholds", "fit", "heldout_labels", "seconds", "ood_percentile", "arrays"}``; ``fit`` is the report
        of :func:`training.answers.fit_thresholds` plus the leave-out model's own numbers; ``ood_percentile`` is
        the chosen gate, to be applied to the shipped model's own held-out energies; ``arrays`` holds the
        leave-out model's logits and labels (saved beside the run for analysis).
    """
    t0 = time.perf_counter()
    device = device or torch.device("cpu")
    classes = list(classes)
    heldout = choose_heldout_labels(taxonomy, classes, share=share, seed=seed)
    kept = [c for c in classes if c not in set(heldout)]
    if len(kept) < 2 or not heldout:
        raise ValueError(f"leave-classes-out needs at least 2 kept and 1 held-out class; got {len(kept)} kept, "
                         f"{len(heldout)} held out of {len(classes)}")
    remap = np.full(len(classes), -1, dtype=np.int64)
    for i, c in enumerate(classes):
        if c in kept:
            remap[i] = kept.index(c)
    train_labels = np.asarray(train_cache.labels)
    kept_rows = (remap[train_labels] >= 0) & np.asarray(train_cache.ok)
    fold_cache = replace(train_cache, labels=np.where(remap[train_labels] >= 0, remap[train_labels], 0),
                         ok=kept_rows)
    torch.manual_seed(seed)
    model = backbones.create_model(backbone, len(kept), pretrained=pretrained, weights=weights,
                                   input_size=input_size, dropout=dropout)
    model.freeze_before(start)
    net = backbones.Suffix(model, start).to(device)
    loader = CachedLoader(fold_cache, batch_size, shuffle=True, seed=seed + 17)
    criterion = build_criterion(kept, label_smoothing, taxonomy, taxonomy_smoothing).to(device)
    optimizer = build_optimizer(model.parameters(), "adamw", lr, weight_decay)
    steps = max(1, len(loader)) * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, max(1, len(loader))))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        stats = train_one_epoch(net, loader, criterion, optimizer, device=device, scheduler=scheduler,
                                progress=False, desc=f"leave-out {epoch + 1}/{epochs}")
        logger.info("leave-classes-out epoch %d/%d: loss %.3f", epoch + 1, epochs, stats["loss"])
    net.cpu()

    # Photos: the held-out slice (all classes) and view 0 of the held-out classes' training photos.
    held_labels = np.asarray(held_cache.labels)
    held_rows = np.flatnonzero(np.asarray(held_cache.ok))
    unknown_rows = np.flatnonzero((remap[train_labels] < 0) & np.asarray(train_cache.ok))
    logits_held = _logits(net, held_cache.feats, held_rows)
    logits_unknown = _logits(net, train_cache.feats, unknown_rows)  # view 0 is row i of photo i
    true_held = [classes[i] for i in held_labels[held_rows]]
    true_unknown = [classes[i] for i in train_labels[unknown_rows]]
    known_mask = np.array([y in set(kept) for y in true_held])
    y_known = np.array([kept.index(y) for y, k in zip(true_held, known_mask, strict=True) if k], dtype=np.int64)
    temperature = fit_temperature(logits_held[known_mask], y_known)
    logits = np.concatenate([logits_held, logits_unknown])
    true = true_held + true_unknown
    probs = softmax(logits / temperature)
    energies = energy_scores(logits, temperature)
    known_energies = energies[: len(logits_held)][known_mask]
    table = AnswerTable.build(taxonomy, kept)
    full = AnswerTable.build(taxonomy, classes).tree
    # The energy gate is part of the species decision: try gates at several percentiles of the known photos'
    # energy and keep the one under which the most known species are still named (the constraints on
    # precision and on held-out species hold under every gate, by the fit).
    tried = []
    best: tuple[float, float, dict[str, float], dict[str, Any]] | None = None
    for percentile in sorted({ood_percentile, *OOD_PERCENTILES}):
        gate = float(np.percentile(known_energies, percentile))
        fitted, report = fit_thresholds(table, full, probs, true, ood=energies < gate,
                                        target_precision=target_precision, max_heldout_species=max_heldout_species)
        coverage = float(report["result"].get("known_species_at_species", 0.0))
        tried.append({"ood_percentile": percentile, "species_threshold": fitted["species"],
                      "known_species_at_species": coverage})
        if best is None or coverage > best[0] + 1e-9:
            best = (coverage, percentile, fitted, report)
    assert best is not None
    _, chosen_percentile, thresholds, fit = best
    energy_threshold = float(np.percentile(known_energies, chosen_percentile))
    fit["ood_percentile"] = chosen_percentile
    fit["ood_gates_tried"] = tried
    if eval_cache is not None:
        # Out of sample: the evaluation photos (never used above) of known and held-out labels alike.
        eval_rows = np.flatnonzero(np.asarray(eval_cache.ok))
        logits_eval = _logits(net, eval_cache.feats, eval_rows)
        true_eval = [classes[i] for i in np.asarray(eval_cache.labels)[eval_rows]]
        ood_eval = energy_scores(logits_eval, temperature) < energy_threshold
        ranks, keys, _ = table.answers(softmax(logits_eval / temperature), thresholds, ood_eval)
        fit["evaluation_photos"] = answer_metrics(full, ranks, keys, true_eval, kept)
    top1 = float((logits_held[known_mask].argmax(1) == y_known).mean()) if len(y_known) else float("nan")
    fit.update({
        "method": "leave-classes-out: a second model trained on the same cached activations without the "
                  "held-out labels; thresholds fitted on its held-out-slice photos (known classes) and on "
                  "photos of the held-out labels (unknown taxa)",
        "heldout_labels": heldout,
        "epochs": epochs,
        "leave_out_model": {"classes": len(kept), "known_top1": round(top1, 4),
                            "temperature": round(temperature, 4),
                            "ood_energy_threshold": round(energy_threshold, 4)},
    })
    arrays = {"logits": logits, "true": np.asarray(true), "kept": np.asarray(kept),
              "heldout": np.asarray(heldout), "temperature": np.float64(temperature)}
    if eval_cache is not None:
        arrays.update({"eval_logits": logits_eval, "eval_true": np.asarray(true_eval)})
    seconds = time.perf_counter() - t0
    logger.info("answer thresholds %s fitted in %.0f s on %d photos (%d of held-out labels)", thresholds,
                seconds, len(true), len(true_unknown))
    return {"thresholds": thresholds, "fit": fit, "heldout_labels": heldout, "seconds": seconds,
            "ood_percentile": chosen_percentile, "arrays": arrays}
