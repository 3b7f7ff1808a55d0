"""The admin routes that create, list, read and cancel jobs, and download an export job's file."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from service.jobs.worker import Worker
from tests.service.jobs_support import base_dataset
from tests.service.observation_support import Env, env  # noqa: F401


def test_retrain_request_is_validated(env: Env, tmp_path: Path) -> None:  # noqa: F811
    base = base_dataset(tmp_path / "base", n_train=2, n_valid=1)
    url = "/api/v1/admin/retrain"
    r = env.client.post(url, headers=env.h("admin"), json={"base_dataset": str(tmp_path / "nowhere")})
    assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]
    (tmp_path / "data.txt").write_text("x")
    r = env.client.post(url, headers=env.h("admin"), json={"base_dataset": str(tmp_path / "data.txt")})
    assert r.status_code == 422 and ".csv manifest" in r.json()["error"]["message"]
    for bad in ({"epochs": 0}, {"epochs": 100000}, {"mode": "half"}, {"lr": -1}, {"gate_holdout": 1.5},
                {"options": {"export_dir": "/tmp/x"}}, {"unknown": 1}, {"version": "../../etc"},
                {"device": "tpu"}):
        r = env.client.post(url, headers=env.h("admin"), json={"base_dataset": str(base), **bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
    r = env.client.post(url, headers=env.h("admin"), json={"base_dataset": str(base), "version": "1"})
    assert r.status_code == 409 and "tiny/1 already exists" in r.json()["error"]["message"]
    for who in ("vol", "exp"):
        assert env.client.post(url, headers=env.h(who), json={"base_dataset": str(base)}).status_code == 403
    assert env.client.post(url, json={"base_dataset": str(base)}).status_code == 401

    r = env.client.post(url, headers=env.h("admin"), json={"base_dataset": str(base), "epochs": 3})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] == "queued" and job["kind"] == "retrain" and job["progress"] == 0.0
    assert job["params"]["name"] == "tiny" and job["params"]["base_dataset"] == str(base.resolve())
    assert job["params"]["min_new_class_photos"] == env.settings.retrain_min_new_class_photos
    assert job["created_by"] == env.ids["admin"] and job["max_attempts"] == env.settings.job_max_attempts
    assert job["log_tail"][-1].endswith("queued retrain job")


def test_job_routes_list_read_cancel(env: Env, tmp_path: Path) -> None:  # noqa: F811
    admin = env.h("admin")
    a = env.client.post("/api/v1/admin/exports", headers=admin, json={"kind": "csv"}).json()
    b = env.client.post("/api/v1/admin/exports", headers=admin, json={"kind": "dwca"}).json()
    assert env.client.post("/api/v1/admin/exports", headers=admin, json={"kind": "pdf"}).status_code == 422
    listed = env.client.get("/api/v1/admin/jobs", headers=admin).json()
    assert listed["count"] == 2 and [j["id"] for j in listed["data"]] == [b["id"], a["id"]]
    assert env.client.get("/api/v1/admin/jobs?kind=retrain", headers=admin).json()["count"] == 0
    assert env.client.get("/api/v1/admin/jobs?state=bogus", headers=admin).status_code == 422
    assert env.client.get(f"/api/v1/admin/jobs/{a['id']}", headers=admin).json()["params"] == {"kind": "csv"}
    assert env.client.get("/api/v1/admin/jobs/999", headers=admin).status_code == 404
    assert env.client.get("/api/v1/admin/jobs", headers=env.h("exp")).status_code == 403
    r = env.client.get(f"/api/v1/admin/jobs/{a['id']}/download", headers=admin)
    assert r.status_code == 409 and "queued" in r.json()["error"]["message"]
    r = env.client.post(f"/api/v1/admin/jobs/{a['id']}/cancel", headers=admin)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = env.client.post(f"/api/v1/admin/jobs/{a['id']}/cancel", headers=admin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert env.client.get("/api/v1/admin/jobs?state=queued", headers=admin).json()["count"] == 1


def test_export_job_runs_in_a_worker_and_is_downloaded(env: Env) -> None:  # noqa: F811
    obs = env.post_obs(licence="CC0").json()["id"]
    for who in ("exp", "exp2"):
        env.identify(who, obs, "agree")
    admin = env.h("admin")
    job = env.client.post("/api/v1/admin/exports", headers=admin, json={"kind": "dwca"}).json()
    worker = Worker(env.settings, env.app.state.sessionmaker, worker_id="export-worker")
    assert worker.run_once() is True
    assert worker.run_once() is False  # nothing left
    done = env.client.get(f"/api/v1/admin/jobs/{job['id']}", headers=admin).json()
    assert done["state"] == "succeeded", (done["error"], "\n".join(done["log_tail"]))
    assert done["result"]["records"] == 1 and done["result"]["kind"] == "dwca"
    assert done["download"] == f"/api/v1/admin/jobs/{job['id']}/download"
    r = env.client.get(done["download"], headers=admin)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    occurrences = zipfile.ZipFile(io.BytesIO(r.content)).read("occurrence.txt").decode().splitlines()
    assert len(occurrences) == 2 and f"/api/v1/observations/{obs}" in occurrences[1]
    assert "pollinid-dwca.zip" in r.headers["content-disposition"]
    assert env.client.get(done["download"], headers=env.h("exp")).status_code == 403
    # The synchronous route still answers too.
    assert env.client.get("/api/v1/admin/exports/dwca", headers=admin).status_code == 200
