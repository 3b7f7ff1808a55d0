"""An observation's uploaded photos: their count and sizes, one decode each, and their EXIF date and GPS.

The request's limits are checked once, by :func:`check_uploads`, before the uploads are read; then
:func:`decode_uploads` decodes each photo once. The model's input is made from those same pixels (the
``prepare`` hook), so the prediction stored with the observation never decodes the photos again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from PIL.ExifTags import GPS, IFD, Base

from service.core.errors import InvalidRequest, PayloadTooLarge
from service.core.imaging import DecodedImage, DecodeLimits, decode_image
from service.settings import Settings

logger = logging.getLogger(__name__)

# The shorter side kept when no model needs the pixels: the decode only proves the photo is sound.
METADATA_MIN_SIDE = 512

# Called with a photo's decoded image and when its decode began (``time.perf_counter()``), before the
# pixels are freed; what it returns is kept as :attr:`UploadedPhoto.prepared`.
Prepare = Callable[[DecodedImage, float], Any]


class TooManyPhotos(InvalidRequest):
    code = "too_many_photos"


@dataclass
class UploadedPhoto:
    """One uploaded photo, decoded once and hashed."""

    data: bytes
    sha256: str
    decoded: DecodedImage  # format, size and EXIF; the pixels are freed
    prepared: Any = None  # what the ``prepare`` hook of :func:`decode_uploads` made of the pixels

    @property
    def width(self) -> int:
        return self.decoded.original_size[0]

    @property
    def height(self) -> int:
        return self.decoded.original_size[1]


def check_uploads(sizes: Sequence[int | None], settings: Settings) -> None:
    """The request's limits on photos: 1 to ``max_images`` of them, each and all together within the sizes.

    Called once per request, with the uploads' sizes, before any of them is read.

    Raises:
        InvalidRequest / TooManyPhotos: no photo or more than ``settings.max_images``.
        PayloadTooLarge: a photo over ``max_upload_bytes``, or all of them over ``max_request_bytes``.
    """
    if not sizes:
        raise InvalidRequest("an observation needs at least one photo (field 'photos')")
    if len(sizes) > settings.max_images:
        raise TooManyPhotos(
            f"{len(sizes)} photos sent; an observation has at most {settings.max_images}",
            detail={"max_images": settings.max_images, "received": len(sizes)},
        )
    for i, size in enumerate(sizes):
        if size is not None and size > settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"photo {i + 1} is {size} bytes; the limit is {settings.max_upload_bytes} bytes per photo"
            )
    total = sum(size or 0 for size in sizes)
    if total > settings.max_request_bytes:
        raise PayloadTooLarge(f"{total} bytes of photos; the limit is {settings.max_request_bytes}")


def decode_uploads(
    blobs: Sequence[bytes],
    settings: Settings,
    *,
    min_side: int = METADATA_MIN_SIDE,
    prepare: Prepare | None = None,
) -> list[UploadedPhoto]:
    """Decode each photo once: its format, size and EXIF, and (``prepare``) the model's input.

    The count and sizes were checked by :func:`check_uploads`; the decoder applies the pixel limits.

    Args:
        blobs: the photos' bytes, untrusted.
        settings: the decode limits.
        min_side: the shorter side the decode must keep (JPEGs are DCT-scaled down to it).
        prepare: run on each decoded image before its pixels are freed. Its failure costs the prediction,
            never the photo: that photo's ``prepared`` stays None.

    Raises:
        InvalidImage, UnsupportedMediaType, PayloadTooLarge: see :func:`service.core.imaging.decode_image`.
    """
    limits = DecodeLimits(
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
    )
    out = []
    for i, data in enumerate(blobs):
        started = time.perf_counter()
        try:
            decoded = decode_image(data, limits=limits, min_side=min_side, keep_exif=True)
        except Exception as exc:
            if hasattr(exc, "message"):
                exc.message = f"photo {i + 1}: {exc.message}"
            raise
        prepared = None
        try:
            if prepare is not None:
                prepared = prepare(decoded, started)
        except Exception:  # a prediction problem must never lose a volunteer's photo
            logger.warning("could not prepare photo %d for the model", i + 1, exc_info=True)
        finally:
            # Only the metadata (format, size, EXIF) is kept: the pixels are freed now, so that many
            # uploads in flight do not each hold a decoded photo.
            decoded.image.close()
        out.append(UploadedPhoto(data=data, sha256=hashlib.sha256(data).hexdigest(), decoded=decoded,
                                 prepared=prepared))
    return out


def _ratio(value: Any) -> float:
    if isinstance(value, tuple) and len(value) == 2:
        return float(value[0]) / float(value[1])
    return float(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def exif_datetime(exif: Any) -> datetime | None:
    """DateTimeOriginal (else DateTime) from EXIF, in UTC; None when absent or absurd."""
    if not exif:
        return None
    try:
        sub = exif.get_ifd(IFD.Exif) or {}
        raw = sub.get(Base.DateTimeOriginal) or exif.get(Base.DateTime)
        if not raw:
            return None
        value = datetime.strptime(_text(raw).strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S")
        offset = sub.get(Base.OffsetTimeOriginal)
        if offset:
            m = re.fullmatch(r"([+-])(\d{2}):(\d{2})", _text(offset).strip().rstrip("\x00"))
            if m:
                delta = timedelta(hours=int(m[2]), minutes=int(m[3]))
                return (value - delta if m[1] == "+" else value + delta).replace(tzinfo=UTC)
        return value.replace(tzinfo=UTC)
    except Exception:
        logger.debug("ignoring unreadable EXIF date", exc_info=True)
        return None


def exif_gps(exif: Any) -> tuple[float, float, float | None] | None:
    """(latitude, longitude, horizontal error in metres or None) from EXIF GPS; None when absent or absurd."""
    if not exif:
        return None
    try:
        gps = exif.get_ifd(IFD.GPSInfo)
        if not gps or GPS.GPSLatitude not in gps or GPS.GPSLongitude not in gps:
            return None

        def degrees(dms: Any, ref: Any, negative: str) -> float:
            d, m, s = (_ratio(x) for x in dms)
            value = d + m / 60.0 + s / 3600.0
            ref = _text(ref or "")
            return -value if ref.strip().upper().startswith(negative) else value

        lat = degrees(gps[GPS.GPSLatitude], gps.get(GPS.GPSLatitudeRef), "S")
        lon = degrees(gps[GPS.GPSLongitude], gps.get(GPS.GPSLongitudeRef), "W")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180) or lat != lat or lon != lon:
            return None
        err = gps.get(GPS.GPSHPositioningError)
        precision = _ratio(err) if err is not None else None
        if precision is not None and not (0 <= precision <= 1_000_000):
            precision = None
        return lat, lon, precision
    except Exception:
        logger.debug("ignoring unreadable EXIF GPS", exc_info=True)
        return None
