"""Taxa."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class TaxonPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    scientific_name: str
    common_name: str | None
    rank: str
    parent_id: int | None
    group: str | None = None


class TaxonDetail(TaxonPublic):
    ancestors: list[TaxonPublic]
    labels: list[str]
    children: list[TaxonPublic]


class TaxaPublic(BaseModel):
    data: list[TaxonPublic]
    count: int
