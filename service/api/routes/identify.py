"""``POST /api/v1/identify``: which insect is in these photos?"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from service.api import auth
from service.api.errors import BODY_ERRORS, errors
from service.api.languages import LanguageDep
from service.core.errors import InvalidRequest, PayloadTooLarge
from service.core.imaging import check_upload_head
from service.core.languages import DEFAULT_LANGUAGE, localize_answer
from service.inference.identify import identify
from service.inference.results import IdentifyResponse
from service.nearby.web import NEARBY_FORM_DOC, nearby_request, with_nearby
from service.store.tables import User


async def identify_access(request: Request) -> User | None:
    """Public unless ``settings.identify_requires_key``; a key that is sent must be valid either way.

    The anonymous public path (the hot path) touches neither the database nor a worker thread.
    """
    if not request.app.state.settings.identify_requires_key and auth.bearer_key(request) is None:
        return None

    def check() -> User | None:
        with request.app.state.sessionmaker() as session:
            return auth.identify_user(request, session)

    return await run_in_threadpool(check)


identify_access.pollinid_identify = True  # type: ignore[attr-defined]  # read by the permissions test

# Public unless settings.identify_requires_key (then any valid API key).
router = APIRouter(tags=["identify"], dependencies=[Depends(identify_access)], responses=errors(401))

_ERRORS = errors(*BODY_ERRORS, {
    413: "a photo or the whole request is over the size limit",
    415: "not a JPEG, PNG, WebP or HEIC photo",
    422: "bad photo (empty, corrupt, truncated, too many pixels) or bad parameters (number of photos, top_k, "
         "unknown taxon)",
    503: "no model is loaded, or too many uploads are in progress (Retry-After)",
})


PHOTOS_FIELD = "photos"
OLD_PHOTOS_FIELD = "images"  # the name until this release; accepted for one more release


@router.post("/identify", response_model=IdentifyResponse, responses=_ERRORS)
async def identify_photos(
    request: Request,
    language: LanguageDep,
    photos: Annotated[list[UploadFile] | None, File(description="1–5 photos of the same individual (JPEG, "
                                                                "PNG, WebP, HEIC)")] = None,
    images: Annotated[list[UploadFile] | None, File(
        deprecated=True, description="Deprecated: the old name of the field 'photos', accepted until the "
                                     "next release, which removes it. Send 'photos' instead.")] = None,
    top_k: Annotated[int | None, Query(ge=1, description="how many taxa to list (default 5)")] = None,
    taxon: Annotated[str | None, Query(max_length=200, description="restrict answers to this taxon's "
                                       "subtree: a scientific name, model label or common name")] = None,
    latitude: Annotated[str | None, Form(max_length=50, description="where the photo was taken (WGS84), "
                                         "for where-and-when evidence")] = None,
    longitude: Annotated[str | None, Form(max_length=50)] = None,
    observed_at: Annotated[str | None, Form(max_length=50, description="when: ISO 8601 date or date-time "
                                            "(default today)")] = None,
    nearby: Annotated[str | None, Form(max_length=10, description=NEARBY_FORM_DOC)] = None,
) -> IdentifyResponse:
    """Identify the insect in 1–5 photos: top-k taxa per photo and fused, with a taxonomic roll-up.

    The photos go in the multipart field ``photos`` (as for ``POST /observations``); the old name
    ``images`` is still accepted in this release and removed in the next. ``Accept-Language`` chooses the
    language of the taxa's ``common_name`` (null where that language has no name) and of the committed answer's
    sentence; English when no offered language fits (``Content-Language`` says which).
    """
    if photos and images:
        raise InvalidRequest(f"send the photos in one multipart field, '{PHOTOS_FIELD}' "
                             f"('{OLD_PHOTOS_FIELD}' is its deprecated name), not in both")
    uploads = photos or images
    if not uploads:
        raise InvalidRequest(f"send 1–5 photos in the multipart field '{PHOTOS_FIELD}' "
                             f"('{OLD_PHOTOS_FIELD}', its deprecated name, works until the next release)",
                             detail={"field": PHOTOS_FIELD})
    settings = request.app.state.settings
    place = nearby_request(latitude, longitude, observed_at, nearby)  # bad place or date: 422 before any photo
    kept = uploads[: settings.max_images]
    for i, upload in enumerate(kept):
        if upload.size is not None and upload.size > settings.max_upload_bytes:
            raise PayloadTooLarge(f"photo {i + 1} is {upload.size} bytes; the limit is "
                                  f"{settings.max_upload_bytes} bytes per photo",
                                  detail={"photo": i + 1, "limit_bytes": settings.max_upload_bytes})
    if len(uploads) <= settings.max_images and 1 <= (top_k or settings.default_top_k) <= settings.max_top_k:
        # Refuse junk from its first bytes, before any file is read into memory (the checks above and
        # identify()'s own count/top_k checks keep their precedence).
        for i, upload in enumerate(kept):
            await check_upload_head(upload, i + 1)
    datas: list[bytes] = [await upload.read() for upload in kept]
    if len(uploads) > len(datas):
        datas.extend(b"" for _ in range(len(uploads) - len(datas)))  # counted, never read
    response = await identify(request.app.state, datas, top_k=top_k or settings.default_top_k, taxon=taxon,
                              filenames=[u.filename for u in uploads])
    response = await with_nearby(request.app.state, response, place)  # re-ranks; rollup and scores untouched
    if language == DEFAULT_LANGUAGE:
        return response
    # Common names and the committed answer's sentence in the language Accept-Language chose.
    return IdentifyResponse.model_validate(localize_answer(response.model_dump(), language))
