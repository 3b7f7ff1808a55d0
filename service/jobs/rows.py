"""Background jobs as database rows: create, claim atomically, heartbeat, progress, finish, reap.

States: ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``.

* :func:`claim_next` takes the oldest queued job in one transaction: ``SELECT … FOR UPDATE SKIP LOCKED`` on
  PostgreSQL (several workers never wait on each other nor take the same row); on SQLite the transaction
  starts with ``BEGIN IMMEDIATE`` (see :mod:`service.store.db`), so claims are serialised by the write lock.
* The worker owning a job (``worker_id``) heartbeats through :func:`report_progress`; every write checks it
  still owns the row, so a worker presumed dead can never overwrite the job's new owner.
* :func:`reap_stale` re-queues a running job whose heartbeat is older than the stale limit (its worker was
  killed), or fails it with the reason once it has used ``max_attempts`` runs.
* :func:`request_cancel` cancels a queued job at once; a running job is flagged and its worker stops the
  child process and marks it cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.core.clock import as_utc
from service.core.errors import Conflict, NotFound
from service.core.vocabulary import JobKind, JobState
from service.store.tables import Job

logger = logging.getLogger(__name__)


TERMINAL_STATES: frozenset[str] = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(now: datetime) -> str:
    return now.strftime("%H:%M:%S")


def append_log(job: Job, lines: Iterable[str], *, keep: int = 200, now: datetime | None = None) -> None:
    """Append lines (time-stamped) to the job's log tail, keeping the last ``keep`` lines."""
    stamp = _stamp(now or _now())
    new = [f"{stamp} {line.rstrip()}" for line in lines if line and line.strip()]
    if not new:
        return
    old = job.log_tail.splitlines() if job.log_tail else []
    job.log_tail = "\n".join((old + new)[-keep:])


# -- the API side ----------------------------------------------------------------------------------------


def create_job(
    *, session: Session, kind: str, params: dict[str, Any], created_by: int | None, max_attempts: int = 3
) -> Job:
    """Queue a job. The caller commits."""
    job = Job(
        kind=JobKind(kind).value,
        state=JobState.queued.value,
        params=params,
        created_by=created_by,
        max_attempts=max_attempts,
        log_tail="",
    )
    append_log(job, [f"queued {kind} job"])
    session.add(job)
    session.flush()
    logger.info("queued %s job %d", kind, job.id)
    return job


def get_job(*, session: Session, job_id: int) -> Job:
    """The job ``job_id``; :class:`NotFound` otherwise."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(
    *, session: Session, kind: str | None = None, state: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Job], int]:
    """Jobs, newest first, and how many match."""
    conditions = []
    if kind:
        conditions.append(Job.kind == kind)
    if state:
        conditions.append(Job.state == state)
    count = session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0
    rows = session.scalars(select(Job).where(*conditions).order_by(Job.id.desc()).limit(limit).offset(offset))
    return list(rows), int(count)


def request_cancel(*, session: Session, job_id: int) -> Job:
    """Cancel a queued job now, or ask the worker of a running job to stop it. The caller commits.

    Raises:
        NotFound: no such job.
        Conflict: the job has already finished.
    """
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if job.state in TERMINAL_STATES:
        raise Conflict(f"job {job_id} has already {job.state}; only queued or running jobs can be cancelled")
    if job.state == JobState.queued:
        job.state = JobState.cancelled.value
        job.finished_at = _now()
        append_log(job, ["cancelled before it started"])
    else:
        job.cancel_requested = True
        append_log(job, ["cancellation requested; waiting for the worker to stop it"])
    session.flush()
    return job


# -- the worker side ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A job a worker now owns (a detached snapshot of the row)."""

    id: int
    kind: str
    params: dict[str, Any]
    attempts: int
    max_attempts: int


def claim_next(factory: sessionmaker[Session], *, worker_id: str, kinds: Sequence[str] | None = None
               ) -> Claimed | None:
    """Atomically take the oldest queued job (of ``kinds``), mark it running, and return it."""
    with factory() as session, session.begin():
        stmt = select(Job).where(Job.state == JobState.queued.value)
        if kinds:
            stmt = stmt.where(Job.kind.in_(list(kinds)))
        # PostgreSQL: rows locked by another claimer are skipped. SQLite ignores the clause; its
        # BEGIN IMMEDIATE transaction already excludes every other writer.
        job = session.scalars(stmt.order_by(Job.id).limit(1).with_for_update(skip_locked=True)).first()
        if job is None:
            return None
        now = _now()
        job.state = JobState.running.value
        job.worker_id = worker_id
        job.attempts += 1
        job.started_at = now
        job.heartbeat_at = now
        job.cancel_requested = False
        job.error = None
        append_log(job, [f"attempt {job.attempts}/{job.max_attempts} started by worker {worker_id}"], now=now)
        claimed = Claimed(job.id, job.kind, dict(job.params or {}), job.attempts, job.max_attempts)
    logger.info("worker %s claimed %s job %d (attempt %d)", worker_id, claimed.kind, claimed.id,
                claimed.attempts)
    return claimed


class Ownership(StrEnum):
    """What a heartbeat learns: keep going, stop because an admin cancelled, or the job is not ours."""

    ok = "ok"
    cancel = "cancel"
    lost = "lost"


def report_progress(
    factory: sessionmaker[Session],
    job_id: int,
    worker_id: str,
    *,
    progress: float | None = None,
    stage: str | None = None,
    epoch: int | None = None,
    epochs: int | None = None,
    metrics: dict[str, Any] | None = None,
    log: Sequence[str] = (),
    keep_lines: int = 200,
) -> Ownership:
    """Heartbeat, and record whatever progress is given, if ``worker_id`` still owns the running job."""
    with factory() as session, session.begin():
        job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()
        if job is None or job.state != JobState.running or job.worker_id != worker_id:
            return Ownership.lost
        now = _now()
        job.heartbeat_at = now
        if progress is not None:
            job.progress = max(0.0, min(1.0, float(progress)))
        if stage is not None:
            job.stage = stage[:32]
        if epoch is not None:
            job.epoch = epoch
        if epochs is not None:
            job.epochs = epochs
        if metrics is not None:
            job.metrics = metrics
        append_log(job, log, keep=keep_lines, now=now)
        return Ownership.cancel if job.cancel_requested else Ownership.ok


def finish(
    factory: sessionmaker[Session],
    job_id: int,
    worker_id: str,
    *,
    state: JobState,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    log: Sequence[str] = (),
    keep_lines: int = 200,
) -> bool:
    """Mark the job finished (or back to ``queued`` on a graceful worker shutdown) if still ours."""
    with factory() as session, session.begin():
        job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()
        if job is None or job.state != JobState.running or job.worker_id != worker_id:
            logger.warning("job %d is no longer owned by worker %s; not marking it %s", job_id, worker_id,
                           state.value)
            return False
        now = _now()
        job.state = state.value
        job.heartbeat_at = now
        if state == JobState.queued:
            job.worker_id = None
        else:
            job.finished_at = now
        if state == JobState.succeeded:
            job.progress = 1.0
        if result is not None:
            job.result = result
        if error is not None:
            job.error = error[:4000]
        append_log(job, [*log, f"{state.value}" + (f": {error}" if error else "")], keep=keep_lines, now=now)
    logger.info("job %d %s%s", job_id, state.value, f": {error}" if error else "")
    return True


def reap_stale(factory: sessionmaker[Session], *, stale_seconds: float, now: datetime | None = None
               ) -> list[tuple[int, str]]:
    """Re-queue (or fail, after ``max_attempts``) running jobs whose worker stopped heartbeating.

    Returns:
        ``[(job id, new state)]`` for every job changed.
    """
    now = now or _now()
    cutoff = now - timedelta(seconds=stale_seconds)
    changed: list[tuple[int, str]] = []
    with factory() as session, session.begin():
        stmt = (select(Job).where(Job.state == JobState.running.value, Job.heartbeat_at < cutoff)
                .order_by(Job.id).with_for_update(skip_locked=True))
        for job in session.scalars(stmt):
            beat = as_utc(job.heartbeat_at)
            silent = (now - beat).total_seconds() if beat else float("inf")
            reason = (f"worker {job.worker_id} stopped heartbeating ({silent:.0f} s without a heartbeat; "
                      "it was killed or lost)")
            if job.cancel_requested:
                job.state = JobState.cancelled.value
                job.finished_at = now
                append_log(job, [f"{reason}; the job was being cancelled: cancelled"], now=now)
            elif job.attempts < job.max_attempts:
                job.state = JobState.queued.value
                append_log(job, [f"{reason}; re-queued (attempt {job.attempts}/{job.max_attempts} lost)"],
                           now=now)
            else:
                job.state = JobState.failed.value
                job.finished_at = now
                job.error = f"{reason}; gave up after {job.attempts} attempt(s)"
                append_log(job, [f"failed: {job.error}"], now=now)
            job.worker_id = None if job.state == JobState.queued else job.worker_id
            changed.append((job.id, job.state))
    for job_id, state in changed:
        logger.warning("job %d had a dead worker: now %s", job_id, state)
    return changed
