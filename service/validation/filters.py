"""Filters of the specialists' queue (taxon, rank, place, date) and the "today" of a specialist's time zone.

Each filter narrows the queue; they combine (all must hold) and keep the queue's order (most uncertain
first) and its leases. The text forms are parsed and checked here, so that a bad value is refused with a
clear message (:class:`~service.core.errors.InvalidRequest`, 422) before any row is read or leased:

- ``taxon``: the observation's current taxon is this taxon or one of its descendants (by id, model label or
  exact name).
- ``rank``: the rank of the model's committed answer (the roll-up stored with the prediction): ``family``
  is "everything the model could only place at family rank". ``class`` is an insect the model could not
  place; ``no_insect``, photos in which it saw no insect; ``uncommitted``, no committed answer at all (the
  model dared say nothing, or there is no prediction).
- ``near`` (``latitude,longitude``) with ``radius_km`` (default :data:`DEFAULT_RADIUS_KM`): within that
  great-circle distance; ``bbox`` (``min_lon,min_lat,max_lon,max_lat``, GeoJSON order): inside the box (a
  box whose ``min_lon`` is greater than its ``max_lon`` crosses the antimeridian). Observations without
  coordinates never match a place filter.
- ``observed_from`` / ``observed_to``: the day it was observed, both inclusive, as calendar days of the
  time zone ``tz`` (an IANA name, UTC by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, and_, func, or_
from sqlalchemy.orm import Session

from service.core.errors import InvalidRequest
from service.observations.taxa import resolve_taxon, subtree_condition
from service.store.tables import Observation, Taxon

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
MAX_RADIUS_KM = 20_000.0  # about half the Earth's circumference: anything further is everywhere
DEFAULT_RADIUS_KM = 25.0
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180.0
# What `rank` may be: the ranks a committed answer names, then the answers that name no taxon.
ANSWER_RANK_FILTERS: tuple[str, ...] = ("species", "genus", "family", "order", "class", "no_insect", "uncommitted")


@dataclass(frozen=True)
class Circle:
    latitude: float
    longitude: float
    radius_km: float


@dataclass(frozen=True)
class Box:
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float


@dataclass(frozen=True)
class QueueFilter:
    """What a specialist asked the queue for; ``None`` fields do not filter."""

    taxon: Taxon | None = None
    rank: str | None = None
    near: Circle | None = None
    bbox: Box | None = None
    observed_from: datetime | None = None  # UTC, inclusive
    observed_before: datetime | None = None  # UTC, exclusive (the start of the day after observed_to)

    def conditions(self) -> list[ColumnElement[bool]]:
        cond: list[ColumnElement[bool]] = []
        if self.taxon is not None:
            cond.append(subtree_condition(Observation.taxon_id, self.taxon))
        if self.rank is not None:
            cond.append(rank_condition(self.rank))
        if self.near is not None:
            cond.extend(circle_conditions(self.near))
        if self.bbox is not None:
            cond.extend(box_conditions(self.bbox))
        if self.observed_from is not None:
            cond.append(Observation.observed_at >= self.observed_from)
        if self.observed_before is not None:
            cond.append(Observation.observed_at < self.observed_before)
        return cond


# -- parsing ---------------------------------------------------------------------------------------------


def time_zone(name: str | None) -> ZoneInfo:
    """The IANA time zone ``name`` (UTC when empty)."""
    key = (name or "").strip() or "UTC"
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidRequest(f"unknown time zone {key!r}: use an IANA name such as Europe/Paris or UTC",
                             detail={"field": "tz"}) from None


def local_midnight(zone: ZoneInfo, now: datetime, days: int = 0) -> datetime:
    """The start (in UTC) of the calendar day of ``now`` in ``zone``, shifted by ``days``."""
    local_day = now.astimezone(zone).date() + timedelta(days=days)
    return day_start(local_day, zone)


def day_start(day: date, zone: ZoneInfo) -> datetime:
    """The first instant (in UTC) of ``day`` in ``zone`` (a day starting in a DST gap starts at the gap's end)."""
    start = datetime.combine(day, time(0, 0), tzinfo=zone)
    # Round-trip through UTC: a wall time that does not exist (skipped by a DST change) moves to the real one.
    return start.astimezone(UTC)


def _numbers(field: str, text: str, count: int, example: str) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    shape = f"{field} must be {count} comma-separated numbers in decimal degrees, e.g. {field}={example}"
    if len(parts) != count:
        raise InvalidRequest(shape, detail={"field": field})
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InvalidRequest(shape, detail={"field": field}) from None
    if not all(math.isfinite(v) for v in values):
        raise InvalidRequest(shape, detail={"field": field})
    return values


def _check_lat_lon(field: str, lat: float, lon: float) -> None:
    if not -90.0 <= lat <= 90.0:
        raise InvalidRequest(f"{field}: latitude {lat:g} is out of range (-90 to 90)", detail={"field": field})
    if not -180.0 <= lon <= 180.0:
        raise InvalidRequest(f"{field}: longitude {lon:g} is out of range (-180 to 180)", detail={"field": field})


def parse_near(near: str | None, radius_km: float | None) -> Circle | None:
    if near in (None, ""):
        if radius_km is not None:
            raise InvalidRequest("radius_km needs near=latitude,longitude", detail={"field": "radius_km"})
        return None
    lat, lon = _numbers("near", near, 2, "45.76,4.84")
    _check_lat_lon("near", lat, lon)
    radius = DEFAULT_RADIUS_KM if radius_km is None else radius_km
    if not (math.isfinite(radius) and 0.0 < radius <= MAX_RADIUS_KM):
        raise InvalidRequest(f"radius_km must be more than 0 and at most {MAX_RADIUS_KM:g}",
                             detail={"field": "radius_km"})
    return Circle(lat, lon, radius)


def parse_bbox(bbox: str | None) -> Box | None:
    if bbox in (None, ""):
        return None
    min_lon, min_lat, max_lon, max_lat = _numbers("bbox", bbox, 4, "4.7,45.6,5.0,45.9")
    _check_lat_lon("bbox", min_lat, min_lon)
    _check_lat_lon("bbox", max_lat, max_lon)
    if min_lat > max_lat:
        raise InvalidRequest(f"bbox: min_lat {min_lat:g} is above max_lat {max_lat:g} "
                             "(the order is min_lon,min_lat,max_lon,max_lat)", detail={"field": "bbox"})
    return Box(min_lon, min_lat, max_lon, max_lat)


def parse_queue_filter(
    session: Session,
    *,
    taxon: int | str | None = None,
    rank: str | None = None,
    near: str | None = None,
    radius_km: float | None = None,
    bbox: str | None = None,
    observed_from: date | None = None,
    observed_to: date | None = None,
    tz: str | None = None,
) -> QueueFilter:
    """Check and resolve the queue's filters (see the module's text)."""
    if rank not in (None, "") and rank not in ANSWER_RANK_FILTERS:
        raise InvalidRequest(f"unknown rank {rank!r}; known: {list(ANSWER_RANK_FILTERS)}", detail={"field": "rank"})
    if observed_from is not None and observed_to is not None and observed_from > observed_to:
        raise InvalidRequest(f"observed_from ({observed_from.isoformat()}) is after observed_to "
                             f"({observed_to.isoformat()})", detail={"field": "observed_from"})
    zone = time_zone(tz)
    circle = parse_near(near, radius_km)
    box = parse_bbox(bbox)
    taxon_row = resolve_taxon(session, taxon) if taxon not in (None, "") else None
    return QueueFilter(
        taxon=taxon_row,
        rank=rank or None,
        near=circle,
        bbox=box,
        observed_from=day_start(observed_from, zone) if observed_from is not None else None,
        observed_before=day_start(observed_to + timedelta(days=1), zone) if observed_to is not None else None,
    )


# -- SQL -------------------------------------------------------------------------------------------------


def rank_condition(rank: str) -> ColumnElement[bool]:
    """The committed answer (``prediction.rollup``) is at ``rank`` (see :data:`ANSWER_RANK_FILTERS`)."""
    answer_rank = Observation.prediction[("rollup", "rank")].as_string()
    if rank == "uncommitted":
        return answer_rank.is_(None)
    if rank == "no_insect":
        return or_(answer_rank == "none", Observation.prediction[("rollup", "kind")].as_string() == "no_insect")
    return answer_rank == rank


def _lon_between(west: float, east: float) -> ColumnElement[bool]:
    if west <= east:
        return Observation.longitude.between(west, east)
    return or_(Observation.longitude >= west, Observation.longitude <= east)  # across the antimeridian


def box_conditions(box: Box) -> list[ColumnElement[bool]]:
    return [Observation.latitude.is_not(None), Observation.longitude.is_not(None),
            Observation.latitude.between(box.min_lat, box.max_lat), _lon_between(box.min_lon, box.max_lon)]


def circle_conditions(c: Circle) -> list[ColumnElement[bool]]:
    """Within ``c.radius_km`` of the centre: a bounding box first (cheap), then the haversine distance."""
    dlat = c.radius_km / KM_PER_DEGREE
    cond: list[ColumnElement[bool]] = [
        Observation.latitude.is_not(None), Observation.longitude.is_not(None),
        Observation.latitude.between(max(-90.0, c.latitude - dlat), min(90.0, c.latitude + dlat)),
    ]
    angular = c.radius_km / EARTH_RADIUS_KM
    cos_lat = math.cos(math.radians(c.latitude))
    if c.latitude + dlat < 90.0 and c.latitude - dlat > -90.0 and math.sin(angular) < cos_lat:
        # The widest longitude span of the circle; no longitude bound when it reaches over a pole.
        dlon = math.degrees(math.asin(math.sin(angular) / cos_lat))
        west, east = c.longitude - dlon, c.longitude + dlon
        if west < -180.0:
            cond.append(_lon_between(west + 360.0, east))
        elif east > 180.0:
            cond.append(_lon_between(west, east - 360.0))
        else:
            cond.append(_lon_between(west, east))
    # Haversine: hav(d/R) = sin²(Δφ/2) + cos φ1 cos φ2 sin²(Δλ/2) <= sin²(r/2R).
    rad = math.pi / 180.0
    phi = Observation.latitude * rad
    half_dphi = (Observation.latitude - c.latitude) * (rad / 2)
    half_dlambda = (Observation.longitude - c.longitude) * (rad / 2)
    hav = (func.sin(half_dphi) * func.sin(half_dphi)
           + cos_lat * func.cos(phi) * func.sin(half_dlambda) * func.sin(half_dlambda))
    limit = math.sin(min(angular, math.pi) / 2) ** 2
    cond.append(hav <= limit)
    return [and_(*cond)]
