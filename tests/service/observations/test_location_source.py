"""How an observation's place was given (``location_source``): the pages say gps, map or typed; unknown is refused."""

from __future__ import annotations

import pytest

from service.core.vocabulary import LocationSource
from tests.service.observation_support import GREEN, Env, env, jpeg_with_exif  # noqa: F401


@pytest.mark.parametrize("source", [LocationSource.gps, LocationSource.map, LocationSource.typed])
def test_the_source_sent_is_stored_with_the_precision(env: Env, source: LocationSource) -> None:  # noqa: F811
    r = env.post_obs(latitude=45.18, longitude=5.72, coordinate_precision_m=25, location_source=source.value)
    assert r.status_code == 201, r.text
    body = env.client.get(f"/api/v1/observations/{r.json()['id']}", headers=env.h("vol")).json()
    assert (body["latitude"], body["longitude"]) == (pytest.approx(45.18), pytest.approx(5.72))
    assert body["coordinate_precision_m"] == 25 and body["location_source"] == source.value


def test_without_a_source_the_place_is_the_users_and_exif_fills_only_what_is_missing(env: Env) -> None:  # noqa: F811
    r = env.post_obs()
    assert r.status_code == 201 and r.json()["location_source"] == "user"
    photo = jpeg_with_exif(GREEN, when="2023:07:14 09:30:00", gps=(-33.5, -70.25), error_m=12)
    r = env.post_obs(photos=[photo], latitude=None, longitude=None)
    assert r.status_code == 201 and r.json()["location_source"] == "exif"


def test_an_unknown_source_or_one_without_coordinates_is_refused(env: Env) -> None:  # noqa: F811
    r = env.post_obs(location_source="satellite")
    assert r.status_code == 422 and r.json()["error"]["detail"][0]["field"] == "body.location_source"
    r = env.post_obs(latitude=None, longitude=None, location_source="map")
    assert r.status_code == 422 and r.json()["error"]["detail"] == {"field": "location_source"}
    assert "latitude" in r.json()["error"]["message"]
    assert env.client.get("/api/v1/observations", headers=env.h("vol")).json()["count"] == 0
