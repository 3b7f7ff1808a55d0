"""The model card: everything the service is allowed to know about a model.

A card lives next to its network as ``models/<name>/<version>/model.json`` and is also embedded in the
ONNX file's metadata under the key ``pollinid.model_card``. Training writes it; the service reads it and
trusts nothing else about a model.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.core.languages import common_names_of

ONNX_METADATA_KEY = "pollinid.model_card"
CARD_FILENAME = "model.json"
ONNX_FILENAME = "model.onnx"

Rank = Literal["kingdom", "phylum", "class", "order", "family", "subfamily", "tribe", "genus", "species",
               "subspecies"]
# From coarse to fine; used to order ancestors.
RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "subfamily", "tribe", "genus",
                          "species", "subspecies")


class InputSpec(BaseModel):
    """How a photo becomes the network's input tensor (see :mod:`service.core.preprocess`)."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(224, ge=8, le=2048, description="side of the square network input, in pixels")
    resize: int = Field(224, ge=8, le=4096, description="target of the resize step, in pixels")
    resize_mode: Literal["shorter", "longer_pad", "stretch"] = Field(
        "shorter",
        description="shorter: shorter side to `resize` then centre crop to `size`; longer_pad: longer side "
        "to `size`, padded with the mean colour (keeps the whole frame); stretch: both sides to `size`",
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"
    input_name: str = "input"
    output_name: str = "logits"

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if self.resize_mode == "shorter" and self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= size ({self.size}) for resize_mode=shorter")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self


# The rank of a label that is not a taxon ("no_insect": a photo with no insect in it).
NOT_A_TAXON = "none"
# Every taxon label of this service lies inside class Insecta (the root of the tree).
ROOT_RANK, ROOT_NAME = "class", "Insecta"


class LabelTaxon(BaseModel):
    """Taxonomy of one output label: a species, a genus, a family, an order, or no taxon at all.

    ``rank`` is the label's own rank; a label above species names that taxon itself (``genus`` Bombus,
    ``family`` Vespidae) and means "this taxon, none of the finer labels" when finer labels lie inside it.
    ``rank == "none"`` marks a label that is not a taxon (``no_insect``).
    """

    model_config = ConfigDict(extra="allow")

    scientific_name: str | None = None
    common_name: str | None = None
    rank: str = "species"
    genus: str | None = None
    family: str | None = None
    order: str | None = None
    group: str | None = None

    @field_validator("rank", mode="before")
    @classmethod
    def _rank(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return "species"
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in RANKS and value != NOT_A_TAXON:
                raise ValueError(f"unknown rank {value!r}; known: {[*RANKS, NOT_A_TAXON]}")
        return value

    @property
    def is_taxon(self) -> bool:
        return self.rank != NOT_A_TAXON

    @property
    def common_names(self) -> dict[str, str]:
        """Common names in other languages than English, ``{code: name}``, from the ``common_name_<code>``
        fields (taxonomy CSV columns; blank: unknown). English is :attr:`common_name`."""
        return common_names_of(self.model_extra or {})


class Calibration(BaseModel):
    """Post-hoc calibration applied to the logits by the service."""

    temperature: float = Field(1.0, gt=0)
    # Out-of-distribution gate: a photo whose energy score (T * logsumexp(logits / T)) is below this
    # threshold is treated as "not one of the known species": species answers are held back and the
    # roll-up stops at a coarser rank. Fitted on the validation set by training; None disables it.
    ood_energy_threshold: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    # The committed answer's thresholds (see :func:`service.core.taxonomy.committed_answer`): per rank
    # (``species``, ``genus``, ``family``, ``order``, ``class``) and ``no_insect``, fitted by training on
    # classes held out of training (leave-classes-out); None: the service's default threshold everywhere.
    answer_thresholds: dict[str, float] | None = None
    # What the thresholds were fitted on and what they gave there (held-out classes, targets, counts).
    answer_fit: dict[str, Any] | None = None


class ModelVariant(BaseModel):
    """Another network file of the same version (e.g. an int8 quantization of ``model.onnx``).

    Same input, labels and calibration as the card; its own file, bound by sha256, and the accuracy it kept
    on the card's evaluation photos. ``cpu_default``: the service loads it instead of ``model.onnx`` on the
    CPU execution provider (never on CUDA), unless ``POLLINID_CPU_VARIANT=fp32``.
    """

    model_config = ConfigDict(extra="forbid")

    file: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.onnx$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    precision: Literal["int8", "fp16"] = "int8"
    top1: float | None = Field(None, ge=0, le=1)
    ece: float | None = Field(None, ge=0, le=1)
    cpu_default: bool = False
    quantization: dict[str, Any] = Field(default_factory=dict)

    @field_validator("file")
    @classmethod
    def _not_the_fp32_file(cls, value: str) -> str:
        if value == ONNX_FILENAME:
            raise ValueError(f"a variant's file cannot be {ONNX_FILENAME} (the fp32 network)")
        return value


class ModelCard(BaseModel):
    """The contract between training and the service (ARCHITECTURE.md, "Model card")."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    architecture: str
    input: InputSpec = Field(default_factory=InputSpec)  # type: ignore[arg-type]
    labels: list[str] = Field(min_length=1)
    taxonomy: dict[str, LabelTaxon] = Field(default_factory=dict)
    calibration: Calibration = Field(default_factory=Calibration)  # type: ignore[arg-type]
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    # The version's state (``service.inference.versions.VersionState``: candidate, gate_passed, gate_failed, released,
    # retired), written by the service into a trained version's card; None: decided by where it lives.
    status: str | None = None
    status_reason: str | None = None
    # Other network files of this version (``{"int8": ModelVariant}``); ``model.onnx`` is always the reference.
    variants: dict[str, ModelVariant] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        seen: set[str] = set()
        dupes = sorted({lbl for lbl in labels if lbl in seen or seen.add(lbl)})  # type: ignore[func-returns-value]
        if dupes:
            raise ValueError(f"duplicate labels: {dupes}")
        return labels

    @model_validator(mode="after")
    def _one_cpu_default(self) -> ModelCard:
        defaults = sorted(k for k, v in self.variants.items() if v.cpu_default)
        if len(defaults) > 1:
            raise ValueError(f"only one variant can be the CPU default; these all are: {defaults}")
        files = [v.file for v in self.variants.values()]
        if len(set(files)) != len(files):
            raise ValueError("two variants name the same file")
        return self

    def cpu_default_variant(self) -> tuple[str, ModelVariant] | None:
        """The variant the service loads on the CPU by default, if any."""
        return next(((k, v) for k, v in self.variants.items() if v.cpu_default), None)

    @model_validator(mode="after")
    def _taxonomy_keys(self) -> ModelCard:
        unknown = sorted(set(self.taxonomy) - set(self.labels))
        if unknown:
            raise ValueError(f"taxonomy names labels the model does not have: {unknown[:10]}")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def taxon_of(self, label: str) -> LabelTaxon:
        """Taxonomy of a label; a label without an entry is a species-rank taxon named by its label."""
        return self.taxonomy.get(label) or LabelTaxon(scientific_name=label)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CARD_FILENAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read a card from ``model.json`` (or a folder holding one)."""
        if path.is_dir():
            path = path / CARD_FILENAME
        return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
