"""The where-and-when part of ``POST /api/v1/identify``: its form fields and the answer's re-ranking."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.inference.results import IdentifyResponse, NearbyPublic
from service.nearby.evidence import NearbyParams, Place, apply_nearby, parse_place, parse_switch

NEARBY_FORM_DOC = ("true|false: re-rank the suggestions by how often each taxon was recorded near the place "
                   "and season (default true when latitude and longitude are sent); the model's scores and "
                   "the committed answer never change")


@dataclass(frozen=True)
class NearbyRequest:
    place: Place | None
    switch: bool | None  # None: not sent (on when a place is given)


def nearby_request(latitude: str | None, longitude: str | None, observed_at: str | None,
                   nearby: str | None) -> NearbyRequest:
    """The form fields, checked (InvalidRequest, 422, on a bad coordinate, date or switch)."""
    switch = parse_switch(nearby)
    return NearbyRequest(place=parse_place(latitude, longitude, observed_at, datetime.now(UTC).date()),
                         switch=switch)


async def with_nearby(state: Any, response: IdentifyResponse, req: NearbyRequest) -> IdentifyResponse:
    """``response`` re-ranked by the records near ``req.place`` (in a worker thread: it reads the database),
    or with a ``nearby`` block saying why not; unchanged when neither a place nor the switch was sent."""
    params = NearbyParams.from_settings(state.settings)
    place = req.place
    if place is None:
        if req.switch:
            return response.model_copy(update={"nearby": NearbyPublic(used=False, reason="no_place")})
        return response
    if req.switch is False:
        block = NearbyPublic(used=False, reason="switched_off", latitude=place.latitude,
                             longitude=place.longitude, observed_on=place.on.isoformat(), month=place.on.month,
                             radius_km=params.radius_km, season_days=params.season_days)
        return response.model_copy(update={"nearby": block})
    registry = getattr(state, "registry", None)
    clf = registry.current if registry is not None else None
    classes = len(clf.card.labels) if clf is not None else max(1, len(response.results))

    def run() -> IdentifyResponse:
        with state.sessionmaker() as session:
            return apply_nearby(session, response, place, params, classes)

    return await asyncio.to_thread(run)
