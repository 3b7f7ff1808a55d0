"""Issue 11, item 6, end to end: a retrain learns a genus label and ``no_insect`` from the specialists' work.

Volunteers photograph red, green and blue butterflies (the active model's species), yellow bumblebees that the
specialists validate at genus *Bombus* only (the label ``bombus``), and purple flowers that the specialists
find no insect in. The real worker runs the training child; the candidate's card must hold ``bombus`` at genus
rank and ``no_insect`` as a label that is not a taxon, and the service must load it (taxa synced, no crash).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.modelcard import LabelTaxon, ModelCard
from service.jobs.worker import Worker
from service.observations.taxa import sync_taxa, taxon_for_label
from service.settings import Settings
from tests.service.jobs_support import PURPLE, TRAIN_OPTIONS, YELLOW, base_dataset, jpeg, write_weak_model
from tests.service.observation_support import BLUE, GREEN, RED, Env, make_env

pytestmark = pytest.mark.slow

PEOPLE = {"vol1": "volunteer", "vol2": "volunteer", "vol3": "volunteer", "vol4": "volunteer",
          "vol5": "volunteer", "exp": "expert", "exp2": "expert", "admin": "admin"}


@pytest.fixture
def e2e(tmp_path: Path, database_url: str) -> Iterator[Env]:
    models = tmp_path / "models"
    write_weak_model(models)
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, models_dir=models,
                        max_wait_ms=2.0, model_poll_seconds=0.2, worker_heartbeat_seconds=0.5,
                        retrain_data_roots=[tmp_path])
    yield from make_env(settings, PEOPLE)


def _observe(env: Env, who: str, color: tuple[int, int, int], seed: int, taxon: str | None) -> None:
    r = env.post_obs(who, photos=[jpeg(color, seed)])
    assert r.status_code == 201, r.text
    obs_id = int(r.json()["id"])
    for expert in ("exp", "exp2"):
        if taxon is None:
            r = env.identify(expert, obs_id, "not_an_insect")
        else:
            r = env.identify(expert, obs_id, "propose", taxon=taxon)
        assert r.status_code in (200, 201), r.text
    assert r.json()["consensus"]["status"] == ("not_an_insect" if taxon is None else "validated")


def test_a_retrain_learns_a_genus_label_and_no_insect(e2e: Env, tmp_path: Path) -> None:
    env = e2e
    base = base_dataset(tmp_path / "base")
    with env.session() as s:
        sync_taxa(s, {"bombus": LabelTaxon(scientific_name="Bombus", common_name="Bumblebee", rank="genus",
                                           genus="Bombus", family="Apidae", order="Hymenoptera")})
        s.commit()
    seed = 2000
    for who in ("vol1", "vol2", "vol3", "vol4", "vol5"):
        for color, taxon in ((GREEN, "Callophrys rubi"), (RED, "Vanessa atalanta"), (BLUE, "Polyommatus icarus"),
                             (YELLOW, "bombus"), (YELLOW, "Bombus"), (PURPLE, None), (PURPLE, None)):
            seed += 1
            _observe(env, who, color, seed, taxon)

    body = {"base_dataset": str(base), "include_observations": True, "auto_activate": False,
            "min_new_class_photos": 6, "gate_holdout": 0.25, **TRAIN_OPTIONS}
    r = env.client.post("/api/v1/admin/retrain", headers=env.h("admin"), json=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert Worker(env.settings, env.app.state.sessionmaker, worker_id="ranks-worker").run_once() is True
    job = env.client.get(f"/api/v1/admin/jobs/{job_id}", headers=env.h("admin")).json()
    assert job["state"] == "succeeded", (job["error"], job["log_tail"][-15:])
    data = job["result"]["data"]
    assert data["new_classes"] == ["bombus", "no_insect"]
    assert data["new_class_photos"] == {"bombus": 10, "no_insect": 10}
    assert data["validated_observations"] == 35

    folder = Path(job["result"]["model"]["path"])
    card = ModelCard.load(folder)
    assert {"bombus", "no_insect"} <= set(card.labels)
    assert (card.taxonomy["bombus"].rank, card.taxonomy["bombus"].family) == ("genus", "Apidae")
    assert card.taxonomy["no_insect"].rank == "none" and not card.taxonomy["no_insect"].is_taxon

    # The service loads the candidate: its taxa sync keeps no_insect out of the taxa table.
    version = job["result"]["model"]["version"]
    force = {} if job["result"]["gate"]["passed"] else {"force": True, "reason": "load the ranks candidate"}
    r = env.client.post(f"/api/v1/admin/models/{version}/activate", headers=env.h("admin"), json=force)
    assert r.status_code == 200, r.text
    r = env.client.post("/api/v1/identify", files={"images": ("p.jpg", jpeg(PURPLE, 1), "image/jpeg")})
    assert r.status_code == 200 and r.json()["model"]["version"] == version
    with env.session() as s:
        assert taxon_for_label(s, "no_insect") is None
        bombus = taxon_for_label(s, "bombus")
        assert bombus is not None and bombus.rank == "genus"
