"""Admins download exports: Darwin Core Archive, CSV, training manifest."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from service.accounts import Role
from service.api.deps import SessionDep, SettingsDep, require_role
from service.api.errors import errors
from service.core.vocabulary import ExportKind
from service.exports import kinds as exports

router = APIRouter(
    prefix="/admin/exports", tags=["exports"], dependencies=[Depends(require_role(Role.admin))],
    responses=errors(401, 403),
)


@router.get(
    "/{kind}",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}, "text/csv": {}}}, **errors(404, 422)},
)
async def export_data(
    kind: ExportKind, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """Build and download an export: dwca (zip), csv, or the training manifest."""
    tmpdir = Path(tempfile.mkdtemp(prefix="pollinid-export-"))
    media_type, filename = exports.MEDIA_TYPES[kind]
    out = tmpdir / filename
    try:
        await run_in_threadpool(exports.export, session, settings, kind, out)
    except BaseException:
        _cleanup(tmpdir)
        raise
    return FileResponse(
        out, media_type=media_type, filename=filename, background=BackgroundTask(_cleanup, tmpdir)
    )


def _cleanup(folder: Path) -> None:
    for p in folder.iterdir():
        p.unlink(missing_ok=True)
    folder.rmdir()
