"""A job's parameters: what an admin asks of a retrain or export job, and a retrain job's params as stored.

:class:`RetrainCreate` is the request (every field bounded; unknown fields refused); the server checks it
(:func:`service.jobs.retrain.check_request`) and stores the completed :class:`RetrainParams` on the job's row.
The API's schemas (:mod:`service.api.schemas.jobs`) take these models from here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.core.vocabulary import ExportKind

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Training options the retrain request sets itself; they cannot come through ``options``.
RESERVED_OPTIONS: frozenset[str] = frozenset({
    "data", "out", "valid", "image_root", "taxonomy", "name", "version", "export_dir", "progress", "resume",
    "cache_dir",
})


# Training options that the request has as fields of its own, with their limits and patterns: ``options``
# may not set them again (it would bypass those checks).
VALIDATED_FIELDS: frozenset[str] = frozenset({
    "backbone", "weights", "pretrained", "mode", "epochs", "batch_size", "lr", "input_size", "views", "holdout",
    "workers", "threads", "device", "seed",
})

Range = tuple[float, float]


class AugmentOptions(BaseModel):
    """Field-photo augmentation (``training.transforms.AugmentConfig``), bounded."""

    model_config = ConfigDict(extra="forbid")

    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    zoom_out: float | None = Field(None, ge=0, le=1)
    zoom_out_scale: tuple[float, float] | None = None
    zoom_out_fill: Literal["mean", "blur"] | None = None
    hflip: float | None = Field(None, ge=0, le=1)
    vflip: float | None = Field(None, ge=0, le=1)
    brightness: float | None = Field(None, ge=0, le=1)
    contrast: float | None = Field(None, ge=0, le=1)
    saturation: float | None = Field(None, ge=0, le=1)
    hue: float | None = Field(None, ge=0, le=0.5)

    @field_validator("scale", "ratio", "zoom_out_scale")
    @classmethod
    def _range(cls, value: Range | None) -> Range | None:
        if value is not None and not (0 < value[0] <= value[1] <= 10):
            raise ValueError("a range (low, high) with 0 < low <= high <= 10")
        return value


class TrainOptions(BaseModel):
    """The other training options (``training.pipeline.TrainConfig``) a retrain request may set, bounded."""

    model_config = ConfigDict(extra="forbid")

    trainable_stages: int | None = Field(None, ge=0, le=16)
    cache: bool | None = None
    clean_view: bool | None = None
    weight_decay: float | None = Field(None, ge=0, le=1)
    optimizer: Literal["adamw", "sgd"] | None = None
    warmup_epochs: float | None = Field(None, ge=0, le=100)
    label_smoothing: float | None = Field(None, ge=0, lt=1)
    taxonomy_smoothing: bool | None = None
    balanced_sampling: bool | None = None
    balanced_finetune_epochs: int | None = Field(None, ge=0, le=100)
    patience: int | None = Field(None, ge=0, le=500)
    calibrate_on: Literal["holdout", "valid"] | None = None
    ood_percentile: float | None = Field(None, ge=0, le=50)
    resize: int | None = Field(None, ge=16, le=2048)
    resize_mode: Literal["shorter", "longer_pad", "stretch"] | None = None
    mean: list[float] | None = Field(None, min_length=3, max_length=3)
    std: list[float] | None = Field(None, min_length=3, max_length=3)
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    augment: AugmentOptions | None = None
    amp: bool | None = None
    max_grad_norm: float | None = Field(None, gt=0, le=1000)
    export_fp16: bool | None = None
    export_int8: bool | None = None
    mirror_tta: bool | None = None
    tta: bool | None = None

    @field_validator("mean", "std")
    @classmethod
    def _channels(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(-10 <= v <= 10 for v in value):
            raise ValueError("three values between -10 and 10")
        return value


class RetrainCreate(BaseModel):
    """What an admin asks of a retrain job (every field bounded; unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    base_dataset: str | None = Field(
        None, min_length=1, max_length=4096,
        description="a folder (ImageFolder) or a .csv/.json manifest inside one of the server's retrain data "
                    "folders (POLLINID_RETRAIN_DATA_ROOTS); a relative path is taken inside them. Omitted: "
                    "retrain the active model's last layer from validated observations and its replay kit "
                    "(no original photos needed)",
    )
    include_observations: bool = Field(True, description="add the photos of validated observations")
    observations_since: datetime | None = Field(None, description="only observations validated since")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="model name; default: the active one's")
    version: str | None = Field(None, pattern=NAME_PATTERN, description="new version; default: the next one")
    # A registry name (``efficientnet_lite0``, ``timm:org/name.v1``): segments of letters, digits, ``_:-``
    # joined by single dots and slashes, so never ``..`` nor an absolute path.
    backbone: str = Field("efficientnet_lite0", max_length=128,
                          pattern=r"^[A-Za-z0-9_][A-Za-z0-9_:-]*([./][A-Za-z0-9_][A-Za-z0-9_:-]*)*$")
    pretrained: bool = True
    weights: str | None = Field(None, max_length=4096,
                                description="backbone weights file inside the server's retrain data folders")
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
    new_class_min_recall: float = Field(
        0.5, ge=0, le=1, description="accuracy each new class must reach on its own held-out photos")
    workers: int = Field(2, ge=0, le=64, description="data-loading processes")
    threads: int = Field(0, ge=0, le=1024, description="torch CPU threads (0: default)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    options: dict[str, Any] = Field(default_factory=dict, description="other training options (TrainConfig)")

    @field_validator("options")
    @classmethod
    def _check_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(value) & RESERVED_OPTIONS)
        if reserved:
            raise ValueError(f"options {reserved} are set by the retrain job itself")
        own = sorted(set(value) & VALIDATED_FIELDS)
        if own:
            raise ValueError(f"options {own} are fields of the request itself: set them there, where they are "
                             "checked")
        unknown = sorted(set(value) - set(TrainOptions.model_fields))
        if unknown:
            raise ValueError(f"unknown options {unknown[:10]}; known: {sorted(TrainOptions.model_fields)}")
        try:
            checked = TrainOptions.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
            raise ValueError(f"invalid options: {problems}") from None
        return checked.model_dump(exclude_none=True)


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ExportKind


class RetrainParams(RetrainCreate):
    """A retrain job's params as stored on its row: the request, checked and completed by the server.

    ``base_dataset`` and ``weights`` are resolved real paths; ``name`` and ``min_new_class_photos`` are filled
    in; ``plan`` is what the request would train on (:func:`service.jobs.retrain_plan.plan_retrain`).
    """

    name: str = Field(description="model name (the request's, else the active model's)")
    min_new_class_photos: int = Field(ge=1, le=100_000)
    plan: dict[str, Any] = Field(default_factory=dict)
