"""The model registry: validation, activation, atomic swaps, polling across processes, no model."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.api.app import create_app
from service.core.errors import InvalidModel, NotFound
from service.inference.classifier import RuntimeOptions, load_classifier
from service.settings import Settings
from service.store.tables import ModelVersion
from tests.helpers import photo_bytes, tiny_card, tiny_onnx_bytes, write_tiny_model
from tests.service.identify_support import RED, files


def _write(models: Path, name: str, version: str, onnx: bytes, **card_kwargs: object) -> Path:
    folder = models / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onnx)
    tiny_card(name, version, **card_kwargs).save(folder)  # type: ignore[arg-type]
    return folder


def _fixed_batch_onnx() -> bytes:
    import onnx

    model = onnx.load_from_string(tiny_onnx_bytes(3))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    return model.SerializeToString()


def _double_input_onnx() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.DOUBLE, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("Cast", ["input"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["xf", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["logits"])]
    graph = helper.make_graph(nodes, "dbl", [x], [y], initializer=[
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.eye(3, dtype=np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


BROKEN = {
    "corrupt ONNX": (lambda: b"this is not a protobuf" * 10, {}, "cannot load"),
    "more outputs than labels": (lambda: tiny_onnx_bytes(4), {}, "4 outputs but the card lists 3 labels"),
    "input size differs": (lambda: tiny_onnx_bytes(3, size=48), {}, "32x32"),
    "input name differs": (lambda: tiny_onnx_bytes(3, input_name="pixels"), {}, "'pixels'"),
    "fixed batch dimension": (_fixed_batch_onnx, {}, "batch dimension must be dynamic"),
    "float64 input": (_double_input_onnx, {}, "float32"),
    "dynamic size, wrong labels": (lambda: tiny_onnx_bytes(5, size=None), {}, "labels"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_model_is_refused_with_a_clear_error(tmp_path: Path, case: str) -> None:
    make, kwargs, message = BROKEN[case]
    folder = _write(tmp_path, "bad", "1", make(), **kwargs)
    with pytest.raises(InvalidModel) as info:
        load_classifier(folder, RuntimeOptions(providers="cpu"))
    assert message in info.value.message
    assert str(folder) in info.value.message


def test_card_that_does_not_parse_or_mismatches_its_folder(tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path, "tiny", "1")
    (folder / "model.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidModel, match="does not parse"):
        load_classifier(folder, RuntimeOptions(providers="cpu"))
    other = write_tiny_model(tmp_path, "tiny", "2")
    with pytest.raises(InvalidModel, match="card says tiny/2 but the folder is tiny/3"):
        load_classifier(other, RuntimeOptions(providers="cpu"), expected=("tiny", "3"))


def test_startup_activates_the_newest_valid_version(settings: Settings, caplog: pytest.LogCaptureFixture
                                                     ) -> None:
    write_tiny_model(settings.models_dir, "tiny", "2")
    _write(settings.models_dir, "tiny", "3", b"corrupt")  # newest, but refused
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        ready = client.get("/api/v1/ready")
        assert ready.status_code == 200
        assert ready.json()["model"] == {"name": "tiny", "version": "2"}
        assert ready.json()["provider"] in ("cpu", "cuda")
        with client.app.state.sessionmaker() as session:
            rows = {(r.name, r.version): r.active for r in session.scalars(select(ModelVersion))}
        assert rows == {("tiny", "1"): False, ("tiny", "2"): True, ("tiny", "3"): False}
        versions = {(v["name"], v["version"]): v for v in client.app.state.registry.list_versions()}
        assert versions[("tiny", "3")]["error"] and versions[("tiny", "2")]["loaded"]
    assert "no model was active: activated the newest valid version" in caplog.text
    assert "tiny/3 refused" in caplog.text


def test_default_model_wins_over_newer_models(tmp_path: Path, sqlite_url: str) -> None:
    models = tmp_path / "models"
    write_tiny_model(models, "alpha", "1")
    write_tiny_model(models, "zeta", "7")
    s = Settings(data_dir=tmp_path / "d", database_url=sqlite_url, models_dir=models, default_model="alpha")
    with TestClient(create_app(s)) as client:
        assert client.get("/api/v1/ready").json()["model"] == {"name": "alpha", "version": "1"}


def test_active_row_is_kept_across_restarts(settings: Settings) -> None:
    write_tiny_model(settings.models_dir, "tiny", "2")
    with TestClient(create_app(settings)) as client:
        client.app.state.registry.activate("tiny", "1")
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/ready").json()["model"]["version"] == "1"


def test_bad_activation_keeps_serving_the_old_version(settings: Settings) -> None:
    _write(settings.models_dir, "tiny", "2", tiny_onnx_bytes(4))  # 4 outputs, 3 labels
    with TestClient(create_app(settings)) as client:
        registry = client.app.state.registry
        registry.activate("tiny", "1")
        with pytest.raises(InvalidModel, match="4 outputs"):
            registry.activate("tiny", "2")
        with pytest.raises(NotFound, match="known"):
            registry.activate("tiny", "99")
        assert registry.current.version == "1"
        r = client.post("/api/v1/identify", files=files(photo_bytes(RED)))
        assert r.status_code == 200 and r.json()["model"]["version"] == "1"
        with client.app.state.sessionmaker() as session:
            active = session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).all()
        assert [(a.name, a.version) for a in active] == [("tiny", "1")]


def test_swap_is_atomic_and_requests_in_flight_finish_on_the_old_session(tmp_path: Path, sqlite_url: str,
                                                                         models_dir: Path) -> None:
    # Version 2 has another input size: a request preprocessed for version 1 must still run on version 1.
    write_tiny_model(models_dir, "tiny", "2", size=16)
    s = Settings(data_dir=tmp_path / "d", database_url=sqlite_url, models_dir=models_dir,
                 max_wait_ms=600, batch_eager=False, default_model="tiny")
    with TestClient(create_app(s)) as client:
        registry = client.app.state.registry
        registry.activate("tiny", "1")
        result: dict[str, object] = {}

        def slow_request() -> None:  # waits ~600 ms in the batcher for companions that never come
            result["response"] = client.post("/api/v1/identify", files=files(photo_bytes(RED)))

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.25)
        registry.activate("tiny", "2")  # while the request is in flight
        assert registry.current.version == "2"
        thread.join(10)
        old = result["response"]
        assert old.status_code == 200, old.text  # type: ignore[attr-defined]
        assert old.json()["model"]["version"] == "1"  # type: ignore[attr-defined]
        new = client.post("/api/v1/identify", files=files(photo_bytes(RED)))
        assert new.json()["model"]["version"] == "2"
        assert new.json()["results"][0]["taxon"]["label"] == "red_admiral"


def test_activation_by_another_process_is_picked_up(settings: Settings) -> None:
    """Two apps on one database: an activation in one reaches the other through polling."""
    write_tiny_model(settings.models_dir, "tiny", "2")
    s = settings.model_copy(update={"model_poll_seconds": 0.1})
    with TestClient(create_app(s)) as first, TestClient(create_app(s)) as second:
        first.app.state.registry.activate("tiny", "1")
        deadline = time.monotonic() + 10
        while second.get("/api/v1/ready").json()["model"]["version"] != "1" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.get("/api/v1/ready").json()["model"]["version"] == "1"
        second.app.state.registry.activate("tiny", "2")
        deadline = time.monotonic() + 10
        while first.get("/api/v1/ready").json()["model"]["version"] != "2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.get("/api/v1/ready").json()["model"]["version"] == "2"
        r = first.post("/api/v1/identify", files=files(photo_bytes(RED)))
        assert r.json()["model"]["version"] == "2"


def test_activation_of_a_version_this_process_cannot_load_keeps_the_old_one(settings: Settings) -> None:
    s = settings.model_copy(update={"model_poll_seconds": 3600})
    with TestClient(create_app(s)) as client:
        registry = client.app.state.registry
        assert registry.current.version == "1"
        # Another process activated tiny/2, whose files here are broken.
        _write(settings.models_dir, "tiny", "2", b"broken")
        with client.app.state.sessionmaker() as session, session.begin():
            for row in session.scalars(select(ModelVersion)):
                row.active = False
            session.add(ModelVersion(name="tiny", version="2", path=str(settings.models_dir / "tiny" / "2"),
                                     active=True, card={}))
        assert registry.sync() is False
        assert registry.current.version == "1"
        assert "cannot load" in (registry.last_error or "")
        assert client.post("/api/v1/identify", files=files(photo_bytes(RED))).status_code == 200


def test_no_model_at_all_starts_and_is_not_ready(tmp_path: Path, database_url: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "empty-models"
    s = Settings(data_dir=tmp_path / "d", database_url=database_url, models_dir=empty)
    with caplog.at_level(logging.WARNING), TestClient(create_app(s)) as client:
        assert client.get("/api/v1/health").json() == {"status": "ok"}
        r = client.get("/api/v1/ready")
        assert r.status_code == 503
        body = r.json()
        assert body["ready"] is False and body["model"] is None and body["database"] is True
        assert "no model" in body["error"]["message"]
        r = client.post("/api/v1/identify", files=files(photo_bytes(RED)))
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        # A model installed and activated later is served without a restart.
        write_tiny_model(empty, "tiny", "1")
        client.app.state.registry.activate("tiny", "1")
        assert client.get("/api/v1/ready").status_code == 200
        assert client.post("/api/v1/identify", files=files(photo_bytes(RED))).status_code == 200
    assert "no model found" in caplog.text
