"""A corpus of hostile "photos", generated here (nothing downloaded).

Each :class:`Hostile` says what a correct service does with it: refuse it with a 4xx JSON error, or
identify it (and, for the colour photos of the tiny model, with which label). Bombs are crafted from
headers and zlib streams; no pixel array of the claimed size is ever allocated here.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

from PIL import Image

from tests.helpers import photo_bytes

RED = (220, 30, 30)
GREEN = (30, 200, 40)
BLUE = (30, 40, 220)


@dataclass(frozen=True)
class Hostile:
    """One hostile file and the answer it must get."""

    name: str
    data: bytes
    mime: str = "image/jpeg"
    refuse: bool = False  # True: a 4xx with a JSON error; False: a 200/201 answer
    statuses: tuple[int, ...] = (413, 415, 422)
    label: str | None = None  # the tiny model's expected top label when identified
    either: bool = False  # corrupt-but-decodable data: a 4xx or an answer are both correct
    tags: tuple[str, ...] = field(default_factory=tuple)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, *, rows: int | None = None) -> bytes:
    """An RGB PNG of ``width`` x ``height`` black pixels whose IDAT is a zlib stream of zeros.

    The compressed stream is built row by row (a few hundred KB for tens of megapixels); ``rows`` limits
    how many rows are actually encoded (the rest is missing: a truncated bomb).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)  # filter byte 0, then black pixels
    parts = [comp.compress(row) for _ in range(height if rows is None else rows)]
    parts.append(comp.flush())
    idat = b"".join(parts)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _jpeg_with_exif(**tags: object) -> bytes:
    img = Image.open(io.BytesIO(photo_bytes(RED)))
    exif = Image.Exif()
    if "orientation" in tags:
        exif[0x0112] = tags["orientation"]
    if "date" in tags:
        exif.get_ifd(0x8769)[36867] = tags["date"]
    if "gps" in tags:
        gps = exif.get_ifd(0x8825)
        lat, lon = tags["gps"]  # type: ignore[misc]
        gps[1], gps[2], gps[3], gps[4] = "N", (float(lat), 0.0, 0.0), "E", (float(lon), 0.0, 0.0)
        gps[31] = 1e30  # absurd horizontal error
    return _save(img, "JPEG", exif=exif)


def _corrupt_scan(data: bytes) -> bytes:
    """A JPEG whose entropy-coded data is overwritten with garbage (headers intact)."""
    sos = data.index(b"\xff\xda")
    body = bytearray(data)
    for i in range(sos + 20, len(body) - 2, 7):
        body[i] = 0xFF if i % 2 else 0x00
    return bytes(body)


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.txt", "a zip appended to a photo")
    return buf.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in (RED, GREEN, BLUE)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _tiff16() -> bytes:
    img = Image.new("I;16", (48, 32))
    img.putdata([(x * 1361) % 65536 for x in range(48 * 32)])
    return _save(img, "TIFF")


def _heic() -> bytes | None:
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        return _save(Image.open(io.BytesIO(photo_bytes(RED))), "HEIF")
    except Exception:  # no HEIF encoder in this build
        return None


def build_corpus() -> list[Hostile]:
    """Every hostile case (HEIC only when this Pillow can write it)."""
    red = photo_bytes(RED, size=(256, 192))
    cases = [
        Hostile("zero_bytes", b"", refuse=True, statuses=(422,)),
        Hostile("truncated_jpeg", red[: len(red) // 2], refuse=True, statuses=(422,)),
        Hostile("jpeg_header_only", red[:200], refuse=True, statuses=(422,)),
        Hostile("jpeg_soi_then_garbage", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, refuse=True),
        Hostile("jpeg_corrupt_scan", _corrupt_scan(red), either=True),
        Hostile("png_100000x100000_header", png_bomb(100_000, 100_000, rows=4), mime="image/png",
                refuse=True, statuses=(422,)),
        Hostile("png_bomb_over_pixel_limit", png_bomb(9_000, 9_000, rows=2_000), mime="image/png",
                refuse=True, statuses=(422,)),
        # Within the limits (49 Mpx, about 70 KB of zlib): decoded, in bounded memory.
        Hostile("png_bomb_within_limits", png_bomb(7_000, 7_000), mime="image/png", tags=("heavy",)),
        Hostile("png_1x1", _save(Image.new("RGB", (1, 1), RED), "PNG"), mime="image/png",
                label="red_admiral"),
        Hostile("jpeg_1x1", _save(Image.new("RGB", (1, 1), RED), "JPEG"), label="red_admiral"),
        Hostile("png_1x10000", _save(Image.new("RGB", (1, 10_000), RED), "PNG"), mime="image/png",
                refuse=True, statuses=(422,)),
        Hostile("png_10000x1", _save(Image.new("RGB", (10_000, 1), RED), "PNG"), mime="image/png",
                refuse=True, statuses=(422,)),
        Hostile("png_20_to_1", _save(Image.new("RGB", (400, 20), RED), "PNG"), mime="image/png",
                label="red_admiral"),
        Hostile("jpeg_plus_zip", red + _zip_bytes(), label="red_admiral"),
        Hostile("gif_plus_script", _save(Image.new("RGB", (40, 30), RED), "GIF")
                + b"\n/*<script>alert(1)</script>*/", mime="image/gif", label="red_admiral"),
        Hostile("zip_named_jpeg", _zip_bytes(), refuse=True, statuses=(415,)),
        Hostile("svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" '
                b'height="48"><script>alert(1)</script><rect width="64" height="48" fill="red"/></svg>',
                mime="image/svg+xml", refuse=True, statuses=(415,)),
        Hostile("html", b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
                mime="text/html", refuse=True, statuses=(415,)),
        Hostile("exif_orientation_9999", _jpeg_with_exif(orientation=9999), label="red_admiral"),
        Hostile("exif_huge_gps", _jpeg_with_exif(gps=(1e12, -1e12)), label="red_admiral", tags=("gps",)),
        Hostile("exif_malformed_date", _jpeg_with_exif(date="9999:99:99 99:99:99\x00junk"),
                label="red_admiral", tags=("date",)),
        Hostile("gif_animated", _animated_gif(), mime="image/gif", label="red_admiral"),
        Hostile("tiff_16bit", _tiff16(), mime="image/tiff"),
        Hostile("jpeg_cmyk", photo_bytes(RED, mode="CMYK"), label="red_admiral"),
        Hostile("png_palette_alpha", _save(Image.new("RGBA", (30, 30), (*RED, 255)).convert("P"), "PNG"),
                mime="image/png", label="red_admiral"),
    ]
    heic = _heic()
    if heic is not None:
        cases.append(Hostile("heic", heic, mime="image/heic", label="red_admiral"))
    return cases
