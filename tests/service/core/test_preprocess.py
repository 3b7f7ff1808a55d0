"""The one preprocessing definition: geometry and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.core.modelcard import InputSpec
from service.core.preprocess import decode_min_side, normalize, preprocess, resize_and_crop


def _halves(w: int, h: int, horizontal: bool = True) -> Image.Image:
    """Left/right (or top/bottom) halves red and blue."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    if horizontal:
        arr[:, : w // 2] = (255, 0, 0)
        arr[:, w // 2:] = (0, 0, 255)
    else:
        arr[: h // 2] = (255, 0, 0)
        arr[h // 2:] = (0, 0, 255)
    return Image.fromarray(arr, "RGB")


def test_output_shape_dtype_and_layout() -> None:
    spec = InputSpec(size=224, resize=256)
    x = preprocess(Image.new("RGB", (640, 480), (10, 20, 30)), spec)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]


def test_normalisation_uses_mean_and_std_per_channel() -> None:
    spec = InputSpec(size=32, resize=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    colour = (200, 100, 50)
    x = preprocess(Image.new("RGB", (50, 40), colour), spec)
    for c in range(3):
        expected = (colour[c] / 255.0 - spec.mean[c]) / spec.std[c]
        np.testing.assert_allclose(x[c], expected, rtol=1e-5, atol=1e-5)


def test_shorter_side_resize_then_centre_crop() -> None:
    spec = InputSpec(size=224, resize=256)
    img = _halves(1024, 512)
    cropped = resize_and_crop(img, spec)
    assert cropped.size == (224, 224)
    # 1024x512 -> 512x256, centre 224 crop keeps the middle: half red, half blue.
    arr = np.asarray(cropped).astype(int)
    assert arr[112, 5, 0] > 200 and arr[112, 218, 2] > 200
    # A portrait photo: the crop is centred vertically too.
    tall = resize_and_crop(_halves(300, 900, horizontal=False), spec)
    assert tall.size == (224, 224)
    t = np.asarray(tall).astype(int)
    assert t[5, 112, 0] > 200 and t[218, 112, 2] > 200


def test_small_photos_are_upscaled() -> None:
    spec = InputSpec(size=224, resize=256)
    assert resize_and_crop(Image.new("RGB", (40, 30)), spec).size == (224, 224)


def test_longer_pad_keeps_the_whole_frame_and_pads_with_the_mean() -> None:
    spec = InputSpec(size=64, resize=64, resize_mode="longer_pad", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = preprocess(Image.new("RGB", (128, 64), (255, 255, 255)), spec)
    assert x.shape == (3, 64, 64)
    np.testing.assert_allclose(x[:, 32, 32], 1.0, atol=1e-5)  # the photo
    np.testing.assert_allclose(x[:, 2, 32], 0.0, atol=0.01)  # padding = mean colour -> ~0 after normalising


def test_stretch_fills_the_square() -> None:
    spec = InputSpec(size=32, resize=32, resize_mode="stretch")
    out = resize_and_crop(_halves(200, 50), spec)
    arr = np.asarray(out).astype(int)
    assert out.size == (32, 32) and arr[16, 2, 0] > 200 and arr[16, 29, 2] > 200


def test_non_rgb_input_is_converted() -> None:
    spec = InputSpec(size=16, resize=16)
    x = preprocess(Image.new("L", (20, 20), 128), spec)
    assert x.shape == (3, 16, 16)
    pixels = x * np.asarray(spec.std, dtype=np.float32)[:, None, None] + np.asarray(spec.mean)[:, None, None]
    np.testing.assert_allclose(pixels, 128 / 255, atol=1e-5)  # grey in all three channels


def test_normalize_matches_a_hand_computation() -> None:
    spec = InputSpec(size=8, resize=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    arr = np.array([[[0, 255, 51], [102, 0, 0]], [[255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    x = normalize(Image.fromarray(arr, "RGB"), spec)
    expected = ((arr / 255.0 - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("mode", "expected"), [("shorter", 256), ("longer_pad", 224), ("stretch", 224)])
def test_decode_min_side(mode: str, expected: int) -> None:
    assert decode_min_side(InputSpec(size=224, resize=256, resize_mode=mode)) == expected
