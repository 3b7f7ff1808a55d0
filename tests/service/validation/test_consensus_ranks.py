"""Issue 11: the community-taxon rule under the class Insecta root, and the "not an insect" verdict.

Tree used throughout (ids in brackets):

    Insecta [100] (class)
      Lepidoptera [1]
        Nymphalidae [2]
          Vanessa [3]
            V. atalanta [4]
      Hymenoptera [10]
        Apidae [11]
          Bombus [12] (a genus label)
      Coleoptera [20] (an order label)
        Coccinellidae [21] (a family label inside it)
"""

from __future__ import annotations

from service.validation.consensus import Kind, Status, Vote, community_taxon

INSECTA = (100,)
ATALANTA = (100, 1, 2, 3, 4)
BOMBUS = (100, 10, 11, 12)
COLEOPTERA = (100, 20)
LADYBIRD = (100, 20, 21)


def v(lineage: tuple[int, ...] = (), kind: Kind = Kind.propose, weight: float = 1.0,
      disagreement: bool = False) -> Vote:
    return Vote(kind=kind, lineage=lineage, weight=weight, disagreement=disagreement)


NAI = Kind.not_an_insect


def test_a_specialist_may_stop_at_genus_family_order_or_class() -> None:
    assert community_taxon([v(BOMBUS), v(BOMBUS)]).taxon == 12
    assert community_taxon([v(LADYBIRD), v(LADYBIRD)]).taxon == 21
    assert community_taxon([v(COLEOPTERA), v(COLEOPTERA)]).taxon == 20
    insect = community_taxon([v(INSECTA), v(INSECTA)])
    assert (insect.status, insect.taxon, insect.score) == (Status.validated, 100, 1.0)


def test_a_leaf_inside_a_leaf_rises_to_the_coarser_label() -> None:
    # One says ladybird, one says "a beetle": both support the order, only one the family.
    result = community_taxon([v(LADYBIRD), v(COLEOPTERA)])
    assert (result.status, result.taxon) == (Status.validated, 20)


def test_different_orders_meet_at_class_insecta() -> None:
    # The root is an ancestor like any other: with N met there, the community taxon is "an insect".
    result = community_taxon([v(ATALANTA), v(BOMBUS)])
    assert (result.status, result.taxon, result.agreements) == (Status.validated, 100, 2.0)
    # With N = 3 nothing passes, and the two identifications conflict.
    assert community_taxon([v(ATALANTA), v(BOMBUS)], min_agreements=3).status == Status.disputed


def test_not_an_insect_disagrees_with_insecta_too() -> None:
    result = community_taxon([v(ATALANTA), v(BOMBUS), v(kind=NAI)])
    scores = {s.taxon: s for s in result.scores}
    assert scores[100].disagreements == 1 and result.status == Status.disputed  # 2/3 is not above 2/3


def test_specialists_who_see_no_insect_reach_the_not_an_insect_verdict() -> None:
    result = community_taxon([v(kind=NAI), v(kind=NAI)])
    assert (result.status, result.taxon, result.score, result.agreements) == (
        Status.not_an_insect, None, 1.0, 2.0)
    # Against one taxon identification: 3 of 4 is above the threshold, 2 of 3 is not.
    assert community_taxon([v(kind=NAI)] * 3 + [v(BOMBUS)]).status == Status.not_an_insect
    assert community_taxon([v(kind=NAI)] * 2 + [v(BOMBUS)]).status == Status.disputed
    # One specialist weighing 2 is enough with N = 2.
    assert community_taxon([v(kind=NAI, weight=2.0)]).status == Status.not_an_insect
    assert community_taxon([v(kind=NAI)]).status == Status.needs_id


def test_cannot_tell_stays_cannot_tell() -> None:
    assert community_taxon([v(kind=Kind.cannot_tell)] * 2).status == Status.cannot_tell
    # Mixed: not enough "not an insect" on its own (2 of 3), but together they close it as cannot_tell.
    mixed = community_taxon([v(kind=NAI), v(kind=NAI), v(kind=Kind.cannot_tell)])
    assert (mixed.status, mixed.score) == (Status.cannot_tell, None)
