"""Background jobs: retrain requests, export requests, and the job rows as the API shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A job's parameters are the jobs room's own types (with their bounds); the API takes them from there.
from service.core.vocabulary import JobKind, JobState
from service.jobs.params import ExportCreate, RetrainCreate

__all__ = ["ExportCreate", "JobPublic", "JobsPublic", "RetrainCreate"]


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: JobKind
    state: JobState
    params: dict[str, Any]
    progress: float = Field(description="0..1")
    stage: str | None
    epoch: int | None
    epochs: int | None
    metrics: dict[str, Any] | None
    log_tail: list[str] = Field(description="the last lines of the job's log, oldest first")
    attempts: int
    max_attempts: int
    worker_id: str | None
    heartbeat_at: datetime | None
    cancel_requested: bool
    error: str | None
    result: dict[str, Any] | None
    created_by: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    download: str | None = Field(None, description="where to download the output, once there is one")

    @field_validator("log_tail", mode="before")
    @classmethod
    def _lines(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return value.splitlines()
        return list(value or [])


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int
