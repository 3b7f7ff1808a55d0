"""The community taxon of an observation: iNaturalist's rule, as a pure function.

For every taxon T named by an identification, or an ancestor of one:

* ``agreements(T)``: weight of identifications of T or of a descendant of T;
* ``disagreements(T)``: weight of identifications of a taxon outside T's lineage (neither an ancestor
  nor a descendant), plus every ``not_an_insect``;
* ``ancestor_disagreements(T)``: weight of identifications of a strict ancestor of T made as an explicit
  disagreement ("no, it is not that species, only this genus");
* ``score(T) = agreements / (agreements + disagreements + ancestor_disagreements)``.

The community taxon is the finest T with ``agreements >= N`` and ``score > threshold`` (2/3). Only each
person's current identification counts; an expert's counts with the specialist weight.

Status: ``validated`` when there is a community taxon; else ``not_an_insect`` when the ``not_an_insect``
identifications alone reach N and more than the threshold of all weight (the specialists' verdict "no insect
in this photo": its photos become ``no_insect`` training data); else ``cannot_tell`` when ``cannot_tell`` and
``not_an_insect`` identifications together reach N and more than the threshold of all weight; else
``disputed`` when identifications conflict; else ``needs_id``.

Lineages start at the tree's root, class Insecta (:mod:`service.observations.taxa`), so identifications in different
orders share it as a common ancestor: when N is met there, the community taxon is class Insecta ("an
insect", depth 0), like any other ancestor. A ``not_an_insect`` identification disagrees with Insecta too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# The rule's short names for two shared vocabularies (defined once, in service.core.vocabulary).
from service.core.vocabulary import IdentificationKind as Kind
from service.core.vocabulary import ObservationStatus as Status

TAXON_KINDS = frozenset({Kind.agree, Kind.propose})


@dataclass(frozen=True)
class Vote:
    """One person's current identification.

    Args:
        kind: agree, propose, cannot_tell or not_an_insect.
        lineage: taxon ids from the root down to the identified taxon (empty without a taxon).
        weight: 1 for volunteers, the specialist weight for experts.
        disagreement: an identification of a coarse taxon that explicitly rejects the finer ones.
    """

    kind: Kind
    lineage: tuple[int, ...] = ()
    weight: float = 1.0
    disagreement: bool = False

    @property
    def taxon(self) -> int | None:
        return self.lineage[-1] if self.lineage else None


@dataclass(frozen=True)
class TaxonScore:
    taxon: int
    depth: int
    agreements: float
    disagreements: float
    ancestor_disagreements: float

    @property
    def score(self) -> float:
        total = self.agreements + self.disagreements + self.ancestor_disagreements
        return self.agreements / total if total > 0 else 0.0


@dataclass(frozen=True)
class Consensus:
    status: Status
    taxon: int | None = None
    score: float | None = None
    agreements: float = 0.0
    scores: tuple[TaxonScore, ...] = field(default=(), compare=False)


def taxon_scores(votes: Sequence[Vote]) -> list[TaxonScore]:
    """Agreement and disagreement weights of every candidate taxon (see the module docstring)."""
    candidates: dict[int, tuple[int, tuple[int, ...]]] = {}
    for v in votes:
        if v.kind in TAXON_KINDS:
            for depth, tid in enumerate(v.lineage):
                candidates.setdefault(tid, (depth, v.lineage[: depth + 1]))
    out: list[TaxonScore] = []
    for tid, (depth, cand_lineage) in candidates.items():
        agree = disagree = ancestor_disagree = 0.0
        for v in votes:
            if v.kind == Kind.not_an_insect:
                disagree += v.weight
                continue
            if v.kind not in TAXON_KINDS or not v.lineage:
                continue  # cannot_tell is neutral about taxa
            if v.lineage[: depth + 1] == cand_lineage:
                agree += v.weight  # the candidate itself or one of its descendants
            elif len(v.lineage) <= depth and cand_lineage[: len(v.lineage)] == v.lineage:
                # A strict ancestor of the candidate: neutral, unless it explicitly disagrees.
                if v.disagreement:
                    ancestor_disagree += v.weight
            else:
                disagree += v.weight
        out.append(TaxonScore(tid, depth, agree, disagree, ancestor_disagree))
    return out


def _conflicting(votes: Sequence[Vote]) -> bool:
    taxon_votes = [v for v in votes if v.kind in TAXON_KINDS and v.lineage]
    if any(v.disagreement for v in taxon_votes):
        return True
    if taxon_votes and any(v.kind == Kind.not_an_insect for v in votes):
        return True
    for i, a in enumerate(taxon_votes):
        for b in taxon_votes[i + 1 :]:
            short, long_ = (
                (a.lineage, b.lineage) if len(a.lineage) <= len(b.lineage) else (b.lineage, a.lineage)
            )
            if long_[: len(short)] != short:
                return True
    return False


def community_taxon(
    votes: Sequence[Vote], *, min_agreements: float = 2.0, threshold: float = 2 / 3
) -> Consensus:
    """Apply the community-taxon rule to the current identifications of one observation.

    Args:
        votes: each person's current identification.
        min_agreements: N, the weighted agreements a taxon needs.
        threshold: the share of agreements a taxon must exceed.

    Returns:
        The status, the community taxon (or None), its score and agreement weight.
    """
    eps = 1e-9
    scores = taxon_scores(votes)
    passing = [s for s in scores if s.agreements + eps >= min_agreements and s.score > threshold + eps]
    if passing:
        best = max(passing, key=lambda s: (s.depth, s.score, s.agreements))
        return Consensus(Status.validated, best.taxon, best.score, best.agreements, tuple(scores))
    total = sum(v.weight for v in votes)
    no_insect = sum(v.weight for v in votes if v.kind == Kind.not_an_insect)
    if total > 0 and no_insect + eps >= min_agreements and no_insect / total > threshold + eps:
        # No taxon; the score and agreement weight are those of the verdict.
        return Consensus(Status.not_an_insect, None, no_insect / total, no_insect, tuple(scores))
    non_id = sum(v.weight for v in votes if v.kind in (Kind.cannot_tell, Kind.not_an_insect))
    if total > 0 and non_id + eps >= min_agreements and non_id / total > threshold + eps:
        return Consensus(Status.cannot_tell, None, None, 0.0, tuple(scores))
    if _conflicting(votes):
        return Consensus(Status.disputed, None, None, 0.0, tuple(scores))
    return Consensus(Status.needs_id, None, None, 0.0, tuple(scores))
