"""Helpers shared by the identification tests (not fixtures: plain functions)."""

from __future__ import annotations

import io
import re
import struct
import zlib
from typing import Any

from PIL import Image

from tests.helpers import photo_bytes

RED = (220, 30, 30)
GREEN = (30, 200, 40)
BLUE = (30, 40, 220)


def files(*blobs: bytes, name: str = "photo.jpg", mime: str = "image/jpeg",
          field: str = "photos") -> list[tuple[str, Any]]:
    """Multipart ``photos`` fields for the test client (``field="images"``: the deprecated name)."""
    return [(field, (f"{i}-{name}", blob, mime)) for i, blob in enumerate(blobs)]


def red_jpeg() -> bytes:
    return photo_bytes(RED)


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG claiming ``width x height`` RGB pixels, with a tiny IDAT (no pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def big_jpeg(width: int = 4000, height: int = 3000, color: tuple[int, int, int] = RED) -> bytes:
    """A large, flat JPEG (cheap to encode)."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(found.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(4))
    return total
