"""Jobs in the database: atomic claims by several workers, progress, ownership, cancel, stale-worker reaping;
and the admin routes that create, list, read, cancel jobs and download an export job's file."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.core.errors import Conflict, NotFound
from service.jobs import queue as jobs
from service.jobs.queue import JobState, Ownership
from service.jobs.worker import Worker
from service.store.db import create_db_engine, init_db, make_session_factory
from service.store.tables import Job
from tests.service.jobs_support import base_dataset
from tests.service.observation_support import Env, env  # noqa: F401


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(database_url)
    init_db(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _queue(factory: sessionmaker[Session], n: int, *, max_attempts: int = 3) -> list[int]:
    with factory() as session:
        ids = [jobs.create_job(session=session, kind="export", params={"kind": "csv"}, created_by=None,
                               max_attempts=max_attempts).id for _ in range(n)]
        session.commit()
    return ids


def test_concurrent_workers_claim_each_job_exactly_once(factory: sessionmaker[Session]) -> None:
    ids = _queue(factory, 24)
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def work(name: str) -> None:
        start.wait()
        while (job := jobs.claim_next(factory, worker_id=name)) is not None:
            with lock:
                claimed.append((name, job.id))
            time.sleep(0.01)  # "run" it: one job at a time per worker

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    counts = Counter(job_id for _, job_id in claimed)
    assert sorted(counts) == ids and set(counts.values()) == {1}
    assert len({name for name, _ in claimed}) > 1  # the work was shared
    with factory() as session:
        rows = {j.id: j for j in session.query(Job)}
        owners = dict((job_id, name) for name, job_id in claimed)
        for job_id in ids:
            assert rows[job_id].state == "running" and rows[job_id].attempts == 1
            assert rows[job_id].worker_id == owners[job_id] and rows[job_id].heartbeat_at is not None
    assert jobs.claim_next(factory, worker_id="late") is None


def test_claims_go_oldest_first_and_by_kind(factory: sessionmaker[Session]) -> None:
    first, _ = _queue(factory, 2)
    assert jobs.claim_next(factory, worker_id="w", kinds=["retrain"]) is None
    job = jobs.claim_next(factory, worker_id="w", kinds=["export"])
    assert job is not None and job.id == first and job.params == {"kind": "csv"}


def test_progress_log_tail_and_ownership(factory: sessionmaker[Session]) -> None:
    (job_id,) = _queue(factory, 1)
    job = jobs.claim_next(factory, worker_id="w1")
    assert job is not None
    many = [f"line {i}" for i in range(30)]
    state = jobs.report_progress(factory, job_id, "w1", progress=0.4, stage="train", epoch=2, epochs=5,
                                 metrics={"held_accuracy": 0.8}, log=many, keep_lines=20)
    assert state == Ownership.ok
    with factory() as session:
        row = session.get(Job, job_id)
        assert row is not None
        assert (row.progress, row.stage, row.epoch, row.epochs) == (0.4, "train", 2, 5)
        assert row.metrics == {"held_accuracy": 0.8}
        lines = row.log_tail.splitlines()
        assert len(lines) == 20 and lines[-1].endswith("line 29")
    # Another worker cannot write to a job it does not own.
    assert jobs.report_progress(factory, job_id, "w2", progress=0.9) == Ownership.lost
    assert not jobs.finish(factory, job_id, "w2", state=JobState.succeeded)
    assert jobs.finish(factory, job_id, "w1", state=JobState.succeeded, result={"ok": True})
    with factory() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.state == "succeeded" and row.progress == 1.0 and row.finished_at
    assert jobs.report_progress(factory, job_id, "w1", progress=0.5) == Ownership.lost


def test_cancel_queued_and_running_jobs(factory: sessionmaker[Session]) -> None:
    queued, running = _queue(factory, 2)
    assert jobs.claim_next(factory, worker_id="w", kinds=None).id == queued  # type: ignore[union-attr]
    queued, running = running, queued  # the first one is the running one now
    with factory() as session:
        row = jobs.request_cancel(session=session, job_id=queued)
        assert row.state == "cancelled" and row.finished_at is not None
        row = jobs.request_cancel(session=session, job_id=running)
        assert row.state == "running" and row.cancel_requested
        session.commit()
    assert jobs.report_progress(factory, running, "w") == Ownership.cancel
    assert jobs.finish(factory, running, "w", state=JobState.cancelled)
    with factory() as session:
        with pytest.raises(Conflict, match="already cancelled"):
            jobs.request_cancel(session=session, job_id=running)
        with pytest.raises(NotFound):
            jobs.request_cancel(session=session, job_id=9999)


def test_a_job_whose_worker_stopped_heartbeating_is_requeued_then_failed(
    factory: sessionmaker[Session],
) -> None:
    (job_id,) = _queue(factory, 1, max_attempts=2)
    assert jobs.claim_next(factory, worker_id="dead-1") is not None
    assert jobs.reap_stale(factory, stale_seconds=30) == []  # fresh heartbeat: left alone
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert jobs.reap_stale(factory, stale_seconds=30, now=later) == [(job_id, "queued")]
    job = jobs.claim_next(factory, worker_id="dead-2")
    assert job is not None and job.id == job_id and job.attempts == 2
    much_later = later + timedelta(seconds=60)
    assert jobs.reap_stale(factory, stale_seconds=30, now=much_later) == [(job_id, "failed")]
    with factory() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.state == "failed" and row.finished_at is not None
        assert "worker dead-2 stopped heartbeating" in (row.error or "")
        assert "gave up after 2 attempt(s)" in (row.error or "")
        assert "re-queued" in row.log_tail


def test_a_dead_worker_whose_job_was_being_cancelled_ends_cancelled(factory: sessionmaker[Session]) -> None:
    (job_id,) = _queue(factory, 1)
    jobs.claim_next(factory, worker_id="w")
    with factory() as session:
        jobs.request_cancel(session=session, job_id=job_id)
        session.commit()
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert jobs.reap_stale(factory, stale_seconds=5, now=later) == [(job_id, "cancelled")]


# -- routes ------------------------------------------------------------------------------------------------


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
