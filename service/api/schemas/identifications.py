"""Identifications."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.taxa import TaxonPublic
from service.core.vocabulary import IdentificationKind, ObservationStatus, Role


class IdentificationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    taxon: int | str | None = Field(
        None,
        description="taxon id, model label, or exact scientific/common name, at any rank. For "
        "`agree` it defaults to the current community taxon, else the model's suggestion.",
    )
    kind: IdentificationKind
    comment: str | None = Field(None, max_length=5000)
    disagreement: bool = Field(
        False, description="with a coarser taxon: 'it is not the finer taxon proposed, only this one'"
    )


class IdentificationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    observation_id: int
    user_id: int
    user_name: str | None = None
    user_role: Role
    kind: IdentificationKind
    taxon: TaxonPublic | None
    disagreement: bool
    comment: str | None
    model_suggestion: dict[str, Any] | None
    current: bool
    created_at: datetime
    withdrawn_at: datetime | None


class IdentificationsPublic(BaseModel):
    data: list[IdentificationPublic]
    count: int


class ConsensusPublic(BaseModel):
    status: ObservationStatus
    taxon: TaxonPublic | None
    score: float | None
    agreement_weight: float
    identification_count: int


class IdentificationResult(BaseModel):
    identification: IdentificationPublic
    consensus: ConsensusPublic
