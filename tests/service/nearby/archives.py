"""Darwin Core Archives built with zipfile for the tests (GBIF's layout: meta.xml + occurrence.txt)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

TERMS = {
    "gbifID": "http://rs.gbif.org/terms/1.0/gbifID",
    "scientificName": "http://rs.tdwg.org/dwc/terms/scientificName",
    "taxonRank": "http://rs.tdwg.org/dwc/terms/taxonRank",
    "species": "http://rs.gbif.org/terms/1.0/species",
    "genus": "http://rs.tdwg.org/dwc/terms/genus",
    "family": "http://rs.tdwg.org/dwc/terms/family",
    "order": "http://rs.tdwg.org/dwc/terms/order",
    "decimalLatitude": "http://rs.tdwg.org/dwc/terms/decimalLatitude",
    "decimalLongitude": "http://rs.tdwg.org/dwc/terms/decimalLongitude",
    "eventDate": "http://rs.tdwg.org/dwc/terms/eventDate",
}
COLUMNS = list(TERMS)


def meta_xml(columns: Sequence[str] = COLUMNS, row_type: str = "http://rs.tdwg.org/dwc/terms/Occurrence",
             location: str = "occurrence.txt") -> str:
    fields = "\n".join(f'    <field index="{i}" term="{TERMS[c]}"/>' for i, c in enumerate(columns) if i)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="metadata.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
        ignoreHeaderLines="1" rowType="{row_type}">
    <files><location>{location}</location></files>
    <id index="0"/>
{fields}
  </core>
</archive>
"""


def occurrence_row(name: str, lat: object, lon: object, date: str, *, rank: str = "SPECIES",
                   species: str | None = None, genus: str = "", family: str = "", order: str = "",
                   gbif_id: int = 1) -> dict[str, str]:
    if species is None:
        species = " ".join(name.split()[:2]) if rank == "SPECIES" else ""
    return {"gbifID": str(gbif_id), "scientificName": name, "taxonRank": rank, "species": species,
            "genus": genus or name.split()[0], "family": family, "order": order,
            "decimalLatitude": str(lat), "decimalLongitude": str(lon), "eventDate": date}


def dwca(rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS, *, meta: str | None = None,
         with_meta: bool = True, extra: dict[str, bytes] | None = None) -> bytes:
    """A zip with meta.xml and occurrence.txt (tab-separated, header row)."""
    lines = ["\t".join(columns)] + ["\t".join(r.get(c, "") for c in columns) for r in rows]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if with_meta:
            zf.writestr("meta.xml", meta if meta is not None else meta_xml(columns))
        zf.writestr("occurrence.txt", "\n".join(lines) + "\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def red_admirals(n: int, lat: float = 45.0, lon: float = 5.0, date: str = "2023-06-15") -> list[dict[str, str]]:
    return [occurrence_row("Vanessa atalanta (Linnaeus, 1758)", lat + (i % 100) * 0.01, lon, date, genus="Vanessa",
                           family="Nymphalidae", order="Lepidoptera", gbif_id=i) for i in range(n)]
