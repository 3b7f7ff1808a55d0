"""Accept-Language picks the common names in the answers that carry taxa (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.modelcard import LabelTaxon
from service.settings import Settings
from tests.helpers import photo_bytes, tiny_card, tiny_onnx_bytes
from tests.service.identify_support import BLUE, RED, files
from tests.service.observation_support import Env, make_env

FRENCH = {"red_admiral": "Vulcain", "green_hairstreak": "Thécla de la ronce"}  # common_blue: no French name here


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """tiny/1 whose taxonomy has French names for two of its three labels (common_name_fr)."""
    card = tiny_card()
    for label, name in FRENCH.items():
        card.taxonomy[label] = LabelTaxon.model_validate({**card.taxonomy[label].model_dump(),
                                                          "common_name_fr": name})
    folder = tmp_path / "models" / "tiny" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(tiny_onnx_bytes(card.num_classes, size=card.input.size))
    card.save(folder)
    return tmp_path / "models"


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    yield from make_env(settings)


def _identify(env: Env, colour: tuple[int, int, int], language: str | None) -> tuple[dict, dict]:
    headers = {"Accept-Language": language} if language is not None else {}
    r = env.client.post("/api/v1/identify", files=files(photo_bytes(colour)), headers=headers)
    assert r.status_code == 200, r.text
    return r.json(), dict(r.headers)


def test_identify_in_french(env: Env) -> None:
    body, headers = _identify(env, RED, "fr-FR,fr;q=0.9,en;q=0.5")
    assert headers["content-language"] == "fr"
    assert "accept-language" in headers["vary"].lower()
    top = body["results"][0]["taxon"]
    assert top["label"] == "red_admiral" and top["common_name"] == "Vulcain"
    assert top["common_names"] == {"en": "Red admiral", "fr": "Vulcain"}
    assert body["rollup"]["taxon"]["common_name"] == "Vulcain"
    assert body["rollup"]["answer"] == "Vulcain (Vanessa atalanta)"
    assert body["images"][0]["results"][0]["taxon"]["common_name"] == "Vulcain"
    by_label = {s["taxon"]["label"]: s["taxon"]["common_name"] for s in body["results"]}
    # No French name known for the common blue: null (the page shows the scientific name), never the English.
    assert by_label["common_blue"] is None


def test_identify_answer_sentence_in_french_at_a_coarse_rank(env: Env) -> None:
    r = env.client.post("/api/v1/identify", files=files(photo_bytes(RED), photo_bytes(RED), photo_bytes(BLUE)),
                        headers={"Accept-Language": "fr"})
    body = r.json()
    assert body["rollup"]["rank"] == "order"
    assert body["rollup"]["answer"] == "Ordre Lepidoptera : l'espèce demande l'avis d'un spécialiste."


@pytest.mark.parametrize("language", ["xx-YY", "de-DE,it;q=0.5", None, "", "garbage;;q=", "*", "en-US"])
def test_identify_in_english_otherwise(env: Env, language: str | None) -> None:
    body, headers = _identify(env, RED, language)
    assert headers["content-language"] == "en"
    assert body["results"][0]["taxon"]["common_name"] == "Red admiral"
    assert body["rollup"]["answer"] == "Red admiral (Vanessa atalanta)"


def test_taxa_search_and_lookup_in_french(env: Env) -> None:
    fr = {"Accept-Language": "fr-CH"}
    r = env.client.get("/api/v1/taxa", params={"q": "vulc"}, headers=fr)
    assert r.status_code == 200 and r.headers["content-language"] == "fr"
    (found,) = r.json()["data"]
    assert found["scientific_name"] == "Vanessa atalanta" and found["common_name"] == "Vulcain"
    assert found["common_names"] == {"en": "Red admiral", "fr": "Vulcain"}
    # A word of a French name matches too; in English the same taxon carries its English name.
    assert [t["scientific_name"] for t in env.client.get("/api/v1/taxa", params={"q": "ronce"}).json()["data"]] \
        == ["Callophrys rubi"]
    en = env.client.get(f"/api/v1/taxa/{found['id']}").json()
    assert en["common_name"] == "Red admiral"
    detail = env.client.get(f"/api/v1/taxa/{found['id']}", headers=fr).json()
    assert detail["ancestors"][0]["scientific_name"] == "Insecta"
    assert detail["ancestors"][0]["common_name"] == "Insecte"
    blue = env.client.get("/api/v1/taxa", params={"q": "icarus"}, headers=fr).json()["data"][0]
    assert blue["common_name"] is None and blue["common_names"] == {"en": "Common blue"}


def test_observations_and_queue_in_french(env: Env) -> None:
    created = env.post_obs("vol", photos=[photo_bytes(RED)])
    assert created.status_code == 201, created.text
    oid = created.json()["id"]
    fr = env.h("vol", **{"Accept-Language": "fr"})
    one = env.client.get(f"/api/v1/observations/{oid}", headers=fr)
    assert one.headers["content-language"] == "fr"
    obs = one.json()
    assert obs["taxon"]["common_name"] == "Vulcain"
    assert obs["prediction"]["taxon"]["common_name"] == "Vulcain"
    assert obs["prediction"]["result"]["rollup"]["answer"] == "Vulcain (Vanessa atalanta)"
    listed = env.client.get("/api/v1/observations", headers=fr).json()["data"][0]
    assert listed["taxon"]["common_name"] == "Vulcain"
    # The stored prediction stays in English: another reader gets it in English.
    assert env.client.get(f"/api/v1/observations/{oid}", headers=env.h("vol")).json()[
        "prediction"]["result"]["rollup"]["answer"] == "Red admiral (Vanessa atalanta)"
    queue = env.client.get("/api/v1/validation/queue", headers=env.h("exp", **{"Accept-Language": "fr"}))
    assert queue.status_code == 200, queue.text
    item = queue.json()["data"][0]["observation"]
    assert item["id"] == oid and item["prediction"]["result"]["results"][0]["taxon"]["common_name"] == "Vulcain"
    # A French name names a taxon wherever a name is accepted (a specialist's identification).
    r = env.identify("exp", oid, kind="propose", taxon="Vulcain")
    assert r.status_code == 201, r.text


def test_the_language_switch_lists_one_entry_per_catalogue_file(env: Env) -> None:
    from service.core.languages import catalogue_dir

    r = env.client.get("/static/i18n/languages.json")
    assert r.status_code == 200
    files = sorted(path.stem for path in catalogue_dir().glob("*.json"))
    assert sorted(r.json()) == files
    assert r.json()["en"] == "English" and r.json()["fr"] == "Français"
