"""Admins list model versions with their metrics and live accuracy, activate or roll back, read reports."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import func, select

from service.accounts import Role
from service.api.deps import CurrentUser, RegistryDep, SessionDep, require_role
from service.api.errors import BODY_ERRORS, errors
from service.api.schemas.models import (
    ModelActivate,
    ModelActivationPublic,
    ModelActivationsPublic,
    ModelRetire,
    ModelVersionPublic,
    ModelVersionsPublic,
)
from service.api.schemas.observations import ModelAccuracy
from service.core.errors import Conflict, NotFound
from service.exports.model_accuracy import model_accuracy
from service.inference.versions import VersionState
from service.store.tables import ModelActivation, ModelVersion

router = APIRouter(prefix="/admin/models", tags=["models"], dependencies=[Depends(require_role(Role.admin))],
                   responses=errors(401, 403))

# Files of a model version folder that the admin page may read (written by training's report).
REPORT_FILES: dict[str, str] = {
    "confusion.png": "image/png",
    "reliability.png": "image/png",
    "report.json": "application/json",
    "report.md": "text/markdown",
    "gate.json": "application/json",
    "model.json": "application/json",
}


def _versions(session: SessionDep, registry: RegistryDep) -> list[ModelVersionPublic]:
    # The registry reads with its own session first: on SQLite a reading session holds the write lock
    # (BEGIN IMMEDIATE) until it ends, so the request's session reads last and is rolled back at once.
    versions = registry.list_versions()
    rows = {(r.name, r.version): r for r in session.scalars(select(ModelVersion))}
    live = {(a["model_name"], a["model_version"]): a for a in model_accuracy(session)}
    session.rollback()
    out = []
    for v in versions:
        row = rows.get((v["name"], v["version"]))
        card = (row.card if row is not None else None) or {}
        folder = Path(v["path"])
        files = [f for f in REPORT_FILES if (folder / f).is_file()]
        acc = live.get((v["name"], v["version"]))
        out.append(ModelVersionPublic(
            name=v["name"], version=v["version"], active=v["active"], loaded=v["loaded"],
            registered_at=v["registered_at"], activated_at=v["activated_at"], error=v["error"],
            state=v.get("state"), origin=v.get("origin"), state_reason=v.get("state_reason"),
            architecture=card.get("architecture"), labels=list(card.get("labels") or []),
            metrics=dict(card.get("metrics") or {}), training=dict(card.get("training") or {}),
            live=ModelAccuracy.model_validate(acc) if acc else None, files=files,
        ))
    return out


@router.get("", response_model=ModelVersionsPublic)
def list_models(session: SessionDep, registry: RegistryDep) -> ModelVersionsPublic:
    """Every version, released and trained: state, metrics, which one is active, live accuracy."""
    registry.scan()  # pick up versions a worker exported since
    data = _versions(session, registry)
    return ModelVersionsPublic(data=data, count=len(data))


@router.get("/activations", response_model=ModelActivationsPublic, responses=errors(422))
def list_activations(session: SessionDep, limit: int = Query(100, ge=1, le=1000),
                     offset: int = Query(0, ge=0)) -> ModelActivationsPublic:
    """Every activation, newest first: which version, its state then, who, why, and whether it was forced."""
    rows = session.scalars(select(ModelActivation).order_by(ModelActivation.id.desc())
                           .limit(limit).offset(offset)).all()
    count = session.scalar(select(func.count()).select_from(ModelActivation)) or 0
    out = ModelActivationsPublic(data=[ModelActivationPublic.model_validate(r) for r in rows], count=count)
    session.rollback()
    return out


def _one(session: SessionDep, version: str, name: str | None) -> tuple[str, str]:
    """The (name, version) that ``version`` (and ``name``) designate: 404 for none, 409 for several.

    Plain tuples, and the transaction ended at once: on SQLite a reading session holds the write lock, which
    an activation or a state change after this needs.
    """
    stmt = select(ModelVersion.name, ModelVersion.version).where(ModelVersion.version == version)
    if name is not None:
        stmt = stmt.where(ModelVersion.name == name)
    rows = [tuple(r) for r in session.execute(stmt).all()]
    session.rollback()
    if not rows:
        raise NotFound(f"no model version {version!r}" + (f" of model {name!r}" if name else ""))
    if len(rows) > 1:
        raise Conflict(f"several models have version {version!r}: {sorted(r[0] for r in rows)}; "
                       "say which with ?name=")
    return (str(rows[0][0]), str(rows[0][1]))


@router.post("/{version}/retire", response_model=ModelVersionPublic, responses=errors(*BODY_ERRORS, 404))
async def retire_model(version: str, session: SessionDep, registry: RegistryDep,
                       body: ModelRetire | None = None,
                       name: str | None = Query(None, description="needed when several models have this "
                                                "version")) -> ModelVersionPublic:
    """Retire a version that is not active: it is never activated by default again (only with force)."""
    await run_in_threadpool(registry.scan)
    target = _one(session, version, name)
    await run_in_threadpool(registry.set_state, *target, VersionState.retired.value,
                            reason=body.reason if body else None)
    for v in _versions(session, registry):
        if (v.name, v.version) == target:
            return v
    raise NotFound(f"model {target[0]}/{target[1]} vanished")  # pragma: no cover


@router.post("/{version}/activate", response_model=ModelVersionPublic, responses=errors(*BODY_ERRORS, 404, {
    409: "several models have this version: say which with ?name=",
    422: "invalid parameters, or the version cannot serve (corrupt model, card and graph disagree)"}))
async def activate_model(version: str, session: SessionDep, registry: RegistryDep,
                         user: CurrentUser, body: ModelActivate | None = None,
                         name: str | None = Query(None, description="needed when several models have this "
                                                  "version")) -> ModelVersionPublic:
    """Activate a version (or roll back to an older one); every process swaps to it within seconds.

    A candidate, a version that failed its gate or a retired one answers 409 unless the body says
    ``{"force": true, "reason": "..."}``; the activation is recorded with the admin and the reason.
    """
    user_id = user.id  # read before the transaction ends (a rollback expires the row)
    await run_in_threadpool(registry.scan)  # versions exported since the last scan get their rows
    target = _one(session, version, name)
    options = body or ModelActivate(force=False, reason=None)
    await run_in_threadpool(lambda: registry.activate(*target, force=options.force, user_id=user_id,
                                                      reason=options.reason))  # InvalidModel: 422
    for v in _versions(session, registry):
        if (v.name, v.version) == target:
            return v
    raise NotFound(f"model {target[0]}/{target[1]} vanished")  # pragma: no cover


@router.get("/{name}/{version}/files/{filename}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "application/json": {}}}, **errors(404, 422, 503)})
def read_model_file(name: str, version: str, filename: str, session: SessionDep,
                    registry: RegistryDep) -> FileResponse:
    """A report file of a version: confusion.png, reliability.png, report.json, report.md, gate.json."""
    if filename not in REPORT_FILES:
        raise NotFound(f"unknown report file {filename!r}; known: {sorted(REPORT_FILES)}")
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name,
                                                    ModelVersion.version == version))
    session.rollback()
    if row is None:
        raise NotFound(f"model {name}/{version} not found")
    path = Path(row.path) / filename
    if not path.is_file():  # trained on another host: this host's copy from the object store
        path = registry.folder(name, version) / filename
    if not path.is_file():
        raise NotFound(f"model {name}/{version} has no {filename}")
    return FileResponse(path, media_type=REPORT_FILES[filename])
