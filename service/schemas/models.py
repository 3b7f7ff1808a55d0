"""Model versions as the admin pages show them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.schemas.observations import ModelAccuracy


class ModelVersionPublic(BaseModel):
    name: str
    version: str
    active: bool = Field(description="the version every process serves")
    loaded: bool = Field(description="the version this process serves now")
    registered_at: datetime
    activated_at: datetime | None
    error: str | None = Field(description="why this version cannot serve, if it cannot")
    architecture: str | None
    labels: list[str]
    metrics: dict[str, Any] = Field(description="metrics on its evaluation set (card), per_class incl.")
    training: dict[str, Any] = Field(description="training provenance (from the card)")
    live: ModelAccuracy | None = Field(description="accuracy on validated observations it predicted")
    files: list[str] = Field(description="report files served by /admin/models/{name}/{version}/files/…")


class ModelVersionsPublic(BaseModel):
    data: list[ModelVersionPublic]
    count: int
