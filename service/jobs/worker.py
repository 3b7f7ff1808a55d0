"""The job worker: claims queued jobs, runs each in a child process, streams progress into the job row.

One worker runs one job at a time; run as many workers as there are machines or GPUs (``pollinid worker``),
they share the queue through the database (see :mod:`service.jobs.rows`).

For every job the worker

1. re-queues jobs of dead workers (:func:`service.jobs.rows.reap_stale`), then claims the oldest queued job;
2. looks up the handler of the job's kind (:mod:`service.jobs.kinds`), which prepares the attempt's folder
   ``<jobs_dir>/<job id>/attempt-<n>/`` and names the child process to start (retrain jobs run
   ``python -m training.worker_entry spec.json``, where PyTorch lives; export jobs
   ``python -m service.jobs.export_job spec.json``);
3. while the child runs, reads its output (event lines and plain log lines, :mod:`service.jobs.protocol`),
   writes progress, epoch, metrics and the log tail into the row and heartbeats; a cancel request stops
   the child's whole process group;
4. when the child exits, the handler completes the job (a retrain's candidate is registered and gated, an
   export's file recorded) and the row becomes ``succeeded``, or ``failed`` with the reason; an attempt that
   did not succeed is released (a retrain's reserved version folder is given back).

If the worker itself is killed, its heartbeat stops; another worker re-queues the job (or fails it after
``job_max_attempts`` runs), and the orphaned child notices its parent is gone and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.jobs import rows
from service.jobs.handlers import Attempt
from service.jobs.kinds import handler_for
from service.jobs.protocol import EventKind, parse_event
from service.jobs.rows import Claimed, JobState, Ownership
from service.settings import Settings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    path = env.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
    return env


def kill_group(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
    """Stop a child and everything it started (its own process group): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@dataclass
class _Stream:
    """What the child said since the last database write."""

    progress: float | None = None
    stage: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, Any] | None = None
    lines: list[str] = field(default_factory=list)
    error: str | None = None
    dirty: bool = False


class Worker:
    """Runs jobs from the database, one at a time.

    Args:
        settings: database, folders, heartbeat and attempt settings.
        factory: database sessions (built from ``settings`` when omitted).
        worker_id: a unique name (default: host, pid and a random suffix).
    """

    def __init__(self, settings: Settings, factory: sessionmaker[Session] | None = None, *,
                 worker_id: str | None = None) -> None:
        self.settings = settings
        self._engine = None
        if factory is None:
            from service.store.db import create_db_engine, init_db, make_session_factory

            self._engine = create_db_engine(settings.resolved_database_url)
            init_db(self._engine)
            factory = make_session_factory(self._engine)
        self.factory = factory
        self.worker_id = worker_id or new_worker_id()
        self.stop_event = threading.Event()
        self.child: subprocess.Popen[str] | None = None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    # -- the loop -------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        """Claim and run jobs until :attr:`stop_event` is set."""
        logger.info("worker %s started (database %s)", self.worker_id,
                    self.settings.resolved_database_url.split("@")[-1])
        while not self.stop_event.is_set():
            try:
                ran = self.run_once()
            except Exception:
                logger.exception("worker loop error; retrying")
                ran = False
            if not ran:
                self.stop_event.wait(self.settings.worker_poll_seconds)
        logger.info("worker %s stopped", self.worker_id)

    def run_once(self) -> bool:
        """Reap dead workers' jobs, then claim and run one job. Returns whether a job ran."""
        rows.reap_stale(self.factory, stale_seconds=self.settings.worker_stale_seconds)
        claimed = rows.claim_next(self.factory, worker_id=self.worker_id)
        if claimed is None:
            return False
        self.run_job(claimed)
        return True

    # -- one job --------------------------------------------------------------------------------------
    def _log(self, job_id: int, *lines: str) -> Ownership:
        return rows.report_progress(self.factory, job_id, self.worker_id, log=list(lines),
                                        keep_lines=self.settings.job_log_lines)

    def _finish(self, job: Claimed, state: JobState, **kwargs: Any) -> None:
        rows.finish(self.factory, job.id, self.worker_id, state=state,
                        keep_lines=self.settings.job_log_lines, **kwargs)

    def run_job(self, job: Claimed) -> None:
        """Run a claimed job to its end (succeeded, failed, cancelled, or re-queued on shutdown)."""
        handler = handler_for(job.kind)
        if handler is None:
            self._finish(job, JobState.failed, error=f"unknown job kind {job.kind!r}")
            return
        work = self.settings.jobs_path / str(job.id) / f"attempt-{job.attempts}"
        work.mkdir(parents=True, exist_ok=True)
        attempt = Attempt(job=job, work_dir=work, factory=self.factory, settings=self.settings,
                          log=lambda *lines: self._log(job.id, *lines))
        try:
            spec = handler.prepare(attempt)
            cmd = handler.command(spec, attempt)
        except Exception as exc:
            logger.exception("job %d could not be prepared", job.id)
            reason = getattr(exc, "message", exc)
            self._finish(job, JobState.failed, error=f"preparing the job failed: {reason}")
            return

        outcome, stream = self._supervise(job, cmd, work)
        if outcome != "ok":
            handler.release(spec, attempt)
        if outcome == "cancelled":
            self._finish(job, JobState.cancelled, log=["child stopped"])
            return
        if outcome == "lost":
            logger.warning("job %d was taken from worker %s; child stopped", job.id, self.worker_id)
            return
        if outcome == "shutdown":
            self._finish(job, JobState.queued, log=["worker shutting down: re-queued"])
            return
        if outcome != "ok":
            tail = " | ".join(stream.lines[-3:])
            self._finish(job, JobState.failed, error=stream.error or f"the job's process {outcome}: {tail}")
            return
        try:
            result = handler.complete(spec, attempt)
        except Exception as exc:
            logger.exception("job %d: finishing failed", job.id)
            reason = getattr(exc, "message", exc)
            self._finish(job, JobState.failed, error=f"finishing the job failed: {reason}",
                         log=traceback.format_exc().splitlines()[-3:])
            return
        self._finish(job, JobState.succeeded, result=result, log=[handler.summary(spec, result)])

    def _supervise(self, job: Claimed, cmd: list[str], work: Path) -> tuple[str, _Stream]:
        """Run the child to its end; return ``ok``, ``cancelled``, ``lost``, ``shutdown`` or an exit text."""
        stream = _Stream()
        lines: queue.Queue[str | None] = queue.Queue()
        log_file = (work / "child.log").open("a", encoding="utf-8")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                cwd=str(REPO_ROOT), env=_child_env(), start_new_session=True)
        self.child = proc

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=read, name=f"job-{job.id}-output", daemon=True)
        reader.start()
        self._log(job.id, f"started child process {proc.pid}: {' '.join(cmd[1:])}")
        last_write = 0.0
        eof = False
        outcome = "ok"
        try:
            while True:
                deadline = time.monotonic() + 0.25
                while time.monotonic() < deadline:
                    try:
                        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if line is None:
                        eof = True
                        break
                    log_file.write(line + "\n")
                    self._take(line, stream)
                now = time.monotonic()
                if stream.dirty or now - last_write >= self.settings.worker_heartbeat_seconds:
                    state = self._flush(job, stream)
                    last_write = now
                    if state == Ownership.cancel:
                        outcome = "cancelled"
                        break
                    if state == Ownership.lost:
                        outcome = "lost"
                        break
                if self.stop_event.is_set():
                    outcome = "shutdown"
                    break
                if eof and proc.poll() is not None:
                    break
                if eof:
                    proc.wait(timeout=30)
        finally:
            if outcome != "ok":
                kill_group(proc)
            else:
                proc.wait()
            reader.join(timeout=5)
            while not lines.empty():
                line = lines.get_nowait()
                if line is not None:
                    log_file.write(line + "\n")
                    self._take(line, stream)
            log_file.close()
            self.child = None
        if outcome == "ok":
            self._flush(job, stream)
            if proc.returncode != 0:
                outcome = f"exited with code {proc.returncode}"
        return outcome, stream

    @staticmethod
    def _take(line: str, stream: _Stream) -> None:
        """Fold one output line of the child into the pending update."""
        stream.dirty = True
        event = parse_event(line)
        if event is None:
            if line.strip():
                stream.lines.append(line[:500])
            return
        kind = event.get("event")
        if kind == EventKind.error:
            stream.error = str(event.get("message"))[:4000]
        if kind == EventKind.progress:
            if event.get("progress") is not None:
                stream.progress = float(event["progress"])
            stream.stage = event.get("stage") or stream.stage
            if event.get("epoch") is not None:
                stream.epoch = int(event["epoch"])
            if event.get("epochs") is not None:
                stream.epochs = int(event["epochs"])
            if isinstance(event.get("metrics"), dict):
                stream.metrics = event["metrics"]
        message = event.get("message")
        if message:
            prefix = f"[{event.get('stage')}] " if event.get("stage") else ""
            stream.lines.append(f"{prefix}{message}"[:500])

    def _flush(self, job: Claimed, stream: _Stream) -> Ownership:
        state = rows.report_progress(
            self.factory, job.id, self.worker_id, progress=stream.progress, stage=stream.stage,
            epoch=stream.epoch, epochs=stream.epochs, metrics=stream.metrics, log=stream.lines,
            keep_lines=self.settings.job_log_lines,
        )
        stream.lines = []
        stream.metrics = None
        stream.dirty = False
        return state
