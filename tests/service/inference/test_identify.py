"""POST /api/v1/identify on the tiny real model: answers, fusion, top_k, taxon filter, roll-up, OOD."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.helpers import photo_bytes, tiny_card, tiny_onnx_bytes
from tests.service.identify_support import BLUE, GREEN, RED, files


def test_identify_red_photo_on_a_real_database(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/identify", files=files(photo_bytes(RED)))
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["model"] == {"name": "tiny", "version": "1"}
    top = body["results"][0]
    assert top["taxon"] == {"label": "red_admiral", "scientific_name": "Vanessa atalanta",
                            "common_name": "Red admiral", "common_names": {"en": "Red admiral"},
                            "rank": "species", "genus": "Vanessa",
                            "family": "Nymphalidae", "order": "Lepidoptera"}
    assert top["score"] > 0.9
    assert len(body["results"]) == 3  # top_k=5 capped at the 3 labels
    assert sum(r["score"] for r in body["results"]) == pytest.approx(1.0, abs=1e-6)
    assert body["rollup"]["rank"] == "species" and body["rollup"]["taxon"]["label"] == "red_admiral"
    assert body["out_of_distribution"] is False
    assert len(body["images"]) == 1 and body["images"][0]["width"] == 64 and body["images"][0]["height"] == 48
    for key in ("decode", "inference", "queue", "total"):
        assert body["timings_ms"][key] >= 0
    assert body["timings_ms"]["total"] >= body["timings_ms"]["inference"]


def test_each_colour_is_its_class(client: TestClient) -> None:
    for colour, label in ((RED, "red_admiral"), (GREEN, "green_hairstreak"), (BLUE, "common_blue")):
        body = client.post("/api/v1/identify", files=files(photo_bytes(colour))).json()
        assert body["results"][0]["taxon"]["label"] == label


def test_several_photos_are_fused_by_mean_probability(client: TestClient) -> None:
    r = client.post("/api/v1/identify?top_k=3",
                    files=files(photo_bytes(RED), photo_bytes(RED, size=(80, 60)), photo_bytes(BLUE)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["index"] for p in body["images"]] == [0, 1, 2]
    assert body["images"][2]["results"][0]["taxon"]["label"] == "common_blue"
    per_photo = [{s["taxon"]["label"]: s["score"] for s in p["results"]} for p in body["images"]]
    fused = {s["taxon"]["label"]: s["score"] for s in body["results"]}
    for label, score in fused.items():
        assert score == pytest.approx(np.mean([p[label] for p in per_photo]), abs=1e-9)
    assert body["results"][0]["taxon"]["label"] == "red_admiral"
    assert fused["red_admiral"] == pytest.approx(2 / 3, abs=0.01)
    # 2/3 red admiral, 1/3 common blue: only the order passes 0.8.
    assert body["rollup"]["rank"] == "order" and body["rollup"]["taxon"]["scientific_name"] == "Lepidoptera"
    # The photos of one request were decoded in parallel and batched together.
    assert max(p["timings_ms"]["batch_size"] for p in body["images"]) >= 2


def test_top_k_limits_results(client: TestClient) -> None:
    body = client.post("/api/v1/identify?top_k=1", files=files(photo_bytes(GREEN))).json()
    assert [r["taxon"]["label"] for r in body["results"]] == ["green_hairstreak"]
    assert len(body["images"][0]["results"]) == 1


@pytest.mark.parametrize("taxon", ["Lycaenidae", "lycaenidae", "Polyommatus", "common_blue", "Common blue"])
def test_taxon_restricts_to_a_subtree_and_renormalises(client: TestClient, taxon: str) -> None:
    r = client.post("/api/v1/identify", params={"taxon": taxon}, files=files(photo_bytes(RED)))
    assert r.status_code == 200, r.text
    body = r.json()
    labels = {s["taxon"]["label"] for s in body["results"]}
    assert "red_admiral" not in labels
    assert sum(s["score"] for s in body["results"]) == pytest.approx(1.0, abs=1e-6)
    assert body["taxon_filter"] is not None
    if taxon == "Lycaenidae" or taxon == "lycaenidae":
        assert labels == {"green_hairstreak", "common_blue"}
        assert body["rollup"]["taxon"]["scientific_name"] == "Lycaenidae"
    else:
        assert labels == {"common_blue"}
        assert body["results"][0]["score"] == pytest.approx(1.0)


def test_rollup_reports_genus_when_species_disagree(tmp_path, sqlite_url) -> None:
    """Two species of one genus at ~50/50: the roll-up is the genus, with their summed score."""
    from service.core.modelcard import LabelTaxon

    models = tmp_path / "models"
    labels = ["red_admiral", "painted_lady", "common_blue"]
    card = tiny_card("genus", "1", labels=["red_admiral", "common_blue"])
    taxonomy = {"red_admiral": card.taxonomy["red_admiral"],
                "painted_lady": LabelTaxon(scientific_name="Vanessa cardui", common_name="Painted lady",
                                           genus="Vanessa", family="Nymphalidae", order="Lepidoptera"),
                "common_blue": card.taxonomy["common_blue"]}
    card = card.model_copy(update={"labels": labels, "taxonomy": taxonomy})
    # Red drives both Vanessa outputs equally.
    w = np.full((3, 3), -4.0, dtype=np.float32)
    w[0, 0] = w[0, 1] = 8.0
    w[2, 2] = 8.0
    folder = models / "genus" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(tiny_onnx_bytes(3, weights=w))
    card.save(folder)
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models)
    with TestClient(create_app(s)) as client:
        body = client.post("/api/v1/identify", files=files(photo_bytes(RED))).json()
    assert body["rollup"]["rank"] == "genus"
    assert body["rollup"]["taxon"]["scientific_name"] == "Vanessa"
    assert body["rollup"]["taxon"]["family"] == "Nymphalidae"
    assert body["rollup"]["score"] > 0.8
    assert body["results"][0]["score"] < 0.8


def _write_ood_model(root, threshold: float) -> None:
    card = tiny_card("oodtiny", "1")
    card.calibration.ood_energy_threshold = threshold
    folder = root / "oodtiny" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(tiny_onnx_bytes(3))
    card.save(folder)


def test_unknown_species_is_not_a_confident_species(tmp_path, sqlite_url) -> None:
    """A grey photo (no known colour) has a low energy: flagged, and the roll-up stops above species."""
    models = tmp_path / "models"
    _write_ood_model(models, threshold=3.0)
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models)
    with TestClient(create_app(s)) as client:
        red = client.post("/api/v1/identify", files=files(photo_bytes(RED))).json()
        grey = client.post("/api/v1/identify", files=files(photo_bytes((128, 128, 128)))).json()
        metrics = client.get("/metrics").text
    assert red["out_of_distribution"] is False and red["rollup"]["rank"] == "species"
    assert red["images"][0]["energy"] > 3.0
    assert grey["images"][0]["energy"] < 3.0
    assert grey["out_of_distribution"] is True and grey["images"][0]["out_of_distribution"] is True
    assert grey["rollup"] is not None and grey["rollup"]["rank"] == "order"
    assert "pollinid_out_of_distribution_photos_total" in metrics


def test_ood_caps_a_confident_species_at_genus(tmp_path, sqlite_url) -> None:
    """Even a 99% species is held back to its genus when the energy gate says 'unknown'."""
    models = tmp_path / "models"
    _write_ood_model(models, threshold=1000.0)  # every photo counts as out of distribution
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models)
    with TestClient(create_app(s)) as client:
        body = client.post("/api/v1/identify", files=files(photo_bytes(RED))).json()
    assert body["results"][0]["taxon"]["label"] == "red_admiral" and body["results"][0]["score"] > 0.99
    assert body["out_of_distribution"] is True
    assert body["rollup"]["rank"] == "genus" and body["rollup"]["taxon"]["scientific_name"] == "Vanessa"


def test_temperature_from_the_card_softens_scores(tmp_path, sqlite_url) -> None:
    models = tmp_path / "models"
    scores = {}
    for t in (1.0, 4.0):
        folder = models / "temp" / str(int(t))
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(tiny_onnx_bytes(3))
        tiny_card("temp", str(int(t)), temperature=t).save(folder)
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models)
    with TestClient(create_app(s)) as client:
        for version in ("1", "4"):
            client.app.state.registry.activate("temp", version)
            body = client.post("/api/v1/identify", files=files(photo_bytes(RED, noise=False))).json()
            assert body["model"]["version"] == version
            scores[version] = body["results"][0]["score"]
    assert scores["4"] < scores["1"]
    # Exact check: red (220,30,30) normalised with mean=std=0.5 -> pooled channels; logits = pooled @ W.
    pooled = (np.array([220, 30, 30]) / 255.0 - 0.5) / 0.5
    w = np.full((3, 3), -4.0)
    np.fill_diagonal(w, 8.0)
    logits = pooled @ w
    for version, t in (("1", 1.0), ("4", 4.0)):
        p = np.exp(logits / t) / np.exp(logits / t).sum()
        assert scores[version] == pytest.approx(p[0], abs=2e-3)


def test_openapi_documents_identify(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/api/v1/identify"]["post"]
    params = {p["name"] for p in op["parameters"]}
    assert {"top_k", "taxon"} <= params
    assert "multipart/form-data" in op["requestBody"]["content"]
    assert {"413", "415", "422", "503"} <= set(op["responses"])


def test_photos_is_the_field_and_images_still_works_for_one_release(client: TestClient) -> None:
    new = client.post("/api/v1/identify", files=files(photo_bytes(RED)))
    old = client.post("/api/v1/identify", files=files(photo_bytes(RED), field="images"))
    assert new.status_code == 200 and old.status_code == 200, (new.text, old.text)
    assert new.json()["results"] == old.json()["results"]
    assert new.json()["results"][0]["taxon"]["label"] == "red_admiral"
    both = client.post("/api/v1/identify", files=files(photo_bytes(RED)) + files(photo_bytes(BLUE), field="images"))
    assert both.status_code == 422 and both.json()["error"]["code"] == "invalid_request"
    assert "photos" in both.json()["error"]["message"]


def test_openapi_marks_images_deprecated(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/identify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    fields = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert fields["images"]["deprecated"] is True
    assert "next release" in fields["images"]["description"] and "photos" in fields["images"]["description"]
    assert not fields["photos"].get("deprecated")
    observations = spec["paths"]["/api/v1/observations"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "photos" in spec["components"]["schemas"][observations["schema"]["$ref"].rsplit("/", 1)[-1]]["properties"]
