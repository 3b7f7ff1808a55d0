"""The Darwin Core Archive for GBIF: a zip with ``occurrence.txt`` (core), ``multimedia.txt`` (GBIF Simple
Multimedia extension), ``meta.xml`` and ``eml.xml``; only validated observations under CC0, CC-BY or CC-BY-NC.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.vocabulary import ExportKind, Licence, ObservationStatus
from service.exports.atomic import atomic_write
from service.exports.lookups import ExportResult, TaxonCache, iso_z, user_names
from service.settings import Settings
from service.store.tables import Identification, Observation, Taxon

# Each licence's legal code, as GBIF wants it in dc:license (a test checks every Licence has one).
GBIF_LICENCES: dict[str, str] = {
    Licence.cc0: "http://creativecommons.org/publicdomain/zero/1.0/legalcode",
    Licence.cc_by: "http://creativecommons.org/licenses/by/4.0/legalcode",
    Licence.cc_by_nc: "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
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


def _validated(session: Session, *, gbif_only: bool) -> Iterator[Observation]:
    stmt = select(Observation).where(
        Observation.status == ObservationStatus.validated.value, Observation.community_taxon_id.is_not(None)
    )
    if gbif_only:
        stmt = stmt.where(Observation.licence.in_(list(GBIF_LICENCES)))
    yield from session.scalars(stmt.order_by(Observation.id).execution_options(yield_per=500))


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
    names = user_names(session)
    taxa = TaxonCache(session)
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
            "eventDate": iso_z(obs.observed_at),
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
            "dateIdentified": iso_z(obs.validated_at),
            "identificationVerificationStatus": "verified",
            "associatedTaxa": f'"visited flower":"{flower_name}"' if flower_name else "",
            "occurrenceRemarks": obs.notes or "",
            "license": GBIF_LICENCES[obs.licence],
            "modified": iso_z(obs.updated_at),
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
                    iso_z(obs.observed_at),
                    observer,
                    GBIF_LICENCES[obs.licence],
                    observer,
                ]
            )
    now = datetime.now(UTC)
    with atomic_write(out, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("occurrence.txt", _tsv(occ))
        zf.writestr("multimedia.txt", _tsv(media))
        zf.writestr("meta.xml", _meta_xml())
        zf.writestr("eml.xml", _eml_xml(settings, len(occ) - 1, now))
    return ExportResult(ExportKind.dwca, out, len(occ) - 1, len(media) - 1)
