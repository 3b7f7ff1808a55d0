"""Exports of observations: a Darwin Core Archive for GBIF, a CSV, and the training manifest.

* ``dwca``: a zip with ``occurrence.txt`` (core), ``multimedia.txt`` (GBIF Simple Multimedia extension),
  ``meta.xml`` and ``eml.xml``; only validated observations under CC0, CC-BY or CC-BY-NC.
* ``csv``: every observation, one row each.
* ``training``: ``path,label,observation_id,observer,rank``, one row per photo of each observation validated
  at any rank from order down, labelled with the model label of its community taxon (else its scientific
  name), and of each observation the specialists found ``not_an_insect`` (label ``no_insect``, rank
  ``none``) — the format the training package reads.

Each writer streams rows to a temporary file next to ``out`` and renames it, so a reader never sees half
an export.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from service.core.clock import as_utc
from service.core.errors import InvalidRequest
from service.core.modelcard import NOT_A_TAXON, RANKS
from service.core.taxonomy import NO_INSECT
from service.settings import Settings
from service.store.storage import media_file
from service.store.tables import Identification, Observation, Taxon, TaxonLabel, User
from service.validation.consensus import Status

logger = logging.getLogger(__name__)

EXPORT_KINDS: tuple[str, ...] = ("dwca", "csv", "training")
GBIF_LICENCES: dict[str, str] = {
    "CC0": "http://creativecommons.org/publicdomain/zero/1.0/legalcode",
    "CC-BY": "http://creativecommons.org/licenses/by/4.0/legalcode",
    "CC-BY-NC": "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
}
DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
OCCURRENCE_TERMS: tuple[tuple[str, str], ...] = (
    ("occurrenceID", DWC),
    ("basisOfRecord", DWC),
    ("eventDate", DWC),
    ("eventID", DWC),
    ("decimalLatitude", DWC),
    ("decimalLongitude", DWC),
    ("geodeticDatum", DWC),
    ("coordinateUncertaintyInMeters", DWC),
    ("scientificName", DWC),
    ("taxonRank", DWC),
    ("vernacularName", DWC),
    ("kingdom", DWC),
    ("class", DWC),
    ("order", DWC),
    ("family", DWC),
    ("genus", DWC),
    ("recordedBy", DWC),
    ("identifiedBy", DWC),
    ("dateIdentified", DWC),
    ("identificationVerificationStatus", DWC),
    ("associatedTaxa", DWC),
    ("occurrenceRemarks", DWC),
    ("license", DC),
    ("modified", DC),
)
MULTIMEDIA_TERMS: tuple[str, ...] = (
    "type",
    "format",
    "identifier",
    "references",
    "created",
    "creator",
    "license",
    "rightsHolder",
)


@dataclass
class ExportResult:
    kind: str
    path: Path
    records: int
    media: int = 0


def _atomic_target(out: Path) -> tuple[int, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    return fd, Path(tmp)


def _finish(tmp: Path, out: Path) -> None:
    os.replace(tmp, out)


class _Taxa:
    """Cached look-ups of taxa, their lineages and labels."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.by_id: dict[int, Taxon] = {}

    def get(self, taxon_id: int | None) -> Taxon | None:
        """The taxon, or None; a row that is not a taxon (rank ``none``, left by an older sync of
        ``no_insect``) is never exported as one."""
        if taxon_id is None:
            return None
        if taxon_id not in self.by_id:
            t = self.session.get(Taxon, taxon_id)
            if t is None or t.rank == NOT_A_TAXON:
                return None
            self.by_id[taxon_id] = t
        return self.by_id[taxon_id]

    def lineage(self, taxon: Taxon) -> dict[str, str]:
        """``{rank: scientific name}`` for the taxon and its ancestors."""
        out: dict[str, str] = {}
        for part in taxon.path.strip("/").split("/"):
            if part and (t := self.get(int(part))) is not None:
                out[t.rank] = t.scientific_name
        return out


def _validated(session: Session, *, gbif_only: bool) -> Iterator[Observation]:
    stmt = select(Observation).where(
        Observation.status == "validated", Observation.community_taxon_id.is_not(None)
    )
    if gbif_only:
        stmt = stmt.where(Observation.licence.in_(list(GBIF_LICENCES)))
    yield from session.scalars(stmt.order_by(Observation.id).execution_options(yield_per=500))


def _user_names(session: Session) -> dict[int, str]:
    return dict(session.execute(select(User.id, User.name)).all())


def _identifiers(session: Session, obs: Observation, names: dict[int, str]) -> list[str]:
    """Names of the people whose current identification agrees with the community taxon."""
    rows = session.scalars(
        select(Identification).where(
            Identification.observation_id == obs.id,
            Identification.current.is_(True),
            Identification.taxon_id.is_not(None),
        )
    )
    ct = session.get(Taxon, obs.community_taxon_id) if obs.community_taxon_id else None
    out = []
    for r in rows:
        t = session.get(Taxon, r.taxon_id)
        if ct is not None and t is not None and t.path.startswith(ct.path):
            out.append(names.get(r.user_id, f"user {r.user_id}"))
    return out


def _iso(value: datetime | None) -> str:
    v = as_utc(value)
    return v.isoformat().replace("+00:00", "Z") if v else ""


def _meta_xml() -> str:
    core_fields = "\n".join(
        f'    <field index="{i + 1}" term="{ns}{name}"/>' for i, (name, ns) in enumerate(OCCURRENCE_TERMS)
    )
    ext_fields = "\n".join(
        f'    <field index="{i + 1}" term="{DC}{name}"/>' for i, name in enumerate(MULTIMEDIA_TERMS)
    )
    common = (
        'encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
        'ignoreHeaderLines="1"'
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">
  <core {common} rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0"/>
{core_fields}
  </core>
  <extension {common} rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files><location>multimedia.txt</location></files>
    <coreid index="0"/>
{ext_fields}
  </extension>
</archive>
"""


def _eml_xml(settings: Settings, records: int, now: datetime) -> str:
    package = now.strftime("%Y%m%dT%H%M%SZ")
    title = escape(settings.export_title)
    publisher = escape(settings.export_publisher)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1" xmlns:dc="http://purl.org/dc/terms/"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="eml://ecoinformatics.org/eml-2.1.1
        http://rs.gbif.org/schema/eml-gbif-profile/1.1/eml.xsd"
    packageId="pollinid-{package}" system="http://gbif.org" scope="system" xml:lang="en">
  <dataset>
    <title xml:lang="en">{title}</title>
    <creator><organizationName>{publisher}</organizationName></creator>
    <metadataProvider><organizationName>{publisher}</organizationName></metadataProvider>
    <pubDate>{now.date().isoformat()}</pubDate>
    <language>en</language>
    <abstract><para>Photographs of pollinating insects taken by volunteers, identified by a model and
validated by specialists (community consensus). {records} validated occurrences.</para></abstract>
    <intellectualRights><para>Each record carries its own licence (CC0, CC-BY 4.0 or CC-BY-NC 4.0) in the
dc:license field.</para></intellectualRights>
    <contact><organizationName>{publisher}</organizationName></contact>
  </dataset>
</eml:eml>
"""


def _tsv(rows: list[list[str]]) -> bytes:
    def clean(v: Any) -> str:
        return "" if v is None else str(v).replace("\t", " ").replace("\r", " ").replace("\n", " ")

    return ("\n".join("\t".join(clean(v) for v in row) for row in rows) + "\n").encode("utf-8")


def write_dwca(session: Session, settings: Settings, out: Path) -> ExportResult:
    """Write a Darwin Core Archive of the validated, openly licensed observations."""
    names = _user_names(session)
    taxa = _Taxa(session)
    base = settings.public_base_url.rstrip("/")
    occ: list[list[str]] = [["id", *[n for n, _ in OCCURRENCE_TERMS]]]
    media: list[list[str]] = [["coreid", *MULTIMEDIA_TERMS]]
    for obs in _validated(session, gbif_only=True):
        taxon = taxa.get(obs.community_taxon_id)
        if taxon is None:
            continue
        lineage = taxa.lineage(taxon)
        occurrence_id = f"{base}/api/v1/observations/{obs.id}"
        observer = names.get(obs.observer_id, f"user {obs.observer_id}")
        flower = taxa.get(obs.flower_taxon_id)
        flower_name = flower.scientific_name if flower else obs.flower_text
        values = {
            "occurrenceID": occurrence_id,
            "basisOfRecord": "HumanObservation",
            "eventDate": _iso(obs.observed_at),
            "eventID": obs.session_id or "",
            "decimalLatitude": "" if obs.latitude is None else f"{obs.latitude:.6f}",
            "decimalLongitude": "" if obs.longitude is None else f"{obs.longitude:.6f}",
            "geodeticDatum": "WGS84" if obs.latitude is not None else "",
            "coordinateUncertaintyInMeters": ""
            if obs.coordinate_precision_m is None
            else f"{obs.coordinate_precision_m:g}",
            "scientificName": taxon.scientific_name,
            "taxonRank": taxon.rank,
            "vernacularName": taxon.common_name or "",
            "kingdom": lineage.get("kingdom", "Animalia"),
            "class": lineage.get("class", "Insecta"),
            "order": lineage.get("order", ""),
            "family": lineage.get("family", ""),
            "genus": lineage.get("genus", ""),
            "recordedBy": observer,
            "identifiedBy": " | ".join(_identifiers(session, obs, names)),
            "dateIdentified": _iso(obs.validated_at),
            "identificationVerificationStatus": "verified",
            "associatedTaxa": f'"visited flower":"{flower_name}"' if flower_name else "",
            "occurrenceRemarks": obs.notes or "",
            "license": GBIF_LICENCES[obs.licence],
            "modified": _iso(obs.updated_at),
        }
        occ.append([occurrence_id, *[values[n] for n, _ in OCCURRENCE_TERMS]])
        for photo in obs.photos:
            media.append(
                [
                    occurrence_id,
                    "StillImage",
                    photo.mime_type,
                    f"{base}/api/v1/media/{photo.sha256}",
                    occurrence_id,
                    _iso(obs.observed_at),
                    observer,
                    GBIF_LICENCES[obs.licence],
                    observer,
                ]
            )
    now = datetime.now(UTC)
    fd, tmp = _atomic_target(out)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("occurrence.txt", _tsv(occ))
            zf.writestr("multimedia.txt", _tsv(media))
            zf.writestr("meta.xml", _meta_xml())
            zf.writestr("eml.xml", _eml_xml(settings, len(occ) - 1, now))
        _finish(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult("dwca", out, len(occ) - 1, len(media) - 1)


CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "observer_id",
    "observer",
    "session_id",
    "observed_at",
    "latitude",
    "longitude",
    "coordinate_precision_m",
    "status",
    "taxon_id",
    "scientific_name",
    "taxon_rank",
    "community_taxon_id",
    "consensus_score",
    "identification_count",
    "model_name",
    "model_version",
    "predicted_taxon_id",
    "top1_score",
    "flower",
    "licence",
    "notes",
    "photos",
    "created_at",
)


# A cell starting with one of these is run as a formula by spreadsheets (CSV injection).
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: text starting with a formula prefix gets a ``'``.

    OWASP's advice for CSV injection. Numbers are left as they are (a negative longitude stays a number);
    so is every other text. Rows stay one line each: CR and LF inside text are kept (quoted by csv).
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_csv(session: Session, settings: Settings, out: Path) -> ExportResult:
    """Write every observation as one CSV row (photos as space-separated sha256).

    Text typed by users (names, flower, session, notes) may start with ``=``, ``+``, ``-`` or ``@``:
    such cells are prefixed with ``'`` (:func:`csv_cell`) so that spreadsheets do not run them.
    """
    names = _user_names(session)
    taxa = _Taxa(session)
    fd, tmp = _atomic_target(out)
    n = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for obs in session.scalars(
                select(Observation).order_by(Observation.id).execution_options(yield_per=500)
            ):
                taxon = taxa.get(obs.taxon_id)
                flower = taxa.get(obs.flower_taxon_id)
                writer.writerow(
                    csv_cell(v) for v in [
                        obs.id,
                        obs.observer_id,
                        names.get(obs.observer_id, ""),
                        obs.session_id or "",
                        _iso(obs.observed_at),
                        obs.latitude,
                        obs.longitude,
                        obs.coordinate_precision_m,
                        obs.status,
                        obs.taxon_id,
                        taxon.scientific_name if taxon else "",
                        taxon.rank if taxon else "",
                        obs.community_taxon_id,
                        obs.consensus_score,
                        obs.identification_count,
                        obs.model_name,
                        obs.model_version,
                        obs.predicted_taxon_id,
                        obs.top1_score,
                        flower.scientific_name if flower else (obs.flower_text or ""),
                        obs.licence,
                        obs.notes or "",
                        " ".join(p.sha256 for p in obs.photos),
                        _iso(obs.created_at),
                    ]
                )
                n += 1
        _finish(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult("csv", out, n)


TRAINING_COLUMNS: tuple[str, ...] = ("path", "label", "observation_id", "observer", "rank")
SPECIES_INDEX = RANKS.index("species")
NOT_AN_INSECT_STATUS = Status.not_an_insect.value
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


def training_rows(
    session: Session, settings: Settings, *, since: datetime | None = None
) -> Iterator[dict[str, str]]:
    """Rows of the training manifest, one per photo of each observation that gives a training label.

    Validated observations give the label of their community taxon, at any rank (see
    :func:`_training_label`); observations whose consensus is ``not_an_insect`` give the label ``no_insect``
    (rank ``none``: a photo with no insect in it).
    """
    taxa = _Taxa(session)
    labels: dict[int, str] = {}
    for row in session.execute(select(TaxonLabel.taxon_id, TaxonLabel.label).order_by(TaxonLabel.label)):
        labels.setdefault(row.taxon_id, row.label)
    labelled_paths = [t.path for t in session.scalars(select(Taxon).where(Taxon.id.in_(list(labels))))]
    root = settings.media_path.resolve()
    stmt = select(Observation).where(
        or_(
            and_(Observation.status == "validated", Observation.community_taxon_id.is_not(None)),
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
                "path": str(media_file(root, photo.sha256)),
                "label": label,
                "observation_id": str(obs.id),
                "observer": str(obs.observer_id),
                "rank": rank,
            }


def write_training_manifest(
    session: Session, settings: Settings, out: Path, *, since: datetime | None = None
) -> ExportResult:
    """Write ``path,label,observation_id,observer,rank`` for the photos that give a training label."""
    fd, tmp = _atomic_target(out)
    n = 0
    observations: set[str] = set()
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=TRAINING_COLUMNS)
            writer.writeheader()
            for row in training_rows(session, settings, since=since):
                writer.writerow(row)
                observations.add(row["observation_id"])
                n += 1
        _finish(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult("training", out, len(observations), n)


WRITERS: dict[str, Callable[[Session, Settings, Path], ExportResult]] = {
    "dwca": write_dwca,
    "csv": write_csv,
    "training": write_training_manifest,
}
MEDIA_TYPES: dict[str, tuple[str, str]] = {
    "dwca": ("application/zip", "pollinid-dwca.zip"),
    "csv": ("text/csv", "pollinid-observations.csv"),
    "training": ("text/csv", "pollinid-training-manifest.csv"),
}


def export(session: Session, settings: Settings, kind: str, out: Path) -> ExportResult:
    """Write the export ``kind`` (dwca, csv or training) to ``out``."""
    writer = WRITERS.get(kind)
    if writer is None:
        raise InvalidRequest(f"unknown export {kind!r}; known: {list(EXPORT_KINDS)}")
    result = writer(session, settings, out)
    logger.info("exported %s: %d records to %s", kind, result.records, out)
    return result


# -- live model accuracy -------------------------------------------------------------------------------


def model_accuracy(session: Session) -> list[dict[str, Any]]:
    """Per model version: how often its top-1 and top-3 were right about the later validated taxon.

    A prediction is right when the predicted label's taxon is the community taxon or lies below it (a
    species predicted inside a validated genus counts).
    """
    taxa = _Taxa(session)
    stats: dict[tuple[str, str], list[int]] = {}
    stmt = select(Observation).where(
        Observation.status == "validated",
        Observation.model_name.is_not(None),
        Observation.community_taxon_id.is_not(None),
    )
    for obs in session.scalars(stmt.execution_options(yield_per=500)):
        truth = taxa.get(obs.community_taxon_id)
        if truth is None:
            continue
        top_k = (obs.prediction or {}).get("top_k") or []

        def hit(entry: dict[str, Any], truth: Taxon = truth) -> bool:
            t = taxa.get(entry.get("taxon_id"))
            return t is not None and t.path.startswith(truth.path)

        entry = stats.setdefault((obs.model_name or "", obs.model_version or ""), [0, 0, 0])
        entry[0] += 1
        entry[1] += int(bool(top_k) and hit(top_k[0]))
        entry[2] += int(any(hit(e) for e in top_k[:3]))
    out = []
    for (name, version), (n, t1, t3) in sorted(stats.items()):
        out.append(
            {
                "model_name": name,
                "model_version": version,
                "validated": n,
                "top1_correct": t1,
                "top3_correct": t3,
                "top1_accuracy": t1 / n if n else None,
                "top3_accuracy": t3 / n if n else None,
            }
        )
    return out


def _unused() -> io.StringIO:  # pragma: no cover - keeps io imported for type checkers of older code
    return io.StringIO()
