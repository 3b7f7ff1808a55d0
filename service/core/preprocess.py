"""The one preprocessing definition shared by the service and training's evaluation transform.

``preprocess(image, spec)`` turns an RGB Pillow image into the float32 CHW array the network expects.
Training wraps the same function (``torch.from_numpy``) for evaluation, so a model is evaluated on
exactly the tensors it will see in production.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.core.modelcard import InputSpec

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def decode_min_side(spec: InputSpec) -> int:
    """The shorter side a decoder must keep so that :func:`resize_and_crop` loses nothing."""
    return spec.resize if spec.resize_mode == "shorter" else spec.size


def resize_and_crop(img: Image.Image, spec: InputSpec) -> Image.Image:
    """Geometric part of preprocessing: an RGB image of exactly ``spec.size`` x ``spec.size``."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    resample = _RESAMPLE[spec.interpolation]
    w, h = img.size
    size = spec.size
    if spec.resize_mode == "stretch":
        return img.resize((size, size), resample, reducing_gap=3.0)
    if spec.resize_mode == "longer_pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = img.resize((nw, nh), resample, reducing_gap=3.0)
        fill = tuple(round(m * 255) for m in spec.mean)
        canvas = Image.new("RGB", (size, size), fill)
        canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
        return canvas
    # "shorter": shorter side to spec.resize, then centre crop spec.size.
    scale = spec.resize / min(w, h)
    nw, nh = max(spec.resize, round(w * scale)), max(spec.resize, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def normalize(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """Photometric part: an RGB image to a float32 CHW array scaled by mean and std."""
    arr = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
    arr = (arr - mean) * inv_std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """RGB image to the network input: float32 array of shape (3, size, size)."""
    return normalize(resize_and_crop(img, spec), spec)
