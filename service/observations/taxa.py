"""The ``taxa`` table: a tree (rank, parent) loaded from model cards and taxonomy CSVs.

Each taxon keeps ``path`` = the ids from the root down to itself (``/3/7/12/``), so "this taxon and its
descendants" is one indexed prefix query on both SQLite and PostgreSQL. Model labels map to taxa through
``taxon_labels``.

The tree is rooted at class Insecta (:data:`~service.core.modelcard.ROOT_NAME`): every taxon label gets it as an
ancestor unless its taxonomy names another class. A label at genus, family or order rank maps to that taxon's
row itself (``bombus`` → genus *Bombus*; ``coleoptera`` → order Coleoptera, with family Coccinellidae below
it when ``coccinellidae`` is a label too). A label that is not a taxon (rank ``none``: ``no_insect``) gets
no taxon and no ``taxon_labels`` row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, and_, func, or_, select, text
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.core.errors import InvalidRequest, NotFound
from service.core.languages import DEFAULT_LANGUAGE, root_common_names
from service.core.modelcard import NOT_A_TAXON, RANKS, ROOT_NAME, ROOT_RANK, LabelTaxon, ModelCard
from service.core.taxonomy import read_taxonomy_csv
from service.store.tables import Taxon, TaxonLabel, TaxonName

logger = logging.getLogger(__name__)

# An arbitrary constant: PostgreSQL advisory lock serialising concurrent taxa syncs.
TAXA_LOCK_KEY = 0x7461786100000001




class UnknownTaxon(InvalidRequest):
    code = "unknown_taxon"


@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    labels: int = 0


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": TAXA_LOCK_KEY})


def _lineage_of(label: str, info: LabelTaxon) -> list[tuple[str, str, str | None, dict[str, str]]]:
    """``[(rank, scientific_name, common_name, {language: name})]`` from the root (class Insecta, or the coarsest
    ancestor the taxonomy names) down to the label's own taxon; empty for a label that is not a taxon
    (``no_insect``). The names in other languages than English come from ``common_name_<code>`` fields.

    A label above species is its taxon: ``bombus`` (rank genus) gives ``[class Insecta, order Hymenoptera,
    family Apidae, genus Bombus]``; its name is the scientific name, else the taxonomy's entry at its own
    rank, else the label.
    """
    if not info.is_taxon or info.rank == NOT_A_TAXON:
        return []
    values = info.model_dump()
    leaf_rank = info.rank or "species"
    leaf_index = RANKS.index(leaf_rank) if leaf_rank in RANKS else len(RANKS)
    root_index = RANKS.index(ROOT_RANK)
    if leaf_index > root_index and not (isinstance(values.get(ROOT_RANK), str) and values[ROOT_RANK].strip()):
        values[ROOT_RANK] = ROOT_NAME
    chain: list[tuple[str, str, str | None, dict[str, str]]] = []
    for rank in RANKS[:leaf_index]:
        name = values.get(rank)
        if isinstance(name, str) and name.strip():
            root = (rank, name.strip()) == (ROOT_RANK, ROOT_NAME)
            names = root_common_names() if root else {}
            # Class Insecta's English name, and its names in other languages (the root's ``taxon_names`` rows).
            chain.append((rank, name.strip(), names.pop(DEFAULT_LANGUAGE, None), names))
    own = values.get(leaf_rank) if leaf_rank != "species" else None
    name = info.scientific_name or (own if isinstance(own, str) and own.strip() else None) or label
    chain.append((leaf_rank, name.strip(), info.common_name, info.common_names))
    return chain


def _below(taxon_id: int | None, ancestor_id: int, by_id: Mapping[int, Taxon]) -> bool:
    """Whether ``taxon_id`` lies strictly below ``ancestor_id`` (following the parent links)."""
    seen: set[int] = set()
    cur = taxon_id
    while cur is not None and cur not in seen:
        if cur == ancestor_id:
            return True
        seen.add(cur)
        node = by_id.get(cur)
        cur = node.parent_id if node is not None else None
    return False


def sync_taxa(session: Session, entries: Mapping[str, LabelTaxon]) -> SyncResult:
    """Insert or update the taxa of ``{label: LabelTaxon}`` with all their ancestors.

    Existing taxa keep their id; a newer, non-empty common name or parent replaces the old one, except a
    parent that is already an ancestor of the current one (a less detailed lineage, such as a species row
    giving only its genus, never lifts the genus out of its family). The caller commits. Safe against a
    concurrent sync (advisory lock on PostgreSQL; SQLite transactions are already serialised).
    """
    _lock(session)
    result = SyncResult()
    existing: dict[tuple[str, str], Taxon] = {
        (t.rank, t.scientific_name): t for t in session.scalars(select(Taxon))
    }
    by_id: dict[int, Taxon] = {t.id: t for t in existing.values()}
    labels: dict[str, TaxonLabel] = {row.label: row for row in session.scalars(select(TaxonLabel))}
    names: dict[tuple[int, str], TaxonName] = {(n.taxon_id, n.language): n for n in session.scalars(select(TaxonName))}
    changed = False
    for label, info in entries.items():
        lineage = _lineage_of(label, info)
        if not lineage:
            # Not a taxon (``no_insect``): no taxon row, and no label mapping (an older sync may have made one).
            stale = labels.pop(label, None)
            if stale is not None:
                session.delete(stale)
                result.labels += 1
            continue
        parent: Taxon | None = None
        for depth, (rank, name, common, others) in enumerate(lineage):
            # Class Insecta and coarser are shared by every group: they take no label's group.
            coarse = rank in RANKS and RANKS.index(rank) <= RANKS.index(ROOT_RANK)
            group = info.group if depth == len(lineage) - 1 or not coarse else None
            node = existing.get((rank, name))
            fresh = node is None
            if node is None:
                node = Taxon(
                    rank=rank,
                    scientific_name=name,
                    common_name=common,
                    path="",
                    parent_id=parent.id if parent else None,
                    group=group,
                )
                session.add(node)
                session.flush()
                existing[(rank, name)] = node
                by_id[node.id] = node
                result.created += 1
                changed = True
            else:
                if common and node.common_name != common:
                    node.common_name = common
                    result.updated += 1
                if parent is not None and node.parent_id != parent.id and not _below(
                    node.parent_id, parent.id, by_id
                ):
                    node.parent_id = parent.id
                    result.updated += 1
                    changed = True
                if group and not node.group:
                    node.group = group
            for language, other in others.items():
                # A newer, non-empty name in a language replaces the old one; a blank one never removes it.
                known = names.get((node.id, language))
                if known is None:
                    known = TaxonName(taxon_id=node.id, language=language, name=other)
                    session.add(known)
                    names[(node.id, language)] = known
                    result.updated += 0 if fresh else 1
                elif known.name != other:
                    known.name = other
                    result.updated += 1
            parent = node
        assert parent is not None
        row = labels.get(label)
        if row is None:
            row = TaxonLabel(label=label, taxon_id=parent.id)
            session.add(row)
            labels[label] = row
            result.labels += 1
        elif row.taxon_id != parent.id:
            row.taxon_id = parent.id
            result.labels += 1
    if changed:
        rebuild_paths(session)
    session.flush()
    return result


def sync_taxa_from_card(session: Session, card: ModelCard) -> SyncResult:
    """Load the taxa of a model card's labels (called when a model is registered or loaded)."""
    result = sync_taxa(session, {label: card.taxon_of(label) for label in card.labels})
    logger.info(
        "taxa from model %s/%s: %d created, %d updated",
        card.name,
        card.version,
        result.created,
        result.updated,
    )
    return result


def import_taxonomy_csv(session: Session, path: Path) -> SyncResult:
    """Load a taxonomy CSV (``label,scientific_name,common_name,genus,family,order,...``)."""
    return sync_taxa(session, read_taxonomy_csv(path))


def rebuild_paths(session: Session) -> None:
    """Recompute every taxon's ``path``; refuses a cycle in the parent links."""
    session.flush()
    rows = session.execute(select(Taxon.id, Taxon.parent_id, Taxon.path)).all()
    parent = {r.id: r.parent_id for r in rows}
    old = {r.id: r.path for r in rows}
    paths: dict[int, str] = {}

    def path_of(tid: int) -> str:
        chain: list[int] = []
        cur: int | None = tid
        while cur is not None and cur not in paths:
            if cur in chain:
                raise InvalidRequest(f"the taxonomy has a cycle through taxon {cur}")
            chain.append(cur)
            cur = parent.get(cur)
        prefix = paths[cur] if cur is not None else "/"
        for node in reversed(chain):
            prefix = f"{prefix}{node}/"
            paths[node] = prefix
        return paths[tid]

    for tid in parent:
        new = path_of(tid)
        if old[tid] != new:
            session.get(Taxon, tid).path = new  # type: ignore[union-attr]


# -- queries -------------------------------------------------------------------------------------------


def get_taxon(session: Session, taxon_id: int) -> Taxon:
    taxon = session.get(Taxon, taxon_id)
    if taxon is None or taxon.rank == NOT_A_TAXON:  # a row an older sync made of ``no_insect``
        raise NotFound(f"taxon {taxon_id} not found")
    return taxon


def resolve_taxon(session: Session, ref: int | str) -> Taxon:
    """A taxon by id, model label, or exact scientific or common name (case-insensitive).

    Raises:
        UnknownTaxon: nothing matches, or a name matches several taxa.
    """
    if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
        taxon = session.get(Taxon, int(ref))
        if taxon is None or taxon.rank == NOT_A_TAXON:
            raise UnknownTaxon(f"unknown taxon id {ref}; search taxa with GET /api/v1/taxa?q=")
        return taxon
    name = ref.strip()
    if not name:
        raise UnknownTaxon("empty taxon name")
    by_label = session.scalar(select(TaxonLabel).where(TaxonLabel.label == name))
    if by_label is not None:
        labelled = session.get(Taxon, by_label.taxon_id)
        if labelled is not None and labelled.rank != NOT_A_TAXON:
            return labelled
    folded = name.casefold()
    named = select(TaxonName.taxon_id).where(func.lower(TaxonName.name) == folded)
    matches = list(
        session.scalars(
            select(Taxon).where(
                or_(func.lower(Taxon.scientific_name) == folded, func.lower(Taxon.common_name) == folded,
                    Taxon.id.in_(named)),
                Taxon.rank != NOT_A_TAXON,
            )
        )
    )
    if not matches:
        raise UnknownTaxon(f"unknown taxon {name!r}; search taxa with GET /api/v1/taxa?q=")
    if len(matches) > 1:
        raise UnknownTaxon(
            f"{name!r} names several taxa; give its id",
            detail=[{"id": t.id, "rank": t.rank, "scientific_name": t.scientific_name} for t in matches],
        )
    return matches[0]


def taxon_for_label(session: Session, label: str) -> Taxon | None:
    """The taxon of a model label; None for a label that is not a taxon (``no_insect``) or is unknown."""
    row = session.scalar(select(TaxonLabel).where(TaxonLabel.label == label))
    taxon = session.get(Taxon, row.taxon_id) if row is not None else None
    return taxon if taxon is not None and taxon.rank != NOT_A_TAXON else None


def labels_to_taxa(session: Session, labels: Iterable[str]) -> dict[str, int]:
    """``{label: taxon_id}`` for the labels that have a taxon (never ``no_insect``)."""
    wanted = list(dict.fromkeys(labels))
    if not wanted:
        return {}
    rows = session.execute(
        select(TaxonLabel.label, TaxonLabel.taxon_id)
        .join(Taxon, Taxon.id == TaxonLabel.taxon_id)
        .where(TaxonLabel.label.in_(wanted), Taxon.rank != NOT_A_TAXON)
    )
    return {r.label: r.taxon_id for r in rows}


def ancestor_ids(taxon: Taxon) -> list[int]:
    """Ids from the root down to ``taxon`` (inclusive)."""
    return [int(p) for p in taxon.path.strip("/").split("/") if p]


def ancestors(session: Session, taxon: Taxon) -> list[Taxon]:
    """The ancestors of ``taxon``, root first (excluding itself)."""
    ids = ancestor_ids(taxon)[:-1]
    if not ids:
        return []
    by_id = {t.id: t for t in session.scalars(select(Taxon).where(Taxon.id.in_(ids)))}
    return [by_id[i] for i in ids if i in by_id]


def lineages(session: Session, taxon_ids: Iterable[int]) -> dict[int, tuple[int, ...]]:
    """``{taxon_id: (root id, ..., taxon_id)}`` for each id."""
    ids = list(set(taxon_ids))
    if not ids:
        return {}
    rows = session.execute(select(Taxon.id, Taxon.path).where(Taxon.id.in_(ids)))
    return {r.id: tuple(int(p) for p in r.path.strip("/").split("/") if p) for r in rows}


def subtree_condition(
    column: ColumnElement[int | None] | InstrumentedAttribute[int | None], taxon: Taxon
) -> ColumnElement[bool]:
    """SQL condition: ``column`` is ``taxon`` or one of its descendants."""
    sub = select(Taxon.id).where(
        or_(Taxon.id == taxon.id, Taxon.path.startswith(taxon.path, autoescape=True))
    )
    return and_(column.is_not(None), column.in_(sub))


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_taxa(
    session: Session, q: str | None, *, rank: str | None = None, limit: int = 20, offset: int = 0
) -> tuple[list[Taxon], int]:
    """Taxa whose scientific or common name (in any language), or a word of it, starts with ``q``
    (case-insensitive)."""
    conditions: list[ColumnElement[bool]] = [Taxon.rank != NOT_A_TAXON]
    if q:
        p = _escape_like(q.strip().casefold())
        name_conds = []
        for col in (Taxon.scientific_name, Taxon.common_name, TaxonName.name):
            low = func.lower(col)
            cond = or_(low.like(f"{p}%", escape="\\"), low.like(f"% {p}%", escape="\\"))
            name_conds.append(Taxon.id.in_(select(TaxonName.taxon_id).where(cond)) if col is TaxonName.name
                              else cond)
        conditions.append(or_(*name_conds))
    if rank:
        conditions.append(Taxon.rank == rank)
    base = select(Taxon).where(*conditions)
    count = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    starts = (
        func.lower(Taxon.scientific_name).like(f"{_escape_like(q.strip().casefold())}%", escape="\\")
        if q
        else None
    )
    order = [func.length(Taxon.scientific_name), Taxon.scientific_name, Taxon.id]
    if starts is not None:
        from sqlalchemy import case

        order.insert(0, case((starts, 0), else_=1))
    rows = list(session.scalars(base.order_by(*order).limit(limit).offset(offset)))
    return rows, int(count)


def common_names(session: Session, taxa: Iterable[Taxon]) -> dict[int, dict[str, str]]:
    """Every known common name of these taxa, English included: ``{taxon_id: {language: name}}`` (one query)."""
    rows = list(taxa)
    out: dict[int, dict[str, str]] = {t.id: ({DEFAULT_LANGUAGE: t.common_name} if t.common_name else {})
                                      for t in rows}
    if out:
        for n in session.scalars(select(TaxonName).where(TaxonName.taxon_id.in_(list(out)))):
            out[n.taxon_id][n.language] = n.name
    return out


def labels_of(session: Session, taxon_id: int) -> list[str]:
    return list(
        session.scalars(
            select(TaxonLabel.label).where(TaxonLabel.taxon_id == taxon_id).order_by(TaxonLabel.label)
        )
    )


# -- wiring --------------------------------------------------------------------------------------------


def install_taxa_sync(state: object) -> None:
    """Load the taxa of every model card the registry found, and of each model swapped in later.

    ``state`` is ``app.state`` with ``sessionmaker`` and (when identification runs) ``registry``. Failures
    are logged, never raised: taxa must not keep the service from starting.
    """
    factory = state.sessionmaker  # type: ignore[attr-defined]
    registry = getattr(state, "registry", None)

    def sync(card: ModelCard) -> None:
        try:
            with factory() as session:
                sync_taxa_from_card(session, card)
                session.commit()
        except Exception:
            logger.exception("could not load the taxa of model %s/%s", card.name, card.version)

    if registry is None:
        return
    for entry in getattr(registry, "entries", []):
        if getattr(entry, "card", None) is not None:
            sync(entry.card)
    registry.on_swap(lambda _old, new: sync(new.card) if new is not None else None)
