"""A taxonomic tree built from model cards (and taxonomy CSVs), and the roll-up of species scores.

Every model label is a taxon; its ancestors (genus, family, order, ...) come from the card. Scores of
labels are summed up the tree, and :func:`rollup` reports the finest taxon whose summed score passes a
threshold (iNaturalist's "pretty sure it's genus X").
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.modelcard import RANKS, LabelTaxon, ModelCard

ANCESTOR_RANKS: tuple[str, ...] = ("order", "family", "genus")


@dataclass
class TaxonNode:
    """One node of the tree. ``key`` is unique in a tree: ``<rank>:<name>`` or ``label:<label>``."""

    key: str
    name: str
    rank: str
    parent: str | None = None
    label: str | None = None  # the model label, for leaf taxa
    common_name: str | None = None
    children: list[str] = field(default_factory=list)
    info: LabelTaxon | None = None

    def as_dict(self) -> dict[str, object]:
        return {"key": self.key, "name": self.name, "rank": self.rank, "label": self.label,
                "common_name": self.common_name}


class TaxonTree:
    """Taxa reachable from a set of labels, with fast ancestor and descendant look-ups."""

    def __init__(self) -> None:
        self.nodes: dict[str, TaxonNode] = {}
        self._by_name: dict[str, list[str]] = {}

    # -- building ---------------------------------------------------------------------------------------
    def _add(self, node: TaxonNode) -> TaxonNode:
        existing = self.nodes.get(node.key)
        if existing is not None:
            return existing
        self.nodes[node.key] = node
        for alias in filter(None, (node.name, node.label, node.common_name)):
            self._by_name.setdefault(alias.casefold(), []).append(node.key)
        if node.parent is not None:
            self.nodes[node.parent].children.append(node.key)
        return node

    def add_label(self, label: str, info: LabelTaxon) -> TaxonNode:
        parent: str | None = None
        for rank in ANCESTOR_RANKS:
            name = getattr(info, rank, None)
            if not name:
                continue
            key = f"{rank}:{name}"
            self._add(TaxonNode(key=key, name=name, rank=rank, parent=parent))
            parent = key
        return self._add(TaxonNode(key=f"label:{label}", name=info.scientific_name or label,
                                   rank=info.rank or "species", parent=parent, label=label,
                                   common_name=info.common_name, info=info))

    @classmethod
    def from_card(cls, card: ModelCard) -> TaxonTree:
        tree = cls()
        for label in card.labels:
            tree.add_label(label, card.taxon_of(label))
        return tree

    @classmethod
    def from_csv(cls, path: Path) -> TaxonTree:
        """Build a tree from a taxonomy CSV with columns label, scientific_name, common_name, genus, ..."""
        tree = cls()
        for label, info in read_taxonomy_csv(path).items():
            tree.add_label(label, info)
        return tree

    # -- queries ----------------------------------------------------------------------------------------
    def leaf(self, label: str) -> TaxonNode:
        return self.nodes[f"label:{label}"]

    def lineage(self, key: str) -> list[TaxonNode]:
        """The node and its ancestors, finest first."""
        out: list[TaxonNode] = []
        cur: str | None = key
        while cur is not None:
            node = self.nodes[cur]
            out.append(node)
            cur = node.parent
        return out

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
    """Read ``label,scientific_name,common_name,genus,family,order[,group,...]`` rows.

    Blank cells are treated as unknown; extra columns are kept on the taxon.
    """
    out: dict[str, LabelTaxon] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "label" not in reader.fieldnames:
            raise ValueError(f"{path}: a taxonomy CSV needs a 'label' column; found {reader.fieldnames}")
        for row in reader:
            label = (row.pop("label") or "").strip()
            if not label:
                continue
            clean = {k: (v.strip() or None) for k, v in row.items() if k}
            out[label] = LabelTaxon(**clean)  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class Rollup:
    key: str
    name: str
    rank: str
    score: float


def rank_index(rank: str) -> int:
    return RANKS.index(rank) if rank in RANKS else len(RANKS)


def aggregate(tree: TaxonTree, scores: Mapping[str, float]) -> dict[str, float]:
    """Sum label scores into every ancestor. Returns a score per node key."""
    totals: dict[str, float] = {}
    for label, score in scores.items():
        for node in tree.lineage(f"label:{label}"):
            totals[node.key] = totals.get(node.key, 0.0) + float(score)
    return totals


def rollup(tree: TaxonTree, scores: Mapping[str, float], threshold: float,
           *, finest_rank: str | None = None) -> Rollup | None:
    """The finest taxon whose summed score is at least ``threshold``, or None.

    Args:
        tree: the taxonomy of the labels.
        scores: calibrated probability per label (summing to at most 1).
        threshold: e.g. 0.8.
        finest_rank: do not report anything finer than this rank (used when the photo looks unlike any
            known species).
    """
    totals = aggregate(tree, scores)
    limit = rank_index(finest_rank) if finest_rank else len(RANKS) + 1
    best: tuple[int, float, str] | None = None
    for key, total in totals.items():
        node = tree.nodes[key]
        depth = rank_index(node.rank) if node.label is None else max(rank_index(node.rank),
                                                                       rank_index("genus") + 1)
        if total + 1e-9 < threshold or depth > limit:
            continue
        candidate = (depth, total, key)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is None:
        return None
    node = tree.nodes[best[2]]
    return Rollup(key=node.key, name=node.name, rank=node.rank, score=min(1.0, best[1]))


def top_k(scores: Sequence[float], labels: Sequence[str], k: int,
          allowed: Iterable[str] | None = None) -> list[tuple[str, float]]:
    """The k best labels, optionally restricted to ``allowed`` labels."""
    allowed_set = set(allowed) if allowed is not None else None
    pairs = [(lbl, float(s)) for lbl, s in zip(labels, scores, strict=True)
             if allowed_set is None or lbl in allowed_set]
    pairs.sort(key=lambda p: p[1], reverse=True)
    return pairs[:k]
