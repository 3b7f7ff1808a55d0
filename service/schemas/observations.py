"""Observations and their photos."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.taxa import TaxonPublic

Licence = Literal["CC0", "CC-BY", "CC-BY-NC"]
ObservationStatus = Literal["needs_id", "validated", "disputed", "cannot_tell"]


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

    observed_at: datetime | None = None
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
