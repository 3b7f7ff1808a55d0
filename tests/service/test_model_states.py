"""Releases and trained versions live apart; each version has an explicit state; a fresh database activates
the newest released version, never a candidate nor one that failed its gate; forcing one is audited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.api.app import create_app
from service.core.modelcard import ModelCard
from service.inference.versions import disk_state, write_card_state
from service.settings import Settings
from service.store.tables import ModelActivation, ModelVersion
from tests.helpers import photo_bytes, write_tiny_model
from tests.service.observation_support import Env, make_env

RED = [("images", ("r.jpg", photo_bytes(), "image/jpeg"))]


def _newer(folder: Path, minutes: int = 5, **extra: object) -> None:
    """Make the card in ``folder`` newer than the release (the registry's "newest" order) and add fields."""
    card = ModelCard.load(folder)
    data = card.model_dump(mode="json")
    data["created"] = (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()
    data.update(extra)
    (folder / "model.json").write_text(json.dumps(data), encoding="utf-8")


def _trained(settings: Settings, version: str, *, status: str | None = None, gate: bool | None = None,
             minutes: int = 5) -> Path:
    folder = write_tiny_model(settings.trained_models_path, "tiny", version)
    extra: dict[str, object] = {"training": {"retrain": {"job_id": 1}}}
    if status is not None:
        extra["status"] = status
    _newer(folder, minutes, **extra)
    if gate is not None:
        (folder / "gate.json").write_text(json.dumps({"passed": gate}), encoding="utf-8")
    return folder


@pytest.fixture
def states_env(tmp_path: Path, database_url: str) -> Iterator[Env]:
    models = tmp_path / "releases"
    write_tiny_model(models, "tiny", "1")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, models_dir=models,
                        max_wait_ms=2.0, default_model="tiny")
    _trained(settings, "2", status="gate_failed")
    _trained(settings, "3", gate=True, minutes=6)
    yield from make_env(settings)


def test_a_fresh_database_serves_the_release_never_a_failed_candidate(tmp_path: Path, database_url: str) -> None:
    models = tmp_path / "releases"
    write_tiny_model(models, "tiny", "1")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, models_dir=models,
                        default_model="tiny")
    _trained(settings, "2", status="gate_failed")  # newest on disk, failed its gate
    _trained(settings, "3", minutes=7)  # a candidate nobody gated
    # A failed candidate an older version wrote into the releases folder itself (the report).
    legacy = write_tiny_model(models, "tiny", "4")
    _newer(legacy, 9, training={"retrain": {"job_id": 3}})
    (legacy / "gate.json").write_text(json.dumps({"passed": False}), encoding="utf-8")
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/ready").json()["model"] == {"name": "tiny", "version": "1"}
        assert client.post("/api/v1/identify", files=RED).json()["model"]["version"] == "1"
        with client.app.state.sessionmaker() as session:
            rows = {r.version: (r.state, r.origin, r.active) for r in session.scalars(select(ModelVersion))}
            audit = session.scalars(select(ModelActivation)).all()
    assert rows["1"] == ("released", "release", True)
    assert rows["2"] == ("gate_failed", "trained", False)
    assert rows["3"] == ("candidate", "trained", False)
    assert rows["4"] == ("gate_failed", "release", False)
    assert [(a.version, a.user_id, a.forced) for a in audit] == [("1", None, False)]
    assert "newest released" in (audit[0].reason or "")


def test_a_gate_passed_version_is_used_only_when_no_release_exists(tmp_path: Path, sqlite_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=tmp_path / "none")
    _trained(settings, "2", status="gate_failed", minutes=9)
    _trained(settings, "3", status="gate_passed")
    with TestClient(create_app(settings)) as client:
        # A fresh database reads the states from the cards: the failed version is refused, the passed one not.
        with pytest.raises(Exception, match="force"):
            client.app.state.registry.activate("tiny", "2")
        client.app.state.registry.activate("tiny", "3")
        assert client.get("/api/v1/ready").json()["model"]["version"] == "3"
    # The activation made the gate-passed version a release, in the database and in its card.
    assert ModelCard.load(settings.trained_models_path / "tiny" / "3").status == "released"


def test_failed_candidate_needs_force_and_a_reason_and_is_audited(states_env: Env) -> None:
    env = states_env
    admin = env.h("admin")
    listed = {m["version"]: m for m in env.client.get("/api/v1/admin/models", headers=admin).json()["data"]}
    assert {v: (m["state"], m["origin"]) for v, m in listed.items()} == {
        "1": ("released", "release"), "2": ("gate_failed", "trained"), "3": ("gate_passed", "trained")}
    assert listed["1"]["active"]

    r = env.client.post("/api/v1/admin/models/2/activate", headers=admin)
    assert r.status_code == 409 and "force" in r.json()["error"]["message"]
    r = env.client.post("/api/v1/admin/models/2/activate", headers=admin, json={"force": True})
    assert r.status_code == 422 and "reason" in r.json()["error"]["message"]
    assert env.client.post("/api/v1/identify", files=RED).json()["model"]["version"] == "1"

    why = "field test of the failed candidate on the red photos"
    r = env.client.post("/api/v1/admin/models/2/activate", headers=admin, json={"force": True, "reason": why})
    assert r.status_code == 200, r.text
    assert r.json()["active"] and r.json()["state"] == "gate_failed"  # forcing does not launder the state
    assert env.client.post("/api/v1/identify", files=RED).json()["model"]["version"] == "2"
    audit = env.client.get("/api/v1/admin/models/activations", headers=admin).json()
    last = audit["data"][0]
    assert (last["name"], last["version"], last["state"], last["forced"], last["reason"], last["user_id"],
            last["previous"]) == ("tiny", "2", "gate_failed", True, why, env.ids["admin"], "tiny/1")
    assert env.client.get("/api/v1/admin/models/activations", headers=env.h("exp")).status_code == 403

    # A gate-passed version needs no force and becomes released (database and card).
    r = env.client.post("/api/v1/admin/models/3/activate", headers=admin)
    assert r.status_code == 200 and r.json()["state"] == "released"
    assert ModelCard.load(env.settings.trained_models_path / "tiny" / "3").status == "released"
    last = env.client.get("/api/v1/admin/models/activations", headers=admin).json()["data"][0]
    assert (last["version"], last["state"], last["forced"]) == ("3", "gate_passed", False)


def test_retire_a_version(states_env: Env) -> None:
    env = states_env
    admin = env.h("admin")
    r = env.client.post("/api/v1/admin/models/1/retire", headers=admin, json={"reason": "active"})
    assert r.status_code == 409  # the active version cannot be retired
    r = env.client.post("/api/v1/admin/models/3/retire", headers=admin, json={"reason": "superseded"})
    assert r.status_code == 200 and r.json()["state"] == "retired" and r.json()["state_reason"] == "superseded"
    card = ModelCard.load(env.settings.trained_models_path / "tiny" / "3")
    assert card.status == "retired" and card.status_reason == "superseded"
    assert env.client.post("/api/v1/admin/models/3/activate", headers=admin).status_code == 409


def test_a_restart_keeps_a_forced_version_but_a_fresh_database_does_not(tmp_path: Path, sqlite_url: str
                                                                         ) -> None:
    models = tmp_path / "releases"
    write_tiny_model(models, "tiny", "1")
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models)
    _trained(settings, "2", status="gate_failed")
    with TestClient(create_app(settings)) as client:
        client.app.state.registry.scan()
        client.app.state.registry.activate("tiny", "2", force=True, reason="try it", user_id=None)
    with TestClient(create_app(settings)) as client:  # the same database: the admin's choice stands
        assert client.get("/api/v1/ready").json()["model"]["version"] == "2"
    fresh = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'fresh.sqlite3'}"})
    with TestClient(create_app(fresh)) as client:
        assert client.get("/api/v1/ready").json()["model"]["version"] == "1"


def test_disk_state_rules(tmp_path: Path) -> None:
    release = write_tiny_model(tmp_path / "r", "tiny", "1")
    assert disk_state(ModelCard.load(release), release, "release") == "released"
    assert disk_state(ModelCard.load(release), release, "trained") == "candidate"
    (release / "gate.json").write_text('{"passed": true}', encoding="utf-8")
    assert disk_state(ModelCard.load(release), release, "release") == "gate_passed"
    assert write_card_state(release, "retired", reason="old")
    assert disk_state(ModelCard.load(release), release, "release") == "retired"
    (release / "model.json").unlink()
    assert not write_card_state(release, "released")
