"""Admin model versions: list with metrics and live accuracy, activate and roll back, report files; and an
activation made by another process reaches a live uvicorn server under load without a failed request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.inference.classifier import RuntimeOptions
from service.inference.registry import ModelRegistry
from service.settings import Settings
from service.store.db import create_db_engine, init_db, make_session_factory
from tests.helpers import photo_bytes, write_tiny_model
from tests.service.observation_support import Env, env  # noqa: F401

ROOT = Path(__file__).resolve().parents[3]


def test_models_are_listed_with_metrics_and_live_accuracy(env: Env) -> None:  # noqa: F811
    write_tiny_model(env.settings.models_dir, "tiny", "2")
    obs = env.post_obs().json()["id"]  # predicted by tiny/1 (red: red_admiral)
    for who in ("exp", "exp2"):
        env.identify(who, obs, "agree")
    r = env.client.get("/api/v1/admin/models", headers=env.h("admin"))
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 2
    by_version = {m["version"]: m for m in body["data"]}
    one, two = by_version["1"], by_version["2"]
    assert one["active"] and one["loaded"] and not two["active"]
    assert one["labels"] == ["red_admiral", "green_hairstreak", "common_blue"]
    assert one["live"] == {"model_name": "tiny", "model_version": "1", "validated": 1, "top1_correct": 1,
                           "top3_correct": 1, "top1_accuracy": 1.0, "top3_accuracy": 1.0}
    assert two["live"] is None and two["error"] is None
    assert env.client.get("/api/v1/admin/models", headers=env.h("exp")).status_code == 403


def test_activate_and_roll_back(env: Env) -> None:  # noqa: F811
    admin = env.h("admin")
    write_tiny_model(env.settings.models_dir, "tiny", "2")
    r = env.client.post("/api/v1/admin/models/2/activate", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "2" and r.json()["active"] and r.json()["loaded"]
    red = [("images", ("r.jpg", photo_bytes(), "image/jpeg"))]
    assert env.client.post("/api/v1/identify", files=red).json()["model"]["version"] == "2"
    r = env.client.post("/api/v1/admin/models/1/activate", headers=admin)  # roll back the same way
    assert r.status_code == 200 and r.json()["version"] == "1"
    assert env.client.post("/api/v1/identify", files=red).json()["model"]["version"] == "1"
    models = env.client.get("/api/v1/admin/models", headers=admin).json()["data"]
    listed = {m["version"]: m["active"] for m in models}
    assert listed == {"1": True, "2": False}

    # Two model names share version "1": the name must be given.
    write_tiny_model(env.settings.models_dir, "other", "1")
    r = env.client.post("/api/v1/admin/models/1/activate", headers=admin)
    assert r.status_code == 409 and "?name=" in r.json()["error"]["message"]
    r = env.client.post("/api/v1/admin/models/1/activate?name=other", headers=admin)
    assert r.status_code == 200 and r.json()["name"] == "other"
    r = env.client.post("/api/v1/admin/models/9/activate", headers=admin)
    assert r.status_code == 404
    r = env.client.post("/api/v1/admin/models/1/activate?name=tiny", headers=env.h("vol"))
    assert r.status_code == 403

    # A broken version is refused with the reason; the served version does not change.
    broken = env.settings.models_dir / "tiny" / "3"
    write_tiny_model(env.settings.models_dir, "tiny", "3")
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    r = env.client.post("/api/v1/admin/models/3/activate", headers=admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_model"
    assert env.client.post("/api/v1/identify", files=red).json()["model"] == {"name": "other", "version": "1"}


def test_report_files(env: Env) -> None:  # noqa: F811
    admin = env.h("admin")
    folder = env.settings.models_dir / "tiny" / "1"
    (folder / "confusion.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 10)
    models = env.client.get("/api/v1/admin/models", headers=admin).json()["data"]
    assert models[0]["files"] == ["confusion.png", "model.json"]
    r = env.client.get("/api/v1/admin/models/tiny/1/files/confusion.png", headers=admin)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    r = env.client.get("/api/v1/admin/models/tiny/1/files/reliability.png", headers=admin)
    assert r.status_code == 404
    r = env.client.get("/api/v1/admin/models/tiny/1/files/model.onnx", headers=admin)
    assert r.status_code == 404 and "known" in r.json()["error"]["message"]
    assert env.client.get("/api/v1/admin/models/tiny/7/files/model.json", headers=admin).status_code == 404
    assert env.client.get("/api/v1/admin/models/tiny/1/files/confusion.png").status_code == 401


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_swaps_made_by_another_process_drop_no_request_under_load(settings: Settings) -> None:
    write_tiny_model(settings.models_dir, "tiny", "2")
    port = _free_port()
    environ = {**os.environ, "POLLINID_DATABASE_URL": settings.resolved_database_url,
               "POLLINID_DATA_DIR": str(settings.data_dir), "POLLINID_MODELS_DIR": str(settings.models_dir),
               "POLLINID_MODEL_POLL_SECONDS": "0.2", "POLLINID_PROVIDERS": "cpu",
               "POLLINID_INTRA_OP_THREADS": "1",
               # Six clients on an idle machine pass the per-IP quota within seconds: measure swaps, not 429s.
               "POLLINID_RATE_LIMIT_ENABLED": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "service.api.asgi:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"], cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    engine = create_db_engine(settings.resolved_database_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v1/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        init_db(engine)
        # This test process is "another replica": it activates through the shared database only.
        registry = ModelRegistry(settings.models_dir, make_session_factory(engine), RuntimeOptions("cpu"))
        registry.start()
        photo = photo_bytes()
        statuses: Counter[int] = Counter()
        versions: Counter[str] = Counter()
        lock = threading.Lock()
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set():
                    r = client.post("/api/v1/identify", files=[("images", ("r.jpg", photo, "image/jpeg"))])
                    with lock:
                        statuses[r.status_code] += 1
                        if r.status_code == 200:
                            versions[r.json()["model"]["version"]] += 1

        def served() -> str:
            return str(httpx.get(f"{url}/api/v1/ready", timeout=5).json()["model"]["version"])

        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(hammer) for _ in range(6)]
            switched = 0
            for target in ("2", "1", "2", "1", "2"):
                registry.activate("tiny", target)
                t0 = time.monotonic()
                while served() != target:
                    assert time.monotonic() - t0 < 5, f"the server did not pick up tiny/{target} within 5 s"
                    time.sleep(0.05)
                switched += 1
                time.sleep(0.3)
            stop.set()
            for f in futures:
                f.result(timeout=60)
        assert switched == 5
        assert sum(statuses.values()) > 50
        assert set(statuses) == {200}, statuses
        assert versions["1"] > 0 and versions["2"] > 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        engine.dispose()
