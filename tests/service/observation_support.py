"""Shared fixtures and helpers for the users/observations/validation tests (import the fixtures you use)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from PIL.ExifTags import GPS, IFD, Base

from service import accounts as auth
from service.api.app import create_app
from service.settings import Settings
from tests.helpers import photo_bytes

RED = (220, 30, 30)
GREEN = (30, 200, 40)
BLUE = (30, 40, 220)
PEOPLE: dict[str, str] = {
    "vol": "volunteer",
    "vol2": "volunteer",
    "exp": "expert",
    "exp2": "expert",
    "exp3": "expert",
    "admin": "admin",
}


@dataclass
class Env:
    """A started app with one user per role (and a few more), their keys and helpers."""

    client: TestClient
    app: FastAPI
    settings: Settings
    keys: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def h(self, who: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}", **extra}

    def session(self) -> Any:
        return self.app.state.sessionmaker()

    def post_obs(
        self, who: str = "vol", *, photos: list[bytes] | None = None, key: str | None = None, **data: Any
    ) -> Any:
        photos = photos if photos is not None else [photo_bytes(RED)]
        form = {
            "observed_at": "2024-06-01T10:00:00Z",
            "latitude": "45.0",
            "longitude": "5.0",
            "licence": "CC-BY",
        }
        form.update({k: str(v) for k, v in data.items() if v is not None})
        for k in [k for k, v in data.items() if v is None]:
            form.pop(k, None)
        headers = self.h(who) if key is None else self.h(who, **{"Idempotency-Key": key})
        return self.client.post(
            "/api/v1/observations",
            headers=headers,
            data=form,
            files=[("photos", (f"p{i}.jpg", b, "image/jpeg")) for i, b in enumerate(photos)],
        )

    def identify(self, who: str, obs_id: int, kind: str = "agree", taxon: Any = None, **extra: Any) -> Any:
        body = {"kind": kind, **extra}
        if taxon is not None:
            body["taxon"] = taxon
        return self.client.post(
            f"/api/v1/observations/{obs_id}/identifications", headers=self.h(who), json=body
        )


def make_env(settings: Settings, people: dict[str, str] | None = None) -> Iterator[Env]:
    app = create_app(settings)
    with TestClient(app) as client:
        env = Env(client=client, app=app, settings=settings)
        with app.state.sessionmaker() as session:
            for name, role in (people or PEOPLE).items():
                user, key = auth.create_user(session=session, settings=settings, name=name, role=role)
                env.keys[name], env.ids[name] = key, user.id
            session.commit()
        yield env


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    """The app on SQLite and on PostgreSQL (via ``settings``/``database_url``)."""
    yield from make_env(settings)


def jpeg_with_exif(
    color: tuple[int, int, int] = RED,
    *,
    when: str | None = "2023:07:14 09:30:00",
    gps: tuple[float, float] | None = (48.8566, 2.3522),
    offset: str | None = None,
    error_m: float | None = None,
) -> bytes:
    """A JPEG with EXIF DateTimeOriginal and GPS, written with Pillow."""
    img = Image.open(io.BytesIO(photo_bytes(color)))
    exif = Image.Exif()
    if when:
        exif_ifd = exif.get_ifd(IFD.Exif)
        exif_ifd[Base.DateTimeOriginal] = when
        if offset:
            exif_ifd[Base.OffsetTimeOriginal] = offset
    if gps:
        lat, lon = gps

        def dms(v: float) -> tuple[float, float, float]:
            v = abs(v)
            d = int(v)
            m = int((v - d) * 60)
            s = round(((v - d) * 60 - m) * 60, 4)
            return (float(d), float(m), s)

        g = exif.get_ifd(IFD.GPSInfo)
        g[GPS.GPSLatitudeRef] = "N" if lat >= 0 else "S"
        g[GPS.GPSLatitude] = dms(lat)
        g[GPS.GPSLongitudeRef] = "E" if lon >= 0 else "W"
        g[GPS.GPSLongitude] = dms(lon)
        if error_m is not None:
            g[GPS.GPSHPositioningError] = error_m
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()
