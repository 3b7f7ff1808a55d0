"""Response classes of ``POST /api/v1/identify``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    """The model version that answered."""

    name: str
    version: str


class TaxonPublic(BaseModel):
    """A taxon (a model label at any rank, or an ancestor of labels up to class Insecta), or the label
    ``no_insect`` (rank ``none``: not a taxon)."""

    label: str | None = Field(None, description="the model label whose node this is; null for a taxon that "
                                                "only groups labels")
    scientific_name: str
    common_name: str | None = None
    rank: str = Field(description="species, genus, family, order, class; `none` for `no_insect`")
    genus: str | None = None
    family: str | None = None
    order: str | None = None


class TaxonScore(BaseModel):
    taxon: TaxonPublic
    score: float = Field(description="calibrated probability, 0..1")


class RollupPublic(BaseModel):
    """The committed answer: the one thing the service claims about the photos.

    The finest taxon whose summed calibrated probability passes that rank's threshold (thresholds fitted on
    classes held out of training, so that taxa the model never saw are not claimed at a rank its evidence
    does not reach); or "no insect in this photo"; or "an insect, not placed" (class Insecta). When nothing
    is safe to say, the response's `rollup` is null.
    """

    taxon: TaxonPublic
    rank: str = Field(description="rank of the answer: species, genus, family, order, class; `none` for no "
                                  "insect")
    score: float = Field(description="the summed calibrated probability of the answer")
    kind: Literal["taxon", "insect", "no_insect"] = Field(
        "taxon", description="taxon: a named taxon; insect: an insect the model cannot place (class Insecta); "
        "no_insect: no insect in the photo")
    answer: str = Field("", description="the answer in plain words, e.g. 'Bumblebee (genus Bombus): the species "
                                        "needs an expert.'")


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
    rollup: RollupPublic | None = Field(description="the committed answer (see RollupPublic); null when "
                                                    "nothing, not even 'an insect', is safe to say")
    out_of_distribution: bool = Field(
        description="true when the photos look unlike every species the model knows (mean energy below "
        "the card's threshold): the roll-up then stops at genus or coarser")
    taxon_filter: TaxonPublic | None = Field(None, description="the subtree answers were restricted to")
    images: list[PhotoResult]
    timings_ms: dict[str, float] = Field(description="decode (decode + preprocess, all photos, wall time), "
                                                     "queue, inference, total")
