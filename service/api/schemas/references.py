"""Reference photos of a taxon."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.taxa import TaxonPublic


class ReferencePhotoPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    url: str = Field(description="a small JPEG (at most 320 px a side), viewable without an API key")
    width: int
    height: int
    credit: str = Field(description="the credit line to show under the photo")
    licence: str
    source: Literal["observation", "bundled"] = Field(
        description="observation: a validated observation's photo; bundled: the licence-clear set shipped "
        "with the models")
    observation_id: int | None = None
    taxon_id: int = Field(description="the taxon the photo shows: the one asked for, or one below it")
    scientific_name: str


class ReferencePhotosPublic(BaseModel):
    taxon: TaxonPublic
    data: list[ReferencePhotoPublic]
    count: int
