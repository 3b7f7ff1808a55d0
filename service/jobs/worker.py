"""The job worker: claims queued jobs, runs each in a child process, streams progress into the job row.

One worker runs one job at a time; run as many workers as there are machines or GPUs (``pollinid worker``),
they share the queue through the database (see :mod:`service.jobs.queue`).

For every job the worker

1. re-queues jobs of dead workers (:func:`service.jobs.queue.reap_stale`), then claims the oldest queued job;
2. prepares the attempt's folder ``<jobs_dir>/<job id>/attempt-<n>/`` and starts the child: retrain jobs
   run ``python -m training.worker_entry spec.json`` (PyTorch lives only there), export jobs run
   ``python -m service.jobs.worker export spec.json``;
3. while the child runs, reads its output (``@@pollinid {json}`` event lines and plain log lines),
   writes progress, epoch, metrics and the log tail into the row and heartbeats; a cancel request stops
   the child's whole process group;
4. when the child exits: retrain jobs are registered and gated (:func:`service.jobs.retrain.complete`), export
   jobs record their file; the row becomes ``succeeded`` or ``failed`` with the reason.

If the worker itself is killed, its heartbeat stops; another worker re-queues the job (or fails it after
``job_max_attempts`` runs), and the orphaned child notices its parent is gone and exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.jobs import queue as jobs_mod
from service.jobs.queue import Claimed, JobKind, JobState, Ownership
from service.settings import Settings

logger = logging.getLogger(__name__)

EVENT_PREFIX = "@@pollinid "
REPO_ROOT = Path(__file__).resolve().parent.parent
EXPORT_FILENAME = "export.json"  # what an export child writes next to its file


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
        jobs_mod.reap_stale(self.factory, stale_seconds=self.settings.worker_stale_seconds)
        claimed = jobs_mod.claim_next(self.factory, worker_id=self.worker_id)
        if claimed is None:
            return False
        self.run_job(claimed)
        return True

    # -- one job --------------------------------------------------------------------------------------
    def _log(self, job_id: int, *lines: str) -> Ownership:
        return jobs_mod.report_progress(self.factory, job_id, self.worker_id, log=list(lines),
                                        keep_lines=self.settings.job_log_lines)

    def _finish(self, job: Claimed, state: JobState, **kwargs: Any) -> None:
        jobs_mod.finish(self.factory, job.id, self.worker_id, state=state,
                        keep_lines=self.settings.job_log_lines, **kwargs)

    def run_job(self, job: Claimed) -> None:
        """Run a claimed job to its end (succeeded, failed, cancelled, or re-queued on shutdown)."""
        work = self.settings.jobs_path / str(job.id) / f"attempt-{job.attempts}"
        work.mkdir(parents=True, exist_ok=True)
        spec: dict[str, Any] | None = None
        try:
            if job.kind == JobKind.retrain:
                from service.jobs import retrain

                spec = retrain.prepare(job.id, job.params, factory=self.factory, settings=self.settings,
                                       work_dir=work)
                self._log(job.id, f"training {spec['name']}/{spec['version']} from "
                          f"{spec['base_dataset'] or 'the active model and its replay kit (last layer only)'}"
                          f" + {spec['observations_exported']['observations']} validated observations "
                          f"({spec['observations_exported']['photos']} photos)")
                cmd = [sys.executable, "-m", "training.worker_entry", str(work / "spec.json")]
            elif job.kind == JobKind.export:
                spec = {"kind": job.params["kind"], "work_dir": str(work),
                        "settings": self.settings.model_dump(mode="json", exclude={"secret_key"})}
                (work / "spec.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
                cmd = [sys.executable, "-m", "service.jobs.worker", "export", str(work / "spec.json")]
            else:
                self._finish(job, JobState.failed, error=f"unknown job kind {job.kind!r}")
                return
        except Exception as exc:
            logger.exception("job %d could not be prepared", job.id)
            reason = getattr(exc, "message", exc)
            self._finish(job, JobState.failed, error=f"preparing the job failed: {reason}")
            return

        outcome, stream = self._supervise(job, cmd, work)
        if outcome == "cancelled":
            self._release(job, spec)
            self._finish(job, JobState.cancelled, log=["child stopped"])
            return
        if outcome == "lost":
            self._release(job, spec)
            logger.warning("job %d was taken from worker %s; child stopped", job.id, self.worker_id)
            return
        if outcome == "shutdown":
            self._release(job, spec)
            self._finish(job, JobState.queued, log=["worker shutting down: re-queued"])
            return
        if outcome != "ok":
            self._release(job, spec)
            tail = " | ".join(stream.lines[-3:])
            self._finish(job, JobState.failed, error=stream.error or f"the job's process {outcome}: {tail}")
            return
        try:
            result = self._complete(job, spec or {}, work)
        except Exception as exc:
            logger.exception("job %d: finishing failed", job.id)
            reason = getattr(exc, "message", exc)
            self._finish(job, JobState.failed, error=f"finishing the job failed: {reason}",
                         log=traceback.format_exc().splitlines()[-3:])
            return
        self._finish(job, JobState.succeeded, result=result, log=self._summary(job, result))

    def _release(self, job: Claimed, spec: dict[str, Any] | None) -> None:
        if job.kind == JobKind.retrain and spec:
            from service.jobs.retrain import release_reservation

            release_reservation(spec)

    def _complete(self, job: Claimed, spec: dict[str, Any], work: Path) -> dict[str, Any]:
        if job.kind == JobKind.retrain:
            from service.jobs.retrain import complete

            child = json.loads((work / "result.json").read_text(encoding="utf-8"))
            self._log(job.id, "registering the candidate and applying the gate")
            return complete(spec, child, job.params, factory=self.factory, settings=self.settings)
        return json.loads((work / EXPORT_FILENAME).read_text(encoding="utf-8"))

    @staticmethod
    def _summary(job: Claimed, result: dict[str, Any]) -> list[str]:
        if job.kind == JobKind.retrain:
            gate = result.get("gate") or {}
            model = result.get("model") or {}
            return [f"candidate {model.get('name')}/{model.get('version')}: gate "
                    f"{'passed' if gate.get('passed') else 'failed'} ({'; '.join(gate.get('reasons', []))}); "
                    f"{'activated' if result.get('activated') else 'not activated'}"]
        return [f"wrote {result.get('filename')} ({result.get('records')} records)"]

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
        if not line.startswith(EVENT_PREFIX):
            if line.strip():
                stream.lines.append(line[:500])
            return
        try:
            event = json.loads(line[len(EVENT_PREFIX):])
        except json.JSONDecodeError:
            stream.lines.append(line[:500])
            return
        kind = event.get("event")
        if kind == "error":
            stream.error = str(event.get("message"))[:4000]
        if kind == "progress":
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
        state = jobs_mod.report_progress(
            self.factory, job.id, self.worker_id, progress=stream.progress, stage=stream.stage,
            epoch=stream.epoch, epochs=stream.epochs, metrics=stream.metrics, log=stream.lines,
            keep_lines=self.settings.job_log_lines,
        )
        stream.lines = []
        stream.metrics = None
        stream.dirty = False
        return state


# -- the export child: ``python -m service.jobs.worker export spec.json`` ---------------------------------------


def run_export_child(spec_path: Path) -> int:
    """Write one export (dwca, csv, training manifest) into the spec's work folder."""
    from service.exports.writers import MEDIA_TYPES, export
    from service.store.db import create_db_engine, make_session_factory

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    settings = Settings.model_validate(spec["settings"])
    kind = spec["kind"]
    media_type, filename = MEDIA_TYPES[kind]
    work = Path(spec["work_dir"])
    print(EVENT_PREFIX + json.dumps({"event": "progress", "stage": "export", "progress": 0.05,
                                     "message": f"writing the {kind} export"}), flush=True)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            result = export(session, settings, kind, work / filename)
    finally:
        engine.dispose()
    info = {"kind": kind, "filename": filename, "media_type": media_type, "path": str(result.path),
            "records": result.records, "media": result.media, "size_bytes": result.path.stat().st_size}
    (work / EXPORT_FILENAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(EVENT_PREFIX + json.dumps({"event": "progress", "stage": "done", "progress": 1.0,
                                     "message": f"{result.records} records"}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "export":
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        try:
            return run_export_child(Path(args[1]))
        except Exception as exc:
            traceback.print_exc(file=sys.stdout)
            print(EVENT_PREFIX + json.dumps({"event": "error", "message": f"{type(exc).__name__}: {exc}"}),
                  flush=True)
            return 1
    print("usage: python -m service.jobs.worker export SPEC.json", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover - the export child
    sys.exit(main())
