"""Background jobs: retrain requests, export requests, and the job rows as the API shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Training options the retrain request sets itself; they cannot come through ``options``.
RESERVED_OPTIONS: frozenset[str] = frozenset({
    "data", "out", "valid", "image_root", "taxonomy", "name", "version", "export_dir", "progress", "resume",
    "cache_dir",
})


class RetrainCreate(BaseModel):
    """What an admin asks of a retrain job (every field bounded; unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    base_dataset: str = Field(
        min_length=1, max_length=4096,
        description="a folder (ImageFolder) or a .csv/.json manifest on the server",
    )
    include_observations: bool = Field(True, description="add the photos of validated observations")
    observations_since: datetime | None = Field(None, description="only observations validated since")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="model name; default: the active one's")
    version: str | None = Field(None, pattern=NAME_PATTERN, description="new version; default: the next one")
    backbone: str = Field("efficientnet_lite0", pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")
    pretrained: bool = True
    weights: str | None = Field(None, max_length=4096, description="backbone weights file on the server")
    mode: Literal["linear", "partial", "full"] = "partial"
    epochs: int = Field(10, ge=1, le=500)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0, le=10)
    input_size: int | None = Field(None, ge=16, le=1024)
    views: int = Field(6, ge=1, le=64, description="augmented views cached per photo (linear/partial)")
    holdout: float = Field(0.1, gt=0, lt=0.9, description="training photos held out for early stopping")
    gate_holdout: float = Field(
        0.2, gt=0, lt=0.9, description="validated observations held out for the gate (by observer)"
    )
    min_new_class_photos: int | None = Field(
        None, ge=1, le=100_000, description="validated photos a new species needs; default from settings"
    )
    auto_activate: bool = Field(False, description="activate the candidate when it passes the gate")
    tolerance: float = Field(0.01, ge=0, le=1, description="overall top-1 drop allowed")
    class_margin: float = Field(0.05, ge=0, le=1, description="per-class accuracy drop allowed")
    min_class_support: int = Field(3, ge=1, le=100_000, description="photos a class needs to be gated")
    workers: int = Field(2, ge=0, le=64, description="data-loading processes")
    threads: int = Field(0, ge=0, le=1024, description="torch CPU threads (0: default)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    options: dict[str, Any] = Field(default_factory=dict, description="other training options (TrainConfig)")

    @field_validator("options")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(value) & RESERVED_OPTIONS)
        if reserved:
            raise ValueError(f"options {reserved} are set by the retrain job itself")
        if len(value) > 64:
            raise ValueError("too many options")
        return value


ExportKind = Literal["dwca", "csv", "training"]


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ExportKind


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    state: str
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
