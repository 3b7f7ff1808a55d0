"""The specialists' validation queue: the most uncertain observations first, leased to one expert."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status

from service.accounts import Role
from service.api.deps import CurrentUser, SessionDep, SettingsDep, require_role
from service.api.errors import errors
from service.api.languages import LanguageDep
from service.api.schemas.observations import QueuePublic
from service.api.schemas.validation import ValidationStatsPublic
from service.observations.public import to_public
from service.validation import queue
from service.validation.filters import parse_queue_filter, time_zone
from service.validation.stats import identified_today

RankFilter = Literal["species", "genus", "family", "order", "class", "no_insect", "uncommitted"]

router = APIRouter(
    prefix="/validation", tags=["validation"], dependencies=[Depends(require_role(Role.expert, Role.admin))],
    responses=errors(401, 403),
)


@router.get("/queue", response_model=QueuePublic, responses=errors(422))
def read_queue(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    language: LanguageDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    taxon: Annotated[str | None, Query(max_length=255, description="only this taxon group (id, label or name): "
                                                                   "the observation's current taxon is in it")] = None,
    rank: Annotated[RankFilter | None, Query(
        description="the rank of the model's committed answer: `family` is everything the model could only place "
                    "at family rank; `class`: an insect it could not place; `no_insect`: it saw no insect; "
                    "`uncommitted`: it committed to nothing (or made no prediction)")] = None,
    near: Annotated[str | None, Query(max_length=64, description="`latitude,longitude` in decimal degrees: "
                                                                 "only observations within radius_km of it")] = None,
    radius_km: Annotated[float | None, Query(description="with near: the radius in km (default 25, at most "
                                                         "20000)")] = None,
    bbox: Annotated[str | None, Query(max_length=128, description="`min_lon,min_lat,max_lon,max_lat`: only "
                                      "observations inside (min_lon > max_lon crosses the antimeridian)")] = None,
    observed_from: Annotated[date | None, Query(description="first day observed (YYYY-MM-DD, inclusive, in tz)")]
    = None,
    observed_to: Annotated[date | None, Query(description="last day observed (YYYY-MM-DD, inclusive, in tz)")]
    = None,
    tz: Annotated[str | None, Query(max_length=64, description="IANA time zone of the days (default UTC)")]
    = None,
) -> Any:
    """Lease the most uncertain observations that need an identification (lowest top-1 score first).

    The filters combine (all must hold) and keep that order; observations without coordinates never match a
    place filter. Each answer renews the leases of the items it returns.
    """
    filters = parse_queue_filter(session, taxon=taxon, rank=rank, near=near, radius_km=radius_km, bbox=bbox,
                                 observed_from=observed_from, observed_to=observed_to, tz=tz)
    rows, expires = queue.claim_queue(session, settings, user, limit=limit, filters=filters)
    session.commit()
    public = to_public(session, rows, language)
    return {"data": [{"observation": o, "lease_expires_at": expires} for o in public], "count": len(public)}


@router.delete("/queue/{observation_id}/lease", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors(404, 422, {409: "another expert holds this observation's lease"}))
def release_lease(observation_id: int, user: CurrentUser, session: SessionDep) -> None:
    """Give a leased observation back to the queue (no error when nobody holds it any more)."""
    queue.release_lease(session, user, observation_id)
    session.commit()


@router.get("/stats", response_model=ValidationStatsPublic, responses=errors(422))
def read_stats(
    user: CurrentUser,
    session: SessionDep,
    tz: Annotated[str | None, Query(max_length=64, description="IANA time zone whose midnight starts the day "
                                                               "(default UTC), e.g. Europe/Paris")] = None,
) -> Any:
    """How many observations this specialist identified today, by kind of identification."""
    zone = time_zone(tz)
    day = identified_today(session, user, zone)
    return {"tz": zone.key, "since": day.since, "until": day.until, "identified_today": day.total,
            "agreed": day.by_kind["agree"], "corrected": day.by_kind["propose"],
            "cannot_tell": day.by_kind["cannot_tell"], "not_an_insect": day.by_kind["not_an_insect"]}
