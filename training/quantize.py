"""An int8 variant of an exported model: static QDQ quantization, calibrated on training photos.

``pollinid quantize --model models/NAME/VERSION --data SRC [--data SRC2] --calibration-photos 300``

1. picks calibration photos from the sources' training split (round-robin over the labels, seeded), decodes
   and preprocesses them exactly as the service does (:func:`service.core.imaging.decode_image`,
   :func:`service.core.preprocess.preprocess`);
2. quantizes ``model.onnx`` with ONNX Runtime's :func:`~onnxruntime.quantization.quantize_static`
   (``QuantFormat.QDQ``, int8 per-channel weights, uint8 activations; the graph is first run through
   :func:`~onnxruntime.quantization.shape_inference.quant_pre_process`);
3. evaluates fp32 and int8 on the validation split through the same code path
   (:func:`training.evaluation.evaluate_model_dir`);
4. writes ``model.int8.onnx`` and the card's ``variants`` entry only when the int8 model keeps top-1 within
   ``max_top1_drop`` and ECE within ``max_ece_rise`` of fp32; otherwise nothing in the folder changes and
   the figures are reported as missed.

``model.onnx`` is never touched (a replay kit is bound to its sha256). Needs no PyTorch.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.core.hashing import file_sha256
from service.core.imaging import decode_image
from service.core.modelcard import ONNX_FILENAME, InputSpec, ModelCard, ModelVariant

logger = logging.getLogger(__name__)

INT8_FILENAME = "model.int8.onnx"
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class QuantizeError(RuntimeError):
    """The quantized network cannot be written or does not load."""


def pick_calibration(samples: Sequence[Any], n: int, *, seed: int = 0) -> list[Any]:
    """``n`` samples taken round-robin over the labels (each label's photos shuffled with ``seed``)."""
    by_label: dict[str, list[Any]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    rng = random.Random(seed)
    queues = []
    for label in sorted(by_label):
        items = sorted(by_label[label], key=lambda s: str(s.path))
        rng.shuffle(items)
        queues.append(items)
    out: list[Any] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def preprocessed_batches(photos: Iterable[Path | bytes], spec: InputSpec, batch_size: int = 16
                         ) -> Iterator[np.ndarray]:
    """Photo files (or bytes) decoded and preprocessed as the service does, ``batch_size`` at a time."""
    from service.core.preprocess import decode_min_side, preprocess

    batch: list[np.ndarray] = []
    for item in photos:
        data = item if isinstance(item, bytes) else Path(item).read_bytes()
        try:
            img = decode_image(data, min_side=decode_min_side(spec)).image
        except Exception as exc:  # an unreadable calibration photo is skipped, not fatal
            logger.warning("skipping unreadable calibration photo: %s", exc)
            continue
        batch.append(preprocess(img, spec))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def sensitive_nodes(model_path: Path, spec: InputSpec) -> list[str]:
    """The first convolution and the node that writes the logits (left in float when asked to)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names: list[str] = []
    first_conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if first_conv is not None and first_conv.name:
        names.append(first_conv.name)
    head = next((n for n in graph.node if spec.output_name in n.output), None)
    if head is not None and head.name and head.name not in names:
        names.append(head.name)
    return names


def is_qdq(model_path: Path) -> bool:
    """Whether the ONNX file holds QuantizeLinear and DequantizeLinear nodes."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(model_path), load_external_data=False).graph.node}
    return all(op in ops for op in QDQ_OPS)


class _QuietRoot(logging.Filter):
    """Drops ONNX Runtime's INFO lines on the root logger during quantization, counting the scale ones."""

    def __init__(self) -> None:
        super().__init__()
        self.widened = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        self.widened += "Increased scale" in record.getMessage()
        return False


def quantize_onnx(src: Path, dst: Path, spec: InputSpec, batches: Iterable[np.ndarray], *,
                  method: str = "minmax", per_channel: bool = True, exclude: Sequence[str] = (),
                  percentile: float = 99.999) -> Path:
    """Static QDQ int8 quantization of ``src`` into ``dst`` (written atomically).

    Args:
        src: the fp32 ONNX file.
        dst: where the int8 file goes.
        spec: the card's input spec (the input's name).
        batches: preprocessed float32 batches (n, 3, size, size) for activation calibration.
        method: ``minmax``, ``percentile`` or ``entropy``.
        per_channel: per-output-channel weight scales.
        exclude: names of nodes to keep in float.
        percentile: the percentile for ``method="percentile"``.

    Raises:
        ValueError: an unknown method or no calibration batch.
        QuantizeError: ONNX Runtime could not quantize, or the result is not QDQ.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}; known: {list(methods)}")
    feeds = [{spec.input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches]
    if not feeds:
        raise ValueError("no calibration photo could be read")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

        def rewind(self) -> None:
            self.items = iter(feeds)

    # (No CalibMaxIntermediateOutputs: ONNX Runtime's MinMax calibrator drops the batches it flushes.)
    extra: dict[str, Any] = {}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=dst.parent) as work:
        pre = Path(work) / "pre.onnx"
        out = Path(work) / "int8.onnx"
        quiet = _QuietRoot()  # ONNX Runtime logs one INFO line per widened weight scale on the root logger
        logging.getLogger().addFilter(quiet)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[method], nodes_to_exclude=list(exclude), extra_options=extra,
            )
        except Exception as exc:
            raise QuantizeError(f"ONNX Runtime could not quantize {src}: {exc}") from exc
        finally:
            logging.getLogger().removeFilter(quiet)
        if quiet.widened:
            logger.info("ONNX Runtime widened %d per-channel weight scales so that biases stay representable",
                        quiet.widened)
        if not is_qdq(out):
            raise QuantizeError(f"{out} has no QuantizeLinear/DequantizeLinear nodes: nothing was quantized")
        os.replace(out, dst)
    return dst


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("n", "top1", "top3", "ece", "nll", "macro_f1")}


def quantize_version(
    folder: Path,
    calibration: Sequence[Any],
    validation: Sequence[Any],
    *,
    calibration_photos: int = 300,
    methods: Sequence[str] = ("minmax",),
    exclude_sensitive: bool = False,
    per_channel: bool = True,
    max_top1_drop: float = 0.005,
    max_ece_rise: float = 0.01,
    cpu_default: bool = True,
    ship: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Quantize ``folder/model.onnx``, evaluate fp32 and int8, and ship the int8 file when it holds.

    Each method in ``methods`` is tried in turn (and each again with the sensitive nodes kept in float
    when ``exclude_sensitive``); the first that meets both criteria is shipped.

    Args:
        folder: a model version folder.
        calibration: labelled training photos (:class:`training.data.Sample`) to draw calibration photos from.
        validation: labelled validation photos for the comparison.
        calibration_photos: how many calibration photos.
        methods: calibration methods to try, in order.
        exclude_sensitive: also try keeping the first conv and the logits' node in float.
        per_channel: per-channel weight scales.
        max_top1_drop: the largest accepted top-1 drop (0.005 = half a point).
        max_ece_rise: the largest accepted ECE rise.
        cpu_default: the card says the service loads the int8 file on the CPU.
        ship: write the file and the card when the criteria hold (False: measure only).
        seed: calibration photo choice.

    Returns:
        ``{"fp32", "attempts", "shipped", "variant"?}`` with every attempt's metrics and verdict.
    """
    from training.evaluation import evaluate_model_dir

    folder = Path(folder)
    card = ModelCard.load(folder)
    src = folder / ONNX_FILENAME
    picked = pick_calibration(calibration, calibration_photos, seed=seed)
    if not picked:
        raise ValueError("no calibration photo: the training split is empty")
    t0 = time.perf_counter()
    batches = list(preprocessed_batches([Path(s.path) for s in picked], card.input))
    logger.info("calibration: %d photos over %d labels decoded in %.1f s", sum(len(b) for b in batches),
                len({s.label for s in picked}), time.perf_counter() - t0)
    fp32 = evaluate_model_dir(folder, validation)
    base = _summary(fp32["metrics"])
    logger.info("fp32: top-1 %.4f ECE %.4f on %d photos", base["top1"], base["ece"], base["n"])
    result: dict[str, Any] = {"fp32": base, "attempts": [], "shipped": False,
                              "calibration_photos": sum(len(b) for b in batches),
                              "criteria": {"max_top1_drop": max_top1_drop, "max_ece_rise": max_ece_rise}}
    plans = [(m, False) for m in methods] + ([(m, True) for m in methods] if exclude_sensitive else [])
    with tempfile.TemporaryDirectory(prefix=".int8.", dir=folder.parent) as work:
        trial_dir = Path(work)
        (trial_dir / "model.json").write_text(card.to_json(), encoding="utf-8")
        for method, exclude in plans:
            excluded = sensitive_nodes(src, card.input) if exclude else []
            trial = trial_dir / INT8_FILENAME
            t1 = time.perf_counter()
            quantize_onnx(src, trial, card.input, batches, method=method, per_channel=per_channel,
                          exclude=excluded)
            seconds = time.perf_counter() - t1
            ev = evaluate_model_dir(trial_dir, validation, onnx_file=INT8_FILENAME)
            got = _summary(ev["metrics"])
            drop, rise = base["top1"] - got["top1"], got["ece"] - base["ece"]
            ok = drop <= max_top1_drop + 1e-12 and rise <= max_ece_rise + 1e-12
            attempt = {"method": method, "per_channel": per_channel, "excluded_nodes": excluded,
                       "int8": got, "top1_drop": drop, "ece_rise": rise, "passed": ok,
                       "quantize_seconds": seconds, "bytes": trial.stat().st_size,
                       "images_per_second": ev["timing"]["images_per_second"],
                       "fp32_images_per_second": fp32["timing"]["images_per_second"]}
            result["attempts"].append(attempt)
            logger.info("int8 %s%s: top-1 %.4f (drop %.4f) ECE %.4f (rise %.4f): %s", method,
                        " (first conv and head in float)" if exclude else "", got["top1"], drop, got["ece"],
                        rise, "passes" if ok else "misses")
            if not ok:
                continue
            if ship:
                result["variant"] = ship_variant(folder, trial, card, attempt, cpu_default=cpu_default,
                                                 calibration_photos=result["calibration_photos"])
                result["shipped"] = True
            break
    return result


def ship_variant(folder: Path, int8_file: Path, card: ModelCard, attempt: dict[str, Any], *,
                 cpu_default: bool, calibration_photos: int) -> dict[str, Any]:
    """Move ``int8_file`` to ``folder/model.int8.onnx`` and record it in ``folder/model.json``."""
    dst = folder / INT8_FILENAME
    tmp = folder / f".{INT8_FILENAME}.tmp"
    tmp.write_bytes(int8_file.read_bytes())
    os.replace(tmp, dst)
    got = attempt["int8"]
    variant = ModelVariant(
        file=INT8_FILENAME, sha256=file_sha256(dst), precision="int8", top1=got["top1"], ece=got["ece"],
        cpu_default=cpu_default,
        quantization={"format": "QDQ", "weights": "int8 per-channel" if attempt["per_channel"] else "int8",
                      "activations": "uint8", "calibration": attempt["method"],
                      "calibration_photos": calibration_photos, "excluded_nodes": attempt["excluded_nodes"],
                      "evaluated_on": got["n"], "fp32_top1": got["top1"] + attempt["top1_drop"],
                      "fp32_ece": got["ece"] - attempt["ece_rise"]},
    )
    variants = {k: v for k, v in card.variants.items() if k != "int8"}
    if cpu_default:
        variants = {k: v.model_copy(update={"cpu_default": False}) for k, v in variants.items()}
    variants["int8"] = variant
    card.variants = variants
    card.save(folder)
    return variant.model_dump(mode="json")
