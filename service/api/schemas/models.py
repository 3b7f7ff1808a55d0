"""Model versions as the admin pages show them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.observations import ModelAccuracy
from service.inference.versions import Origin, VersionState


class ModelVersionPublic(BaseModel):
    name: str
    version: str
    active: bool = Field(description="the version every process serves")
    loaded: bool = Field(description="the version this process serves now")
    registered_at: datetime
    activated_at: datetime | None
    error: str | None = Field(description="why this version cannot serve, if it cannot")
    state: VersionState | None = Field(None, description="the version's state; what each allows: docs/retrain.md")
    origin: Origin | None = Field(None, description="release (the read-only models folder) or trained (the data "
                                  "folder's trained models)")
    state_reason: str | None = None
    architecture: str | None
    labels: list[str]
    metrics: dict[str, Any] = Field(description="metrics on its evaluation set (card), per_class incl.")
    training: dict[str, Any] = Field(description="training provenance (from the card)")
    live: ModelAccuracy | None = Field(description="accuracy on validated observations it predicted")
    files: list[str] = Field(description="report files served by /admin/models/{name}/{version}/files/…")


class ModelVersionsPublic(BaseModel):
    data: list[ModelVersionPublic]
    count: int


class ModelActivate(BaseModel):
    """Options of an activation. A candidate, a version that failed its gate or a retired one needs ``force``
    and a ``reason``; both are recorded with the admin's name."""

    model_config = ConfigDict(extra="forbid")

    force: bool = False
    reason: str | None = Field(None, max_length=2000)


class ModelRetire(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000)


class ModelActivationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    version: str
    state: VersionState | None = Field(description="the version's state when it was activated")
    previous: str | None = Field(description="the version active before (name/version)")
    user_id: int | None = Field(description="who activated it (None: the service itself)")
    forced: bool = Field(description="a candidate, failed or retired version activated with force")
    reason: str | None
    at: datetime


class ModelActivationsPublic(BaseModel):
    data: list[ModelActivationPublic]
    count: int
