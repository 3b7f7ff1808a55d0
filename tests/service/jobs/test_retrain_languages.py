"""The retrain carries the taxa's names in other languages over to the new card's taxonomy."""

from __future__ import annotations

from pathlib import Path

from service.core.taxonomy import read_taxonomy_csv
from service.jobs.params import RetrainCreate, RetrainParams
from service.jobs.retrain import observation_taxonomy, prepare
from service.observations.taxa import import_taxonomy_csv
from tests.service.jobs_support import base_dataset, jpeg
from tests.service.observation_support import GREEN, Env, env  # noqa: F401
from training.worker_entry import build_dataset

TAXONOMY = """label,scientific_name,common_name,common_name_fr,rank,genus,family,order
bombus,Bombus,Bumblebee,Bourdon,genus,Bombus,Apidae,Hymenoptera
vespidae,Vespidae,Wasp,,family,,Vespidae,Hymenoptera
"""


def test_names_in_other_languages_reach_the_retrained_taxonomy(env: Env, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "taxonomy.csv"
    path.write_text(TAXONOMY, encoding="utf-8")
    with env.session() as s:
        import_taxonomy_csv(s, path)
        s.commit()
    r = env.post_obs("vol", photos=[jpeg(GREEN, 1), jpeg(GREEN, 2)], licence="CC-BY")
    assert r.status_code == 201, r.text
    oid = r.json()["id"]
    for who in ("exp", "exp2"):
        assert env.identify(who, oid, "propose", taxon="Bourdon").status_code == 201  # a French name names it
    with env.session() as s:
        rows = observation_taxonomy(s, {"bombus"})
    assert rows["bombus"]["common_name"] == "Bumblebee" and rows["bombus"]["common_name_fr"] == "Bourdon"

    base = base_dataset(tmp_path / "base", n_train=4, n_valid=2)
    params = RetrainCreate(base_dataset=str(base)).model_dump(mode="json")
    params.update(name="tiny", base_dataset=str(base), min_new_class_photos=1, gate_holdout=0.25)
    spec = prepare(7, RetrainParams.model_validate(params), factory=env.app.state.sessionmaker,
                   settings=env.settings, work_dir=tmp_path / "work")
    assert read_taxonomy_csv(Path(spec.observations_taxonomy or "")).get("bombus").common_names == {"fr": "Bourdon"}
    merged = read_taxonomy_csv(Path(build_dataset(spec)["taxonomy"]))
    assert merged["bombus"].common_name == "Bumblebee" and merged["bombus"].common_names == {"fr": "Bourdon"}
