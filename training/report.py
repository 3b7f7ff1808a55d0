"""The evaluation report: ``report.json``, ``report.md``, a confusion-matrix PNG and a reliability diagram."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.core.modelcard import ModelCard
from training.metrics import HEADLINE_METRICS, confusion_matrix, reliability_bins, softmax

logger = logging.getLogger(__name__)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix (true rows, predicted columns) as a PNG."""
    plt = _plt()
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    side = min(16.0, max(4.0, n * 0.14))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if n <= 120:
        fs = max(3.0, min(8.0, 300 / max(n, 1)))
        ax.set_xticks(range(n), labels, rotation=90, fontsize=fs)
        ax.set_yticks(range(n), labels, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(
    bins_before: list[dict[str, float]],
    bins_after: list[dict[str, float]],
    path: Path,
    ece_before: float,
    ece_after: float,
) -> Path:
    """Reliability diagram: accuracy against confidence per bin, before and after temperature scaling."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, bins, title in (
        (axes[0], bins_before, f"T = 1 (ECE {ece_before:.3f})"),
        (axes[1], bins_after, f"calibrated (ECE {ece_after:.3f})"),
    ):
        centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
        width = bins[0]["hi"] - bins[0]["lo"]
        acc = [b["accuracy"] if b["count"] else 0 for b in bins]
        ax.bar(centres, acc, width=width * 0.95, color="#4c78a8", edgecolor="white", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(title)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Training loss and held-out NLL/accuracy per epoch."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    axes[0].plot(epochs, [h["held_nll"] for h in history], "o-", label="held-out NLL")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    axes[1].plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train accuracy")
    axes[1].plot(epochs, [h["held_accuracy"] for h in history], "o-", label="held-out accuracy")
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def write_report(
    folder: Path,
    *,
    card: ModelCard,
    evaluation: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
    calibration: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    variants: dict[str, Any] | None = None,
    problems: list[str] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``confusion.png`` and ``reliability.png`` into ``folder``.

    Args:
        folder: where to write (usually the exported model's folder).
        card: the model card (labels, calibration, provenance).
        evaluation: the result of :func:`training.evaluation.evaluate_model_dir`.
        history: per-epoch rows of the training run.
        calibration: the calibration block with ECE and NLL before/after.
        timings: train/cache/test seconds.
        variants: fp16/int8 results.
        problems: data problems found while loading.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m = evaluation["metrics"]
    logits, y = evaluation["logits"], evaluation["targets"]
    t = card.calibration.temperature
    labels = card.labels
    cm = confusion_matrix(softmax(logits, t).argmax(1), y, len(labels))
    paths = {"confusion": plot_confusion(cm, labels, folder / "confusion.png")}
    before, after = reliability_bins(softmax(logits), y), reliability_bins(softmax(logits, t), y)
    paths["reliability"] = plot_reliability(
        before, after, folder / "reliability.png", m.get("ece_uncalibrated", float("nan")), m["ece"]
    )
    answers = evaluation.get("answers")
    if answers:
        from training.answers import plot_risk_coverage

        paths["risk_coverage"] = plot_risk_coverage(answers, folder / "risk_coverage.png")
    doc = {
        "model": {
            "name": card.name,
            "version": card.version,
            "architecture": card.architecture,
            "input": card.input.model_dump(),
            "labels": len(labels),
        },
        "metrics": {k: v for k, v in m.items() if k != "per_class"},
        "per_class": m["per_class"],
        "answers": answers,
        "answer_fit": card.calibration.answer_fit,
        "calibration": calibration or card.calibration.model_dump(),
        "timing": {"test": evaluation["timing"], **(timings or {})},
        "tta": (
            {
                "metrics": {k: v for k, v in evaluation["tta"]["metrics"].items() if k != "per_class"},
                **{k: v for k, v in evaluation["tta"].items() if k != "metrics"},
            }
            if "tta" in evaluation
            else None
        ),
        "variants": variants or {},
        "field": (
            {
                "metrics": {k: v for k, v in evaluation["field"]["metrics"].items() if k != "per_class"},
                "description": evaluation["field"]["description"],
                "answers": evaluation["field"].get("answers"),
            }
            if "field" in evaluation
            else None
        ),
        "skipped": evaluation.get("skipped", {}),
        "data_problems": problems or [],
        "history": history or [],
        "reliability": {"before": before, "after": after},
        "confusions": _top_confusions(cm, labels),
    }
    (folder / "report.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["json"] = folder / "report.json"
    paths["markdown"] = _markdown(folder / "report.md", card, doc)
    return paths


def _top_confusions(cm: np.ndarray, labels: Sequence[str], n: int = 15) -> list[dict[str, Any]]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    idx = np.dstack(np.unravel_index(np.argsort(-off, axis=None), off.shape))[0][:n]
    return [
        {"true": labels[i], "predicted": labels[j], "count": int(off[i, j])} for i, j in idx if off[i, j] > 0
    ]


def _markdown(path: Path, card: ModelCard, doc: dict[str, Any]) -> Path:
    m, timing = doc["metrics"], doc["timing"]
    lines = [
        f"# {card.name} {card.version}: evaluation report",
        "",
        f"Architecture `{card.architecture}`, input {card.input.size} px "
        f"(`resize_mode={card.input.resize_mode}`), {len(card.labels)} labels. "
        f"Evaluated on {m['n']} photos ({card.metrics.get('evaluation_split', 'evaluation split')}) through "
        "the service's decoding, preprocessing and ONNX Runtime classifier, with the card's temperature.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    ece_at = HEADLINE_METRICS.index("ece") + 1
    for key in (*HEADLINE_METRICS[:ece_at], "ece_uncalibrated", *HEADLINE_METRICS[ece_at:]):
        lines.append(f"| {key} | {_fmt(m.get(key))} |")
    members = card.training.get("ensemble_of") or []
    if members:
        lines += [
            "",
            "## Ensemble",
            "",
            f"The mean of {len(members)} members' calibrated probabilities, in one graph; each member sees the "
            f"{card.input.size}-px input resized to its own size.",
            "",
            "| member | architecture | input | temperature | its top-1 |",
            "|---|---|---|---|---|",
        ]
        for mb in members:
            lines.append(
                f"| {mb.get('name')} {mb.get('version')} | `{mb.get('architecture')}` | {mb.get('input_size')} px "
                f"| {_fmt(mb.get('temperature'))} | {_fmt(mb.get('top1'))} |"
            )
    cal = doc["calibration"] or {}
    lines += [
        "",
        "## Calibration",
        "",
        f"Temperature {_fmt(cal.get('temperature'))}, fitted on {card.training.get('calibrated_on', '?')}. "
        f"ECE there {_fmt(cal.get('ece_before'))} before, {_fmt(cal.get('ece_after'))} after. "
        f"OOD energy threshold {_fmt(cal.get('ood_energy_threshold'))} "
        f"({card.training.get('ood_percentile', '?')}th percentile of held-out energy scores).",
        "",
        "![reliability](reliability.png)",
        "",
        "## Timing",
        "",
    ]
    test = timing["test"]
    lines.append(
        f"- test: {test['images']} photos in {test['seconds']:.2f} s "
        f"({test['images_per_second']:.1f} images/s, ONNX Runtime CPU, batch 32; decoding "
        f"{test.get('decode_seconds', 0):.2f} s more)"
    )
    for key, value in timing.items():
        if key != "test":
            lines.append(f"- {key}: {value:.2f}" if isinstance(value, float) else f"- {key}: {value}")
    lines += _answer_lines(doc)
    if doc.get("field"):
        f = doc["field"]
        lines += [
            "",
            "## Field-like photos",
            "",
            f"The same photos as field-like composites ({f['description']}): "
            f"top-1 {_fmt(f['metrics']['top1'])}, top-3 {_fmt(f['metrics']['top3'])}, "
            f"NLL {_fmt(f['metrics']['nll'])}, ECE {_fmt(f['metrics']['ece'])}.",
        ]
    if doc.get("tta"):
        tta = doc["tta"]
        lines += [
            "",
            "## Test-time augmentation",
            "",
            f"{tta['views_per_photo']} views per photo (whole frame, 4 corner and 1 centre crop, each "
            f"mirrored): top-1 {_fmt(tta['metrics']['top1'])}, top-3 {_fmt(tta['metrics']['top3'])}, "
            f"NLL {_fmt(tta['metrics']['nll'])}, ECE {_fmt(tta['metrics']['ece'])}; cost "
            f"{tta['cost_factor']:.1f}x the single-view time ({tta['images_per_second']:.1f} images/s).",
        ]
    if doc.get("variants"):
        lines += [
            "",
            "## Quantized variants",
            "",
            "| file | size (MB) | top-1 | top-3 | ECE | images/s |",
            "|---|---|---|---|---|---|",
        ]
        for kind, v in doc["variants"].items():
            lines.append(
                f"| {v['file']} ({kind}) | {v['size_bytes'] / 1e6:.1f} | {_fmt(v['top1'])} | "
                f"{_fmt(v['top3'])} | {_fmt(v['ece'])} | {v['images_per_second']:.1f} |"
            )
    if doc.get("data_problems"):
        lines += ["", "## Data problems", ""] + [f"- {p}" for p in doc["data_problems"]]
    if doc.get("history"):
        lines += [
            "",
            "## Training curve",
            "",
            "| epoch | train loss | held-out NLL | held-out acc | s | img/s |",
            "|---|---|---|---|---|---|",
        ]
        for h in doc["history"]:
            lines.append(
                f"| {h['epoch']} | {h['train_loss']:.4f} | {h['held_nll']:.4f} | {h['held_accuracy']:.4f} "
                f"| {h['seconds']} | {h['images_per_second']} |"
            )
    lines += ["", "## Confusion matrix", "", "![confusion matrix](confusion.png)", ""]
    if doc["confusions"]:
        lines += ["Most frequent confusions:", ""] + [
            f"- {c['true']} → {c['predicted']}: {c['count']}" for c in doc["confusions"]
        ]
    lines += [
        "",
        "## Per class",
        "",
        "| label | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, row in doc["per_class"].items():
        lines.append(
            f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def _answer_lines(doc: dict[str, Any]) -> list[str]:
    """The committed answer's section of the report: per rank precision and coverage, and the fit."""
    a = doc.get("answers")
    if not a:
        return []
    fitted = "fitted on held-out classes" if a.get("thresholds_fitted") else "the service's default (not fitted)"
    lines = [
        "",
        "## Committed answer",
        "",
        f"The one answer the service commits to (species, genus, family, order, 'an insect', 'no insect', or "
        f"nothing), with thresholds {fitted}: "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in a["thresholds"].items()) + ".",
        "",
        f"Precision of all answers {_fmt(a['precision'])} at coverage {_fmt(a['coverage'])}; known species "
        f"answered at species rank: {_fmt(a.get('known_species_at_species'))}; 'no insect' photos that claimed "
        f"an insect: {_fmt(a.get('no_insect_claimed_insect'))}.",
        "",
        "| answer rank | photos | share | precision |",
        "|---|---|---|---|",
    ]
    for rank, row in a["by_rank"].items():
        lines.append(f"| {rank} | {row['answered']} | {_fmt(row['share'])} | {_fmt(row['precision'])} |")
    if a.get("top1_by_order"):
        lines += ["", "| order | photos | top-1 |", "|---|---|---|"]
        lines += [f"| {g} | {v['photos']} | {_fmt(v['top1'])} |" for g, v in a["top1_by_order"].items()]
    fit = doc.get("answer_fit")
    if fit:
        r = fit.get("result", {})
        lines += [
            "",
            f"Fit ({fit.get('method', '')}): {fit.get('known_photos')} photos of known classes and "
            f"{fit.get('heldout_photos')} photos of {len(fit.get('heldout_labels', []))} held-out labels "
            f"({', '.join(fit.get('heldout_labels', []))}). There: held-out photos answered at species rank "
            f"{_fmt(r.get('heldout_at_species'))}; held-out species whose genus is known, answered right at genus "
            f"or coarser {_fmt(r.get('heldout_genus_known_right_genus_or_coarser'))}; any right answer for held-out "
            f"photos {_fmt(r.get('heldout_right'))}; precision {_fmt(r.get('precision'))}.",
        ]
        out = fit.get("evaluation_photos")
        if out:
            lines += [
                "",
                f"Out of sample (the leave-out model on the {out['photos']} evaluation photos, "
                f"{out.get('heldout_photos', 0)} of them of held-out labels): held-out photos answered at species "
                f"rank {_fmt(out.get('heldout_at_species'))}; held-out species whose genus is known, right at genus "
                f"or coarser {_fmt(out.get('heldout_genus_known_right_genus_or_coarser'))}; precision "
                f"{_fmt(out.get('precision'))}.",
            ]
    lines += ["", "![risk-coverage](risk_coverage.png)"]
    field = (doc.get("field") or {}).get("answers")
    if field:
        lines += [
            "",
            f"On the field-like composites: precision {_fmt(field['precision'])} at coverage "
            f"{_fmt(field['coverage'])}; known species at species rank {_fmt(field.get('known_species_at_species'))}.",
        ]
    return lines
