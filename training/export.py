"""Export to ONNX with the model card embedded, checked by ``onnx.checker`` and by a parity run.

The export writes into a temporary folder and moves it into place only when every check passes, so a
failed export leaves nothing half-written.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from service.core.modelcard import CARD_FILENAME, ONNX_FILENAME, ONNX_METADATA_KEY, ModelCard
from service.core.preprocess import preprocess
from training.metrics import softmax

logger = logging.getLogger(__name__)

MIN_OPSET = 17


class ExportError(RuntimeError):
    """The exported network does not match the PyTorch one, or fails a check."""


@dataclass
class ExportResult:
    """What an export wrote and measured."""

    folder: Path
    onnx_path: Path
    max_prob_diff: float
    parity_images: int
    variants: dict[str, Path] = field(default_factory=dict)
    size_bytes: int = 0


def synthetic_photos(n: int = 8, seed: int = 0) -> list[Image.Image]:
    """Real-looking stand-ins: blurred colour fields with shapes and noise, of assorted sizes and shapes."""
    rng = np.random.default_rng(seed)
    sizes = [(320, 240), (240, 320), (224, 224), (640, 480), (500, 281), (97, 131), (1024, 768), (300, 300)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(5, w // 2 + 6)), y0 + int(rng.integers(5, h // 2 + 6))
            draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img = img.filter(ImageFilter.GaussianBlur(1.5))
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 3))
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"))
    return out


def embed_card(onnx_path: Path, card: ModelCard) -> None:
    """Write the card into the ONNX file's metadata (``pollinid.model_card``), replacing any older one."""
    import onnx

    model = onnx.load(str(onnx_path))
    props = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, card.to_json()
    tmp = onnx_path.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(onnx_path)


def write_card(folder: Path, card: ModelCard) -> None:
    """Save ``model.json`` and embed the same card in every ONNX file of the folder."""
    card.save(folder)
    for path in sorted(folder.glob("*.onnx")):
        embed_card(path, card)


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def parity_check(
    model: nn.Module, onnx_path: Path, card: ModelCard, photos: Sequence[Image.Image], tolerance: float = 1e-4
) -> float:
    """Largest difference of calibrated probabilities between PyTorch and ONNX Runtime.

    Raises:
        ExportError: the difference is above ``tolerance``.
    """
    spec = card.input
    batch = np.stack([preprocess(p, spec) for p in photos]).astype(np.float32)
    model = model.eval().cpu()
    with torch.inference_mode():
        torch_logits = model(torch.from_numpy(batch)).float().numpy()
    session = _session(onnx_path)
    onnx_logits = session.run([spec.output_name], {spec.input_name: batch})[0]
    t = card.calibration.temperature
    diff = float(np.abs(softmax(torch_logits, t) - softmax(onnx_logits, t)).max())
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportError(
            f"ONNX Runtime and PyTorch disagree: max probability difference {diff:.3g} > "
            f"{tolerance:g} on {len(photos)} photos"
        )
    return diff


def export_model(
    model: nn.Module,
    card: ModelCard,
    folder: Path,
    *,
    opset: int = MIN_OPSET,
    photos: Sequence[Image.Image] | None = None,
    tolerance: float = 1e-4,
    fp16: bool = False,
    int8: bool = False,
    calibration_photos: Sequence[Image.Image] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export ``model`` to ``folder/model.onnx`` + ``folder/model.json`` and check it.

    Args:
        model: the trained network (logits out).
        card: its model card (input spec, labels, calibration ...).
        folder: the version folder to create, e.g. ``models/<name>/<version>``.
        opset: ONNX opset (at least 17).
        photos: photos for the parity check; synthetic real-looking ones are added.
        tolerance: the largest accepted probability difference between ONNX Runtime and PyTorch.
        fp16: also write ``model.fp16.onnx`` (float16 weights and activations, float32 input/output).
        int8: also write ``model.int8.onnx`` (static QDQ quantization calibrated on ``calibration_photos``).
        calibration_photos: photos for int8 calibration (defaults to the parity photos).
        overwrite: replace an existing folder.

    Raises:
        ExportError: a check failed (nothing is left at ``folder``).
        FileExistsError: ``folder`` exists and ``overwrite`` is false.
    """
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; pass overwrite=True (--overwrite) to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    spec = card.input
    model = model.eval().cpu()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        onnx_path = tmp / ONNX_FILENAME
        dummy = torch.zeros(2, 3, spec.size, spec.size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(onnx_path),
                input_names=[spec.input_name],
                output_names=[spec.output_name],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
            )
        embed_card(onnx_path, card)
        onnx.checker.check_model(str(onnx_path), full_check=True)
        all_photos = list(photos or []) + synthetic_photos()
        diff = parity_check(model, onnx_path, card, all_photos, tolerance)
        card.save(tmp)
        variants: dict[str, Path] = {}
        if fp16:
            variants["fp16"] = _to_fp16(onnx_path, tmp / "model.fp16.onnx")
        if int8:
            variants["int8"] = _to_int8(
                onnx_path, tmp / "model.int8.onnx", card, list(calibration_photos or all_photos)
            )
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    onnx_final = folder / ONNX_FILENAME
    logger.info(
        "exported %s (%.1f MB), parity max |dp| = %.2e on %d photos",
        onnx_final,
        onnx_final.stat().st_size / 1e6,
        diff,
        len(all_photos),
    )
    return ExportResult(
        folder,
        onnx_final,
        diff,
        len(all_photos),
        {k: folder / v.name for k, v in variants.items()},
        onnx_final.stat().st_size,
    )


def _to_fp16(src: Path, dst: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def _to_int8(src: Path, dst: Path, card: ModelCard, photos: Sequence[Image.Image]) -> Path:
    """Static QDQ int8 (:func:`training.quantize.quantize_onnx`) calibrated on ``photos``; not yet in the card:
    ``pollinid quantize`` evaluates it and records it as a variant only when it keeps the accuracy."""
    from training.quantize import quantize_onnx

    batch = [preprocess(p, card.input) for p in photos]
    return quantize_onnx(src, dst, card.input, [np.stack(batch[i : i + 16]) for i in range(0, len(batch), 16)])


def load_card_from_onnx(path: Path) -> ModelCard:
    """The card embedded in an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return ModelCard.model_validate_json(prop.value)
    raise ValueError(f"{path} has no {ONNX_METADATA_KEY} metadata")


__all__ = [
    "CARD_FILENAME",
    "ExportError",
    "ExportResult",
    "export_model",
    "load_card_from_onnx",
    "parity_check",
    "synthetic_photos",
    "write_card",
]
