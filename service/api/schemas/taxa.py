"""Taxa."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TaxonPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    scientific_name: str
    common_name: str | None = Field(description="in the language Accept-Language chose (Content-Language); "
                                    "null where that language has no name for the taxon")
    common_names: dict[str, str] = Field(default_factory=dict,
                                         description="every known common name by language code, English included")
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
