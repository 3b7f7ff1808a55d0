"""Response classes of ``POST /api/v1/identify``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    """The model version that answered."""

    name: str
    version: str


class TaxonPublic(BaseModel):
    """A taxon: a model label (species) or one of its ancestors (genus, family, order)."""

    label: str | None = Field(None, description="the model label; null for a taxon above the labels")
    scientific_name: str
    common_name: str | None = None
    rank: str
    genus: str | None = None
    family: str | None = None
    order: str | None = None


class TaxonScore(BaseModel):
    taxon: TaxonPublic
    score: float = Field(description="calibrated probability, 0..1")


class RollupPublic(BaseModel):
    """The finest taxon whose summed score passes the roll-up threshold ("pretty sure it's genus X")."""

    taxon: TaxonPublic
    rank: str
    score: float


class PhotoResult(BaseModel):
    """What the model says about one photo."""

    index: int = Field(description="position of the photo in the request, from 0")
    filename: str | None = None
    width: int = Field(description="width after EXIF orientation, at full resolution")
    height: int
    format: str
    draft_scale: int = Field(description="JPEG DCT scaling used while decoding (1 = full decode)")
    results: list[TaxonScore]
    rollup: RollupPublic | None
    energy: float = Field(description="energy score T*logsumexp(logits/T); low means unlike known species")
    out_of_distribution: bool
    timings_ms: dict[str, float]


class IdentifyResponse(BaseModel):
    """Top-k taxa fused over all photos, the roll-up, and the per-photo answers."""

    model: ModelRef
    results: list[TaxonScore] = Field(description="fused over all photos: mean of calibrated probabilities")
    rollup: RollupPublic | None = Field(description="null when not even the coarsest rank passes the "
                                                    "threshold")
    out_of_distribution: bool = Field(
        description="true when the photos look unlike every species the model knows (mean energy below "
        "the card's threshold): the roll-up then stops at genus or coarser")
    taxon_filter: TaxonPublic | None = Field(None, description="the subtree answers were restricted to")
    images: list[PhotoResult]
    timings_ms: dict[str, float] = Field(description="decode (decode + preprocess, all photos, wall time), "
                                                     "queue, inference, total")
