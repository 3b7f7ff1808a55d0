"""The non-regression gate: may a retrained candidate replace the active model?

Both models are evaluated on the same held-out photos (the base dataset's validation split plus a held-out
slice of validated observations), through ONNX Runtime with the shared preprocessing. Following Pl@ntNet's
non-regression principle, the candidate passes when

* its overall top-1 accuracy is no worse than the active model's beyond ``tolerance``, and
* no class (with at least ``min_class_support`` evaluation photos) loses more than ``class_margin`` of
  per-class accuracy (recall).

The comparison is on the classes both models know. The candidate's new classes, which the active model has no
score for, are judged on their own held-out photos, which are few (a new class has a handful of validated photos):

* together, the new classes' top-1 accuracy on all their held-out photos must reach ``new_class_min_recall``;
* a new class with at least ``min_class_support`` held-out photos fails when its accuracy is *confidently* below
  ``new_class_min_recall``: the upper end of its one-sided 95 % Wilson interval is below it (0 of 3 or 4 fails,
  1 of 3 passes), so that three photos do not fail a class by bad luck;
* a new class with fewer photos is reported as not gated.
This module is pure (no database, no ONNX): the worker feeds it the metric sets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

OVERALL_KEYS: tuple[str, ...] = ("top1", "top3", "nll", "macro_f1", "ece")
# Lower is better for these metrics.
LOWER_IS_BETTER: frozenset[str] = frozenset({"nll", "ece"})


@dataclass(frozen=True)
class GateConfig:
    """The gate's thresholds (validated by :class:`service.api.schemas.jobs.RetrainCreate`)."""

    tolerance: float = 0.01
    class_margin: float = 0.05
    min_class_support: int = 3
    new_class_min_recall: float = 0.5


def compare(candidate: dict[str, Any], active: dict[str, Any] | None, config: GateConfig,
            new_classes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compare two metric sets from the same photos and decide.

    Args:
        candidate: the candidate's metrics (``top1``, ``per_class: {label: {recall, f1, support}}`` …).
        active: the active model's metrics on the same photos, or None when no model is active.
        config: the thresholds.
        new_classes: the candidate on its new classes' held-out photos, ``{"per_class": {label: {recall,
            support}}}`` (see ``training.worker_entry.new_class_evaluation``).

    Returns:
        ``{"passed", "reasons", "config", "overall": {metric: {candidate, active, delta}},
        "per_class": [{label, candidate, active, delta, support, checked, regressed}]}``; per-class values
        are accuracies (recall).
    """
    out: dict[str, Any] = {"config": asdict(config), "reasons": [], "overall": {}, "per_class": []}
    new_ok = _judge_new_classes(new_classes, config, out)
    if active is None:
        out["passed"] = new_ok
        out["reasons"].insert(0, "no active model to compare with" + (": the candidate passes" if new_ok else ""))
        for key in OVERALL_KEYS:
            out["overall"][key] = {"candidate": candidate.get(key), "active": None, "delta": None}
        return out
    for key in OVERALL_KEYS:
        c, a = candidate.get(key), active.get(key)
        delta = None if c is None or a is None else float(c) - float(a)
        out["overall"][key] = {"candidate": c, "active": a, "delta": delta}
    passed = True
    c1, a1 = candidate.get("top1"), active.get("top1")
    if c1 is None or a1 is None:
        passed = False
        out["reasons"].append("top-1 accuracy missing from a metric set")
    elif float(c1) < float(a1) - config.tolerance:
        passed = False
        out["reasons"].append(
            f"overall top-1 {float(c1):.4f} is worse than the active model's {float(a1):.4f} by more than "
            f"the tolerance {config.tolerance:g}"
        )
    c_classes: dict[str, Any] = candidate.get("per_class") or {}
    a_classes: dict[str, Any] = active.get("per_class") or {}
    regressed: list[str] = []
    for label in sorted(set(c_classes) & set(a_classes)):
        ca, aa = c_classes[label], a_classes[label]
        support = int(aa.get("support") or 0)
        if support == 0:
            continue  # not in the evaluation photos
        c_acc, a_acc = float(ca.get("recall", 0.0)), float(aa.get("recall", 0.0))
        checked = support >= config.min_class_support
        drop = a_acc - c_acc
        is_regression = checked and drop > config.class_margin + 1e-12
        if is_regression:
            regressed.append(label)
        out["per_class"].append({
            "label": label, "candidate": c_acc, "active": a_acc, "delta": c_acc - a_acc, "support": support,
            "checked": checked, "regressed": is_regression,
        })
    if regressed:
        passed = False
        out["reasons"].append(
            f"{len(regressed)} class(es) lose more than {config.class_margin:g} accuracy: {regressed[:10]}"
        )
    unchecked = [r["label"] for r in out["per_class"] if not r["checked"]]
    if unchecked:
        out["reasons"].append(
            f"{len(unchecked)} class(es) with fewer than {config.min_class_support} evaluation photos not "
            f"gated: {unchecked[:10]}"
        )
    if passed:
        out["reasons"].insert(0, "no regression beyond the tolerance and the per-class margin")
    out["passed"] = passed and new_ok
    return out


def wilson_upper(successes: float, n: int, z: float = 1.645) -> float:
    """Upper end of the one-sided Wilson score interval of a proportion (z = 1.645: 95 %)."""
    if n <= 0:
        return 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def _judge_new_classes(new_classes: dict[str, Any] | None, config: GateConfig, out: dict[str, Any]) -> bool:
    """The new classes together, and each one confidently, on their own held-out photos; fills ``new_classes``."""
    rows: list[dict[str, Any]] = []
    out["new_classes"] = rows
    if not new_classes:
        return True
    failed: list[str] = []
    hits = photos = 0.0
    for label, values in sorted((new_classes.get("per_class") or {}).items()):
        support = int(values.get("support") or 0)
        recall = values.get("recall")
        checked = support >= config.min_class_support and recall is not None
        upper = wilson_upper(float(recall) * support, support) if recall is not None and support else None
        ok = (not checked) or (upper is not None and upper >= config.new_class_min_recall - 1e-12)
        if recall is not None and support:
            hits += float(recall) * support
            photos += support
        if not ok:
            failed.append(label)
        rows.append({"label": label, "candidate": recall, "support": support, "upper_95": upper,
                     "checked": checked, "passed": ok})
    pooled = hits / photos if photos else None
    out["new_classes_top1"] = pooled
    pooled_ok = pooled is None or photos < config.min_class_support or pooled >= config.new_class_min_recall - 1e-12
    if not pooled_ok:
        out["reasons"].append(f"the new classes' top-1 on their own held-out photos, {pooled:.3f} on {int(photos)}, "
                              f"is below {config.new_class_min_recall:g}")
    if failed:
        out["reasons"].append(f"{len(failed)} new class(es) confidently below {config.new_class_min_recall:g} "
                              f"accuracy on their own held-out photos: {failed[:10]}")
    unchecked = [r["label"] for r in rows if not r["checked"]]
    if unchecked:
        out["reasons"].append(f"{len(unchecked)} new class(es) with fewer than {config.min_class_support} held-out "
                              f"photos not gated: {unchecked[:10]}")
    return not failed and pooled_ok
