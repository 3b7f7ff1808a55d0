"""Fast, safe decoding of untrusted photos into RGB images.

* Large JPEGs are decoded at reduced size with libjpeg's DCT scaling (Pillow's ``draft``), so a
  12-megapixel phone photo is never fully decoded when the model needs 224 pixels.
* The EXIF orientation is applied.
* Every mode (CMYK, palette, alpha, 16-bit, grayscale, ...) becomes 8-bit RGB.
* Decompression bombs are refused from the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.core.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

logger = logging.getLogger(__name__)

try:  # HEIC/HEIF photos from iPhones.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency
    HEIF_AVAILABLE = False

# Never let Pillow silently accept half a file.
ImageFile.LOAD_TRUNCATED_IMAGES = False

ACCEPTED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "HEIF": "image/heic",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
}


@dataclass(frozen=True)
class DecodeLimits:
    """Limits applied to every untrusted photo."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_side: int = 20_000
    # Longer side over shorter side. Preprocessing scales the shorter side up or down to the model's
    # size first, so a 1 x 20,000 strip would become a multi-gigabyte intermediate image.
    max_aspect_ratio: float = 25.0


@dataclass
class DecodedImage:
    """An RGB image with what was learnt while decoding it."""

    image: Image.Image
    format: str
    mime_type: str
    original_size: tuple[int, int]  # (width, height) before draft scaling and orientation
    draft_scale: int  # 1 when the image was fully decoded, else the DCT reduction factor
    exif: Any = None


# How each accepted format begins (JPEG/MPO, PNG, GIF, BMP, TIFF both byte orders, WebP, HEIF/ISO-BMFF).
SNIFF_BYTES = 16


def looks_like_photo(head: bytes) -> bool:
    """Whether the first bytes of a file can begin a photo format that :func:`decode_image` accepts.

    Lets a route refuse junk after reading :data:`SNIFF_BYTES` bytes, instead of reading a 20 MiB file
    into memory to find out. A True answer proves nothing: the decoder still checks everything.
    """
    return (head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM",
                             b"II*\x00", b"MM\x00*"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or head[4:8] == b"ftyp")


async def check_upload_head(upload: Any, position: int) -> None:
    """Refuse an upload (a Starlette ``UploadFile``) whose first bytes are no photo, reading only those.

    Raises:
        UnsupportedMediaType: not a JPEG, PNG, WebP, HEIC (or GIF, TIFF, BMP) file.
    """
    head = await upload.read(4096)  # enough for Pillow to name most other formats in the message
    await upload.seek(0)
    if head and not looks_like_photo(head[:SNIFF_BYTES]):
        fmt = sniff_format(head)
        what = f"image format {fmt} is not accepted" if fmt else "not a recognised image"
        raise UnsupportedMediaType(
            f"photo {position}: {what}; send a JPEG, PNG, WebP or HEIC photo",
            detail={"accepted": sorted(set(ACCEPTED_FORMATS.values()))},
        )


def sniff_format(data: bytes) -> str | None:
    """Return the Pillow format name of ``data`` from its header, or None when unknown."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:
        return None


def decode_image(data: bytes, *, limits: DecodeLimits | None = None, min_side: int | None = None,
                 keep_exif: bool = False) -> DecodedImage:
    """Decode untrusted bytes into an 8-bit RGB image.

    Args:
        data: the file's bytes.
        limits: size limits; defaults to :class:`DecodeLimits`.
        min_side: the smallest shorter side the caller needs. JPEGs are DCT-scaled down to the
            smallest size whose shorter side is still at least this; None decodes at full size.
        keep_exif: also return the parsed EXIF (used for dates and GPS of observations).

    Raises:
        InvalidImage: empty, corrupt, truncated or bomb-sized images.
        UnsupportedMediaType: a readable file that is not an accepted photo format.
        PayloadTooLarge: more bytes than the limit.
    """
    limits = limits or DecodeLimits()
    if not data:
        raise InvalidImage("the uploaded file is empty")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"photo is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaType(
            "not a recognised image; send a JPEG, PNG, WebP or HEIC photo",
            detail={"accepted": sorted(set(ACCEPTED_FORMATS.values()))},
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image has too many pixels: {exc}") from exc
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise InvalidImage(f"cannot read the image header: {exc}") from exc

    fmt = img.format or "UNKNOWN"
    if fmt not in ACCEPTED_FORMATS:
        img.close()
        raise UnsupportedMediaType(
            f"image format {fmt} is not accepted; send a JPEG, PNG, WebP or HEIC photo",
            detail={"accepted": sorted(set(ACCEPTED_FORMATS.values()))},
        )
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage("image has no pixels")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        img.close()
        raise InvalidImage(
            f"image is {width}x{height} pixels; the limits are {limits.max_side} pixels a side and "
            f"{limits.max_pixels} pixels in all",
            detail={"width": width, "height": height},
        )

    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        img.close()
        raise InvalidImage(
            f"image is {width}x{height} pixels; a photo may be at most {limits.max_aspect_ratio:g} times "
            "longer than it is wide",
            detail={"width": width, "height": height},
        )

    draft_scale = 1
    try:
        if fmt in ("JPEG", "MPO") and min_side and min(width, height) > 2 * min_side:
            # Ask libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) that still covers min_side.
            scale = min_side / min(width, height)
            requested = (max(1, int(width * scale + 0.999)), max(1, int(height * scale + 0.999)))
            mode = "RGB" if img.mode in ("RGB", "YCbCr") else img.mode
            img.draft(mode, requested)
            draft_scale = max(1, round(width / img.size[0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
        exif = img.getexif() if keep_exif else None
        if getattr(img, "is_animated", False):
            img.seek(0)
        rgb = to_rgb(_apply_orientation(img))
    except (InvalidImage, UnsupportedMediaType):
        raise
    except Exception as exc:  # truncated data, broken streams, codec errors
        raise InvalidImage(f"the image data is corrupt or truncated: {exc}") from exc
    return DecodedImage(image=rgb, format=fmt, mime_type=ACCEPTED_FORMATS[fmt], original_size=(width, height),
                        draft_scale=draft_scale, exif=exif)


def _apply_orientation(img: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(img)
    except Exception:  # absurd EXIF must not make a photo unreadable
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return img
    return transposed if transposed is not None else img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)  # half the memory of float64; exact enough for 8 bits
        if mode.startswith("I;16"):
            arr = arr / 257.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        gray = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBa", "La"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB;16" or mode.startswith("RGB"):
        return img.convert("RGB")
    return img.convert("RGB")
