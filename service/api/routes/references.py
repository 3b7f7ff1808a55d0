"""Reference photos of a taxon for the suggestion cards, and the small images themselves (public)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from service.api.deps import SessionDep, SettingsDep
from service.api.errors import errors
from service.api.languages import LanguageDep
from service.api.routes.taxa import public_taxa
from service.api.schemas.references import ReferencePhotoPublic, ReferencePhotosPublic
from service.core.errors import NotFound
from service.observations import references, taxa

router = APIRouter(tags=["taxa"])

# The bundled set changes only with a release; a validated observation may be disputed later, so its small
# copy is kept for an hour only.
BUNDLED_CACHE = "public, max-age=86400"
OBSERVATION_CACHE = "public, max-age=3600"


@router.get("/taxa/{taxon}/photos", response_model=ReferencePhotosPublic, responses=errors(404, 422))
def taxon_photos(
    taxon: str,
    session: SessionDep,
    settings: SettingsDep,
    language: LanguageDep,
    limit: int = Query(3, ge=1, le=references.MAX_LIMIT),
) -> ReferencePhotosPublic:
    """Photos to compare with: those of validated observations of the taxon (or of taxa below it) whose licence
    allows reuse with credit, newest first, then the licence-clear set shipped with the models. ``taxon`` is an
    id, a model label, or a scientific or common name. An empty list when there is none."""
    try:
        found = taxa.resolve_taxon(session, taxon)
    except taxa.UnknownTaxon as exc:
        if exc.detail:  # a name shared by several taxa: the caller must give an id
            raise
        raise NotFound(exc.message) from None
    photos = references.taxon_photos(session, settings, found, limit=limit)
    return ReferencePhotosPublic(
        taxon=public_taxa(session, [found], language)[0],  # its common name in the asked language
        data=[ReferencePhotoPublic.model_validate(p) for p in photos],
        count=len(photos),
    )


def _image(path: Path, sha256: str, request: Request, cache: str) -> Response:
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    inm = request.headers.get("if-none-match")
    if inm and etag in [t.strip() for t in inm.split(",")]:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="image/jpeg", headers=headers)


IMAGE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}},
    304: {"description": "not modified (If-None-Match)"},
}


@router.get("/reference-photos/bundled/{name}", response_class=FileResponse, responses={**IMAGE, **errors(404, 422)})
def bundled_photo(name: str, request: Request, settings: SettingsDep) -> Response:
    """A photo of the set shipped with the models."""
    path, sha256 = references.bundled_file(settings, name)
    return _image(path, sha256, request, BUNDLED_CACHE)


@router.get("/reference-photos/observations/{name}", response_class=FileResponse,
            responses={**IMAGE, **errors(404, 422, {503: "the object store is unavailable: retry after Retry-After "
                                                    "seconds"})})
def observation_photo(name: str, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """The small copy (``<sha256>.jpg``) of a photo of a validated observation whose licence allows reuse."""
    path, sha256 = references.observation_thumbnail(session, settings, name)
    return _image(path, sha256, request, OBSERVATION_CACHE)
