"""Jobs in the database: atomic claims by several workers, progress, ownership, cancel, stale-worker reaping."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.core.errors import Conflict, NotFound
from service.jobs import rows as jobs
from service.jobs.rows import JobState, Ownership
from service.store.db import create_db_engine, init_db, make_session_factory
from service.store.tables import Job


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
