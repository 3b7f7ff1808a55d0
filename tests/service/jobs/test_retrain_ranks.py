"""Issue 11, item 6: the loop keeps labels at any rank, and "not an insect" photos become ``no_insect`` data.

Specialists validate observations at genus (``bombus``), order (``coleoptera``, with ``coccinellidae`` inside
it), at a family no label covers (Syrphidae: a new class) and at ranks that give no training label (genus
*Vanessa*, which has a species label below it; class Insecta); two specialists find no insect in another.
The service's training manifest, the taxonomy it writes beside it and the retrain child's merged data
(:func:`training.worker_entry.build_dataset`) must carry each label with its rank; Darwin Core and CSV
exports must never show ``no_insect`` as a taxon. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from sqlalchemy import select

from service.core.taxonomy import TaxonTree, read_taxonomy_csv
from service.exports.kinds import export
from service.exports.training_manifest import write_training_manifest
from service.jobs.params import RetrainCreate, RetrainParams
from service.jobs.retrain import observation_taxonomy, prepare
from service.observations.taxa import import_taxonomy_csv, rebuild_paths
from service.store.tables import Observation, Taxon
from tests.service.jobs_support import base_dataset, jpeg
from tests.service.observation_support import BLUE, GREEN, RED, Env, env  # noqa: F401
from tests.service.observations.test_taxa_ranks import MIXED
from training.worker_entry import build_dataset


def _observation(env: Env, seed: int, photos: int = 1) -> int:  # noqa: F811
    r = env.post_obs("vol", photos=[jpeg((RED, GREEN, BLUE)[seed % 3], seed * 10 + i) for i in range(photos)],
                     licence="CC-BY")
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _identify(env: Env, obs_id: int, *taxa: str | None) -> dict:  # noqa: F811
    for who, taxon in zip(("exp", "exp2", "exp3"), taxa, strict=False):
        if taxon is None:
            r = env.identify(who, obs_id, "not_an_insect")
        else:
            r = env.identify(who, obs_id, "propose", taxon=taxon)
        assert r.status_code in (200, 201), r.text
    return r.json()["consensus"]


def _populate(env: Env, tmp_path: Path) -> dict[str, int]:  # noqa: F811
    path = tmp_path / "taxonomy.csv"
    path.write_text(MIXED, encoding="utf-8")
    with env.session() as s:
        import_taxonomy_csv(s, path)
        insecta = s.scalar(select(Taxon).where(Taxon.rank == "class"))
        diptera = Taxon(rank="order", scientific_name="Diptera", path="", parent_id=insecta.id)
        s.add(diptera)
        s.flush()
        s.add(Taxon(rank="family", scientific_name="Syrphidae", common_name="Hoverfly", path="",
                    parent_id=diptera.id))
        rebuild_paths(s)
        s.commit()
    ids = {}
    ids["bombus"] = _observation(env, 1, photos=2)
    assert _identify(env, ids["bombus"], "bombus", "Bombus")["taxon"]["rank"] == "genus"
    ids["beetle"] = _observation(env, 2)
    assert _identify(env, ids["beetle"], "coleoptera", "Coleoptera")["taxon"]["rank"] == "order"
    ids["hoverfly"] = _observation(env, 3)
    assert _identify(env, ids["hoverfly"], "Syrphidae", "Syrphidae")["taxon"]["scientific_name"] == "Syrphidae"
    ids["vanessa"] = _observation(env, 4)
    assert _identify(env, ids["vanessa"], "Vanessa", "Vanessa")["status"] == "validated"
    ids["insect"] = _observation(env, 5)
    consensus = _identify(env, ids["insect"], "Vanessa atalanta", "bombus")
    assert (consensus["status"], consensus["taxon"]["rank"]) == ("validated", "class")
    ids["flower"] = _observation(env, 6, photos=2)
    consensus = _identify(env, ids["flower"], None, None)
    assert (consensus["status"], consensus["taxon"]) == ("not_an_insect", None)
    return ids


def test_not_an_insect_is_a_status_of_its_own(env: Env, tmp_path: Path) -> None:  # noqa: F811
    ids = _populate(env, tmp_path)
    r = env.client.get(f"/api/v1/observations/{ids['flower']}", headers=env.h("admin"))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "not_an_insect" and body["community_taxon"] is None
    listed = env.client.get("/api/v1/observations", headers=env.h("admin"), params={"status": "not_an_insect"})
    assert listed.status_code == 200 and [o["id"] for o in listed.json()["data"]] == [ids["flower"]]
    # It no longer counts under the model's suggested taxon.
    with env.session() as s:
        assert s.get(Observation, ids["flower"]).taxon_id is None
    # A third specialist who names an insect reopens the question (2 of 3 is not above 2/3).
    r = env.identify("exp3", ids["flower"], "propose", taxon="bombus")
    assert r.json()["consensus"]["status"] == "disputed"


def test_the_training_data_keeps_every_rank_and_no_insect(env: Env, tmp_path: Path) -> None:  # noqa: F811
    ids = _populate(env, tmp_path)
    with env.session() as s:
        exported = write_training_manifest(s, env.settings, tmp_path / "manifest.csv")
    rows = list(csv.DictReader((tmp_path / "manifest.csv").open(encoding="utf-8")))
    got = sorted((int(r["observation_id"]), r["label"], r["rank"]) for r in rows)
    assert got == sorted([
        (ids["bombus"], "bombus", "genus"), (ids["bombus"], "bombus", "genus"),
        (ids["beetle"], "coleoptera", "order"),
        (ids["hoverfly"], "Syrphidae", "family"),
        (ids["flower"], "no_insect", "none"), (ids["flower"], "no_insect", "none"),
    ])
    assert (exported.records, exported.media) == (4, 6)
    assert all(Path(r["path"]).is_file() for r in rows)

    with env.session() as s:
        taxonomy = observation_taxonomy(s, {r["label"] for r in rows})
    assert taxonomy["bombus"] == {"scientific_name": "Bombus", "common_name": "Bumblebee", "rank": "genus",
                                  "genus": "Bombus", "family": "Apidae", "order": "Hymenoptera"}
    assert taxonomy["coleoptera"]["rank"] == "order" and taxonomy["coleoptera"]["order"] == "Coleoptera"
    assert (taxonomy["Syrphidae"]["rank"], taxonomy["Syrphidae"]["order"]) == ("family", "Diptera")
    assert taxonomy["no_insect"]["rank"] == "none" and taxonomy["no_insect"]["scientific_name"] is None


def test_the_retrain_child_reads_the_labels_with_their_ranks(env: Env, tmp_path: Path) -> None:  # noqa: F811
    ids = _populate(env, tmp_path)
    base = base_dataset(tmp_path / "base", n_train=4, n_valid=2)
    params = RetrainCreate(base_dataset=str(base)).model_dump(mode="json")
    params.update(name="tiny", base_dataset=str(base), min_new_class_photos=1, gate_holdout=0.25)
    spec = prepare(7, RetrainParams.model_validate(params), factory=env.app.state.sessionmaker,
                   settings=env.settings, work_dir=tmp_path / "work")
    with open(spec.observations_taxonomy or "", encoding="utf-8") as fh:
        assert next(csv.reader(fh))[:4] == ["label", "scientific_name", "common_name", "rank"]
    data = build_dataset(spec)
    report = data["report"]
    assert set(report["new_classes"]) == {"bombus", "coleoptera", "Syrphidae", "no_insect"}
    assert report["validated_observations"] == 4
    merged = read_taxonomy_csv(Path(data["taxonomy"]))
    assert (merged["bombus"].rank, merged["bombus"].family, merged["bombus"].order) == ("genus", "Apidae",
                                                                                       "Hymenoptera")
    assert merged["coleoptera"].rank == "order" and merged["Syrphidae"].rank == "family"
    assert merged["no_insect"].rank == "none" and not merged["no_insect"].is_taxon
    assert merged["red_admiral"].rank == "species"  # the base dataset's labels are unchanged
    # The training run's tree: each label at its own rank, no_insect outside the tree of taxa.
    tree = TaxonTree.from_labels(merged, merged)
    assert tree.label_key("bombus") == "genus:Bombus" and tree.label_key("coleoptera") == "order:Coleoptera"
    assert tree.label_key("Syrphidae") == "family:Syrphidae" and not tree.is_taxon_label("no_insect")
    with open(data["manifest"], encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {"bombus", "coleoptera", "Syrphidae", "no_insect"} <= {r["label"] for r in rows}
    observations = {r["observation_id"] for r in rows if r["observation_id"]}
    assert observations == {f"pollinid-observation-{ids[k]}" for k in ("bombus", "beetle", "hoverfly", "flower")}


def test_exports_never_show_no_insect_as_a_taxon(env: Env, tmp_path: Path) -> None:  # noqa: F811
    ids = _populate(env, tmp_path)
    with env.session() as s:
        export(s, env.settings, "dwca", tmp_path / "dwca.zip")
        export(s, env.settings, "csv", tmp_path / "all.csv")
    zf = zipfile.ZipFile(tmp_path / "dwca.zip")
    occ = list(csv.DictReader(io.StringIO(zf.read("occurrence.txt").decode()), delimiter="\t"))
    by_id = {int(row["id"].rsplit("/", 1)[-1]): row for row in occ}
    assert ids["flower"] not in by_id
    assert (by_id[ids["bombus"]]["scientificName"], by_id[ids["bombus"]]["taxonRank"]) == ("Bombus", "genus")
    assert (by_id[ids["bombus"]]["class"], by_id[ids["bombus"]]["order"]) == ("Insecta", "Hymenoptera")
    assert (by_id[ids["insect"]]["scientificName"], by_id[ids["insect"]]["taxonRank"]) == ("Insecta", "class")
    assert all("no_insect" not in value and value != "none" for row in occ for value in row.values())
    rows = {int(r["id"]): r for r in csv.DictReader((tmp_path / "all.csv").open(encoding="utf-8"))}
    flower = rows[ids["flower"]]
    assert flower["status"] == "not_an_insect"
    assert (flower["taxon_id"], flower["scientific_name"], flower["taxon_rank"]) == ("", "", "")
    assert all(r["taxon_rank"] != "none" and "no_insect" not in r["scientific_name"] for r in rows.values())


def test_migration_0003_reads_observations_closed_as_cannot_tell(env: Env) -> None:  # noqa: F811
    from service.store.db import create_db_engine
    from service.store.migrations import current_revision, downgrade, head_revision, upgrade

    flower = _observation(env, 1)
    assert _identify(env, flower, None, None)["status"] == "not_an_insect"
    blurry = _observation(env, 2)
    for who in ("exp", "exp2"):
        env.identify(who, blurry, "cannot_tell")
    engine = create_db_engine(env.settings.resolved_database_url)
    try:
        downgrade(engine, "0002")  # as before the status existed
        with env.session() as s:
            assert {s.get(Observation, i).status for i in (flower, blurry)} == {"cannot_tell"}
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    with env.session() as s:
        row = s.get(Observation, flower)
        assert (row.status, row.consensus_score, row.agreement_weight) == ("not_an_insect", 1.0, 2.0)
        assert s.get(Observation, blurry).status == "cannot_tell"
