"""The committed answer, measured and fitted: per-rank thresholds that hold for taxa the model never saw.

The service commits to one answer per photo (:func:`service.core.taxonomy.committed_answer`): the finest taxon whose
summed calibrated probability passes its rank's threshold, "no insect", "an insect" (class Insecta) or
nothing. This module

* computes those answers for many photos at once (:class:`AnswerTable`, the same rule, vectorised; a test
  checks it against the service's function);
* measures their honesty (:func:`answer_metrics`): precision and coverage per rank, the share of photos of
  held-out classes answered at species rank (wrong by construction), the share answered at their right
  genus or coarser, the share of "no insect" photos that claimed an insect, and a risk-coverage curve;
* fits the thresholds (:func:`fit_thresholds`) on photos of known classes *and* of classes held out of
  training (leave-classes-out, as selective classification does): from the finest rank to the coarsest,
  each threshold is the smallest that keeps the answers at that rank precise on both, and the species
  threshold also keeps held-out classes from being named as a species.

Pure numpy: the leave-classes-out model itself is trained by :mod:`training.leave_out`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.modelcard import LabelTaxon, ModelCard
from service.core.taxonomy import ANSWER_RANKS, NO_INSECT, TaxonTree, answer_rank

logger = logging.getLogger(__name__)

# The order in which the service tries answers: "no insect" first, then species to class.
ANSWER_ORDER: tuple[str, ...] = (NO_INSECT, *ANSWER_RANKS)
UNANSWERED = "none"


@dataclass
class AnswerTable:
    """The committed-answer rule over a label list, vectorised.

    ``member[c, k]`` is True when label ``c`` lies at or below node ``k``; ``rank_nodes[r]`` lists the nodes
    whose answer rank is ``r`` (``no_insect`` for labels that are not taxa).
    """

    tree: TaxonTree
    labels: list[str]
    keys: list[str]
    member: np.ndarray
    rank_nodes: dict[str, np.ndarray]

    @classmethod
    def build(cls, taxonomy: Mapping[str, LabelTaxon], labels: Sequence[str]) -> AnswerTable:
        tree = TaxonTree.from_labels(taxonomy, labels)
        keys = list(tree.nodes)
        index = {k: i for i, k in enumerate(keys)}
        member = np.zeros((len(labels), len(keys)), dtype=bool)
        for c, label in enumerate(labels):
            for node in tree.lineage(tree.label_key(label)):
                member[c, index[node.key]] = True
        by_rank: dict[str, list[int]] = {r: [] for r in ANSWER_ORDER}
        for i, key in enumerate(keys):
            rank = answer_rank(tree.nodes[key])
            by_rank.setdefault(rank, []).append(i)
        return cls(tree, list(labels), keys, member,
                   {r: np.asarray(v, dtype=np.int64) for r, v in by_rank.items()})

    def best_per_rank(self, probs: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per answer rank: (best summed score, node index) for every photo; (0, -1) where the rank has no node."""
        totals = np.asarray(probs, dtype=np.float64) @ self.member.astype(np.float64)
        out = {}
        n = len(totals)
        for rank in ANSWER_ORDER:
            nodes = self.rank_nodes.get(rank, np.zeros(0, dtype=np.int64))
            if len(nodes) == 0:
                out[rank] = (np.zeros(n), np.full(n, -1))
                continue
            sub = totals[:, nodes]
            # Ties go to the higher score, then (as in the service) to the node listed last; ties are rare.
            arg = sub.argmax(axis=1)
            out[rank] = (sub[np.arange(n), arg], nodes[arg])
        return out

    def answers(self, probs: np.ndarray, thresholds: Mapping[str, float],
                ood: np.ndarray | None = None) -> tuple[list[str], list[str | None], np.ndarray]:
        """The committed answer of each photo: (answer rank or "none", node key or None, score)."""
        best = self.best_per_rank(probs)
        n = len(probs)
        ranks = [UNANSWERED] * n
        keys: list[str | None] = [None] * n
        scores = np.zeros(n)
        open_ = np.ones(n, dtype=bool)
        for rank in ANSWER_ORDER:
            s, node = best[rank]
            ok = open_ & (node >= 0) & (s + 1e-9 >= thresholds.get(rank, 1.0))
            if ood is not None and rank == "species":
                ok &= ~np.asarray(ood, dtype=bool)
            for i in np.flatnonzero(ok):
                ranks[i], keys[i], scores[i] = rank, self.keys[node[i]], s[i]
            open_ &= ~ok
        return ranks, keys, scores


def is_correct(full: TaxonTree, answer_key: str | None, true_label: str) -> bool:
    """Whether an answer (a node key of the same taxonomy) is right for a photo of ``true_label``."""
    if answer_key is None:
        return False
    true_key = full.label_key(true_label)
    if not full.is_taxon_label(true_label):
        return answer_key == true_key
    return answer_key in full.nodes and full.is_within(true_key, answer_key)


def _genus_of(full: TaxonTree, label: str) -> str | None:
    for node in full.lineage(full.label_key(label)):
        if node.rank == "genus":
            return node.key
    return None


def answer_metrics(full: TaxonTree, ranks: Sequence[str], keys: Sequence[str | None],
                   true_labels: Sequence[str], known_labels: Sequence[str]) -> dict[str, Any]:
    """Honesty of committed answers.

    Args:
        full: a tree holding every true label (known and held out).
        ranks, keys: the answers (:meth:`AnswerTable.answers`).
        true_labels: each photo's label.
        known_labels: the labels of the model that answered (the others are held-out classes).

    Returns:
        ``photos``, ``precision`` (all answers), ``coverage`` (share answered at all), ``by_rank``
        ({rank: {answered, share, precision}}), ``known_species_at_species`` (photos of known species-rank
        labels answered at species rank), ``no_insect_claimed_insect``, and for held-out classes
        ``heldout_photos``, ``heldout_at_species``, ``heldout_right`` (any right answer),
        ``heldout_genus_known_photos`` and ``heldout_genus_known_right_genus_or_coarser``.
    """
    known = set(known_labels)
    n = len(true_labels)
    correct = np.array([is_correct(full, k, y) for k, y in zip(keys, true_labels, strict=True)], dtype=bool)
    ranks_a = np.asarray(ranks)
    answered = ranks_a != UNANSWERED
    by_rank = {}
    for rank in (*ANSWER_ORDER, UNANSWERED):
        m = ranks_a == rank
        by_rank[rank] = {
            "answered": int(m.sum()),
            "share": round(float(m.mean()), 4) if n else 0.0,
            "precision": round(float(correct[m].mean()), 4) if m.any() and rank != UNANSWERED else None,
        }
    out: dict[str, Any] = {
        "photos": n,
        "precision": round(float(correct[answered].mean()), 4) if answered.any() else None,
        "coverage": round(float(answered.mean()), 4) if n else 0.0,
        "by_rank": by_rank,
    }
    is_known = np.array([y in known for y in true_labels], dtype=bool)
    species_known = np.array([y in known and full.leaf(y).rank == "species" for y in true_labels], dtype=bool)
    if species_known.any():
        out["known_species_photos"] = int(species_known.sum())
        out["known_species_at_species"] = round(float((ranks_a[species_known] == "species").mean()), 4)
    no_insect = np.array([not full.is_taxon_label(y) for y in true_labels], dtype=bool)
    if no_insect.any():
        claimed = np.isin(ranks_a[no_insect], list(ANSWER_RANKS))
        out["no_insect_photos"] = int(no_insect.sum())
        out["no_insect_claimed_insect"] = round(float(claimed.mean()), 4)
    held = ~is_known
    if held.any():
        out["heldout_photos"] = int(held.sum())
        out["heldout_at_species"] = round(float((ranks_a[held] == "species").mean()), 4)
        out["heldout_right"] = round(float(correct[held].mean()), 4)
        known_genera = {_genus_of(full, lbl) for lbl in known} - {None}
        gk = np.array([h and _genus_of(full, y) in known_genera for h, y in zip(held, true_labels, strict=True)],
                      dtype=bool)
        if gk.any():
            coarse = np.isin(ranks_a[gk], ["genus", "family", "order", "class"])
            out["heldout_genus_known_photos"] = int(gk.sum())
            out["heldout_genus_known_right_genus_or_coarser"] = round(float((coarse & correct[gk]).mean()), 4)
            out["heldout_genus_known_right_at_genus"] = round(
                float(((ranks_a[gk] == "genus") & correct[gk]).mean()), 4)
    if is_known.any():
        out["known_precision"] = (round(float(correct[is_known & answered].mean()), 4)
                                  if (is_known & answered).any() else None)
    return out


def risk_coverage(scores: np.ndarray, correct: np.ndarray, points: int = 50) -> dict[str, list[float]]:
    """Risk (error rate among answered photos) against coverage, answering the most confident first."""
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if len(scores) == 0:
        return {"coverage": [], "risk": [], "threshold": []}
    order = np.argsort(-scores, kind="stable")
    errors = np.cumsum(~correct[order])
    n = len(scores)
    idx = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))
    return {
        "coverage": [round(float((i + 1) / n), 4) for i in idx],
        "risk": [round(float(errors[i] / (i + 1)), 4) for i in idx],
        "threshold": [round(float(scores[order][i]), 4) for i in idx],
    }


def _smallest_threshold(scores: np.ndarray, correct: np.ndarray, target: float, floor: float,
                        min_answered: int) -> float:
    """The smallest score threshold t >= floor with precision of {score >= t} >= target; 1.0 when none."""
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    hits = np.cumsum(c)
    counts = np.arange(1, len(s) + 1)
    precision = hits / counts
    # Only cut between distinct scores: all photos of one score are answered together.
    last_of_score = np.r_[s[1:] != s[:-1], True]
    ok = (precision >= target) & last_of_score & (s >= floor) & (counts >= min_answered)
    if not ok.any():
        return 1.0
    i = int(np.flatnonzero(ok).max())
    return float(max(floor, s[i]))


def fit_thresholds(table: AnswerTable, full: TaxonTree, probs: np.ndarray, true_labels: Sequence[str], *,
                   ood: np.ndarray | None = None, target_precision: float = 0.98,
                   max_heldout_species: float = 0.05, floor: float = 0.5,
                   min_answered: int = 5) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the per-rank thresholds on photos of known and held-out classes.

    From "no insect" and species down to class Insecta, each threshold is the smallest one at which the
    answers at that rank, among photos not already answered at a finer rank, reach ``target_precision`` on the
    known photos and, separately, on the held-out ones (species: on the known ones; "no insect": on all). The species
    threshold is also raised until at most ``max_heldout_species`` of the held-out photos are named as a
    species (any species name is wrong for them). Thresholds never go below ``floor`` (so at most one taxon
    per rank can pass).

    Args:
        table: the answer rule over the labels of the model that produced ``probs``.
        full: a tree holding every true label.
        probs: calibrated probabilities, one row per photo.
        true_labels: each photo's label (held-out labels are not in ``table.labels``).
        ood: optional out-of-distribution flags (the energy gate: no species answer for them).

    Returns:
        (thresholds, fit report).
    """
    probs = np.asarray(probs, dtype=np.float64)
    best = table.best_per_rank(probs)
    known = set(table.labels)
    held = np.array([y not in known for y in true_labels], dtype=bool)
    open_ = np.ones(len(probs), dtype=bool)
    thresholds: dict[str, float] = {}
    for rank in ANSWER_ORDER:
        s, node = best[rank]
        keys = [table.keys[k] if k >= 0 else None for k in node]
        correct = np.array([is_correct(full, k, y) for k, y in zip(keys, true_labels, strict=True)], dtype=bool)
        eligible = open_ & (node >= 0)
        if ood is not None and rank == "species":
            eligible &= ~np.asarray(ood, dtype=bool)
        # Each rank must be precise on the known photos and, separately, on the held-out ones (so that many
        # easy unknowns cannot hide the errors on known photos, nor the reverse). Species: known photos only (a
        # held-out photo is wrong at species by construction; the cap below bounds how many may be named).
        # "No insect": all photos together (every held-out photo is an insect, so it can only be wrong there).
        if rank == NO_INSECT:
            t = _smallest_threshold(s[eligible], correct[eligible], target_precision, floor, min_answered)
        else:
            t = _smallest_threshold(s[eligible & ~held], correct[eligible & ~held], target_precision, floor,
                                    min_answered)
            if rank != "species" and (eligible & held).any():
                t = max(t, _smallest_threshold(s[eligible & held], correct[eligible & held], target_precision,
                                               floor, min_answered))
        if rank == "species" and (held & eligible).any():
            held_scores = np.sort(s[held & eligible])
            # At most max_heldout_species of all held-out photos may pass.
            allowed = int(np.floor(max_heldout_species * int(held.sum())))
            if allowed < len(held_scores):
                t = max(t, float(np.nextafter(held_scores[len(held_scores) - allowed - 1], np.inf)))
        thresholds[rank] = min(1.0, math.ceil(t * 1e6) / 1e6)  # rounded up: never below what was fitted
        # Answer with the rounded threshold, exactly as the service will.
        answered = eligible & (s + 1e-9 >= thresholds[rank])
        open_ &= ~answered
    ranks, keys_out, _ = table.answers(probs, thresholds, ood)
    report = {
        "target_precision": target_precision,
        "max_heldout_species": max_heldout_species,
        "floor": floor,
        "photos": len(probs),
        "heldout_photos": int(held.sum()),
        "known_photos": int((~held).sum()),
        "result": answer_metrics(full, ranks, keys_out, true_labels, table.labels),
    }
    return thresholds, report


def choose_heldout_labels(taxonomy: Mapping[str, LabelTaxon], labels: Sequence[str], *, share: float = 0.2,
                          seed: int = 0) -> list[str]:
    """Labels to hold out of a leave-classes-out model: whole species and coarser labels, never all of a genus.

    From every genus with two or more species labels, one species (its genus stays known, so the fit sees
    unknown sister species); then other labels at random until about ``share`` of the labels are held out.
    Never held out: labels that are not taxa (``no_insect``) and labels with other labels inside them.
    """
    tree = TaxonTree.from_labels(taxonomy, labels)
    rng = np.random.default_rng(seed)
    holders = {lbl for lbl in labels
               if tree.descendant_labels(tree.label_key(lbl)) - {lbl}}
    candidates = [lbl for lbl in labels if tree.is_taxon_label(lbl) and lbl not in holders]
    by_genus: dict[str, list[str]] = {}
    for lbl in candidates:
        genus = _genus_of(tree, lbl)
        if genus is not None and tree.leaf(lbl).rank == "species":
            by_genus.setdefault(genus, []).append(lbl)
    chosen: list[str] = []
    for genus in sorted(by_genus):
        members = sorted(by_genus[genus])
        if len(members) >= 2:
            chosen.append(members[int(rng.integers(len(members)))])
    target = max(len(chosen), 1, round(share * len(labels)))
    rest = sorted(set(candidates) - set(chosen))
    rng.shuffle(rest)
    chosen.extend(rest[: max(0, target - len(chosen))])
    if len(labels) - len(chosen) < 2:
        raise ValueError(f"too few labels ({len(labels)}) to hold some out and keep two")
    return sorted(chosen)


def evaluate_answers(card: ModelCard, logits: np.ndarray, targets: np.ndarray, *,
                     default_threshold: float = 0.8) -> dict[str, Any]:
    """The committed answers of a model on labelled photos, as the service gives them, and their honesty.

    Uses the card's temperature, OOD energy gate and answer thresholds (``default_threshold`` for ranks the card
    has none for, as the service's ``POLLINID_ROLLUP_THRESHOLD``). Adds ``top1_by_order`` (top-1 of the photos
    of each order, and of ``no_insect``) and ``risk_coverage`` (answering the most confident photos first, the
    error of the top label; and the committed answer's own operating point).
    """
    from service.core.taxonomy import thresholds_for
    from training.calibration import energy_scores
    from training.metrics import softmax

    labels = list(card.labels)
    taxonomy = {lbl: card.taxon_of(lbl) for lbl in labels}
    table = AnswerTable.build(taxonomy, labels)
    t = card.calibration.temperature
    probs = softmax(np.asarray(logits, dtype=np.float64), t)
    gate = card.calibration.ood_energy_threshold
    ood = energy_scores(logits, t) < gate if gate is not None else None
    thresholds = thresholds_for(card.calibration.answer_thresholds, default_threshold)
    ranks, keys, _ = table.answers(probs, thresholds, ood)
    true = [labels[i] for i in np.asarray(targets)]
    out = answer_metrics(table.tree, ranks, keys, true, labels)
    out["thresholds"] = thresholds
    out["thresholds_fitted"] = card.calibration.answer_thresholds is not None
    top = probs.argmax(1)
    hit = top == np.asarray(targets)
    by_order: dict[str, list[bool]] = {}
    for y, ok in zip(true, hit, strict=True):
        info = taxonomy[y]
        group = (info.order or "unplaced") if info.is_taxon else NO_INSECT
        by_order.setdefault(group, []).append(bool(ok))
    out["top1_by_order"] = {g: {"photos": len(v), "top1": round(float(np.mean(v)), 4)}
                            for g, v in sorted(by_order.items())}
    correct = np.array([is_correct(table.tree, k, y) for k, y in zip(keys, true, strict=True)], dtype=bool)
    out["risk_coverage"] = {
        "top_label": risk_coverage(probs.max(1), hit),
        "committed_answer": {"coverage": out["coverage"],
                             "risk": round(1 - out["precision"], 4) if out["precision"] is not None else None,
                             "answered_correct": int(correct.sum())},
    }
    return out


def plot_risk_coverage(answers: dict[str, Any], path: Any) -> Any:
    """Risk-coverage curve of the top label, with the committed answer's operating point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rc = answers["risk_coverage"]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(rc["top_label"]["coverage"], rc["top_label"]["risk"], label="top label, most confident first")
    point = rc["committed_answer"]
    if point["risk"] is not None:
        ax.scatter([point["coverage"]], [point["risk"]], color="C3", zorder=3,
                   label="committed answer (any rank)")
    ax.set_xlabel("coverage (share of photos answered)")
    ax.set_ylabel("risk (error among answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Risk against coverage")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
