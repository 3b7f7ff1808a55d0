"""Classification metrics on logits (numpy), each a small function that a test checks by hand.

All functions take ``logits`` or ``probs`` of shape (N, C) and integer ``targets`` of shape (N,).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.core.modelcard import LabelTaxon

# The summary metrics a model card carries (the report adds ``ece_uncalibrated`` after ``ece``).
HEADLINE_METRICS: tuple[str, ...] = ("top1", "top3", "top5", "nll", "macro_f1", "f1a", "mrr", "ece",
                                     "genus_accuracy", "family_accuracy")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise log-softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of rows whose target is among the ``k`` highest scores (ties broken by index order)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under ``softmax(logits / T)``."""
    lp = log_softmax(logits, temperature)
    return float(-lp[np.arange(len(targets)), targets].mean())


def ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target among its row's scores (ties count against the target)."""
    target_scores = scores[np.arange(len(targets)), targets]
    return (scores > target_scores[:, None]).sum(axis=1) + 1


def mrr(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean reciprocal rank of the true class (PlantCLEF)."""
    return float((1.0 / ranks(scores, targets)).mean())


def confusion_matrix(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[true, predicted]`` counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (targets, preds), 1)
    return cm


def per_class_prf(
    preds: np.ndarray, targets: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    cm = confusion_matrix(preds, targets, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support


def macro_f1(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes that occur in the targets or the predictions (as scikit-learn)."""
    _, _, f1, support = per_class_prf(preds, targets, num_classes)
    present = (support > 0) | (np.bincount(preds, minlength=num_classes) > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def f1a(preds: np.ndarray, targets: np.ndarray, num_classes: int, threshold: float = 0.5) -> float:
    """Share of the classes present in the targets whose F1 is above ``threshold`` (the RAMP score)."""
    _, _, f1, support = per_class_prf(preds, targets, num_classes)
    present = support > 0
    return float((f1[present] > threshold).mean()) if present.any() else 0.0


def ece(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: confidence-vs-accuracy gap over equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Per-bin confidence, accuracy and count (for the reliability diagram)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = bins == b
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": int(mask.sum()),
                "confidence": float(conf[mask].mean()) if mask.any() else 0.0,
                "accuracy": float(correct[mask].mean()) if mask.any() else 0.0,
            }
        )
    return out


def rank_accuracy(
    preds: np.ndarray,
    targets: np.ndarray,
    classes: Sequence[str],
    taxonomy: Mapping[str, LabelTaxon],
    rank: str,
) -> float | None:
    """Accuracy at a coarser rank (genus, family): the predicted label's taxon at that rank is the true one's.

    Photos whose true label has no known taxon at that rank are left out; None when none is left.
    """
    names = [getattr(taxonomy.get(c), rank, None) if c in taxonomy else None for c in classes]
    keep = np.array([names[t] is not None for t in targets], dtype=bool)
    if not keep.any():
        return None
    hits = [names[p] == names[t] for p, t in zip(preds[keep], targets[keep], strict=True)]
    return float(np.mean(hits))


def compute_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    classes: Sequence[str],
    taxonomy: Mapping[str, LabelTaxon] | None = None,
    temperature: float = 1.0,
    probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every metric of the evaluation report.

    Args:
        logits: raw network outputs.
        targets: true class indices.
        classes: label names (index order).
        taxonomy: label taxonomy, for genus and family accuracy.
        temperature: the calibration temperature applied before the probability metrics.
        probs: probabilities to use instead of ``softmax(logits / T)`` (e.g. averaged test-time views).
    """
    targets = np.asarray(targets, dtype=np.int64)
    c = len(classes)
    from_probs = probs is not None
    probs = softmax(logits, temperature) if probs is None else probs
    preds = probs.argmax(axis=1)
    precision, recall, f1, support = per_class_prf(preds, targets, c)
    taxonomy = taxonomy or {}
    if from_probs:
        nll_value = float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None)).mean())
    else:
        nll_value = nll(logits, targets, temperature)
    return {
        "n": len(targets),
        "top1": topk_accuracy(probs, targets, 1),
        "top3": topk_accuracy(probs, targets, 3),
        "top5": topk_accuracy(probs, targets, 5),
        "nll": nll_value,
        "macro_f1": macro_f1(preds, targets, c),
        "f1a": f1a(preds, targets, c),
        "mrr": mrr(probs, targets),
        "ece": ece(probs, targets),
        "genus_accuracy": rank_accuracy(preds, targets, classes, taxonomy, "genus"),
        "family_accuracy": rank_accuracy(preds, targets, classes, taxonomy, "family"),
        "per_class": {
            classes[i]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(c)
        },
    }
