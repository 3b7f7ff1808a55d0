"""Evaluate an exported model folder the way the service runs it.

Photos are decoded with :func:`service.core.imaging.decode_image`, preprocessed with
:func:`service.core.preprocess.preprocess` and run by the service's own classifier
(:func:`service.inference.classifier.load_classifier`, ONNX Runtime), with the card's temperature. Optional test-time
augmentation averages calibrated probabilities over several crops and their mirror images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.core.imaging import decode_image
from service.core.modelcard import ONNX_FILENAME, InputSpec, ModelCard
from service.core.preprocess import decode_min_side, preprocess
from service.inference.classifier import Classifier, RuntimeOptions, load_classifier
from training.answers import evaluate_answers
from training.data import Sample
from training.metrics import compute_metrics

logger = logging.getLogger(__name__)


def tta_views(img: Image.Image, crop: float = 0.85) -> list[Image.Image]:
    """The whole photo, four corner crops and a centre crop (``crop`` of each side), each also mirrored."""
    w, h = img.size
    cw, ch = max(1, round(w * crop)), max(1, round(h * crop))
    boxes = [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch), ((w - cw) // 2, (h - ch) // 2)]
    views = [img] + [img.crop((x, y, x + cw, y + ch)) for x, y in boxes]
    return views + [v.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for v in views]


FIELD_DESCRIPTION = (
    "each photo pasted, at 35-65% of the frame's shorter side and at a random off-centre position, into a "
    "4:3 or 3:4 frame of 640-1600 px whose background is a blurred enlargement of the same photo"
)


def field_composite(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A field-like version of a centred photo: a small, off-centre subject in a large, busy frame."""
    from PIL import ImageFilter

    long_side = int(rng.integers(640, 1601))
    w, h = (long_side, long_side * 3 // 4) if rng.random() < 0.5 else (long_side * 3 // 4, long_side)
    background = img.resize((w, h), Image.Resampling.BILINEAR).filter(
        ImageFilter.GaussianBlur(long_side / 40)
    )
    side = max(16, round(min(w, h) * rng.uniform(0.35, 0.65)))
    scale = side / max(img.size)
    subject = img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR
    )
    x = int(rng.integers(0, w - subject.width + 1))
    y = int(rng.integers(0, h - subject.height + 1))
    background.paste(subject, (x, y))
    return background


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _Runner:
    """The service classifier for ``model.onnx``; a plain session on the card for other files (fp16, int8)."""

    def __init__(self, folder: Path, onnx_file: str | None) -> None:
        if onnx_file in (None, ONNX_FILENAME):
            self.classifier: Classifier | None = load_classifier(folder, RuntimeOptions(providers="cpu"))
            self.card = self.classifier.card
        else:
            import onnxruntime as ort

            self.classifier = None
            self.card = ModelCard.load(folder)
            self.session = ort.InferenceSession(
                str(folder / str(onnx_file)), providers=["CPUExecutionProvider"]
            )

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if self.classifier is not None:
            return self.classifier.run(batch)
        spec = self.card.input
        return np.asarray(self.session.run([spec.output_name], {spec.input_name: batch})[0], dtype=np.float32)


def evaluate_model_dir(
    folder: Path,
    samples: Sequence[Sample],
    classes: Sequence[str] | None = None,
    *,
    tta: bool = False,
    field: bool = False,
    onnx_file: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of an exported model on labelled photos.

    Args:
        folder: a model version folder (``model.onnx`` + ``model.json``).
        samples: labelled photos; labels the model does not have are counted and skipped.
        classes: unused label list check (the card's labels are authoritative).
        tta: also evaluate with test-time augmentation (12 views per photo) and report its cost.
        field: also evaluate on field-like composites of the photos (:func:`field_composite`).
        onnx_file: evaluate another ONNX file of the folder (e.g. ``model.int8.onnx``).
        batch_size: photos per ONNX Runtime call.
        progress: show a progress bar.

    Returns:
        ``{"metrics", "answers", "timing", "logits", "targets", "skipped", "field"?, "tta"?}``; ``answers`` is
        :func:`training.answers.evaluate_answers` (the committed answers' honesty).
    """
    from tqdm import tqdm

    folder = Path(folder)
    runner = _Runner(folder, onnx_file)
    card = runner.card
    spec: InputSpec = card.input
    index = {label: i for i, label in enumerate(card.labels)}
    known = [s for s in samples if s.label in index]
    skipped = {"unknown_label": len(samples) - len(known), "unreadable": 0}
    if classes is not None and list(classes) != list(card.labels):
        logger.info(
            "evaluation label list differs from the card's; using the card's %d labels", len(card.labels)
        )
    images: list[Image.Image] = []
    targets: list[int] = []
    t_decode = time.perf_counter()
    for s in known:
        try:
            images.append(decode_image(Path(s.path).read_bytes(), min_side=decode_min_side(spec)).image)
            targets.append(index[s.label])
        except Exception as exc:
            skipped["unreadable"] += 1
            logger.warning("skipping unreadable photo %s: %s", s.path, exc)
    decode_seconds = time.perf_counter() - t_decode
    if not images:
        raise ValueError("no readable photo with a known label to evaluate")
    y = np.asarray(targets, dtype=np.int64)
    t0 = time.perf_counter()
    outs = []
    for chunk in tqdm(list(_batches(images, batch_size)), desc="evaluate", leave=False, disable=not progress):
        outs.append(runner.logits(np.stack([preprocess(im, spec) for im in chunk])))
    logits = np.concatenate(outs)
    seconds = time.perf_counter() - t0
    t = card.calibration.temperature
    metrics = compute_metrics(logits, y, card.labels, card.taxonomy, temperature=t)
    metrics["ece_uncalibrated"] = compute_metrics(logits, y, card.labels, card.taxonomy)["ece"]
    result: dict[str, Any] = {
        "metrics": metrics,
        "logits": logits,
        "targets": y,
        "skipped": skipped,
        "timing": {
            "images": len(y),
            "seconds": seconds,
            "decode_seconds": decode_seconds,
            "images_per_second": len(y) / max(seconds, 1e-9),
        },
    }
    result["answers"] = evaluate_answers(card, logits, y)
    if field:
        rng = np.random.default_rng(0)
        composites = [field_composite(im, rng) for im in images]
        outs = [
            runner.logits(np.stack([preprocess(im, spec) for im in chunk]))
            for chunk in _batches(composites, batch_size)
        ]
        field_logits = np.concatenate(outs)
        result["field"] = {
            "metrics": compute_metrics(field_logits, y, card.labels, card.taxonomy, temperature=t),
            "description": FIELD_DESCRIPTION,
            "answers": evaluate_answers(card, field_logits, y),
        }
    if tta:
        t1 = time.perf_counter()
        probs = []
        for im in tqdm(images, desc="tta", leave=False, disable=not progress):
            views = np.stack([preprocess(v, spec) for v in tta_views(im)])
            z = runner.logits(views).astype(np.float64) / t
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            probs.append((p / p.sum(axis=1, keepdims=True)).mean(axis=0))
        tta_seconds = time.perf_counter() - t1
        tta_probs = np.stack(probs)
        result["tta"] = {
            "metrics": compute_metrics(logits, y, card.labels, card.taxonomy, probs=tta_probs),
            "views_per_photo": len(tta_views(images[0])),
            "seconds": tta_seconds,
            "images_per_second": len(y) / max(tta_seconds, 1e-9),
            "cost_factor": tta_seconds / max(seconds, 1e-9),
        }
    return result
