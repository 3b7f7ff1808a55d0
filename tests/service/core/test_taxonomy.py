"""The label tree at any rank, and the committed answer (service/core/taxonomy.py), also through /identify."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.modelcard import InputSpec, LabelTaxon, ModelCard
from service.core.taxonomy import (
    ROOT_KEY,
    TaxonTree,
    committed_answer,
    plain_answer,
    read_taxonomy_csv,
    thresholds_for,
)
from service.settings import Settings
from tests.helpers import photo_bytes, tiny_onnx_bytes
from tests.service.identify_support import BLUE, GREEN, RED, files

MIXED_CSV = """label,common_name,scientific_name,rank,genus,family,order,group
bombus,Bumblebee,Bombus,genus,Bombus,Apidae,Hymenoptera,bee
apis_mellifera,Western honey bee,Apis mellifera,species,Apis,Apidae,Hymenoptera,bee
vespidae,Wasp,Vespidae,family,,Vespidae,Hymenoptera,wasp
coccinellidae,Ladybird,Coccinellidae,family,,Coccinellidae,Coleoptera,beetle
coleoptera,Beetle (other than ladybirds),Coleoptera,order,,,Coleoptera,beetle
peacock,Peacock,Aglais io,species,Aglais,Nymphalidae,Lepidoptera,butterfly
small_tortoiseshell,Small tortoiseshell,Aglais urticae,,Aglais,Nymphalidae,Lepidoptera,butterfly
no_insect,No insect (flower or plant only),,none,,,,no insect
"""

OLD_CSV = """label,scientific_name,common_name,genus,family,order
red_admiral,Vanessa atalanta,Red admiral,Vanessa,Nymphalidae,Lepidoptera
"""


@pytest.fixture
def tree(tmp_path: Path) -> TaxonTree:
    path = tmp_path / "taxonomy.csv"
    path.write_text(MIXED_CSV)
    return TaxonTree.from_csv(path)


def test_labels_at_every_rank_sit_in_one_tree_rooted_at_insecta(tree: TaxonTree) -> None:
    assert tree.label_key("bombus") == "genus:Bombus"
    assert [n.key for n in tree.lineage("genus:Bombus")] == [
        "genus:Bombus", "family:Apidae", "order:Hymenoptera", ROOT_KEY]
    assert [n.key for n in tree.lineage(tree.label_key("apis_mellifera"))][1:] == [
        "genus:Apis", "family:Apidae", "order:Hymenoptera", ROOT_KEY]
    assert tree.leaf("vespidae").rank == "family" and tree.leaf("vespidae").parent == "order:Hymenoptera"
    # A leaf inside a leaf: ladybirds lie inside the order whose own label means "other beetles".
    assert tree.leaf("coleoptera").key == "order:Coleoptera" and tree.leaf("coleoptera").rank == "order"
    assert tree.leaf("coccinellidae").parent == "order:Coleoptera"
    assert tree.descendant_labels("order:Coleoptera") == {"coleoptera", "coccinellidae"}
    # no_insect is a label but not a taxon: outside Insecta.
    assert tree.leaf("no_insect").rank == "none" and tree.leaf("no_insect").parent is None
    assert not tree.is_taxon_label("no_insect") and tree.is_taxon_label("bombus")
    assert "no_insect" not in tree.descendant_labels(ROOT_KEY)
    # A blank rank cell means species, as in CSVs written before the column existed.
    assert tree.leaf("small_tortoiseshell").rank == "species"
    assert [n.name for n in tree.find("bumblebee")] == ["Bombus"]


def test_old_csv_without_rank_loads_and_a_bad_rank_is_named(tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_text(OLD_CSV)
    info = read_taxonomy_csv(old)["red_admiral"]
    assert info.rank == "species" and info.genus == "Vanessa"
    assert TaxonTree.from_csv(old).lineage("label:red_admiral")[-1].key == ROOT_KEY
    bad = tmp_path / "bad.csv"
    bad.write_text("label,scientific_name,rank\nx,Xus,superfamily\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: label 'x'.*unknown rank 'superfamily'"):
        read_taxonomy_csv(bad)


def _answer(tree: TaxonTree, scores: dict[str, float], **thresholds: float):
    return committed_answer(tree, scores, thresholds_for(thresholds, 0.8))


def test_committed_answer_at_each_rank(tree: TaxonTree) -> None:
    species = _answer(tree, {"peacock": 0.9, "small_tortoiseshell": 0.05, "bombus": 0.05})
    assert (species.rank, species.name, species.kind) == ("species", "Aglais io", "taxon")
    genus = _answer(tree, {"peacock": 0.5, "small_tortoiseshell": 0.45, "bombus": 0.05})
    assert (genus.rank, genus.name) == ("genus", "Aglais") and genus.score == pytest.approx(0.95)
    bumblebee = _answer(tree, {"bombus": 0.85, "apis_mellifera": 0.1, "vespidae": 0.05})
    assert (bumblebee.rank, bumblebee.name) == ("genus", "Bombus")
    assert plain_answer(tree, bumblebee) == "Bumblebee (genus Bombus): the species needs an expert."
    # Bees of two genera: the family.
    bee = _answer(tree, {"bombus": 0.5, "apis_mellifera": 0.45, "vespidae": 0.05})
    assert (bee.rank, bee.name) == ("family", "Apidae")
    # A ladybird-or-other-beetle photo: the order, summed over the leaf and the leaf inside it.
    beetle = _answer(tree, {"coleoptera": 0.5, "coccinellidae": 0.45, "vespidae": 0.05})
    assert (beetle.rank, beetle.name, beetle.key) == ("order", "Coleoptera", "order:Coleoptera")
    assert beetle.score == pytest.approx(0.95)
    # A wasp-or-bee-or-beetle photo: an insect, not placed.
    insect = _answer(tree, {"vespidae": 0.3, "bombus": 0.3, "coleoptera": 0.35, "no_insect": 0.05})
    assert (insect.kind, insect.rank, insect.key) == ("insect", "class", ROOT_KEY)
    assert plain_answer(tree, insect).startswith("An insect we cannot place yet")
    nothing = _answer(tree, {"vespidae": 0.3, "no_insect": 0.4, "coleoptera": 0.3})
    assert nothing is None and "Not sure" in plain_answer(tree, None)
    flower = _answer(tree, {"no_insect": 0.9, "bombus": 0.1})
    assert (flower.kind, flower.rank) == ("no_insect", "none")
    assert plain_answer(tree, flower).startswith("No insect found in this photo")


def test_thresholds_are_per_rank_and_the_ood_gate_caps_the_rank(tree: TaxonTree) -> None:
    scores = {"peacock": 0.9, "small_tortoiseshell": 0.08, "no_insect": 0.02}
    assert _answer(tree, scores, species=0.95).rank == "genus"
    assert _answer(tree, scores, species=0.95, genus=0.99).rank == "family"
    assert _answer(tree, scores, species=0.95, genus=0.99, family=0.99, order=0.99, **{"class": 0.99}) is None
    assert _answer(tree, {"no_insect": 0.6, "bombus": 0.4}, no_insect=0.5).kind == "no_insect"
    capped = committed_answer(tree, scores, thresholds_for(None, 0.8), finest_rank="genus")
    assert capped.rank == "genus"


# -- through /identify, on a tiny exported model --------------------------------------------------------

POLLINATOR_TAXONOMY = {
    "peacock": LabelTaxon(scientific_name="Aglais io", common_name="Peacock", genus="Aglais",
                          family="Nymphalidae", order="Lepidoptera"),
    "bombus": LabelTaxon(scientific_name="Bombus", common_name="Bumblebee", rank="genus", genus="Bombus",
                         family="Apidae", order="Hymenoptera"),
    "no_insect": LabelTaxon(scientific_name=None, common_name="No insect", rank="none"),
}


def _pollinator_model(models: Path, thresholds: dict[str, float] | None, temperature: float = 1.0) -> None:
    """Red photos are the peacock, green ones a bumblebee, blue ones no insect; grey ones none of them."""
    card = ModelCard(name="pollinators", version="1", architecture="tiny-linear",
                     input=InputSpec(size=32, resize=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                     labels=list(POLLINATOR_TAXONOMY), taxonomy=POLLINATOR_TAXONOMY,
                     calibration={"temperature": temperature, "answer_thresholds": thresholds})  # type: ignore[arg-type]
    folder = models / card.name / card.version
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(tiny_onnx_bytes(3))
    card.save(folder)


def _identify(tmp_path: Path, sqlite_url: str, thresholds: dict[str, float] | None,
              *colors: tuple[int, int, int], temperature: float = 1.0) -> list[dict]:
    models = tmp_path / "models"
    _pollinator_model(models, thresholds, temperature)
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models)
    with TestClient(create_app(s)) as client:
        return [client.post("/api/v1/identify", files=files(photo_bytes(c))).json() for c in colors]


def test_identify_commits_to_the_rank_the_model_knows(tmp_path: Path, sqlite_url: str) -> None:
    thresholds = {"species": 0.9, "genus": 0.9, "family": 0.9, "order": 0.9, "class": 0.6, "no_insect": 0.9}
    red, green, blue, grey = _identify(tmp_path, sqlite_url, thresholds, RED, GREEN, BLUE, (128, 128, 128))
    assert red["rollup"]["rank"] == "species" and red["rollup"]["taxon"]["scientific_name"] == "Aglais io"
    assert red["rollup"]["answer"] == "Peacock (Aglais io)"
    assert green["rollup"]["rank"] == "genus" and green["rollup"]["taxon"]["label"] == "bombus"
    assert green["rollup"]["answer"] == "Bumblebee (genus Bombus): the species needs an expert."
    assert green["rollup"]["taxon"]["family"] == "Apidae" and green["results"][0]["taxon"]["rank"] == "genus"
    assert blue["rollup"]["kind"] == "no_insect" and blue["rollup"]["rank"] == "none"
    assert blue["rollup"]["answer"].startswith("No insect found")
    # Grey: a third to each label, so no species and no genus; two thirds are insects.
    assert grey["results"][0]["score"] < 0.4
    assert grey["rollup"]["kind"] == "insect" and grey["rollup"]["taxon"]["scientific_name"] == "Insecta"


def test_identify_reads_the_thresholds_from_the_card(tmp_path: Path, sqlite_url: str) -> None:
    """The same photo, a stricter card: the red photo's ~0.95 peacock no longer passes as a species."""
    strict = {"species": 0.99, "genus": 0.99, "family": 0.99, "order": 0.99, "class": 0.5}
    (red,) = _identify(tmp_path, sqlite_url, strict, RED, temperature=5.0)
    assert 0.85 < red["results"][0]["score"] < 0.99
    assert red["rollup"]["kind"] == "insect", red["rollup"]
    without = tmp_path / "default"
    without.mkdir()
    (red_default,) = _identify(without, sqlite_url.replace(".sqlite3", "-2.sqlite3"), None, RED, temperature=5.0)
    assert red_default["rollup"]["rank"] == "species"  # the service's default 0.8 everywhere


def test_openapi_documents_the_committed_answer(tmp_path: Path, sqlite_url: str) -> None:
    models = tmp_path / "models"
    _pollinator_model(models, None)
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models)
    with TestClient(create_app(s)) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    doc = schema["RollupPublic"]["description"]
    assert "committed answer" in doc and "no insect" in doc
    assert set(schema["RollupPublic"]["properties"]["kind"]["enum"]) == {"taxon", "insect", "no_insect"}
