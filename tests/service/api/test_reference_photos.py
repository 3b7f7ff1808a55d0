"""GET /api/v1/taxa/{taxon}/photos: validated observations' photos first (with credit), then the bundled set;
never the photo of an observation that is not validated. On SQLite and PostgreSQL, and with an S3 bucket."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.ExifTags import GPS, IFD

from service.core.modelcard import CARD_FILENAME, ModelCard
from service.observations.taxa import sync_taxa_from_card
from service.settings import Settings
from tests.service.observation_support import RED, Env, env, make_env  # noqa: F401

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "models" / "pollinators" / "1"


def _shipped_taxa(e: Env) -> None:
    """The taxa of the shipped model (its card only: no network is loaded)."""
    with e.session() as session:
        sync_taxa_from_card(session, ModelCard.load(SHIPPED / CARD_FILENAME))
        session.commit()


def _red_photo_with_gps(size: tuple[int, int] = (800, 600)) -> bytes:
    """A red JPEG (the tiny model says Vanessa atalanta) carrying a GPS position in its EXIF."""
    img = Image.new("RGB", size, RED)
    for x in range(0, size[0], 40):  # a little texture
        img.paste((200, 40, 40), (x, 0, x + 10, size[1]))
    exif = Image.Exif()
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[GPS.GPSLatitudeRef], gps[GPS.GPSLatitude] = "N", (48.0, 51.0, 23.76)
    gps[GPS.GPSLongitudeRef], gps[GPS.GPSLongitude] = "E", (2.0, 21.0, 7.92)
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def _validated(e: Env, photo: bytes, licence: str = "CC-BY") -> dict[str, Any]:
    obs = e.post_obs("vol", photos=[photo], licence=licence)
    assert obs.status_code == 201, obs.text
    oid = obs.json()["id"]
    e.identify("exp", oid, "agree", taxon="Vanessa atalanta")
    r = e.identify("exp2", oid, "agree", taxon="Vanessa atalanta")
    assert r.json()["consensus"]["status"] == "validated", r.text
    return obs.json()  # type: ignore[no-any-return]


def _photos(e: Env, taxon: str, **query: Any) -> Any:
    return e.client.get(f"/api/v1/taxa/{taxon}/photos", params=query)


def _image(e: Env, url: str, **headers: str) -> Any:
    return e.client.get(url, headers=headers)  # no API key: any page may show them


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code and err["message"], err
    return err


def test_a_lepidoptera_species_of_the_shipped_model_gets_its_bundled_photos(env: Env) -> None:  # noqa: F811
    _shipped_taxa(env)
    r = _photos(env, "adonis")  # a model label of pollinators/1
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["taxon"]["scientific_name"] == "Polyommatus bellargus" and body["count"] == 3
    for item in body["data"]:
        assert item["source"] == "bundled" and item["observation_id"] is None
        assert item["licence"] == "CC0" and "lepidoptera100" in item["credit"]
        assert item["scientific_name"] == "Polyommatus bellargus"
        got = _image(env, item["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert got.headers["cache-control"].startswith("public, max-age=")
        with Image.open(io.BytesIO(got.content)) as img:
            assert img.size == (item["width"], item["height"]) and max(img.size) <= 240
            assert not img.getexif()
        again = _image(env, item["url"], **{"If-None-Match": got.headers["etag"]})
        assert again.status_code == 304
    assert len({i["url"] for i in body["data"]}) == 3
    # By scientific name, by id, and the same photos for the same taxon.
    by_name = _photos(env, "Polyommatus bellargus").json()
    assert [i["url"] for i in by_name["data"]] == [i["url"] for i in body["data"]]
    assert _photos(env, str(body["taxon"]["id"])).json()["data"] == body["data"]
    # The taxon is named in the language asked for.
    fr = env.client.get("/api/v1/taxa/adonis/photos", headers={"Accept-Language": "fr-FR,fr;q=0.9"})
    assert fr.json()["taxon"]["common_name"] == "Bel-Argus" and fr.json()["data"] == body["data"]


def test_a_family_shows_one_photo_of_each_species_before_a_second(env: Env) -> None:  # noqa: F811
    _shipped_taxa(env)
    r = _photos(env, "Lycaenidae", limit=6)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 6 and len({i["scientific_name"] for i in data}) == 6
    assert all(i["taxon_id"] != r.json()["taxon"]["id"] for i in data)  # the family itself has no photo


def test_a_taxon_without_any_photo_gets_an_empty_list(env: Env) -> None:  # noqa: F811
    _shipped_taxa(env)  # bumblebees: insects-extra has no licence, nothing of it is shipped
    r = _photos(env, "bombus")
    assert r.status_code == 200, r.text
    assert r.json()["taxon"]["scientific_name"] == "Bombus"
    assert r.json()["data"] == [] and r.json()["count"] == 0


def test_a_validated_observation_comes_first_with_its_credit(env: Env) -> None:  # noqa: F811
    obs = _validated(env, _red_photo_with_gps())
    r = _photos(env, "Vanessa atalanta", limit=4)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    first = data[0]
    assert first["source"] == "observation" and first["observation_id"] == obs["id"]
    assert first["credit"] == "© vol, CC-BY" and first["licence"] == "CC-BY"
    assert (first["width"], first["height"]) == (320, 240)  # a small copy, not the 800-px original
    assert [i["source"] for i in data[1:]] == ["bundled"] * 3  # then the shipped set
    got = _image(env, first["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(got.content)) as img:
        assert img.size == (320, 240)
        assert not img.getexif()  # no GPS position leaks
    # The genus shows it too; the species' own page of the observation still needs a key.
    genus = _photos(env, "Vanessa").json()["data"]
    assert genus[0]["observation_id"] == obs["id"]
    assert env.client.get(obs["photos"][0]["url"]).status_code == 401


def test_a_cc0_observation_is_credited_without_copyright_sign(env: Env) -> None:  # noqa: F811
    _validated(env, _red_photo_with_gps((120, 90)), licence="CC0")
    first = _photos(env, "red_admiral").json()["data"][0]
    assert first["credit"] == "vol, CC0" and (first["width"], first["height"]) == (120, 90)


def test_the_photo_of_an_observation_waiting_for_specialists_is_not_exposed(env: Env) -> None:  # noqa: F811
    obs = env.post_obs("vol", photos=[_red_photo_with_gps()]).json()
    assert obs["status"] == "needs_id"
    data = _photos(env, "Vanessa atalanta").json()["data"]
    assert data and all(i["source"] == "bundled" for i in data)
    sha = obs["photos"][0]["sha256"]
    _error(_image(env, f"/api/v1/reference-photos/observations/{sha}.jpg"), 404, "not_found")
    # Validated, then disputed by a withdrawal: served no longer.
    env.identify("exp", obs["id"], "agree", taxon="Vanessa atalanta")
    second = env.identify("exp2", obs["id"], "agree", taxon="Vanessa atalanta").json()
    assert second["consensus"]["status"] == "validated"
    assert _image(env, f"/api/v1/reference-photos/observations/{sha}.jpg").status_code == 200
    env.client.post(f"/api/v1/observations/{obs['id']}/identifications/{second['identification']['id']}/withdraw",
                    headers=env.h("exp2"))
    assert env.client.get(f"/api/v1/observations/{obs['id']}", headers=env.h("vol")).json()["status"] != "validated"
    assert all(i["source"] == "bundled" for i in _photos(env, "Vanessa atalanta").json()["data"])
    _error(_image(env, f"/api/v1/reference-photos/observations/{sha}.jpg"), 404, "not_found")


def test_unknown_taxon_bad_limit_and_bad_file_names(env: Env) -> None:  # noqa: F811
    err = _error(_photos(env, "Nonexistentia imaginaria"), 404, "not_found")
    assert "Nonexistentia imaginaria" in err["message"]
    _error(_photos(env, "999999"), 404, "not_found")
    for bad in (0, 13, "many"):
        _error(_photos(env, "red_admiral", limit=bad), 422, "invalid_request")
    for name in ("nope.jpg", "..%2Fpollinators%2F1%2Fmodel.json", "index.json", "A.JPG"):
        _error(_image(env, f"/api/v1/reference-photos/bundled/{name}"), 404, "not_found")
    for name in ("0" * 64 + ".jpg", "x.jpg", "0" * 64):
        _error(_image(env, f"/api/v1/reference-photos/observations/{name}"), 404, "not_found")


@pytest.fixture
def s3_env(s3_settings: Settings) -> Iterator[Env]:
    yield from make_env(s3_settings)


def test_observation_photos_in_an_s3_bucket(s3_env: Env) -> None:
    obs = _validated(s3_env, _red_photo_with_gps())
    sha = obs["photos"][0]["sha256"]
    assert not list(s3_env.settings.media_path.rglob(sha))  # the original lives in the bucket only
    first = _photos(s3_env, "Vanessa atalanta").json()["data"][0]
    assert first["observation_id"] == obs["id"]
    got = _image(s3_env, first["url"])
    assert got.status_code == 200
    with Image.open(io.BytesIO(got.content)) as img:
        assert img.size == (320, 240)
