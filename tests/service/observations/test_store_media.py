"""Media serving and the all-or-nothing write: failures leave neither rows nor files behind."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from service.api.app import create_app
from service.observations.metadata import ObservationInput
from service.observations.photos import decode_uploads
from service.observations.store import create_observation
from service.store.storage import media_file
from service.store.tables import Observation, Photo, User
from tests.helpers import photo_bytes
from tests.service.observation_support import BLUE, GREEN, Env, env  # noqa: F401


def test_media_is_served_with_type_and_caching_headers(env: Env) -> None:  # noqa: F811
    png = photo_bytes(GREEN, fmt="PNG")
    body = env.post_obs(photos=[png]).json()
    sha = body["photos"][0]["sha256"]
    assert sha == hashlib.sha256(png).hexdigest() and body["photos"][0]["mime_type"] == "image/png"
    r = env.client.get(body["photos"][0]["url"], headers=env.h("vol"))
    assert r.status_code == 200 and r.content == png
    assert r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == f'"{sha}"'
    assert "immutable" in r.headers["cache-control"] and "max-age=31536000" in r.headers["cache-control"]
    again = env.client.get(body["photos"][0]["url"], headers=env.h("vol", **{"If-None-Match": f'"{sha}"'}))
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "..%2F..%2Fpollinid.sqlite3",
        "ABCDEF" + "0" * 58,
        "0" * 63,
        "0" * 65,
        "%2e%2e",
        "g" * 64,
    ],
)
def test_media_paths_cannot_escape(env: Env, bad: str) -> None:  # noqa: F811
    r = env.client.get(f"/api/v1/media/{bad}", headers=env.h("exp"))
    assert r.status_code in (404, 422), r.status_code
    assert r.headers["content-type"].startswith("application/json")
    assert "error" in r.json()


def test_unknown_media_is_404(env: Env) -> None:  # noqa: F811
    r = env.client.get("/api/v1/media/" + "a" * 64, headers=env.h("exp"))
    assert r.status_code == 404


def _install_failing_trigger(env: Env) -> None:  # noqa: F811
    with env.app.state.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER fail_photo BEFORE INSERT ON photos "
                    "WHEN NEW.position = 1 BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION fail_photo() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.position = 1 THEN RAISE EXCEPTION 'disk on fire'; END IF; RETURN NEW; "
                    "END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER fail_photo BEFORE INSERT ON photos FOR EACH ROW "
                    "EXECUTE FUNCTION fail_photo()"
                )
            )


def test_a_failed_write_leaves_no_rows_and_no_new_files(env: Env) -> None:  # noqa: F811
    kept = env.post_obs(photos=[photo_bytes(BLUE)]).json()  # committed before the failure
    kept_file = media_file(env.settings.media_path, kept["photos"][0]["sha256"])
    _install_failing_trigger(env)
    factory = env.app.state.sessionmaker
    with factory() as s:
        observer = s.get(User, env.ids["vol"])
    # Two photos: the second photo row fails inside the transaction, after both files were written.
    # The first photo is the already-stored blue one (must survive), the second is new (must go).
    photos = decode_uploads([photo_bytes(BLUE), photo_bytes(GREEN)], env.settings)
    with pytest.raises(Exception, match="disk on fire"):
        create_observation(
            factory=factory,
            settings=env.settings,
            observer=observer,
            meta=ObservationInput(observed_at=datetime(2024, 6, 1, tzinfo=UTC), licence="CC0"),
            photos=photos,
            prediction=None,
        )
    with pytest.raises(Exception, match="observed_at"):  # and no EXIF: refused before writing anything
        create_observation(
            factory=factory,
            settings=env.settings,
            observer=observer,
            meta=ObservationInput(),
            photos=photos,
            prediction=None,
        )
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Observation)) == 1
        assert s.scalar(select(func.count()).select_from(Photo)) == 1
    files = sorted(p for p in env.settings.media_path.rglob("*") if p.is_file())
    assert files == [kept_file]
    # Over HTTP the same failure is a 500 with a JSON body, and still leaves nothing behind.
    raw = TestClient(env.app, raise_server_exceptions=False)  # shares the running app's state
    r = raw.post(
        "/api/v1/observations",
        headers=env.h("vol"),
        data={"observed_at": "2024-06-01T10:00:00Z"},
        files=[
            ("photos", ("a.jpg", photo_bytes(GREEN), "image/jpeg")),
            ("photos", ("b.jpg", photo_bytes(GREEN, size=(30, 30)), "image/jpeg")),
        ],
    )
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert sorted(p for p in env.settings.media_path.rglob("*") if p.is_file()) == [kept_file]


def test_orphan_files_are_removed_at_start(env: Env) -> None:  # noqa: F811
    kept = env.post_obs().json()["photos"][0]["sha256"]
    root = env.settings.media_path
    orphan_sha = hashlib.sha256(b"orphan").hexdigest()
    orphan = media_file(root, orphan_sha)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    tmp = root / kept[:2] / ".tmp-crashed"
    tmp.write_bytes(b"half a photo")
    an_hour_ago = datetime.now(UTC).timestamp() - 3700  # older than the grace (orphan_grace_seconds)
    os.utime(tmp, (an_hour_ago, an_hour_ago))
    with TestClient(create_app(env.settings)):
        pass
    assert not orphan.exists() and not tmp.exists()
    assert media_file(root, kept).exists()
