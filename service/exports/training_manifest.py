"""The training manifest: ``path,label,observation_id,observer,rank``, the format the training package reads.

One row per photo of each observation validated at any rank from order down, labelled with the model label
of its community taxon (else its scientific name), and of each observation the specialists found
``not_an_insect`` (label ``no_insect``, rank ``none``).

``path`` is the photo's file in the local media folder, or, with an object store, its ``s3://`` URL; a
retrain job gives ``media_root``, a local folder it downloads the photos into
(:func:`service.store.storage.fetch_media`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from service.core.clock import as_utc
from service.core.modelcard import NOT_A_TAXON, RANKS
from service.core.taxonomy import NO_INSECT
from service.core.vocabulary import ExportKind, ObservationStatus
from service.exports.atomic import atomic_write
from service.exports.lookups import ExportResult, TaxonCache
from service.settings import Settings
from service.store.objects import media_store
from service.store.storage import media_file, media_key
from service.store.tables import Observation, Taxon, TaxonLabel

TRAINING_COLUMNS: tuple[str, ...] = ("path", "label", "observation_id", "observer", "rank")
SPECIES_INDEX = RANKS.index("species")
NOT_AN_INSECT_STATUS = ObservationStatus.not_an_insect.value
# The coarsest rank a validated taxon may have to become a training label (class Insecta is "an insect").
COARSEST_TRAINING_RANK = "order"


def _training_label(taxon: Taxon, labels: dict[int, str], labelled_paths: list[str]) -> str | None:
    """The training label of an observation validated at ``taxon``, or None when it has none.

    * a taxon that is a model label's (at any rank: ``bombus`` genus, ``coleoptera`` order) gives that label;
    * a species (or finer) without a label gives its scientific name (a new class);
    * a genus, family or order without a label gives its scientific name only when no labelled taxon lies
      below it (a new class at that rank, such as family Syrphidae); else the photo could be one of those
      finer labels, and it is left out;
    * class Insecta and coarser ranks, and rows that are not taxa, give none.
    """
    if taxon.id in labels:
        return labels[taxon.id]
    if taxon.rank not in RANKS or RANKS.index(taxon.rank) < RANKS.index(COARSEST_TRAINING_RANK):
        return None
    if RANKS.index(taxon.rank) >= SPECIES_INDEX:
        return taxon.scientific_name
    if any(p != taxon.path and p.startswith(taxon.path) for p in labelled_paths):
        return None
    return taxon.scientific_name


def _photo_path(settings: Settings, media_root: Path | None) -> Callable[[str], str]:
    if media_root is not None:
        root = media_root.resolve()
        return lambda sha: str(media_file(root, sha))
    store = media_store(settings)
    if store.is_local:
        root = settings.media_path.resolve()
        return lambda sha: str(media_file(root, sha))
    return lambda sha: f"{store.url}/{media_key(sha)}"


def training_rows(
    session: Session, settings: Settings, *, since: datetime | None = None, media_root: Path | None = None
) -> Iterator[dict[str, str]]:
    """Rows of the training manifest, one per photo of each observation that gives a training label.

    Validated observations give the label of their community taxon, at any rank (see
    :func:`_training_label`); observations whose consensus is ``not_an_insect`` give the label ``no_insect``
    (rank ``none``: a photo with no insect in it).
    """
    taxa = TaxonCache(session)
    labels: dict[int, str] = {}
    for row in session.execute(select(TaxonLabel.taxon_id, TaxonLabel.label).order_by(TaxonLabel.label)):
        labels.setdefault(row.taxon_id, row.label)
    labelled_paths = [t.path for t in session.scalars(select(Taxon).where(Taxon.id.in_(list(labels))))]
    photo_path = _photo_path(settings, media_root)
    stmt = select(Observation).where(
        or_(
            and_(Observation.status == ObservationStatus.validated.value, Observation.community_taxon_id.is_not(None)),
            Observation.status == NOT_AN_INSECT_STATUS,
        )
    )
    for obs in session.scalars(stmt.order_by(Observation.id).execution_options(yield_per=500)):
        when = as_utc(obs.validated_at) or as_utc(obs.updated_at) or as_utc(obs.created_at)
        if since is not None and when is not None and when < as_utc(since):  # type: ignore[operator]
            continue
        if obs.status == NOT_AN_INSECT_STATUS:
            label, rank = NO_INSECT, NOT_A_TAXON
        else:
            taxon = taxa.get(obs.community_taxon_id)
            found = _training_label(taxon, labels, labelled_paths) if taxon is not None else None
            if taxon is None or found is None:
                continue
            label, rank = found, taxon.rank
        for photo in obs.photos:
            yield {
                "path": photo_path(photo.sha256),
                "label": label,
                "observation_id": str(obs.id),
                "observer": str(obs.observer_id),
                "rank": rank,
            }


def write_training_manifest(
    session: Session, settings: Settings, out: Path, *, since: datetime | None = None,
    media_root: Path | None = None,
) -> ExportResult:
    """Write ``path,label,observation_id,observer,rank`` for the photos that give a training label.

    ``media_root``: the paths point into this local folder (where a retrain job puts the photos it
    downloads from the object store) instead of the media store.
    """
    n = 0
    observations: set[str] = set()
    with atomic_write(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRAINING_COLUMNS)
        writer.writeheader()
        for row in training_rows(session, settings, since=since, media_root=media_root):
            writer.writerow(row)
            observations.add(row["observation_id"])
            n += 1
    return ExportResult(ExportKind.training, out, len(observations), n)
