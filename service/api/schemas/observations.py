"""Observations and their photos."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from service.api.schemas.taxa import TaxonPublic
from service.core.vocabulary import Licence, ObservationStatus

# ISO 8601 (RFC 3339 profile, plus a date alone and a space for the T): no epoch numbers, no other formats.
ISO_8601_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}([.,]\d{1,9})?)?(Z|z|[+-]\d{2}(:?\d{2})?)?)?"
)


def iso_8601(value: Any) -> Any:
    """Pass an ISO 8601 date-time string (or a datetime) on to pydantic; refuse anything else.

    pydantic alone reads ``-1`` or ``99999999999`` as Unix timestamps (1969, 5138); an observation date
    is only ever written as ISO 8601, e.g. ``2024-06-01T10:00:00Z``.
    """
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str) and ISO_8601_RE.fullmatch(value.strip()):
        return value.strip()
    raise ValueError("expected an ISO 8601 date-time such as 2024-06-01T10:00:00Z")


IsoDateTime = Annotated[datetime, BeforeValidator(iso_8601)]


class PhotoPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    position: int
    sha256: str
    url: str
    mime_type: str
    width: int
    height: int
    size_bytes: int


class PredictionPublic(BaseModel):
    model_name: str
    model_version: str
    top1_score: float | None
    top_margin: float | None
    taxon: TaxonPublic | None = Field(None, description="the taxon of the model's top-1 label")
    result: dict[str, Any] | None = Field(None, description="the identify answer stored at upload")


class ObservationPublic(BaseModel):
    id: int
    observer_id: int
    observer_name: str | None = None
    session_id: str | None
    observed_at: datetime
    observed_at_source: str
    latitude: float | None
    longitude: float | None
    coordinate_precision_m: float | None
    location_source: str | None
    flower_text: str | None
    flower_taxon: TaxonPublic | None
    licence: Licence
    notes: str | None
    status: ObservationStatus
    taxon: TaxonPublic | None = Field(None, description="community taxon, else the model's suggestion")
    community_taxon: TaxonPublic | None
    consensus_score: float | None
    identification_count: int
    photos: list[PhotoPublic]
    prediction: PredictionPublic | None
    created_at: datetime
    updated_at: datetime


class ObservationsPublic(BaseModel):
    data: list[ObservationPublic]
    count: int
    next_cursor: str | None = Field(None, description="pass as `cursor` to get the next page")


class ObservationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    observed_at: Annotated[datetime | None, BeforeValidator(iso_8601)] = None
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    coordinate_precision_m: float | None = Field(None, ge=0, le=1_000_000)
    flower: str | None = Field(None, max_length=255)
    flower_taxon: int | str | None = None
    session_id: str | None = Field(None, max_length=128)
    licence: Licence | None = None
    notes: str | None = Field(None, max_length=10_000)


class QueueItem(BaseModel):
    observation: ObservationPublic
    lease_expires_at: datetime


class QueuePublic(BaseModel):
    data: list[QueueItem]
    count: int


class ModelAccuracy(BaseModel):
    model_name: str
    model_version: str
    validated: int = Field(description="validated observations that had a prediction from this version")
    top1_correct: int
    top3_correct: int
    top1_accuracy: float | None
    top3_accuracy: float | None


class ModelAccuracyPublic(BaseModel):
    data: list[ModelAccuracy]
    count: int
