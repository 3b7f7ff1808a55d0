"""Committed answers measured and fitted (training/answers.py): the vectorised rule, honesty metrics, and
leave-classes-out thresholds that hold on classes the model never saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.core.modelcard import LabelTaxon
from service.core.taxonomy import TaxonTree, committed_answer, thresholds_for
from training.answers import (
    AnswerTable,
    answer_metrics,
    choose_heldout_labels,
    fit_thresholds,
    risk_coverage,
)

TAXONOMY = {
    "bombus": LabelTaxon(scientific_name="Bombus", rank="genus", genus="Bombus", family="Apidae",
                         order="Hymenoptera"),
    "apis_mellifera": LabelTaxon(scientific_name="Apis mellifera", genus="Apis", family="Apidae",
                                 order="Hymenoptera"),
    "vespidae": LabelTaxon(scientific_name="Vespidae", rank="family", family="Vespidae", order="Hymenoptera"),
    "coccinellidae": LabelTaxon(scientific_name="Coccinellidae", rank="family", family="Coccinellidae",
                                order="Coleoptera"),
    "coleoptera": LabelTaxon(scientific_name="Coleoptera", rank="order", order="Coleoptera"),
    "peacock": LabelTaxon(scientific_name="Aglais io", genus="Aglais", family="Nymphalidae", order="Lepidoptera"),
    "tortoiseshell": LabelTaxon(scientific_name="Aglais urticae", genus="Aglais", family="Nymphalidae",
                                order="Lepidoptera"),
    "no_insect": LabelTaxon(rank="none"),
}


def test_vectorised_answers_match_the_service_rule() -> None:
    labels = list(TAXONOMY)
    table = AnswerTable.build(TAXONOMY, labels)
    tree = TaxonTree.from_labels(TAXONOMY, labels)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(len(labels), 0.3), size=400)
    ood = rng.random(400) < 0.2
    for thresholds in (thresholds_for(None, 0.8),
                       {"no_insect": 0.7, "species": 0.9, "genus": 0.6, "family": 0.75, "order": 0.55,
                        "class": 0.5}):
        ranks, keys, scores = table.answers(probs, thresholds, ood)
        for i in range(len(probs)):
            want = committed_answer(tree, dict(zip(labels, probs[i], strict=True)), thresholds,
                                    finest_rank="genus" if ood[i] else None)
            if want is None:
                assert ranks[i] == "none" and keys[i] is None
            else:
                assert keys[i] == want.key and scores[i] == pytest.approx(want.score)
                assert ranks[i] == ("no_insect" if want.kind == "no_insect" else want.rank)


def test_honesty_metrics_count_held_out_and_no_insect_photos() -> None:
    labels = list(TAXONOMY)
    tree = TaxonTree.from_labels(TAXONOMY, labels)
    known = [lbl for lbl in labels if lbl != "tortoiseshell"]
    ranks = ["species", "genus", "species", "order", "no_insect", "class", "none"]
    keys = ["label:peacock", "genus:Aglais", "label:peacock", "order:Coleoptera", "label:no_insect",
            "class:Insecta", None]
    true = ["peacock", "tortoiseshell", "tortoiseshell", "coccinellidae", "no_insect", "no_insect", "bombus"]
    m = answer_metrics(tree, ranks, keys, true, known)
    assert m["by_rank"]["species"] == {"answered": 2, "share": round(2 / 7, 4), "precision": 0.5}
    assert m["by_rank"]["order"]["precision"] == 1.0  # a ladybird is a beetle
    assert m["heldout_photos"] == 2 and m["heldout_at_species"] == 0.5
    assert m["heldout_genus_known_right_genus_or_coarser"] == 0.5
    assert m["no_insect_photos"] == 2 and m["no_insect_claimed_insect"] == 0.5
    assert m["coverage"] == round(6 / 7, 4) and m["precision"] == round(4 / 6, 4)


def test_risk_coverage_answers_the_most_confident_first() -> None:
    rc = risk_coverage(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, True, False, True]), points=4)
    assert rc["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert rc["risk"] == [0.0, 0.0, round(1 / 3, 4), 0.25]


def _synthetic_world(genera: int = 10, species: int = 3):
    """Species labels in genera, families of two genera, two orders; and no_insect."""
    taxonomy = {}
    for g in range(genera):
        for s in range(species):
            taxonomy[f"g{g}s{s}"] = LabelTaxon(scientific_name=f"Genus{g} sp{s}", genus=f"Genus{g}",
                                               family=f"Family{g // 2}", order=f"Order{g // 5}")
    taxonomy["no_insect"] = LabelTaxon(rank="none")
    labels = list(taxonomy)
    rng = np.random.default_rng(1)
    dim = 24
    order_c = {o: rng.normal(0, 3.0, dim) for o in {t.order for t in taxonomy.values() if t.order}}
    centres = {}
    gcentre: dict[str, np.ndarray] = {}
    for lbl, t in taxonomy.items():
        if not t.is_taxon:
            centres[lbl] = rng.normal(0, 3.0, dim)
            continue
        if t.genus not in gcentre:
            gcentre[t.genus] = order_c[t.order] + rng.normal(0, 1.6, dim)
        centres[lbl] = gcentre[t.genus] + rng.normal(0, 0.9, dim)

    def draw(lbls: list[str], n: int, seed: int) -> tuple[np.ndarray, list[str]]:
        r = np.random.default_rng(seed)
        x = np.concatenate([centres[lbl] + r.normal(0, 0.7, (n, dim)) for lbl in lbls])
        return x.astype(np.float32), [lbl for lbl in lbls for _ in range(n)]

    return taxonomy, labels, draw


def _train_softmax(x: np.ndarray, y: np.ndarray, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return net


def _probs(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()


def test_leave_classes_out_thresholds_hold_on_unseen_photos_of_held_out_classes() -> None:
    taxonomy, labels, draw = _synthetic_world()
    held = choose_heldout_labels(taxonomy, labels, share=0.2, seed=0)
    # One species of every genus (each has three), and never no_insect.
    assert len(held) >= 10 and "no_insect" not in held
    assert len({taxonomy[h].genus for h in held}) == len(held)
    kept = [lbl for lbl in labels if lbl not in held]
    x_train, y_train = draw(kept, 60, seed=1)
    net = _train_softmax(x_train, np.array([kept.index(y) for y in y_train]), len(kept))
    table = AnswerTable.build(taxonomy, kept)
    full = TaxonTree.from_labels(taxonomy, labels)

    # Fit on one draw of photos of known and held-out classes...
    x_fit, y_fit = draw(labels, 25, seed=2)
    thresholds, report = fit_thresholds(table, full, _probs(net, x_fit), y_fit, target_precision=0.97,
                                        max_heldout_species=0.04)
    assert report["result"]["heldout_at_species"] <= 0.04
    # ...and they hold on fresh photos of the same held-out classes and of the known ones.
    x_new, y_new = draw(labels, 40, seed=3)
    probs_new = _probs(net, x_new)
    ranks, keys, _ = table.answers(probs_new, thresholds)
    fresh = answer_metrics(full, ranks, keys, y_new, kept)
    assert fresh["heldout_at_species"] <= 0.07
    assert fresh["precision"] >= 0.93
    assert fresh["heldout_genus_known_right_genus_or_coarser"] >= 0.5
    assert fresh["known_species_at_species"] >= 0.5
    # The service's untuned default claims a species for many photos of held-out classes.
    ranks0, keys0, _ = table.answers(probs_new, thresholds_for(None, 0.8))
    untuned = answer_metrics(full, ranks0, keys0, y_new, kept)
    assert untuned["heldout_at_species"] > 2 * max(fresh["heldout_at_species"], 0.05)


def test_holding_out_never_takes_a_label_with_others_inside_it() -> None:
    for seed in range(5):
        held = choose_heldout_labels(TAXONOMY, list(TAXONOMY), share=0.6, seed=seed)
        assert "coleoptera" not in held and "no_insect" not in held and len(held) == 5
    # At a small share, one species of the Aglais pair: its genus stays known.
    held = choose_heldout_labels(TAXONOMY, list(TAXONOMY), share=0.1, seed=0)
    assert len(held) == 1 and held[0] in {"peacock", "tortoiseshell"}
    with pytest.raises(ValueError, match="too few labels"):
        choose_heldout_labels(TAXONOMY, ["peacock", "tortoiseshell"], share=0.5)
