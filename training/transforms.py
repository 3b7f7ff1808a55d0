"""Image transforms: field-photo augmentations for training, the service's preprocessing for evaluation.

The evaluation transform *is* :func:`service.core.preprocess.preprocess` (wrapped into a tensor), so a model is
evaluated on exactly the tensors the service will feed it. The training transform reuses the same geometric
and photometric steps (:func:`service.core.preprocess.resize_and_crop`, :func:`service.core.preprocess.normalize`)
after its random crop, so a training view is laid out the way the service lays out a photo of that shape.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image, ImageEnhance, ImageFilter

from service.core.modelcard import InputSpec
from service.core.preprocess import normalize, preprocess, resize_and_crop


class EvalTransform:
    """The service's preprocessing as a tensor transform (picklable for DataLoader workers)."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(preprocess(img, self.spec))

    def describe(self) -> dict[str, Any]:
        """What this transform does, for cache keys and run records."""
        return {"kind": "eval", "spec": self.spec.model_dump()}


@dataclass(frozen=True)
class AugmentConfig:
    """Field-photo augmentation settings.

    Attributes:
        scale: area range of the random crop, as a share of the photo (small = close-up of a part).
        ratio: aspect-ratio range of the crop; non-square crops are then laid out like a non-square
            field photo by the spec's resize rule (e.g. letterboxed for ``longer_pad``).
        zoom_out: probability of shrinking the view onto a padded canvas at a random offset
            (small, off-centre insects in a full frame).
        zoom_out_scale: size range of the shrunken view relative to the canvas.
        zoom_out_fill: what surrounds the shrunken view: ``mean`` (the padding colour of ``longer_pad``) or
            ``blur`` (a blurred enlargement of the view itself, like an out-of-focus field background).
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        brightness, contrast, saturation: colour-jitter strengths (factor drawn in 1 ± strength).
        hue: hue shift range, as a share of the colour wheel.
    """

    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    zoom_out: float = 0.25
    zoom_out_scale: tuple[float, float] = (0.55, 0.95)
    zoom_out_fill: str = "mean"
    hflip: float = 0.5
    vflip: float = 0.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03


def random_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """A random (left, top, right, bottom) box covering ``scale`` of the area with aspect ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    return 0, 0, width, height  # fall back to the whole photo


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    hsv = img.convert("HSV")
    h, s, v = hsv.split()
    offset = round(shift * 255) % 256
    h = h.point(lambda x: (x + offset) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


class TrainTransform:
    """Random field-photo view of a photo, preprocessed like the service would."""

    def __init__(self, spec: InputSpec, config: AugmentConfig | None = None, seed: int | None = None) -> None:
        self.spec = spec
        self.config = config or AugmentConfig()
        self.rng = random.Random(seed)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        cfg, rng, spec = self.config, self.rng, self.spec
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = img.crop(random_crop_box(img.width, img.height, cfg.scale, cfg.ratio, rng))
        if rng.random() < cfg.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < cfg.vflip:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        for enhancer, strength in (
            (ImageEnhance.Brightness, cfg.brightness),
            (ImageEnhance.Contrast, cfg.contrast),
            (ImageEnhance.Color, cfg.saturation),
        ):
            if strength > 0:
                img = enhancer(img).enhance(rng.uniform(1 - strength, 1 + strength))
        if cfg.hue > 0:
            img = _shift_hue(img, rng.uniform(-cfg.hue, cfg.hue))
        view = resize_and_crop(img, spec)  # the service's layout of a photo of this shape
        if rng.random() < cfg.zoom_out:
            side = max(8, round(spec.size * rng.uniform(*cfg.zoom_out_scale)))
            small = view.resize((side, side), Image.Resampling.BILINEAR)
            if cfg.zoom_out_fill == "blur":
                canvas = view.filter(ImageFilter.GaussianBlur(spec.size / 25))
            else:
                fill = tuple(round(m * 255) for m in spec.mean)
                canvas = Image.new("RGB", (spec.size, spec.size), fill)  # type: ignore[arg-type]
            canvas.paste(small, (rng.randint(0, spec.size - side), rng.randint(0, spec.size - side)))
            view = canvas
        return torch.from_numpy(normalize(view, spec))

    def describe(self) -> dict[str, Any]:
        """What this transform does, for cache keys and run records."""
        return {"kind": "train", "spec": self.spec.model_dump(), "augment": asdict(self.config)}


def worker_init_fn(worker_id: int) -> None:
    """Give each DataLoader worker's transform its own random stream."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    transform = getattr(info.dataset, "transform", None)
    if isinstance(transform, TrainTransform):
        transform.rng = random.Random(info.seed)
