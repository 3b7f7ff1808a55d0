"""Observations stored: upload with prediction, idempotency, edits, visibility (service.observations.store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from service.settings import Settings
from service.store.tables import Observation, Photo
from tests.helpers import photo_bytes
from tests.service.observation_support import BLUE, RED, Env, env, make_env  # noqa: F401


def count_rows(env: Env, table) -> int:  # noqa: F811
    with env.session() as s:
        return s.scalar(select(func.count()).select_from(table))


def media_files(env: Env) -> list:  # noqa: F811
    return sorted(p for p in env.settings.media_path.rglob("*") if p.is_file())


def test_create_stores_photos_metadata_and_prediction(env: Env) -> None:  # noqa: F811
    r = env.post_obs(
        photos=[photo_bytes(RED), photo_bytes(RED, size=(80, 60))],
        session_id="spipoll-1",
        flower="Knautia arvensis",
        notes="on the flower",
        coordinate_precision_m=15,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "needs_id" and body["observer_name"] == "vol"
    assert body["observed_at"] == "2024-06-01T10:00:00Z" and body["observed_at_source"] == "user"
    assert (body["latitude"], body["longitude"], body["coordinate_precision_m"]) == (45.0, 5.0, 15.0)
    assert body["session_id"] == "spipoll-1" and body["flower_text"] == "Knautia arvensis"
    assert [p["width"] for p in body["photos"]] == [64, 80]
    pred = body["prediction"]
    assert (pred["model_name"], pred["model_version"]) == ("tiny", "1")
    assert pred["taxon"]["scientific_name"] == "Vanessa atalanta"  # red photo: class 0
    assert pred["top1_score"] > 0.9 and 0 < pred["top_margin"] <= pred["top1_score"]
    top_k = pred["result"]["top_k"]
    assert top_k[0]["label"] == "red_admiral" and len(top_k) == 3
    assert pred["result"]["rollup"]["taxon"]["label"] == "red_admiral"
    assert body["taxon"]["scientific_name"] == "Vanessa atalanta"
    # Stored content-addressed: one file per distinct photo.
    files = media_files(env)
    assert sorted(f.name for f in files) == sorted(p["sha256"] for p in body["photos"])
    assert all(f.parent.name == f.name[:2] for f in files)
    again = env.post_obs(photos=[photo_bytes(RED)])
    assert again.status_code == 201
    assert len(media_files(env)) == 2 and count_rows(env, Photo) == 3


def test_idempotency_key_replays_the_first_result(env: Env) -> None:  # noqa: F811
    first = env.post_obs(key="3f0a6c1e-8d1b-4c55-9a59-6e1f1d1c2b3a")
    second = env.post_obs(key="3f0a6c1e-8d1b-4c55-9a59-6e1f1d1c2b3a")
    assert first.status_code == second.status_code == 201
    assert second.json()["id"] == first.json()["id"]
    assert second.headers.get("idempotent-replayed") == "true"
    assert count_rows(env, Observation) == 1
    # Another volunteer may use the same key for their own observation.
    other = env.post_obs("vol2", key="3f0a6c1e-8d1b-4c55-9a59-6e1f1d1c2b3a")
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    # The same key with a different request is refused.
    changed = env.post_obs(key="3f0a6c1e-8d1b-4c55-9a59-6e1f1d1c2b3a", notes="something else")
    assert changed.status_code == 422 and changed.json()["error"]["code"] == "invalid_idempotency_key"
    assert count_rows(env, Observation) == 2


@pytest.mark.parametrize("key", ["short", "has space in it", "x" * 200, "bad/slash/key", "semi;colon;key"])
def test_malformed_idempotency_key(env: Env, key: str) -> None:  # noqa: F811
    r = env.client.post(
        "/api/v1/observations",
        headers=env.h("vol", **{"Idempotency-Key": key}),
        data={"observed_at": "2024-06-01T10:00:00Z"},
        files=[("photos", ("a.jpg", photo_bytes(), "image/jpeg"))],
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_idempotency_key"
    assert count_rows(env, Observation) == 0


def test_bad_input_is_a_clear_4xx_and_writes_nothing(env: Env) -> None:  # noqa: F811
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    cases = [
        (dict(photos=[photo_bytes()] * 6), 422, "too_many_photos"),
        (dict(latitude=91), 422, "invalid_request"),
        (dict(longitude=-181), 422, "invalid_request"),
        (dict(latitude=45, longitude=None), 422, "invalid_request"),
        (dict(observed_at=future), 422, "invalid_request"),
        (dict(observed_at="yesterday-ish"), 422, "invalid_request"),
        (dict(flower_taxon="Nonexistens florens"), 422, "unknown_taxon"),
        (dict(licence="All rights reserved"), 422, "invalid_request"),
        (dict(photos=[b"<svg xmlns='http://www.w3.org/2000/svg'/>"]), 415, "unsupported_media_type"),
        (dict(photos=[b""]), 422, None),
    ]
    for kwargs, status, code in cases:
        r = env.post_obs(**kwargs)
        assert r.status_code == status, (kwargs.keys(), r.status_code, r.text)
        assert "error" in r.json() and r.json()["error"]["message"]
        if code:
            assert r.json()["error"]["code"] == code, (kwargs.keys(), r.json())
    none = env.client.post("/api/v1/observations", headers=env.h("vol"), data={"observed_at": "2024-01-01"})
    assert none.status_code == 422
    assert count_rows(env, Observation) == 0 and media_files(env) == []


def test_volunteers_see_and_edit_only_their_own(env: Env) -> None:  # noqa: F811
    mine = env.post_obs("vol").json()["id"]
    theirs = env.post_obs("vol2").json()["id"]
    c = env.client
    assert c.get(f"/api/v1/observations/{theirs}", headers=env.h("vol")).status_code == 404
    r = c.patch(f"/api/v1/observations/{theirs}", headers=env.h("vol"), json={"notes": "mine now"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    listed = c.get("/api/v1/observations", headers=env.h("vol")).json()
    assert [o["id"] for o in listed["data"]] == [mine] and listed["count"] == 1
    assert (
        c.get("/api/v1/observations", headers=env.h("vol"), params={"observer": env.ids["vol2"]}).json()[
            "count"
        ]
        == 0
    )
    # Experts and admins see everything; only the observer or an admin edits.
    assert c.get("/api/v1/observations", headers=env.h("exp")).json()["count"] == 2
    assert c.get(f"/api/v1/observations/{theirs}", headers=env.h("exp")).status_code == 200
    assert (
        c.patch(f"/api/v1/observations/{theirs}", headers=env.h("exp"), json={"notes": "x"}).status_code
        == 403
    )
    assert (
        c.patch(f"/api/v1/observations/{theirs}", headers=env.h("admin"), json={"notes": "ok"}).status_code
        == 200
    )
    photo = c.get(f"/api/v1/observations/{theirs}", headers=env.h("exp")).json()["photos"][0]["sha256"]
    assert c.get(f"/api/v1/media/{photo}", headers=env.h("vol2")).status_code == 200
    # vol uploaded the same red photo, so this one is theirs too; a photo only vol2 has is not.
    only_theirs = env.post_obs("vol2", photos=[photo_bytes(BLUE)]).json()["photos"][0]["sha256"]
    assert c.get(f"/api/v1/media/{only_theirs}", headers=env.h("vol")).status_code == 404
    assert c.get(f"/api/v1/media/{only_theirs}", headers=env.h("exp")).status_code == 200


def test_patch_edits_and_validates(env: Env) -> None:  # noqa: F811
    oid = env.post_obs().json()["id"]
    url = f"/api/v1/observations/{oid}"
    r = env.client.patch(
        url,
        headers=env.h("vol"),
        json={
            "latitude": -12.5,
            "longitude": 130.1,
            "licence": "CC0",
            "notes": "edited",
            "flower_taxon": "Vanessa",
            "session_id": "s-2",
            "observed_at": "2024-05-01T08:00:00+02:00",
        },
    )
    assert r.status_code == 200, r.text
    b = r.json()
    assert (b["latitude"], b["longitude"], b["licence"], b["notes"], b["session_id"]) == (
        -12.5,
        130.1,
        "CC0",
        "edited",
        "s-2",
    )
    assert b["flower_taxon"]["rank"] == "genus" and b["observed_at"] == "2024-05-01T06:00:00Z"
    for bad in (
        {"latitude": 100},
        {"observed_at": "2999-01-01T00:00:00Z"},
        {"flower_taxon": "Nope nope"},
        {"licence": "GPL"},
        {"status": "validated"},
        {"latitude": None},
    ):
        r = env.client.patch(url, headers=env.h("vol"), json=bad)
        assert r.status_code == 422, (bad, r.text)
    assert env.client.get(url, headers=env.h("vol")).json()["latitude"] == -12.5


def test_without_a_model_the_observation_is_stored_without_prediction(tmp_path, sqlite_url) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=empty)
    for e in make_env(settings, {"vol": "volunteer"}):
        r = e.post_obs()
        assert r.status_code == 201, r.text
        assert r.json()["prediction"] is None and r.json()["taxon"] is None
