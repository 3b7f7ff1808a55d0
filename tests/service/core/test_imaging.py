"""Photo formats and safe decoding: every accepted format becomes the right RGB picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.core.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from service.core.imaging import DecodeLimits, decode_image
from tests.helpers import photo_bytes
from tests.service.identify_support import RED, big_jpeg, files, png_header_only


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _rgba_png() -> bytes:
    arr = np.zeros((48, 64, 4), dtype=np.uint8)
    arr[..., :3] = RED
    arr[..., 3] = 255
    arr[:, :8, 3] = 0  # a transparent strip: composited over white
    return _save(Image.fromarray(arr, "RGBA"), "PNG")


def _palette_png() -> bytes:
    img = Image.new("RGB", (64, 48), RED).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    return _save(img, "PNG")


def _gray16_png() -> bytes:
    arr = np.full((48, 64), 40000, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    return _save(img, "PNG")


def _heic() -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return _save(Image.new("RGB", (64, 48), RED), "HEIF", quality=90)


FORMATS = {
    "PNG with alpha": (_rgba_png, "PNG", "red_admiral"),
    "palette PNG": (_palette_png, "PNG", "red_admiral"),
    "16-bit grayscale PNG": (_gray16_png, "PNG", None),
    "CMYK JPEG": (lambda: photo_bytes(RED, mode="CMYK"), "JPEG", "red_admiral"),
    "WebP": (lambda: photo_bytes(RED, fmt="WEBP"), "WEBP", "red_admiral"),
    "HEIC": (_heic, "HEIF", "red_admiral"),
    "grayscale JPEG": (lambda: photo_bytes(RED, mode="L"), "JPEG", None),
}


@pytest.mark.parametrize("case", list(FORMATS))
def test_format_is_decoded_to_rgb_and_identified(client: TestClient, case: str) -> None:
    make, fmt, label = FORMATS[case]
    data = make()
    decoded = decode_image(data)
    assert decoded.image.mode == "RGB" and decoded.format == fmt
    assert decoded.image.size == (64, 48)
    r = client.post("/api/v1/identify", files=files(data, name="photo"))
    assert r.status_code == 200, r.text
    photo = r.json()["images"][0]
    assert photo["format"] == fmt and (photo["width"], photo["height"]) == (64, 48)
    if label is not None:
        assert r.json()["results"][0]["taxon"]["label"] == label


def test_colours_survive_conversion() -> None:
    rgba = np.asarray(decode_image(_rgba_png()).image)
    assert tuple(rgba[10, 2]) == (255, 255, 255)  # transparent -> white
    assert np.abs(rgba[10, 40].astype(int) - RED).max() <= 2
    gray = np.asarray(decode_image(_gray16_png()).image)
    assert np.all(np.abs(gray.astype(int) - round(40000 / 257)) <= 1)  # 16-bit scaled to 8-bit, not clipped
    cmyk = np.asarray(decode_image(photo_bytes(RED, mode="CMYK", noise=False)).image).astype(int)
    assert cmyk[..., 0].mean() > 150 and cmyk[..., 1].mean() < 90
    palette = np.asarray(decode_image(_palette_png()).image).astype(int)
    assert np.abs(palette.mean(axis=(0, 1)) - RED).max() < 10


def _exif_rotated_jpeg() -> bytes:
    """A landscape 64x32 JPEG, red left half and blue right half, tagged 'rotate 90 CW' (orientation 6)."""
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :32] = (220, 30, 30)
    arr[:, 32:] = (30, 40, 220)
    img = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(img, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied(client: TestClient) -> None:
    data = _exif_rotated_jpeg()
    img = np.asarray(decode_image(data).image).astype(int)
    assert img.shape == (64, 32, 3)  # portrait after rotation
    # Rotating 90 degrees clockwise puts the left (red) half on top.
    assert img[8, 16, 0] > 150 and img[8, 16, 2] < 100
    assert img[56, 16, 2] > 150 and img[56, 16, 0] < 100
    photo = client.post("/api/v1/identify", files=files(data)).json()["images"][0]
    assert (photo["width"], photo["height"]) == (32, 64)


def test_twelve_megapixel_jpeg_is_draft_decoded(client: TestClient) -> None:
    data = big_jpeg(4000, 3000)
    decoded = decode_image(data, min_side=32)
    assert decoded.draft_scale > 1 and decoded.original_size == (4000, 3000)
    assert decoded.image.size[0] < 4000 // 2
    assert min(decoded.image.size) >= 32
    r = client.post("/api/v1/identify", files=files(data))
    assert r.status_code == 200, r.text
    photo = r.json()["images"][0]
    assert photo["draft_scale"] > 1
    assert (photo["width"], photo["height"]) == (4000, 3000)
    assert r.json()["results"][0]["taxon"]["label"] == "red_admiral"


def test_draft_keeps_enough_pixels_for_the_model() -> None:
    data = big_jpeg(1600, 1200)
    decoded = decode_image(data, min_side=256)
    assert decoded.draft_scale == 4 and min(decoded.image.size) >= 256
    assert decode_image(data).draft_scale == 1  # without min_side: full decode


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(InvalidImage, match="pixels"):
        decode_image(png_header_only(50_000, 50_000))
    # Below Pillow's own limit but above ours.
    with pytest.raises(InvalidImage, match="limits"):
        decode_image(png_header_only(8000, 8000), limits=DecodeLimits(max_pixels=10_000_000))


def test_limits_and_garbage() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(photo_bytes(), limits=DecodeLimits(max_bytes=100))
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"")
    with pytest.raises(UnsupportedMediaType):
        decode_image(b"\x00" * 1000)
