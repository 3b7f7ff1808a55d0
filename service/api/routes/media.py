"""Photos of observations, by sha256: streamed from the media store (the local folder or the object store)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from sqlalchemy import select

from service.accounts import ALL_ROLES
from service.api.deps import CurrentUser, SessionDep, SettingsDep, require_role
from service.api.errors import errors
from service.core.errors import NotFound
from service.core.imaging import ACCEPTED_FORMATS
from service.observations.store import can_see_all
from service.store.objects import ObjectMissing, media_store
from service.store.storage import check_sha256, media_key
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
        **errors(404, 422, {503: "the object store is unavailable: retry after Retry-After seconds"}),
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
    session.rollback()  # end the read before talking to the store
    if mime is None:
        raise NotFound(f"photo {sha256} not found")
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    inm = request.headers.get("if-none-match")
    if inm and etag in [t.strip() for t in inm.split(",")]:
        return Response(status_code=304, headers=headers)
    try:
        reader = media_store(settings).open(media_key(sha256))  # StorageUnavailable: 503, Retry-After
    except ObjectMissing:
        raise NotFound(f"photo {sha256} not found") from None
    if reader.path is not None:  # a local file: sendfile, ranges
        reader.close()
        return FileResponse(reader.path, media_type=mime, headers=headers)

    def body() -> Iterator[bytes]:
        try:
            yield from reader.chunks
        finally:
            reader.close()

    return StreamingResponse(body(), media_type=mime,
                             headers={**headers, "Content-Length": str(reader.size)})
