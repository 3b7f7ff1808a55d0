"""Photos of observations, by sha256."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import select

from service.accounts import ALL_ROLES
from service.api.deps import CurrentUser, SessionDep, SettingsDep, require_role
from service.api.errors import errors
from service.core.errors import NotFound
from service.core.imaging import ACCEPTED_FORMATS
from service.observations.store import can_see_all
from service.store.storage import check_sha256, media_file
from service.store.tables import Observation, Photo

router = APIRouter(prefix="/media", tags=["media"], dependencies=[Depends(require_role(*ALL_ROLES))],
                   responses=errors(401, 403))

CACHE_CONTROL = "private, max-age=31536000, immutable"


@router.get(
    "/{sha256}",
    response_class=FileResponse,
    responses={
        200: {"content": {mime: {} for mime in sorted(set(ACCEPTED_FORMATS.values()))}},
        304: {"description": "not modified (If-None-Match)"},
        **errors(404, 422),
    },
)
def read_media(
    sha256: str, request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Response:
    """A photo; volunteers get only the photos of their own observations."""
    sha256 = check_sha256(sha256)
    stmt = select(Photo.mime_type).where(Photo.sha256 == sha256)
    if not can_see_all(user):
        stmt = stmt.join(Observation, Observation.id == Photo.observation_id).where(
            Observation.observer_id == user.id
        )
    mime = session.scalars(stmt.limit(1)).first()
    path = media_file(settings.media_path, sha256)
    if mime is None or not path.is_file():
        raise NotFound(f"photo {sha256} not found")
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    inm = request.headers.get("if-none-match")
    if inm and etag in [t.strip() for t in inm.split(",")]:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=mime, headers=headers)
