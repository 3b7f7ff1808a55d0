"""The taxonomic tree of a model's labels, and the committed answer.

Labels may sit at any rank: a species, a genus (``bombus``), a family (``vespidae``), an order
(``coleoptera``), or no taxon at all (``no_insect``). The tree is rooted at class Insecta. A label above
species *is* its taxon's node, so one label may lie inside another: ``coccinellidae`` (ladybirds) lies inside
``coleoptera`` (order Coleoptera), which then means "a beetle that is none of the finer labels".

Scores of labels are summed up the tree, and :func:`committed_answer` reports the one answer the service
commits to: the finest taxon whose summed probability passes its rank's threshold, "no insect", "an insect,
not placed" (class Insecta), or nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from service.core.languages import DEFAULT_LANGUAGE, answer_sentence, name_in, root_common_names
from service.core.modelcard import NOT_A_TAXON, RANKS, ROOT_NAME, ROOT_RANK, LabelTaxon, ModelCard

ANCESTOR_RANKS: tuple[str, ...] = ("order", "family", "genus")
ROOT_KEY = f"{ROOT_RANK}:{ROOT_NAME}"
# The ranks a committed answer may name, finest first, and the key of the "no insect" answer's threshold.
ANSWER_RANKS: tuple[str, ...] = ("species", "genus", "family", "order", ROOT_RANK)
NO_INSECT = "no_insect"


@dataclass
class TaxonNode:
    """One node of the tree. ``key`` is unique in a tree: ``<rank>:<name>``, or ``label:<label>`` for labels at
    species rank (two species labels may share a name) and for labels that are not taxa."""

    key: str
    name: str
    rank: str
    parent: str | None = None
    label: str | None = None  # the model label whose node this is (at any rank)
    common_name: str | None = None
    children: list[str] = field(default_factory=list)
    info: LabelTaxon | None = None
    common_names: dict[str, str] = field(default_factory=dict)  # other languages than English: {code: name}

    def as_dict(self) -> dict[str, object]:
        return {"key": self.key, "name": self.name, "rank": self.rank, "label": self.label,
                "common_name": self.common_name}

    def common_name_in(self, language: str) -> str | None:
        """The common name in ``language`` (English: :attr:`common_name`); None where that language has none."""
        return name_in(self.common_name, self.common_names, language)

    def all_common_names(self) -> dict[str, str]:
        """Every known common name, English included: ``{code: name}``."""
        names = {DEFAULT_LANGUAGE: self.common_name} if self.common_name else {}
        return {**names, **self.common_names}


def rank_index(rank: str) -> int:
    """Position of a rank from coarse to fine; ranks outside :data:`RANKS` (species-level labels) are finest."""
    return RANKS.index(rank) if rank in RANKS else len(RANKS)


def label_rank(info: LabelTaxon) -> str:
    """The rank of a label's own node (species for anything finer or unknown)."""
    if not info.is_taxon:
        return NOT_A_TAXON
    return info.rank if info.rank in RANKS and rank_index(info.rank) < rank_index("species") else "species"


class TaxonTree:
    """Taxa reachable from a set of labels, with fast ancestor and descendant look-ups."""

    def __init__(self) -> None:
        self.nodes: dict[str, TaxonNode] = {}
        self._by_name: dict[str, list[str]] = {}
        self._label_keys: dict[str, str] = {}

    # -- building ---------------------------------------------------------------------------------------
    def _add(self, node: TaxonNode) -> TaxonNode:
        existing = self.nodes.get(node.key)
        if existing is not None:
            # A label naming a taxon that is already an ancestor of other labels takes that node over.
            if node.label is not None and existing.label is None:
                existing.label, existing.info = node.label, node.info
                existing.common_name = node.common_name or existing.common_name
                existing.common_names = {**existing.common_names, **node.common_names}
                self._index(existing, node.label, node.common_name, *node.common_names.values())
            return existing
        self.nodes[node.key] = node
        self._index(node, node.name, node.label, node.common_name, *node.common_names.values())
        if node.parent is not None:
            self.nodes[node.parent].children.append(node.key)
        return node

    def _index(self, node: TaxonNode, *aliases: str | None) -> None:
        for alias in filter(None, aliases):
            keys = self._by_name.setdefault(alias.casefold(), [])
            if node.key not in keys:
                keys.append(node.key)

    def add_label(self, label: str, info: LabelTaxon) -> TaxonNode:
        if label in self._label_keys:
            return self.nodes[self._label_keys[label]]
        own_rank = label_rank(info)
        if own_rank == NOT_A_TAXON:
            node = self._add(TaxonNode(key=f"label:{label}", name=info.scientific_name or label, rank=NOT_A_TAXON,
                                       label=label, common_name=info.common_name, info=info,
                                       common_names=info.common_names))
            self._label_keys[label] = node.key
            return node
        root_names = root_common_names()
        english = root_names.pop(DEFAULT_LANGUAGE, None)
        parent: str | None = self._add(TaxonNode(key=ROOT_KEY, name=ROOT_NAME, rank=ROOT_RANK, common_name=english,
                                                 common_names=root_names)).key
        own_name = (info.scientific_name or label).strip()
        for rank in ANCESTOR_RANKS:
            if rank_index(rank) >= rank_index(own_rank):
                break
            name = getattr(info, rank, None)
            if not name:
                continue
            key = f"{rank}:{name}"
            self._add(TaxonNode(key=key, name=name, rank=rank, parent=parent))
            parent = key
        key = f"label:{label}" if own_rank == "species" else f"{own_rank}:{own_name}"
        node = self._add(TaxonNode(key=key, name=own_name, rank=own_rank, parent=parent, label=label,
                                   common_name=info.common_name, info=info, common_names=info.common_names))
        self._label_keys[label] = node.key
        return node

    @classmethod
    def from_labels(cls, taxonomy: Mapping[str, LabelTaxon], labels: Iterable[str]) -> TaxonTree:
        tree = cls()
        labels = list(labels)
        # Coarse labels first, so that a label naming a taxon becomes that node before finer labels use it.
        infos = {lbl: taxonomy.get(lbl) or LabelTaxon(scientific_name=lbl) for lbl in labels}
        for label in sorted(labels, key=lambda lbl: rank_index(label_rank(infos[lbl]))):
            tree.add_label(label, infos[label])
        return tree

    @classmethod
    def from_card(cls, card: ModelCard) -> TaxonTree:
        return cls.from_labels({lbl: card.taxon_of(lbl) for lbl in card.labels}, card.labels)

    @classmethod
    def from_csv(cls, path: Path) -> TaxonTree:
        """Build a tree from a taxonomy CSV with columns label, scientific_name, common_name, [rank,] genus, ..."""
        entries = read_taxonomy_csv(path)
        return cls.from_labels(entries, entries)

    # -- queries ----------------------------------------------------------------------------------------
    def label_key(self, label: str) -> str:
        """The key of a label's node."""
        return self._label_keys[label]

    def leaf(self, label: str) -> TaxonNode:
        return self.nodes[self._label_keys[label]]

    @property
    def labels(self) -> list[str]:
        return list(self._label_keys)

    def is_taxon_label(self, label: str) -> bool:
        return self.leaf(label).rank != NOT_A_TAXON

    def lineage(self, key: str) -> list[TaxonNode]:
        """The node and its ancestors, finest first."""
        out: list[TaxonNode] = []
        cur: str | None = key
        while cur is not None:
            node = self.nodes[cur]
            out.append(node)
            cur = node.parent
        return out

    def is_within(self, key: str, ancestor: str) -> bool:
        """Whether ``key`` is ``ancestor`` or lies below it."""
        return any(n.key == ancestor for n in self.lineage(key))

    def find(self, query: str) -> list[TaxonNode]:
        """Nodes whose key, name, label or common name equals ``query`` (case-insensitive)."""
        if query in self.nodes:
            return [self.nodes[query]]
        return [self.nodes[k] for k in self._by_name.get(query.casefold(), [])]

    def descendant_labels(self, key: str) -> set[str]:
        """Model labels at or below a node."""
        out: set[str] = set()
        stack = [key]
        while stack:
            node = self.nodes[stack.pop()]
            if node.label is not None:
                out.add(node.label)
            stack.extend(node.children)
        return out


def read_taxonomy_csv(path: Path) -> dict[str, LabelTaxon]:
    """Read ``label,scientific_name,common_name[,rank],genus,family,order[,group,...]`` rows.

    ``rank`` is the label's own rank (species when the column is missing or blank, as in older CSVs;
    ``none`` for a label that is not a taxon, such as ``no_insect``). Blank cells are unknown; extra columns
    are kept on the taxon.
    """
    out: dict[str, LabelTaxon] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "label" not in reader.fieldnames:
            raise ValueError(f"{path}: a taxonomy CSV needs a 'label' column; found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            label = (row.pop("label") or "").strip()
            if not label:
                continue
            clean = {k: (v.strip() or None) if isinstance(v, str) else None for k, v in row.items() if k}
            try:
                out[label] = LabelTaxon(**clean)  # type: ignore[arg-type]
            except ValidationError as exc:
                why = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
                raise ValueError(f"{path}:{line}: label {label!r}: {why}") from None
    return out


@dataclass(frozen=True)
class Rollup:
    """The committed answer. ``kind`` is ``taxon`` (a taxon at ``rank``), ``insect`` (class Insecta: an insect
    the model cannot place) or ``no_insect`` (no insect in the photo; ``rank`` is ``none``)."""

    key: str
    name: str
    rank: str
    score: float
    kind: str = "taxon"


def aggregate(tree: TaxonTree, scores: Mapping[str, float]) -> dict[str, float]:
    """Sum label scores into every ancestor. Returns a score per node key."""
    totals: dict[str, float] = {}
    for label, score in scores.items():
        for node in tree.lineage(tree.label_key(label)):
            totals[node.key] = totals.get(node.key, 0.0) + float(score)
    return totals


def answer_rank(node: TaxonNode) -> str:
    """The threshold rank of a node: its own, or the next coarser answer rank (subfamily → family)."""
    if node.rank == NOT_A_TAXON:
        return NO_INSECT
    if node.rank in ANSWER_RANKS:
        return node.rank
    coarser = [r for r in ANSWER_RANKS if rank_index(r) <= rank_index(node.rank)]
    return coarser[0] if coarser else "species"


def thresholds_for(card_thresholds: Mapping[str, float] | None, default: float) -> dict[str, float]:
    """Per-rank thresholds: the card's fitted ones, else ``default`` for every rank and for "no insect"."""
    out = {rank: default for rank in (*ANSWER_RANKS, NO_INSECT)}
    if card_thresholds:
        out.update({k: float(v) for k, v in card_thresholds.items()})
    return out


def committed_answer(tree: TaxonTree, scores: Mapping[str, float], thresholds: Mapping[str, float],
                     *, finest_rank: str | None = None) -> Rollup | None:
    """The one answer the service commits to for calibrated label probabilities.

    In order:

    1. "no insect" when the labels that are not taxa (``no_insect``) reach ``thresholds["no_insect"]``;
    2. else the finest taxon (species, genus, family, order) whose summed probability reaches its rank's
       threshold, the more probable one on a tie of rank;
    3. else class Insecta ("an insect, not placed") when the insect labels together reach
       ``thresholds["class"]``;
    4. else None: nothing is safe to say.

    Args:
        tree: the taxonomy of the labels.
        scores: calibrated probability per label (summing to at most 1).
        thresholds: per answer rank and ``no_insect`` (see :func:`thresholds_for`).
        finest_rank: answer nothing finer than this rank (used when the photo looks unlike every known
            label: the out-of-distribution gate).
    """
    totals = aggregate(tree, scores)
    limit = rank_index(finest_rank) if finest_rank else len(RANKS) + 1
    best: tuple[int, float, str] | None = None
    for key, total in totals.items():
        node = tree.nodes[key]
        rank = answer_rank(node)
        if total + 1e-9 < thresholds.get(rank, 1.0):
            continue
        if rank == NO_INSECT:
            return Rollup(key=key, name=node.name, rank=NOT_A_TAXON, score=min(1.0, total), kind=NO_INSECT)
        depth = rank_index(node.rank)
        if depth > limit:
            continue
        candidate = (depth, total, key)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is None:
        return None
    node = tree.nodes[best[2]]
    kind = "insect" if node.key == ROOT_KEY else "taxon"
    return Rollup(key=node.key, name=node.name, rank=node.rank, score=min(1.0, best[1]), kind=kind)


def plain_answer(tree: TaxonTree, answer: Rollup | None, language: str = DEFAULT_LANGUAGE) -> str:
    """The committed answer in plain words, as the volunteer page shows it, in ``language`` (the taxon's common
    name in that language where it has one; see :mod:`service.core.languages`)."""
    if answer is None:
        return answer_sentence(None, None, None, None, language)
    if answer.kind in (NO_INSECT, "insect"):
        return answer_sentence(answer.kind, answer.rank, None, None, language)
    node = tree.nodes[answer.key]
    return answer_sentence("taxon", answer.rank, node.name, node.common_name_in(language), language)


def top_k(scores: Sequence[float], labels: Sequence[str], k: int,
          allowed: Iterable[str] | None = None) -> list[tuple[str, float]]:
    """The k best labels, optionally restricted to ``allowed`` labels."""
    allowed_set = set(allowed) if allowed is not None else None
    pairs = [(lbl, float(s)) for lbl, s in zip(labels, scores, strict=True)
             if allowed_set is None or lbl in allowed_set]
    pairs.sort(key=lambda p: p[1], reverse=True)
    return pairs[:k]
