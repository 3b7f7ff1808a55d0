"""Lists of observations: the filters, the bounding box, the page cursor."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from service.core.clock import as_utc
from service.core.errors import InvalidRequest
from service.core.vocabulary import ObservationStatus
from service.observations.store import can_see_all
from service.observations.taxa import resolve_taxon, subtree_condition
from service.store.tables import Observation, User


@dataclass
class ObservationFilters:
    status: str | None = None
    taxon: str | None = None
    observer: int | None = None
    session_id: str | None = None
    observed_from: datetime | None = None
    observed_to: datetime | None = None
    bbox: str | None = None
    limit: int = 50
    offset: int = 0
    cursor: str | None = None


def parse_bbox(value: str) -> tuple[float, float, float, float]:
    """``min_lon,min_lat,max_lon,max_lat`` (GeoJSON order); a box may cross the antimeridian."""
    try:
        parts = [float(p) for p in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or any(p != p for p in parts):
        raise InvalidRequest(
            "bbox must be four numbers: min_lon,min_lat,max_lon,max_lat", detail={"field": "bbox"}
        )
    min_lon, min_lat, max_lon, max_lat = parts
    if not (-180 <= min_lon <= 180 and -180 <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise InvalidRequest(
            "bbox is out of range: longitudes in [-180, 180], latitudes in [-90, 90] with min_lat <= max_lat",
            detail={"field": "bbox"},
        )
    return min_lon, min_lat, max_lon, max_lat


def encode_cursor(obs_id: int) -> str:
    return base64.urlsafe_b64encode(f"o:{obs_id}".encode()).decode().rstrip("=")


def decode_cursor(value: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        if not raw.startswith("o:"):
            raise ValueError(raw)
        return int(raw[2:])
    except Exception:
        raise InvalidRequest(
            "malformed cursor; pass back the next_cursor of a previous page", detail={"field": "cursor"}
        ) from None


def filter_conditions(session: Session, user: User, f: ObservationFilters) -> list[ColumnElement[bool]]:
    cond: list[ColumnElement[bool]] = []
    if not can_see_all(user):
        cond.append(Observation.observer_id == user.id)
    if f.status is not None:
        if f.status not in {s.value for s in ObservationStatus}:
            raise InvalidRequest(f"unknown status {f.status!r}; known: {[s.value for s in ObservationStatus]}")
        cond.append(Observation.status == f.status)
    if f.taxon is not None:
        cond.append(subtree_condition(Observation.taxon_id, resolve_taxon(session, f.taxon)))
    if f.observer is not None:
        cond.append(Observation.observer_id == f.observer)
    if f.session_id is not None:
        cond.append(Observation.session_id == f.session_id)
    if f.observed_from is not None:
        cond.append(Observation.observed_at >= as_utc(f.observed_from))
    if f.observed_to is not None:
        cond.append(Observation.observed_at <= as_utc(f.observed_to))
    if f.bbox is not None:
        min_lon, min_lat, max_lon, max_lat = parse_bbox(f.bbox)
        cond.append(Observation.latitude.between(min_lat, max_lat))
        if min_lon <= max_lon:
            cond.append(Observation.longitude.between(min_lon, max_lon))
        else:
            cond.append(or_(Observation.longitude >= min_lon, Observation.longitude <= max_lon))
    return cond


def list_observations(
    session: Session, user: User, f: ObservationFilters
) -> tuple[list[Observation], int, str | None]:
    """One page of the observations ``user`` may see, newest first, with the total count and next cursor."""
    cond = filter_conditions(session, user, f)
    count = session.scalar(select(func.count(Observation.id)).where(*cond)) or 0
    stmt = select(Observation).where(*cond)
    # A cursor (the last id of the previous page) wins over an offset.
    stmt = stmt.where(Observation.id < decode_cursor(f.cursor)) if f.cursor else stmt.offset(f.offset)
    rows = list(session.scalars(stmt.order_by(Observation.id.desc()).limit(f.limit)))
    next_cursor = encode_cursor(rows[-1].id) if len(rows) == f.limit else None
    return rows, int(count), next_cursor
