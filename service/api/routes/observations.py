"""Observations: upload, list, read and edit."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BeforeValidator

from service.accounts import ALL_ROLES
from service.api.deps import CurrentUser, SessionDep, SettingsDep, require_role
from service.api.errors import BODY_ERRORS, errors
from service.api.languages import LanguageDep
from service.api.schemas.observations import ObservationPublic, ObservationsPublic, ObservationUpdate, iso_8601
from service.core.imaging import check_upload_head
from service.core.preprocess import decode_min_side
from service.core.vocabulary import DEFAULT_LICENCE, Licence, LocationSource, ObservationStatus
from service.inference.classifier import Classifier
from service.inference.identify import PreparedPhoto, identify_prepared, prepare_decoded
from service.observations import photos as obs_photos
from service.observations import queries, store
from service.observations.metadata import ObservationInput
from service.observations.prediction import PredictionFields, prediction_from_response
from service.observations.public import to_public
from service.observations.queries import ObservationFilters
from service.store.tables import Observation

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/observations", tags=["observations"], dependencies=[Depends(require_role(*ALL_ROLES))],
    responses=errors(401, 403),
)


def active_model(request: Request) -> Classifier | None:
    """The model loaded now (None without one); a new observation's photos are prepared for it."""
    registry = getattr(request.app.state, "registry", None)
    return registry.current if registry is not None else None


async def predict(
    request: Request, clf: Classifier | None, photos: list[obs_photos.UploadedPhoto]
) -> PredictionFields | None:
    """``clf``'s answer for the photos, run on the inputs prepared when they were decoded.

    None when there is no model or a photo could not be prepared: the upload goes on without a prediction.
    """
    prepared: list[PreparedPhoto] = [p.prepared for p in photos]
    if clf is None or any(p is None for p in prepared):
        return None
    state = request.app.state
    try:
        response = await identify_prepared(state, clf, prepared, top_k=state.settings.default_top_k)
    except Exception:  # a prediction problem must never lose a volunteer's observation
        logger.warning("no prediction stored for a new observation", exc_info=True)
        return None
    return prediction_from_response(response)


@router.post(
    "",
    response_model=ObservationPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "never: a replay answers 201 with Idempotent-Replayed: true"},
        **errors(*BODY_ERRORS, {413: "a photo is over the size limit", 415: "not a photo",
                                422: "bad photo count, photo, metadata or Idempotency-Key",
                                503: "too many uploads are in progress, or the object store is unavailable: "
                                     "retry after Retry-After seconds"}),
    },
)
async def create_observation(
    request: Request,
    response: Response,
    user: CurrentUser,
    settings: SettingsDep,
    language: LanguageDep,
    photos: Annotated[list[UploadFile], File(description="1–5 photos of one insect")],
    observed_at: Annotated[
        datetime | None, BeforeValidator(iso_8601),
        Form(description="when, ISO 8601 (2024-06-01T10:00:00Z); default: the photos' EXIF date"),
    ] = None,
    latitude: Annotated[float | None, Form(description="WGS84; default: the photos' EXIF GPS")] = None,
    longitude: Annotated[float | None, Form()] = None,
    coordinate_precision_m: Annotated[float | None, Form(description="uncertainty radius, metres")] = None,
    location_source: Annotated[
        LocationSource | None,
        Form(description="how latitude/longitude were given (gps fix, map pick, typed, exif); default user"),
    ] = None,
    flower: Annotated[str | None, Form(max_length=255, description="visited flower, free text")] = None,
    flower_taxon: Annotated[str | None, Form(max_length=255, description="visited flower as a taxon")] = None,
    session_id: Annotated[str | None, Form(max_length=128, description="groups one SPIPOLL session")] = None,
    licence: Annotated[Licence, Form()] = DEFAULT_LICENCE,
    notes: Annotated[str | None, Form(max_length=10_000)] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    """Record an observation: 1–5 photos, when, where, the visited flower; the model's prediction is kept."""
    key = store.check_idempotency_key(idempotency_key)
    # The request's limits, checked once, before any photo is read.
    obs_photos.check_uploads([upload.size for upload in photos], settings)
    for i, upload in enumerate(photos):  # junk is refused from its first bytes, before it is read
        await check_upload_head(upload, i + 1)
    blobs: list[bytes] = [await upload.read() for upload in photos]
    factory = request.app.state.sessionmaker

    def already_recorded() -> bool:
        with factory() as s:
            return key is not None and store.find_by_idempotency_key(s, user.id, key) is not None

    # A retry is answered from the database without running the model again.
    replay = key is not None and await run_in_threadpool(already_recorded)
    # Each photo is decoded once, for its metadata and for the model's input (the prediction below runs
    # on those inputs). In the bounded decode pool (as /identify does), not in the 40-thread default
    # pool: at most decode_threads photos are being decoded at once, which bounds memory under a flood.
    clf = None if replay else active_model(request)  # this request's model, whatever happens meanwhile
    spec = clf.card.input if clf is not None else None
    decoded = await asyncio.get_running_loop().run_in_executor(
        getattr(request.app.state, "decode_pool", None),
        partial(
            obs_photos.decode_uploads,
            blobs,
            settings,
            min_side=decode_min_side(spec) if spec is not None else obs_photos.METADATA_MIN_SIDE,
            prepare=partial(prepare_decoded, spec) if spec is not None else None,
        ),
    )
    meta = ObservationInput(
        observed_at=observed_at,
        latitude=latitude,
        longitude=longitude,
        coordinate_precision_m=coordinate_precision_m,
        location_source=location_source.value if location_source is not None else None,
        flower=flower,
        flower_taxon=flower_taxon,
        session_id=session_id,
        licence=licence,
        notes=notes,
    )
    prediction = None if replay else await predict(request, clf, decoded)
    created = await run_in_threadpool(
        lambda: store.create_observation(
            factory=factory,
            settings=settings,
            observer=user,
            meta=meta,
            photos=decoded,
            prediction=prediction,
            idempotency_key=key,
        )
    )
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"

    def render() -> Any:
        with factory() as s:
            obs = s.get(Observation, created.observation.id)
            return to_public(s, [obs], language)[0]

    return await run_in_threadpool(render)


@router.get("", response_model=ObservationsPublic, responses=errors(422))
def list_observations(
    user: CurrentUser,
    session: SessionDep,
    language: LanguageDep,
    status_: Annotated[ObservationStatus | None, Query(alias="status")] = None,
    taxon: Annotated[
        str | None, Query(max_length=255, description="taxon id or name; includes descendants")
    ] = None,
    observer: Annotated[int | None, Query(description="observer's user id")] = None,
    session_id: Annotated[str | None, Query(max_length=128)] = None,
    observed_from: Annotated[datetime | None, BeforeValidator(iso_8601), Query()] = None,
    observed_to: Annotated[datetime | None, BeforeValidator(iso_8601), Query()] = None,
    bbox: Annotated[str | None, Query(max_length=200, description="min_lon,min_lat,max_lon,max_lat")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    cursor: Annotated[
        str | None, Query(max_length=100, description="next_cursor of the previous page")
    ] = None,
) -> Any:
    """List observations, newest first; volunteers see only their own."""
    f = ObservationFilters(
        status=status_,
        taxon=taxon,
        observer=observer,
        session_id=session_id,
        observed_from=observed_from,
        observed_to=observed_to,
        bbox=bbox,
        limit=limit,
        offset=offset,
        cursor=cursor,
    )
    rows, count, next_cursor = queries.list_observations(session, user, f)
    return {"data": to_public(session, rows, language), "count": count, "next_cursor": next_cursor}


@router.get("/{observation_id}", response_model=ObservationPublic, responses=errors(404, 422))
def read_observation(observation_id: int, user: CurrentUser, session: SessionDep, language: LanguageDep) -> Any:
    """One observation with its photos, prediction and consensus."""
    obs = store.get_observation_for(session, user, observation_id)
    return to_public(session, [obs], language)[0]


@router.patch("/{observation_id}", response_model=ObservationPublic, responses=errors(*BODY_ERRORS, 404))
def update_observation(
    observation_id: int, body: ObservationUpdate, user: CurrentUser, session: SessionDep, language: LanguageDep
) -> Any:
    """Edit an observation's metadata (its observer or an admin)."""
    obs = store.get_observation_for(session, user, observation_id, for_update=True)
    store.update_observation(session, user, obs, body.model_dump(exclude_unset=True))
    session.commit()
    return to_public(session, [obs], language)[0]
