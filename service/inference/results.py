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
    common_name: str | None = Field(None, description="the common name in the response's language "
                                    "(Content-Language); null where that language has none")
    common_names: dict[str, str] = Field(default_factory=dict, description="every known common name by language "
                                         "code, English included: {\"en\": \"Peacock\", \"fr\": \"Paon-du-jour\"}")
    rank: str = Field(description="species, genus, family, order, class; `none` for `no_insect`")
    genus: str | None = None
    family: str | None = None
    order: str | None = None


class NearbyScore(BaseModel):
    """Where and when as evidence for one suggestion (see :mod:`service.nearby.evidence`)."""

    records: int = Field(description="validated observations and imported occurrences of this taxon (its "
                                     "descendants included) within radius_km and the season window")
    radius_km: float
    month: int = Field(description="the month of the photo, 1..12")
    season_days: int = Field(description="the season window: this many days either side of the photo's day "
                                         "of the year, whatever the year")
    score: float = Field(description="the prior: (records + alpha) / (all records nearby + alpha * classes)")
    factor: float = Field(description="what the score was multiplied by: (prior / uniform prior) clipped, to "
                                      "the power of the weight")
    combined: float = Field(description="score x factor, renormalised over the listed suggestions; the "
                                        "suggestions are ordered by it")


class TaxonScore(BaseModel):
    taxon: TaxonPublic
    score: float = Field(description="calibrated probability, 0..1 (the model's, never changed by nearby)")
    nearby: NearbyScore | None = Field(default=None, description="where and when as evidence, when it was used and "
                                                         "this suggestion is a taxon")


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


class NearbyPublic(BaseModel):
    """Whether where and when re-ranked the suggestions, and for which place and season."""

    used: bool = Field(description="true when the suggestions were re-ranked by the records nearby")
    reason: str | None = Field(default=None, description="why not, when not used: no_place, switched_off")
    latitude: float | None = None
    longitude: float | None = None
    observed_on: str | None = Field(default=None, description="the date (YYYY-MM-DD) whose season was looked at")
    month: int | None = None
    radius_km: float | None = None
    season_days: int | None = None
    records: int = Field(default=0, description="all records (every taxon) within the radius and the season window")
    observations: int = Field(default=0, description="of which validated observations")
    occurrences: int = Field(default=0, description="of which imported occurrences")


class IdentifyResponse(BaseModel):
    """Top-k taxa fused over all photos, the roll-up, and the per-photo answers."""

    model: ModelRef
    results: list[TaxonScore] = Field(description="fused over all photos: mean of calibrated probabilities")
    rollup: RollupPublic | None = Field(description="the committed answer (see RollupPublic); null when "
                                                    "nothing, not even 'an insect', is safe to say")
    out_of_distribution: bool = Field(
        description="true when the photos look unlike every species the model knows (mean energy below "
        "the card's threshold): the roll-up then stops at genus or coarser")
    taxon_filter: TaxonPublic | None = Field(default=None, description="the subtree answers were restricted to")
    nearby: NearbyPublic | None = Field(default=None, description="where and when as evidence (a place was sent, or "
                                                          "nearby was asked for); the roll-up never uses it")
    images: list[PhotoResult]
    timings_ms: dict[str, float] = Field(description="decode (decode + preprocess, all photos, wall time), "
                                                     "queue, inference, total")
