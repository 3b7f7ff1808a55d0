"""An observation's photos (service.observations.photos): one decode each, reused by the prediction; EXIF."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from PIL import Image

from service.core.imaging import decode_image
from service.observations.photos import decode_uploads, exif_datetime, exif_gps
from service.settings import Settings
from tests.helpers import photo_bytes
from tests.service.identify_support import big_jpeg, files
from tests.service.observation_support import GREEN, RED, Env, env, jpeg_with_exif  # noqa: F401


def test_exif_date_and_gps_fill_missing_fields(env: Env) -> None:  # noqa: F811
    photo = jpeg_with_exif(
        GREEN, when="2023:07:14 09:30:00", offset="+02:00", gps=(-33.5, -70.25), error_m=12
    )
    r = env.post_obs(photos=[photo], observed_at=None, latitude=None, longitude=None)
    assert r.status_code == 201, r.text
    b = r.json()
    assert b["observed_at"] == "2023-07-14T07:30:00Z" and b["observed_at_source"] == "exif"
    assert b["latitude"] == pytest.approx(-33.5, abs=1e-4) and b["longitude"] == pytest.approx(
        -70.25, abs=1e-4
    )
    assert b["coordinate_precision_m"] == 12 and b["location_source"] == "exif"
    assert b["prediction"]["taxon"]["scientific_name"] == "Callophrys rubi"
    # Fields sent win over EXIF.
    r = env.post_obs(photos=[photo], latitude=10, longitude=20)
    assert (r.json()["latitude"], r.json()["location_source"]) == (10, "user")
    # No date anywhere: a clear 422.
    r = env.post_obs(photos=[photo_bytes()], observed_at=None)
    assert r.status_code == 422 and "observed_at" in r.json()["error"]["message"]


def test_each_photo_is_decoded_once_and_the_prediction_reuses_it(
    env: Env, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    photos = [photo_bytes(RED), photo_bytes(RED, size=(80, 60))]
    expected = env.client.post("/api/v1/identify", files=files(*photos)).json()
    opened: list[int] = []
    real_open = Image.open

    def counting_open(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(1)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)  # every decode of an upload starts here
    r = env.post_obs(photos=photos)
    monkeypatch.undo()
    assert r.status_code == 201, r.text
    assert len(opened) == len(photos), f"{len(opened)} decodes for {len(photos)} photos"
    # The prediction ran on those decodes, and gives /identify's answer for the same photos.
    stored = r.json()["prediction"]["result"]
    assert [s["taxon"]["label"] for s in stored["results"]] == [s["taxon"]["label"] for s in expected["results"]]
    assert [s["score"] for s in stored["results"]] == pytest.approx([s["score"] for s in expected["results"]],
                                                                    abs=1e-6)
    assert stored["rollup"] == expected["rollup"]


def test_one_decode_gives_the_metadata_and_the_model_input(sqlite_settings: Settings) -> None:
    seen: list[tuple[int, int]] = []

    def prepare(decoded, started: float) -> str:  # type: ignore[no-untyped-def]
        seen.append(decoded.image.size)
        return "prepared"

    [photo] = decode_uploads([big_jpeg(4000, 3000)], sqlite_settings, min_side=256, prepare=prepare)
    assert (photo.width, photo.height) == (4000, 3000) and photo.decoded.mime_type == "image/jpeg"
    assert photo.prepared == "prepared"
    assert len(seen) == 1 and 256 <= min(seen[0]) < 3000  # DCT-scaled for the model, once


def test_a_photo_the_model_cannot_take_is_still_kept(sqlite_settings: Settings) -> None:
    def broken(decoded, started: float) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("no model input for this one")

    [photo] = decode_uploads([photo_bytes(GREEN)], sqlite_settings, prepare=broken)
    assert photo.prepared is None and (photo.width, photo.height) == (64, 48)


def test_exif_read_with_pillow_tag_names() -> None:
    exif = decode_image(jpeg_with_exif(when="2023:07:14 09:30:00", offset="-05:30", gps=(-33.5, -70.25),
                                       error_m=7), keep_exif=True).exif
    assert exif_datetime(exif) == datetime(2023, 7, 14, 15, 0, tzinfo=UTC)
    lat, lon, error = exif_gps(exif)  # type: ignore[misc]
    assert (lat, lon, error) == (pytest.approx(-33.5, abs=1e-4), pytest.approx(-70.25, abs=1e-4), 7)
    bare = decode_image(jpeg_with_exif(when=None, gps=None), keep_exif=True).exif
    assert exif_datetime(bare) is None and exif_gps(bare) is None
