"""End to end on tiny data: volunteers upload, experts validate, an admin retrains, the gate activates the
candidate, and ``/identify`` answers with the new version whose card lists the new data.

The worker is the real one: it claims the job from the database and runs the training package in a child
process (``python -m training.worker_entry``), exactly as ``pollinid worker`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.jobs.worker import Worker
from service.settings import Settings
from tests.service.jobs_support import (
    PURPLE,
    TRAIN_OPTIONS,
    YELLOW,
    add_new_taxa,
    base_dataset,
    jpeg,
    validated_observation,
    wait_for,
    write_weak_model,
)
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


def test_validated_observations_become_the_active_model(e2e: Env, tmp_path: Path) -> None:
    env = e2e
    base = base_dataset(tmp_path / "base")
    add_new_taxa(env)
    # The active model calls green photos blue; volunteers' green observations are corrected by experts.
    seed = 1000
    observations = []
    for i, who in enumerate(("vol1", "vol2", "vol3", "vol4", "vol5")):
        for color, taxon in ((GREEN, "Callophrys rubi"), (RED, "Vanessa atalanta"),
                             (BLUE, "Polyommatus icarus"), (YELLOW, "Gonepteryx rhamni"),
                             (YELLOW, "Gonepteryx rhamni")):
            seed += 1
            observations.append(validated_observation(env, who, color, taxon, seed))
        if i < 1:  # a species with too few validated photos to join the model
            seed += 1
            validated_observation(env, who, PURPLE, "Apatura iris", seed)
    r = env.client.post("/api/v1/identify", files={"images": ("g.jpg", jpeg(GREEN, 1), "image/jpeg")})
    assert r.json()["model"] == {"name": "tiny", "version": "1"}
    assert r.json()["results"][0]["taxon"]["label"] == "common_blue"  # the weak model is wrong

    body = {"base_dataset": str(base), "include_observations": True, "auto_activate": True,
            "min_new_class_photos": 6, "tolerance": 0.05, "class_margin": 0.25, "gate_holdout": 0.25,
            # The tiny CNN's 8 epochs do not learn the new class from 6 photos (the gate measures 0 of 4 on its
            # held-out photos and would refuse it, see test_retrain_head.py); here the loop itself is tested.
            "new_class_min_recall": 0.0, **TRAIN_OPTIONS}
    r = env.client.post("/api/v1/admin/retrain", headers=env.h("admin"), json=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert r.json()["state"] == "queued" and r.json()["params"]["name"] == "tiny"

    worker = Worker(env.settings, env.app.state.sessionmaker, worker_id="e2e-worker")
    assert worker.run_once() is True

    job = env.client.get(f"/api/v1/admin/jobs/{job_id}", headers=env.h("admin")).json()
    assert job["state"] == "succeeded", (job["error"], job["log_tail"][-15:])
    epochs = TRAIN_OPTIONS["epochs"]
    assert job["progress"] == 1.0 and job["epoch"] == epochs and job["epochs"] == epochs
    assert any(f"[train] epoch {epochs}:" in line for line in job["log_tail"])
    assert set(job["metrics"]) >= {"train_loss", "held_accuracy"}
    result = job["result"]
    assert result["model"]["name"] == "tiny" and result["model"]["version"] == "2"
    data = result["data"]
    assert data["new_classes"] == ["brimstone"]
    assert data["classes_below_minimum"] == {"purple_emperor": 1}
    assert data["validated_observations"] == 25  # the purple one is left out
    gate = result["gate"]
    assert gate["passed"], gate["reasons"]
    assert gate["active_model"] == "tiny/1" and gate["candidate_model"] == "tiny/2"
    assert gate["overall"]["top1"]["candidate"] > gate["overall"]["top1"]["active"]
    by_label = {row["label"]: row for row in gate["per_class"]}
    assert by_label["green_hairstreak"]["active"] == 0.0 and by_label["green_hairstreak"]["candidate"] > 0.5
    assert "brimstone" not in by_label  # the active model does not know it: judged on its own photos
    new_rows = {row["label"]: row for row in gate["new_classes"]}
    assert new_rows["brimstone"]["checked"] and new_rows["brimstone"]["support"] >= 3
    assert result["activated"] is True
    # The candidate went to the data folder's trained models, never into the releases folder.
    assert Path(result["model"]["path"]).is_relative_to(env.settings.trained_models_path.resolve())
    assert not (env.settings.models_dir / "tiny" / "2").exists()
    assert result["model"]["state"] == "released"  # passed its gate, then activated

    # Every process picks the activation up from the database; this app polls every 0.2 s.
    def identify_version() -> str | None:
        r = env.client.post("/api/v1/identify", files={"images": ("g.jpg", jpeg(GREEN, 2), "image/jpeg")})
        assert r.status_code == 200
        return r.json()["model"]["version"] == "2" and r.json()

    answer = wait_for(identify_version, timeout=15)
    assert answer["results"][0]["taxon"]["label"] == "green_hairstreak"

    models = env.client.get("/api/v1/admin/models", headers=env.h("admin")).json()["data"]
    new = next(m for m in models if m["version"] == "2")
    assert new["active"] and new["loaded"]
    assert (new["state"], new["origin"]) == ("released", "trained")
    assert "brimstone" in new["labels"]
    retrain = new["training"]["retrain"]
    assert retrain["validated_observations"] == 25 and retrain["new_classes"] == ["brimstone"]
    assert retrain["classes_below_minimum"] == {"purple_emperor": 1}
    assert retrain["previous_model"] == "tiny/1"
    assert {"confusion.png", "report.json", "gate.json"} <= set(new["files"])
    png = env.client.get("/api/v1/admin/models/tiny/2/files/confusion.png", headers=env.h("admin"))
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    old = next(m for m in models if m["version"] == "1")
    assert not old["active"] and old["live"]["validated"] == 26  # every validated observation had tiny/1

    # Roll back the same way.
    r = env.client.post("/api/v1/admin/models/1/activate", headers=env.h("admin"))
    assert r.status_code == 200 and r.json()["active"] and r.json()["version"] == "1"
    r = env.client.post("/api/v1/identify", files={"images": ("g.jpg", jpeg(GREEN, 3), "image/jpeg")})
    assert r.json()["model"]["version"] == "1"
