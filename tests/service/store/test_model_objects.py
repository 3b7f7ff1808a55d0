"""Trained model versions shared through the object store (a real S3 server on loopback) and each host's cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import accounts
from service.api.app import create_app
from service.core.errors import InvalidModel
from service.inference.classifier import RuntimeOptions
from service.inference.registry import ModelRegistry
from service.jobs.params import RetrainParams
from service.jobs.protocol import RetrainSpec
from service.jobs.retrain import complete
from service.settings import Settings
from service.store.model_objects import (
    CorruptVersion,
    fetch_version,
    read_manifest,
    stored_versions,
    upload_version,
)
from service.store.objects import LocalStore, ObjectStore, model_store
from tests.conftest import S3_CREDENTIALS
from tests.helpers import photo_bytes, write_tiny_model


def _host(settings: Settings, folder: Path) -> Settings:
    """The same database, models and object store, another data folder (another host)."""
    return settings.model_copy(update={"data_dir": folder, "media_dir": folder / "media", "jobs_dir": folder / "jobs"})


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "shared-models")
    found = model_store(Settings(data_dir=tmp_path / "d", object_store_url=request.getfixturevalue("object_store_url"),
                                 s3_endpoint_url=request.getfixturevalue("s3_endpoint"), **S3_CREDENTIALS))
    assert found is not None
    return found


def test_a_version_round_trips_with_its_checksums(store: ObjectStore, tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path / "trained", "tiny", "7")
    (folder / "gate.json").write_text('{"passed": true}', encoding="utf-8")
    (folder / ".gate.json.tmp").write_text("half", encoding="utf-8")  # never uploaded
    assert read_manifest(store, "tiny", "7") is None and fetch_version(store, "tiny", "7", tmp_path / "c") is None
    manifest = upload_version(store, folder, "tiny", "7")
    assert sorted(manifest["files"]) == ["gate.json", "model.json", "model.onnx"]
    assert stored_versions(store) == [("tiny", "7")]
    cached = fetch_version(store, "tiny", "7", tmp_path / "cache")
    assert cached == tmp_path / "cache" / "tiny" / "7"
    for name in ("model.onnx", "model.json", "gate.json"):
        assert (cached / name).read_bytes() == (folder / name).read_bytes()
    mtime = (cached / "model.onnx").stat().st_mtime_ns
    assert fetch_version(store, "tiny", "7", tmp_path / "cache") == cached  # cached: not fetched again
    assert (cached / "model.onnx").stat().st_mtime_ns == mtime


def test_a_corrupt_stored_file_is_refused_and_nothing_is_cached(store: ObjectStore, tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path / "trained", "tiny", "8")
    upload_version(store, folder, "tiny", "8")
    store.put("tiny/8/model.onnx", b"not the network the manifest names")
    with pytest.raises(CorruptVersion, match="sha256"):
        fetch_version(store, "tiny", "8", tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny" / "8").exists()
    assert [p for p in (tmp_path / "cache" / "tiny").iterdir()] == []  # no temporary folder left


def test_a_version_trained_on_one_host_is_served_by_another(s3_settings: Settings, tmp_path: Path) -> None:
    a, b = _host(s3_settings, tmp_path / "host-a"), _host(s3_settings, tmp_path / "host-b")
    with TestClient(create_app(a)) as ca:  # creates the schema; serves the release tiny/1
        # The worker of host A exported tiny/2 into its own trained folder; the retrain job completes it.
        folder = write_tiny_model(a.trained_models_path, "tiny", "2")
        spec = RetrainSpec(job_id=1, work_dir=str(tmp_path / "job"), min_new_class_photos=1, gate_holdout=0.2,
                           name="tiny", version="2", export_dir=str(folder))
        params = RetrainParams.model_validate({"name": "tiny", "min_new_class_photos": 1, "auto_activate": True})
        result = complete(spec, {"gate_evaluation": {"candidate": {"top1": 0.9}}}, params,
                          factory=ca.app.state.sessionmaker, settings=a)
        assert result["activated"] is True, result
        store = model_store(a)
        assert store is not None and stored_versions(store) == [("tiny", "2")]
        stored_card = json.loads(store.get("tiny/2/model.json"))
        assert stored_card["status"] == "released"  # the activation's promotion reached the stored card
    shutil.rmtree(a.data_dir)  # host A's disk is not host B's
    # Host B has never seen tiny/2: it starts, finds it active, fetches it into its own cache and serves it.
    with TestClient(create_app(b)) as cb:
        registry: ModelRegistry = cb.app.state.registry
        assert registry.current is not None and registry.current.key == ("tiny", "2")
        assert (b.model_cache_path / "tiny" / "2" / "model.onnx").is_file()
        assert not (b.trained_models_path / "tiny" / "2").exists()
        r = cb.post("/api/v1/identify", files=[("photos", ("a.jpg", photo_bytes(), "image/jpeg"))])
        assert r.status_code == 200, r.text
        assert (r.json()["model"]["name"], r.json()["model"]["version"]) == ("tiny", "2")
        with cb.app.state.sessionmaker() as session:
            _, key = accounts.create_user(session=session, settings=b, name="admin", role="admin")
            session.commit()
        gate = cb.get("/api/v1/admin/models/tiny/2/files/gate.json", headers={"Authorization": f"Bearer {key}"})
        assert gate.status_code == 200 and gate.json()["passed"] is True  # the cached copy's report
        listed = {(v["name"], v["version"]): v for v in registry.list_versions()}
        assert listed[("tiny", "2")]["error"] is None and listed[("tiny", "2")]["loaded"] is True
        # B activates the release again and retires tiny/2: the stored card follows the state.
        registry.activate("tiny", "1")
        registry.set_state("tiny", "2", "retired", reason="replaced")
        assert json.loads(model_store(b).get("tiny/2/model.json"))["status"] == "retired"  # type: ignore[union-attr]
        # The row still names the host that trained it.
        assert any(v["path"] == str(folder) for v in registry.list_versions() if v["version"] == "2")


def test_a_corrupt_stored_version_is_refused_and_the_current_one_keeps_serving(s3_settings: Settings,
                                                                                tmp_path: Path) -> None:
    a, c = _host(s3_settings, tmp_path / "host-a"), _host(s3_settings, tmp_path / "host-c")
    folder = write_tiny_model(a.trained_models_path, "tiny", "3")
    store = model_store(a)
    assert store is not None
    upload_version(store, folder, "tiny", "3")
    store.put("tiny/3/model.onnx", b"corrupt")
    with TestClient(create_app(c)) as cc:
        registry: ModelRegistry = cc.app.state.registry
        assert registry.current is not None and registry.current.key == ("tiny", "1")
        with pytest.raises(InvalidModel, match="sha256"):
            registry.activate("tiny", "3", force=True, reason="test")
        assert registry.current.key == ("tiny", "1")
        assert not (c.model_cache_path / "tiny" / "3").exists()


def test_a_registry_without_the_store_keeps_to_its_folders(s3_settings: Settings, tmp_path: Path) -> None:
    with TestClient(create_app(_host(s3_settings, tmp_path / "a"))) as ca:
        plain = ModelRegistry(s3_settings.models_dir, ca.app.state.sessionmaker, RuntimeOptions(providers="cpu"))
        keys: list[Any] = [e.key for e in plain.scan()]
        assert keys == [("tiny", "1")]
