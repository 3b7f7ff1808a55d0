"""The community-taxon rule as a pure function, on hand-worked examples.

Tree used throughout (ids in brackets):

    Lepidoptera [1]
      Nymphalidae [2]
        Vanessa [3]
          V. atalanta [4]    V. cardui [5]
      Lycaenidae [6]
        Polyommatus [7]
          P. icarus [8]
"""

from __future__ import annotations

import pytest

from service.validation.consensus import Kind, Status, Vote, community_taxon, taxon_scores

ORDER = (1,)
NYMPH = (1, 2)
VANESSA = (1, 2, 3)
ATALANTA = (1, 2, 3, 4)
CARDUI = (1, 2, 3, 5)
ICARUS = (1, 6, 7, 8)


def v(
    lineage: tuple[int, ...], kind: Kind = Kind.propose, weight: float = 1.0, disagreement: bool = False
) -> Vote:
    return Vote(kind=kind, lineage=lineage, weight=weight, disagreement=disagreement)


def test_no_identification_needs_id() -> None:
    assert community_taxon([]).status == Status.needs_id
    assert community_taxon([]).taxon is None


def test_a_single_identification_is_not_enough_with_n_2() -> None:
    result = community_taxon([v(ATALANTA)], min_agreements=2)
    assert result.status == Status.needs_id and result.taxon is None


def test_two_agreeing_identifications_validate_the_species() -> None:
    result = community_taxon([v(ATALANTA), v(ATALANTA, Kind.agree)], min_agreements=2)
    assert result.status == Status.validated
    assert result.taxon == 4
    assert result.score == 1.0 and result.agreements == 2


def test_n_3_as_spipoll_needs_a_third_validation() -> None:
    two = [v(ATALANTA), v(ATALANTA, Kind.agree)]
    assert community_taxon(two, min_agreements=3).status == Status.needs_id
    assert community_taxon([*two, v(ATALANTA, Kind.agree)], min_agreements=3).taxon == 4


def test_two_thirds_exactly_is_not_above_the_threshold_so_consensus_rises_to_the_genus() -> None:
    # atalanta: 2 agree, 1 disagrees (cardui): 2/3, not > 2/3. Vanessa: 3 of 3 agree.
    votes = [v(ATALANTA), v(ATALANTA), v(CARDUI)]
    scores = {s.taxon: s for s in taxon_scores(votes)}
    assert (scores[4].agreements, scores[4].disagreements) == (2, 1)
    assert scores[4].score == pytest.approx(2 / 3)
    result = community_taxon(votes, min_agreements=2)
    assert result.status == Status.validated
    assert result.taxon == 3  # genus Vanessa
    assert result.score == 1.0 and result.agreements == 3


def test_three_against_one_passes_at_species() -> None:
    votes = [v(ATALANTA), v(ATALANTA), v(ATALANTA), v(CARDUI)]
    result = community_taxon(votes, min_agreements=2)
    assert result.taxon == 4
    assert result.score == pytest.approx(0.75)


def test_identification_at_genus_supports_genus_but_not_the_species() -> None:
    # One says atalanta, one says only "Vanessa" (not a disagreement): the genus has 2 agreements,
    # the species only 1, so the community taxon is the genus.
    result = community_taxon([v(ATALANTA), v(VANESSA)], min_agreements=2)
    assert result.taxon == 3
    scores = {s.taxon: s for s in taxon_scores([v(ATALANTA), v(VANESSA)])}
    assert scores[4].ancestor_disagreements == 0 and scores[4].disagreements == 0


def test_explicit_ancestor_disagreement_counts_against_the_finer_taxon() -> None:
    # atalanta x2, and "no, only Vanessa" x1 (disagreement): species score 2 / (2 + 0 + 1) = 2/3 -> fails.
    votes = [v(ATALANTA), v(ATALANTA), v(VANESSA, disagreement=True)]
    scores = {s.taxon: s for s in taxon_scores(votes)}
    assert scores[4].ancestor_disagreements == 1
    assert scores[3].ancestor_disagreements == 0 and scores[3].agreements == 3
    assert community_taxon(votes).taxon == 3
    # Without the disagreement flag the same identification is neutral for the species.
    assert community_taxon([v(ATALANTA), v(ATALANTA), v(VANESSA)]).taxon == 4


def test_conflicting_identifications_without_enough_common_support_are_disputed() -> None:
    bee = (9, 10)  # Hymenoptera > Apidae: another order, no common ancestor in this tree
    result = community_taxon([v(ATALANTA), v(bee)], min_agreements=2)
    assert result.status == Status.disputed and result.taxon is None
    # Two families of the same order: with N = 3 even the order lacks support.
    assert community_taxon([v(ATALANTA), v(ICARUS)], min_agreements=3).status == Status.disputed
    # With N = 2 the shared order has 2 of 2 agreements: iNaturalist's rule settles there.
    settled = community_taxon([v(ATALANTA), v(ICARUS)], min_agreements=2)
    assert settled.status == Status.validated and settled.taxon == 1


def test_order_is_validated_when_families_conflict_but_n_is_met_at_the_order() -> None:
    # Order Lepidoptera: atalanta + icarus + order-level = 3 agreements, 0 disagreements.
    votes = [v(ATALANTA), v(ICARUS), v(ORDER)]
    scores = {s.taxon: s for s in taxon_scores(votes)}
    assert scores[1].agreements == 3
    assert scores[2].agreements == 1 and scores[2].disagreements == 1
    # Order passes with N = 2 and is the finest passing taxon.
    result = community_taxon(votes, min_agreements=2)
    assert result.taxon == 1


def test_specialist_weight_counts_an_expert_twice() -> None:
    # One expert (weight 2) says cardui, one volunteer says atalanta.
    votes = [v(CARDUI, weight=2.0), v(ATALANTA, weight=1.0)]
    result = community_taxon(votes, min_agreements=2)
    # cardui: 2 / (2 + 1) = 2/3, not above; Vanessa: 3 / 3.
    assert result.taxon == 3
    votes = [v(CARDUI, weight=3.0), v(ATALANTA, weight=1.0)]
    assert community_taxon(votes, min_agreements=2).taxon == 5  # 3 / 4 = 0.75


def test_not_an_insect_disagrees_with_every_taxon() -> None:
    votes = [v(ATALANTA), v(ATALANTA), v((), Kind.not_an_insect)]
    scores = {s.taxon: s for s in taxon_scores(votes)}
    assert scores[1].disagreements == 1 and scores[4].disagreements == 1
    result = community_taxon(votes, min_agreements=2)
    assert result.status == Status.disputed and result.taxon is None  # 2/3 everywhere


def test_cannot_tell_is_neutral_about_taxa_but_can_close_the_observation() -> None:
    assert community_taxon([v(ATALANTA), v(ATALANTA), v((), Kind.cannot_tell)]).taxon == 4
    result = community_taxon([v((), Kind.cannot_tell), v((), Kind.cannot_tell)], min_agreements=2)
    assert result.status == Status.cannot_tell
    # One cannot_tell alone is not enough with N = 2.
    assert community_taxon([v((), Kind.cannot_tell)], min_agreements=2).status == Status.needs_id
    # Two cannot_tell against one species proposal: 2/3 is not above the threshold -> disputed? No
    # conflict between taxa either, so it still needs an identification.
    mixed = community_taxon([v((), Kind.cannot_tell), v((), Kind.cannot_tell), v(ATALANTA)])
    assert mixed.status == Status.needs_id


def test_threshold_is_configurable() -> None:
    votes = [v(ATALANTA), v(ATALANTA), v(CARDUI)]
    assert community_taxon(votes, threshold=0.6).taxon == 4  # 2/3 > 0.6
    assert community_taxon(votes, threshold=2 / 3).taxon == 3
