"""Occurrence downloads imported as where-and-when evidence."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class OccurrenceImportPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    file_name: str
    sha256: str
    size_bytes: int
    rows_read: int = Field(description="rows of the occurrence core file")
    rows_imported: int = Field(description="rows kept: a known taxon, a place and a month")
    rows_unknown_taxon: int = Field(description="rows skipped: no species, genus, family or order of the "
                                                "installation's taxa")
    rows_incomplete: int = Field(description="rows skipped: no coordinates or no month")
    created_by: int | None
    created_at: datetime


class OccurrenceImportsPublic(BaseModel):
    data: list[OccurrenceImportPublic]
    count: int
    records: int = Field(description="occurrence records of all imports")


class OccurrenceImportDeleted(BaseModel):
    id: int
    records_deleted: int
