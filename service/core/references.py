"""The bundled reference photos: a few licence-clear photos per taxon, shipped beside the models.

``pollinid references build`` (:mod:`training.references`) writes them; the service
(:mod:`service.observations.references`) shows them on the suggestion cards after the photos of validated
observations. They live in ``models/references/`` (:data:`FOLDER`), not inside a model version: every version of
every model, and every retrained one, finds the photos of a taxon by its scientific name (or, for a label whose
species is unknown, by its model label). The folder holds JPEGs and :data:`INDEX_FILENAME`, described by
:class:`ReferenceIndex`. It has no ``model.onnx``, so the model registry never takes it for a version.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.core.vocabulary import Licence

FOLDER = "references"
INDEX_FILENAME = "index.json"
FORMAT = 1
# A file name of the set: lowercase letters, digits, dashes, one dot (no path ever escapes the folder).
FILE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,150}\.jpg$"


class ReferenceSource(BaseModel):
    """Where a set of photos comes from and the licence it was published under."""

    model_config = ConfigDict(extra="forbid")

    name: str
    licence: Licence
    credit: str = Field(min_length=1, description="the credit line shown under each photo")
    origin: str = Field("", description="where the photos were published")
    evidence: str = Field("", description="where the licence is stated")


class ReferencePhotoFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(pattern=FILE_PATTERN)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    size: int = Field(ge=1, description="bytes")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    original: str = Field(description="the photo it was made from, relative to its data folder")


class ReferenceTaxon(BaseModel):
    """The photos of one taxon: ``name`` is its scientific name, else the model label (see the taxa table)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    scientific_name: str | None = None
    label: str
    rank: str
    common_name: str | None = None
    source: str
    photos: list[ReferencePhotoFile]


class ReferenceIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    command: str = ""
    sources: dict[str, ReferenceSource]
    taxa: list[ReferenceTaxon]

    @model_validator(mode="after")
    def _known_sources(self) -> ReferenceIndex:
        unknown = sorted({t.source for t in self.taxa} - set(self.sources))
        if unknown:
            raise ValueError(f"taxa name sources the index does not declare: {unknown}")
        return self
