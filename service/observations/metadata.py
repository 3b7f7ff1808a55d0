"""An observation's metadata: what the volunteer sends, its checks, and what the photos' EXIF fills in."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from service.core.clock import as_utc
from service.core.errors import InvalidRequest
from service.core.vocabulary import DEFAULT_LICENCE, Licence, LocationSource
from service.observations.photos import UploadedPhoto, exif_datetime, exif_gps
from service.observations.taxa import resolve_taxon
from service.store.tables import utcnow

FUTURE_TOLERANCE = timedelta(minutes=10)
EARLIEST = datetime(1800, 1, 1, tzinfo=UTC)  # museum and herbarium records; nothing older is plausible
TEXT_FIELDS: tuple[str, ...] = ("flower", "flower_taxon", "session_id", "notes")


@dataclass
class ObservationInput:
    """Metadata of a new observation as sent (photos' EXIF fills what is missing)."""

    observed_at: datetime | None = None
    latitude: float | None = None
    longitude: float | None = None
    coordinate_precision_m: float | None = None
    location_source: str | None = None  # a LocationSource; default "user" when coordinates are sent
    flower: str | None = None
    flower_taxon: str | None = None
    session_id: str | None = None
    licence: str = DEFAULT_LICENCE.value
    notes: str | None = None

    def fingerprint(self, shas: Iterable[str]) -> str:
        """A digest of the request, to tell a true retry from a reused idempotency key."""
        body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}
        body["photos"] = list(shas)
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_observed_at(value: datetime, *, now: datetime | None = None) -> datetime:
    value = as_utc(value)  # type: ignore[assignment]
    now = now or utcnow()
    if value > now + FUTURE_TOLERANCE:
        raise InvalidRequest(
            f"observed_at {value.isoformat()} is in the future", detail={"field": "observed_at"}
        )
    if value < EARLIEST:
        raise InvalidRequest(
            f"observed_at {value.isoformat()} is before 1800", detail={"field": "observed_at"}
        )
    return value


def check_text(field_name: str, value: Any) -> None:
    """Refuse NUL characters in a free-text field (PostgreSQL cannot store them; exports must not carry them).

    Raises:
        InvalidRequest: ``value`` is a string holding ``\\x00``.
    """
    if isinstance(value, str) and "\x00" in value:
        raise InvalidRequest(f"{field_name} must not contain NUL (0x00) characters",
                             detail={"field": field_name})


def check_coordinates(lat: float | None, lon: float | None, precision: float | None) -> None:
    if (lat is None) != (lon is None):
        raise InvalidRequest("send both latitude and longitude, or neither")
    if lat is not None and not (-90 <= lat <= 90):
        raise InvalidRequest(f"latitude {lat} is out of range [-90, 90]", detail={"field": "latitude"})
    if lon is not None and not (-180 <= lon <= 180):
        raise InvalidRequest(f"longitude {lon} is out of range [-180, 180]", detail={"field": "longitude"})
    if precision is not None and not (0 <= precision <= 1_000_000):
        raise InvalidRequest("coordinate_precision_m must be between 0 and 1,000,000 metres")


def check_location_source(value: str | None) -> str:
    if value is None:
        return LocationSource.user.value
    try:
        return LocationSource(value).value
    except ValueError:
        raise InvalidRequest(
            f"unknown location_source {value!r}; known: {[v.value for v in LocationSource]}",
            detail={"field": "location_source"},
        ) from None


def check_licence(value: str) -> str:
    try:
        return Licence(value).value
    except ValueError:
        raise InvalidRequest(
            f"unknown licence {value!r}; known: {[v.value for v in Licence]}", detail={"field": "licence"}
        ) from None


@dataclass
class ResolvedMetadata:
    observed_at: datetime
    observed_at_source: str
    latitude: float | None
    longitude: float | None
    coordinate_precision_m: float | None
    location_source: str | None
    flower_text: str | None
    flower_taxon_id: int | None
    session_id: str | None
    licence: str
    notes: str | None


def resolve_metadata(
    session: Session, meta: ObservationInput, photos: Sequence[UploadedPhoto]
) -> ResolvedMetadata:
    """Validate the metadata; take the date and position from the photos' EXIF when they are missing."""
    for name in TEXT_FIELDS:
        check_text(name, getattr(meta, name))
    licence = check_licence(meta.licence)
    check_coordinates(meta.latitude, meta.longitude, meta.coordinate_precision_m)
    observed_at, source = meta.observed_at, "user"
    if observed_at is None:
        observed_at = next((d for p in photos if (d := exif_datetime(p.decoded.exif)) is not None), None)
        source = "exif"
    if observed_at is None:
        raise InvalidRequest(
            "observed_at is missing and none of the photos has an EXIF date", detail={"field": "observed_at"}
        )
    observed_at = check_observed_at(observed_at)
    lat, lon, precision, loc_source = meta.latitude, meta.longitude, meta.coordinate_precision_m, None
    if lat is not None:
        loc_source = check_location_source(meta.location_source)
    elif meta.location_source is not None:
        raise InvalidRequest("location_source says how latitude and longitude were given: send them too",
                             detail={"field": "location_source"})
    else:
        gps = next((g for p in photos if (g := exif_gps(p.decoded.exif)) is not None), None)
        if gps is not None:
            lat, lon, exif_precision = gps
            precision = precision if precision is not None else exif_precision
            loc_source = "exif"
    flower_taxon_id = resolve_taxon(session, meta.flower_taxon).id if meta.flower_taxon else None
    return ResolvedMetadata(
        observed_at=observed_at,
        observed_at_source=source,
        latitude=lat,
        longitude=lon,
        coordinate_precision_m=precision,
        location_source=loc_source,
        flower_text=(meta.flower or None),
        flower_taxon_id=flower_taxon_id,
        session_id=meta.session_id or None,
        licence=licence,
        notes=meta.notes or None,
    )
