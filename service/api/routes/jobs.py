"""Admins start retrain and export jobs, follow them, cancel them and download their output."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import FileResponse

from service.accounts import Role
from service.api.deps import CurrentUser, SessionDep, SettingsDep, require_role
from service.api.errors import BODY_ERRORS, errors
from service.api.schemas.jobs import ExportCreate, JobPublic, JobsPublic, RetrainCreate
from service.core.errors import Conflict, NotFound
from service.jobs import rows as jobs
from service.jobs.kinds import HANDLERS, handler_for
from service.jobs.retrain import check_request
from service.store.tables import Job

router = APIRouter(prefix="/admin", tags=["jobs"], dependencies=[Depends(require_role(Role.admin))],
                   responses=errors(401, 403))


def job_public(job: Job) -> JobPublic:
    out = JobPublic.model_validate(job)
    if _downloadable(job.kind) and job.state == jobs.JobState.succeeded and job.result:
        out.download = f"/api/v1/admin/jobs/{job.id}/download"
    return out


def _downloadable(kind: str) -> bool:
    handler = handler_for(kind)
    return handler is not None and handler.downloadable


@router.post("/retrain", response_model=JobPublic, status_code=status.HTTP_201_CREATED,
             responses=errors(*BODY_ERRORS, {409: "this model version already exists"}))
def create_retrain_job(body: RetrainCreate, session: SessionDep, settings: SettingsDep,
                       user: CurrentUser) -> JobPublic:
    """Queue a retrain job: base dataset plus validated observations, gated against the active model."""
    params = check_request(body, session=session, settings=settings)
    job = jobs.create_job(session=session, kind=jobs.JobKind.retrain, params=params, created_by=user.id,
                          max_attempts=settings.job_max_attempts)
    session.commit()
    return job_public(job)


@router.post("/exports", response_model=JobPublic, status_code=status.HTTP_201_CREATED, responses=errors(*BODY_ERRORS))
def create_export_job(body: ExportCreate, session: SessionDep, settings: SettingsDep,
                      user: CurrentUser) -> JobPublic:
    """Queue an export job (dwca, csv or training manifest); download it when it has succeeded."""
    job = jobs.create_job(session=session, kind=jobs.JobKind.export, params=body.model_dump(mode="json"),
                          created_by=user.id, max_attempts=settings.job_max_attempts)
    session.commit()
    return job_public(job)


@router.get("/jobs", response_model=JobsPublic, responses=errors(422))
def list_jobs(
    session: SessionDep,
    kind: jobs.JobKind | None = None,
    state: jobs.JobState | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> JobsPublic:
    """Jobs, newest first."""
    rows, count = jobs.list_jobs(session=session, kind=kind, state=state, limit=limit, offset=offset)
    return JobsPublic(data=[job_public(j) for j in rows], count=count)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=errors(404, 422))
def read_job(job_id: int, session: SessionDep) -> JobPublic:
    """One job: state, progress, epoch, metrics, log tail, heartbeat, result."""
    return job_public(jobs.get_job(session=session, job_id=job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic,
             responses=errors(404, 422, {409: "the job has already finished"}))
def cancel_job(job_id: int, session: SessionDep) -> JobPublic:
    """Cancel a queued job, or stop a running one (its worker stops the training process)."""
    job = jobs.request_cancel(session=session, job_id=job_id)
    session.commit()
    return job_public(job)


@router.get("/jobs/{job_id}/download", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}, "text/csv": {}}},
                       **errors(404, 422, {409: "the export job has not succeeded (yet)"})})
def download_job_output(job_id: int, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The file an export job wrote."""
    job = jobs.get_job(session=session, job_id=job_id)
    kind, state, result = job.kind, job.state, dict(job.result or {})
    session.rollback()  # end the transaction before streaming (on SQLite it holds the write lock)
    if not _downloadable(kind):
        raise NotFound(f"job {job_id} is a {kind} job; only {_with_download()} jobs have a download")
    if state != jobs.JobState.succeeded or not result:
        raise Conflict(f"job {job_id} is {state}; its file can be downloaded once it has succeeded")
    path = Path(str(result.get("path", "")))
    root = settings.jobs_path.resolve()
    if not path.is_file() or root not in path.resolve().parents:
        raise NotFound(f"the output of job {job_id} is no longer on the server")
    return FileResponse(path, media_type=str(result.get("media_type") or "application/octet-stream"),
                        filename=str(result.get("filename") or path.name))


def _with_download() -> str:
    return " and ".join(kind for kind, handler in HANDLERS.items() if handler.downloadable)
