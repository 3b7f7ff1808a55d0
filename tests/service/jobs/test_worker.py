"""The worker process: a SIGKILLed worker's job is re-queued, then failed after its attempts; its training
child does not outlive it; a cancel request stops the child; ``pollinid serve --with-worker`` wiring."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.jobs import rows as jobs
from service.jobs.params import RetrainCreate
from service.jobs.retrain import check_request
from service.jobs.worker import Worker
from service.settings import Settings
from service.store.db import create_db_engine, init_db, make_session_factory
from service.store.tables import Job
from tests.service.jobs_support import TRAIN_OPTIONS, base_dataset, pid_alive, wait_for

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def setup(tmp_path: Path, settings: Settings) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    engine = create_db_engine(settings.resolved_database_url)
    init_db(engine)
    try:
        yield settings, make_session_factory(engine)
    finally:
        engine.dispose()


def _retrain_job(settings: Settings, factory: sessionmaker[Session], base: Path, *, max_attempts: int,
                 epochs: int = 200) -> int:
    body = RetrainCreate.model_validate({"base_dataset": str(base), "name": "tiny",
                                         "include_observations": False,
                                         **{**TRAIN_OPTIONS, "epochs": epochs}})
    with factory() as session:
        params = check_request(body, session=session, settings=settings)
        job = jobs.create_job(session=session, kind="retrain", params=params, created_by=None,
                              max_attempts=max_attempts)
        session.commit()
        return job.id


def _row(factory: sessionmaker[Session], job_id: int) -> Job:
    with factory() as session:
        row = session.get(Job, job_id)
        assert row is not None
        session.expunge(row)
        return row


def _child_pid(factory: sessionmaker[Session], job_id: int, attempt: int) -> int | None:
    row = _row(factory, job_id)
    if row.state != "running" or row.attempts != attempt:
        return None
    found = re.findall(r"started child process (\d+)", row.log_tail)
    return int(found[-1]) if len(found) >= attempt else None


def _start_worker(settings: Settings, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "POLLINID_DATABASE_URL": settings.resolved_database_url,
           "POLLINID_DATA_DIR": str(settings.data_dir), "POLLINID_MODELS_DIR": str(settings.models_dir),
           "POLLINID_WORKER_HEARTBEAT_SECONDS": "0.3", "POLLINID_WORKER_POLL_SECONDS": "0.2"}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--id", name], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _sigkill_while_running(settings: Settings, factory: sessionmaker[Session], job_id: int, attempt: int,
                           name: str) -> None:
    worker = _start_worker(settings, name)
    try:
        child = wait_for(lambda: _child_pid(factory, job_id, attempt), timeout=60)
        assert _row(factory, job_id).worker_id == name
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        # The orphaned training child notices its parent is gone and exits with its process group.
        wait_for(lambda: not pid_alive(child), timeout=15)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_sigkilled_worker_job_is_requeued_then_failed(setup: tuple[Settings, sessionmaker[Session]],
                                                        tmp_path: Path) -> None:
    settings, factory = setup
    base = base_dataset(tmp_path / "base", n_train=4, n_valid=2)
    job_id = _retrain_job(settings, factory, base, max_attempts=2)

    _sigkill_while_running(settings, factory, job_id, 1, "doomed-1")
    assert _row(factory, job_id).state == "running"  # nobody knows yet
    time.sleep(1.0)
    assert jobs.reap_stale(factory, stale_seconds=0.8) == [(job_id, "queued")]
    row = _row(factory, job_id)
    assert row.attempts == 1 and row.worker_id is None
    assert "worker doomed-1 stopped heartbeating" in row.log_tail and "re-queued" in row.log_tail

    _sigkill_while_running(settings, factory, job_id, 2, "doomed-2")
    time.sleep(1.0)
    assert jobs.reap_stale(factory, stale_seconds=0.8) == [(job_id, "failed")]
    row = _row(factory, job_id)
    assert row.state == "failed" and row.attempts == 2
    assert "worker doomed-2 stopped heartbeating" in (row.error or "")
    assert "gave up after 2 attempt(s)" in (row.error or "")


def test_cancel_stops_the_training_child(setup: tuple[Settings, sessionmaker[Session]],
                                        tmp_path: Path) -> None:
    settings, factory = setup
    settings = settings.model_copy(update={"worker_heartbeat_seconds": 0.2})
    base = base_dataset(tmp_path / "base", n_train=4, n_valid=2)
    job_id = _retrain_job(settings, factory, base, max_attempts=3)
    worker = Worker(settings, factory, worker_id="in-process")
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        child = wait_for(lambda: _child_pid(factory, job_id, 1), timeout=60)
        reserved = settings.trained_models_path / "tiny" / "2"
        assert reserved.is_dir()  # the candidate's version folder is reserved
        with factory() as session:
            jobs.request_cancel(session=session, job_id=job_id)
            session.commit()
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        worker.stop_event.set()
        thread.join(timeout=30)
    row = _row(factory, job_id)
    assert row.state == "cancelled" and row.finished_at is not None
    assert not pid_alive(child)
    assert not reserved.exists()  # the empty reservation is released


def test_a_failing_child_fails_the_job_with_its_reason(setup: tuple[Settings, sessionmaker[Session]],
                                                       tmp_path: Path) -> None:
    settings, factory = setup
    base = base_dataset(tmp_path / "base", n_train=10, n_valid=2)
    body = RetrainCreate.model_validate({"base_dataset": str(base), "name": "tiny",
                                         "include_observations": False,
                                         **{**TRAIN_OPTIONS, "backbone": "no_such_net"}})
    with factory() as session:
        params = check_request(body, session=session, settings=settings)
        job_id = jobs.create_job(session=session, kind="retrain", params=params, created_by=None).id
        session.commit()
    assert Worker(settings, factory, worker_id="w").run_once() is True
    row = _row(factory, job_id)
    assert row.state == "failed"
    assert "unknown backbone 'no_such_net'" in (row.error or "") and "tiny_cnn" in (row.error or "")
    assert not (settings.trained_models_path / "tiny" / "2").exists()
    assert not (settings.models_dir / "tiny" / "2").exists()  # never in the releases


def test_serve_has_a_with_worker_flag() -> None:
    from service.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--with-worker", "--port", "9999"])
    assert args.with_worker is True
    assert build_parser().parse_args(["serve"]).with_worker is False
    args = build_parser().parse_args(["worker", "--once", "--id", "w7"])
    assert args.once and args.id == "w7"
