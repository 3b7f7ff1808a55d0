"""Taxa: loaded from model cards and CSV, prefix search, a taxon with its ancestors."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service.cli.main import main
from service.observations.taxa import sync_taxa_from_card
from service.settings import get_settings
from service.store.tables import Taxon, TaxonLabel
from tests.helpers import tiny_card
from tests.service.observation_support import Env, env  # noqa: F401

CSV = """label,scientific_name,common_name,genus,family,order
bombus_terrestris,Bombus terrestris,Buff-tailed bumblebee,Bombus,Apidae,Hymenoptera
apis_mellifera,Apis mellifera,Western honey bee,Apis,Apidae,Hymenoptera
red_admiral,Vanessa atalanta,Red Admiral butterfly,Vanessa,Nymphalidae,Lepidoptera
"""


def test_taxa_from_the_model_card_at_start(env: Env) -> None:  # noqa: F811
    r = env.client.get("/api/v1/taxa", params={"q": "vanessa"})
    assert r.status_code == 200
    names = [t["scientific_name"] for t in r.json()["data"]]
    assert names == ["Vanessa", "Vanessa atalanta"]
    sp = r.json()["data"][1]
    detail = env.client.get(f"/api/v1/taxa/{sp['id']}").json()
    assert [(a["rank"], a["scientific_name"]) for a in detail["ancestors"]] == [
        ("class", "Insecta"),
        ("order", "Lepidoptera"),
        ("family", "Nymphalidae"),
        ("genus", "Vanessa"),
    ]
    assert detail["labels"] == ["red_admiral"] and detail["common_name"] == "Red admiral"
    fam = env.client.get(f"/api/v1/taxa/{detail['ancestors'][2]['id']}").json()
    assert [c["scientific_name"] for c in fam["children"]] == ["Vanessa"]


def test_prefix_search_on_common_names_and_words(env: Env) -> None:  # noqa: F811
    def names(q: str, **p) -> list[str]:
        return [
            t["scientific_name"] for t in env.client.get("/api/v1/taxa", params={"q": q, **p}).json()["data"]
        ]

    assert names("green") == ["Callophrys rubi"]  # common name Green hairstreak
    assert names("hairst") == ["Callophrys rubi"]  # a word of the common name
    assert names("ica") == ["Polyommatus icarus"]  # the epithet
    assert names("LYC") == ["Lycaenidae"]
    assert names("%") == [] and names("_") == []  # LIKE wildcards are escaped
    assert names("'; DROP TABLE taxa; --") == []
    assert set(names("", rank="family")) == {"Nymphalidae", "Lycaenidae"}
    assert env.client.get("/api/v1/taxa/999999").status_code == 404
    assert env.client.get("/api/v1/taxa/abc").status_code == 422


def test_sync_is_idempotent_and_updates(env: Env) -> None:  # noqa: F811
    with env.session() as s:
        before = s.scalars(select(Taxon.id)).all()
        sync_taxa_from_card(s, tiny_card())
        s.commit()
        assert sorted(s.scalars(select(Taxon.id)).all()) == sorted(before)
        card = tiny_card(labels=["red_admiral"])
        # A copy: the helpers' taxonomy is shared by every test (changing it in place leaked "Admiral").
        card.taxonomy["red_admiral"] = card.taxonomy["red_admiral"].model_copy(update={"common_name": "Admiral"})
        sync_taxa_from_card(s, card)
        s.commit()
        t = s.scalar(select(Taxon).where(Taxon.scientific_name == "Vanessa atalanta"))
        assert t.common_name == "Admiral"


def test_import_taxonomy_cli(env: Env, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: F811
    path = tmp_path / "taxa.csv"
    path.write_text(CSV, encoding="utf-8")
    monkeypatch.setenv("POLLINID_DATABASE_URL", env.settings.resolved_database_url)
    monkeypatch.setenv("POLLINID_DATA_DIR", str(env.settings.data_dir))
    get_settings.cache_clear()
    try:
        assert main(["import", "taxonomy", str(path)]) == 0
        assert "created" in capsys.readouterr().out
        bad = tmp_path / "bad.csv"
        bad.write_text("name,genus\nx,y\n", encoding="utf-8")
        assert main(["import", "taxonomy", str(bad)]) == 2
        assert main(["import", "taxonomy", str(tmp_path / "missing.csv")]) == 2
    finally:
        get_settings.cache_clear()
    bees = env.client.get("/api/v1/taxa", params={"q": "Apidae"}).json()["data"]
    assert [b["rank"] for b in bees] == ["family"]
    bumble = env.client.get("/api/v1/taxa", params={"q": "buff"}).json()["data"][0]
    detail = env.client.get(f"/api/v1/taxa/{bumble['id']}").json()
    assert [a["scientific_name"] for a in detail["ancestors"]] == ["Insecta", "Hymenoptera", "Apidae", "Bombus"]
    with env.session() as s:
        # The label from the CSV maps to the same species taxon the card created.
        ra = s.get(TaxonLabel, "red_admiral")
        assert s.get(Taxon, ra.taxon_id).scientific_name == "Vanessa atalanta"
    # The observations' taxon filter uses the imported tree.
    r = env.client.get("/api/v1/observations", headers=env.h("exp"), params={"taxon": "Hymenoptera"})
    assert r.status_code == 200 and r.json()["count"] == 0
