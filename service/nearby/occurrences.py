"""Occurrence downloads: import a GBIF Darwin Core Archive, list the imports, delete one.

An archive is a zip holding ``meta.xml``, which names the core file (``occurrence.txt`` in GBIF downloads:
tab-separated, one header line) and the column of each Darwin Core term. Each row is matched to the
installation's taxa by rank: its species (``species``, else the binomial of ``scientificName`` without the
authorship), else its ``genus``, ``family`` or ``order``, the first one the installation knows (a record of a
bumblebee species the model does not name counts for the genus *Bombus*).

The whole archive is refused, and nothing is imported, when it is not a zip, has no ``meta.xml`` or no
occurrence core, lacks the latitude, longitude or date columns, is larger than the limits (the upload, what it
unpacks to, its compression ratio: zip bombs, its number of rows), holds a row with a bad coordinate
(not a number, out of range, or exactly 0,0: the usual mark of a missing place), or was imported before
(same sha256). Rows with no coordinates or no month at all say nothing about where or when: they are counted
and skipped, as are rows of taxa the installation does not know. One transaction: all rows or none.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from service.core.hashing import file_sha256
from service.core.modelcard import NOT_A_TAXON
from service.settings import Settings
from service.store.tables import OccurrenceImport, OccurrenceRecord, Taxon

logger = logging.getLogger(__name__)

DWC_TEXT_NS = "http://rs.tdwg.org/dwc/text/"
OCCURRENCE_ROW_TYPE = "http://rs.tdwg.org/dwc/terms/Occurrence"
META_MAX_BYTES = 1024 * 1024
# A member this small cannot be a bomb whatever its ratio (a header-only file compresses very well).
RATIO_MIN_MEMBER_BYTES = 1024 * 1024
INSERT_BATCH = 5000
# Day of the year on a fixed common year: a record of 29 February counts as 28 February.
SEASON_YEAR = 2001
_DATE = re.compile(r"^\s*(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?")
_SPECIES_RANKS = {"", "species", "subspecies", "variety", "form", "infraspecificname", "infraspecific"}


class InvalidArchive(InvalidRequest):
    """The archive cannot be read as an occurrence download (422)."""

    code = "invalid_archive"


class ArchiveTooLarge(PayloadTooLarge):
    """The archive is over a size, ratio or row limit (413)."""

    code = "archive_too_large"


class DuplicateArchive(Conflict):
    code = "duplicate_archive"


@dataclass(frozen=True)
class OccurrenceLimits:
    max_upload_bytes: int
    max_uncompressed_bytes: int
    max_compression_ratio: float
    max_rows: int

    @classmethod
    def from_settings(cls, settings: Settings) -> OccurrenceLimits:
        return cls(max_upload_bytes=settings.occurrence_max_upload_bytes,
                   max_uncompressed_bytes=settings.occurrence_max_uncompressed_bytes,
                   max_compression_ratio=settings.occurrence_max_compression_ratio,
                   max_rows=settings.occurrence_max_rows)


# -- taxa ----------------------------------------------------------------------------------------------


class TaxonMatcher:
    """Darwin Core names to the installation's taxa, rank by rank (names compared case-insensitively)."""

    def __init__(self, session: Session) -> None:
        rows = session.execute(select(Taxon.id, Taxon.rank, Taxon.scientific_name)
                               .where(Taxon.rank != NOT_A_TAXON))
        self.by_rank: dict[tuple[str, str], int] = {(r.rank, r.scientific_name.casefold()): r.id for r in rows}

    def _get(self, rank: str, name: str | None) -> int | None:
        if not name or not name.strip():
            return None
        return self.by_rank.get((rank, " ".join(name.split()).casefold()))

    def match(self, *, scientific_name: str = "", rank: str = "", species: str = "", genus: str = "",
              family: str = "", order: str = "") -> int | None:
        rank = rank.strip().casefold()
        words = scientific_name.split()
        if rank in _SPECIES_RANKS:
            found = self._get("species", species)
            # "Vanessa atalanta (Linnaeus, 1758)", "Aglais io io": the binomial, without authorship.
            if found is None and len(words) >= 2 and words[1][:1].islower() and words[1].isalpha():
                found = self._get("species", f"{words[0]} {words[1]}")
            if found is not None:
                return found
        if rank in ("genus", "family", "order") and words:
            found = self._get(rank, words[0])
            if found is not None:
                return found
        for level, name in (("genus", genus), ("family", family), ("order", order)):
            found = self._get(level, name)
            if found is not None:
                return found
        return None


# -- the archive ---------------------------------------------------------------------------------------


@dataclass
class CoreFile:
    """The occurrence core as ``meta.xml`` describes it."""

    member: zipfile.ZipInfo
    columns: dict[str, int]  # term name (``decimalLatitude``) -> column index
    defaults: dict[str, str]  # term name -> constant value (a field with a default and no index)
    delimiter: str
    quotechar: str | None
    encoding: str
    header_lines: int


def _term_name(uri: str) -> str:
    return re.split(r"[/#]", uri.strip())[-1]


def _unescape(value: str | None, default: str) -> str:
    if value is None:
        return default
    return value.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r")


def _check_sizes(zf: zipfile.ZipFile, size: int, limits: OccurrenceLimits) -> None:
    infos = zf.infolist()
    total = sum(i.file_size for i in infos)
    if total > limits.max_uncompressed_bytes:
        raise ArchiveTooLarge(
            f"the archive unpacks to {total} bytes; the limit is {limits.max_uncompressed_bytes} bytes",
            detail={"uncompressed_bytes": total, "limit_bytes": limits.max_uncompressed_bytes})
    for info in infos:
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size >= RATIO_MIN_MEMBER_BYTES and ratio > limits.max_compression_ratio:
            raise ArchiveTooLarge(
                f"{info.filename} unpacks {ratio:.0f} times larger than it is stored; the limit is "
                f"{limits.max_compression_ratio:g} (a zip bomb?)",
                detail={"member": info.filename, "ratio": round(ratio, 1),
                        "limit": limits.max_compression_ratio})
    ratio = total / max(1, size)
    if total >= RATIO_MIN_MEMBER_BYTES and ratio > limits.max_compression_ratio:
        raise ArchiveTooLarge(
            f"the archive unpacks {ratio:.0f} times larger than it is; the limit is "
            f"{limits.max_compression_ratio:g} (a zip bomb?)",
            detail={"ratio": round(ratio, 1), "limit": limits.max_compression_ratio})


def read_meta(zf: zipfile.ZipFile) -> CoreFile:
    """The occurrence core of a Darwin Core Archive, from its ``meta.xml``.

    Raises:
        InvalidArchive: no ``meta.xml``, unreadable XML, no occurrence core, the core file missing, or no
            latitude, longitude or date column.
    """
    try:
        meta_info = zf.getinfo("meta.xml")
    except KeyError:
        raise InvalidArchive("the archive has no meta.xml: send a Darwin Core Archive (a GBIF occurrence "
                             "download in the 'Darwin Core Archive' format)") from None
    if meta_info.file_size > META_MAX_BYTES:
        raise InvalidArchive(f"meta.xml is {meta_info.file_size} bytes; a Darwin Core meta.xml is far smaller")
    raw = zf.read(meta_info)
    if b"<!DOCTYPE" in raw.upper() or b"<!ENTITY" in raw.upper():
        raise InvalidArchive("meta.xml declares a DOCTYPE or entities; a Darwin Core meta.xml has none")
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as exc:
        raise InvalidArchive(f"meta.xml is not well-formed XML: {exc}") from None
    ns = {"d": DWC_TEXT_NS}
    cores = root.findall("d:core", ns) or root.findall("core")
    core = next((c for c in cores if c.get("rowType", "").strip() == OCCURRENCE_ROW_TYPE), None)
    if core is None:
        found = [c.get("rowType") for c in cores]
        raise InvalidArchive(f"meta.xml describes no occurrence core (rowType {OCCURRENCE_ROW_TYPE}); "
                             f"found {found or 'no core'}", detail={"row_types": found})
    location = core.find("d:files/d:location", ns)
    if location is None:
        location = core.find("files/location")
    if location is None or not (location.text or "").strip():
        raise InvalidArchive("meta.xml names no core file (core/files/location)")
    name = (location.text or "").strip()
    try:
        member = zf.getinfo(name)
    except KeyError:
        raise InvalidArchive(f"meta.xml names the core file {name!r}, which is not in the archive") from None
    columns: dict[str, int] = {}
    defaults: dict[str, str] = {}
    for field in core.findall("d:field", ns) + core.findall("field"):
        term = _term_name(field.get("term", ""))
        index = field.get("index")
        if index is not None and index.strip().isdigit():
            columns.setdefault(term, int(index))
        elif field.get("default") is not None:
            defaults.setdefault(term, field.get("default", ""))
    missing = [t for t in ("decimalLatitude", "decimalLongitude") if t not in columns]
    if not any(t in columns for t in ("eventDate", "month")):
        missing.append("eventDate (or month)")
    if missing:
        raise InvalidArchive(f"the occurrence core has no column for {', '.join(missing)}: place and date are "
                             "what the archive is imported for", detail={"missing": missing})
    quote = _unescape(core.get("fieldsEnclosedBy"), "")
    header = core.get("ignoreHeaderLines", "0").strip()
    return CoreFile(member=member, columns=columns, defaults=defaults,
                    delimiter=_unescape(core.get("fieldsTerminatedBy"), ",") or ",",
                    quotechar=quote or None, encoding=core.get("encoding", "UTF-8") or "UTF-8",
                    header_lines=int(header) if header.isdigit() else 0)


def _coordinate(value: str, low: float, high: float) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and low <= number <= high else None


def _season(event_date: str, month: str, day: str) -> tuple[int, int] | None:
    """``(month, day of the year)`` from ``eventDate`` (ISO 8601; an interval's start), else ``month``/``day``."""
    m: int | None = None
    d: int | None = None
    found = _DATE.match(event_date) if event_date else None
    if found and found.group(2):
        m, d = int(found.group(2)), int(found.group(3)) if found.group(3) else None
    elif month.strip().isdigit():
        m = int(month)
        d = int(day) if day.strip().isdigit() else None
    if m is None or not 1 <= m <= 12:
        return None
    try:
        when = date(SEASON_YEAR, m, d) if d is not None else date(SEASON_YEAR, m, 15)
    except ValueError:  # 31 April, 29 February: the month is still right
        when = date(SEASON_YEAR, m, 15)
    return m, when.timetuple().tm_yday


def _rows(zf: zipfile.ZipFile, core: CoreFile) -> Iterator[tuple[int, list[str]]]:
    csv.field_size_limit(1 << 24)
    with zf.open(core.member) as raw:
        try:
            text = io.TextIOWrapper(raw, encoding=core.encoding, errors="replace", newline="")
        except LookupError:
            raise InvalidArchive(f"meta.xml names an unknown encoding {core.encoding!r}") from None
        if core.quotechar:
            reader = csv.reader(text, delimiter=core.delimiter, quotechar=core.quotechar)
        else:
            reader = csv.reader(text, delimiter=core.delimiter, quoting=csv.QUOTE_NONE)
        try:
            for line, row in enumerate(reader, start=1):
                if line <= core.header_lines or not any(cell.strip() for cell in row):
                    continue
                yield line, row
        except csv.Error as exc:
            raise InvalidArchive(f"{core.member.filename} line {reader.line_num}: {exc}") from None


@dataclass
class _Counts:
    read: int = 0
    imported: int = 0
    unknown_taxon: int = 0
    incomplete: int = 0


def import_archive(session: Session, path: Path, *, file_name: str, limits: OccurrenceLimits,
                   user_id: int | None = None) -> OccurrenceImport:
    """Import the occurrence download at ``path`` in one transaction (committed here) and return its row.

    Raises:
        ArchiveTooLarge: over a size, ratio or row limit.
        InvalidArchive: not a Darwin Core Archive of occurrences, or a row with a bad coordinate.
        DuplicateArchive: the same file (sha256) was imported before.
    """
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise ArchiveTooLarge(f"the archive is {size} bytes; the limit is {limits.max_upload_bytes} bytes",
                              detail={"size_bytes": size, "limit_bytes": limits.max_upload_bytes})
    sha = file_sha256(path)
    existing = session.scalar(select(OccurrenceImport).where(OccurrenceImport.sha256 == sha))
    if existing is not None:
        raise DuplicateArchive(f"this archive was imported already (import {existing.id}, "
                               f"{existing.file_name!r}); delete that import first to import it again",
                               detail={"import_id": existing.id})
    if not zipfile.is_zipfile(path):
        raise InvalidArchive("not a zip archive: send a Darwin Core Archive (.zip) of occurrences")
    try:
        with zipfile.ZipFile(path) as zf:
            _check_sizes(zf, size, limits)
            core = read_meta(zf)
            row = OccurrenceImport(file_name=file_name[:255], sha256=sha, size_bytes=size, created_by=user_id)
            session.add(row)
            session.flush()
            counts = _load_rows(session, zf, core, row.id, limits)
    except zipfile.BadZipFile as exc:
        session.rollback()
        raise InvalidArchive(f"the zip archive is damaged: {exc}") from None
    except Exception:
        session.rollback()
        raise
    row.rows_read, row.rows_imported = counts.read, counts.imported
    row.rows_unknown_taxon, row.rows_incomplete = counts.unknown_taxon, counts.incomplete
    try:
        session.commit()
    except IntegrityError:  # a concurrent import of the same file won
        session.rollback()
        raise DuplicateArchive("this archive was imported already (at the same time)") from None
    logger.info("occurrence import %d (%s): %d rows read, %d imported, %d of unknown taxa, %d incomplete",
                row.id, row.file_name, counts.read, counts.imported, counts.unknown_taxon, counts.incomplete)
    return row


def _load_rows(session: Session, zf: zipfile.ZipFile, core: CoreFile, import_id: int,
               limits: OccurrenceLimits) -> _Counts:
    matcher = TaxonMatcher(session)
    cols, defaults = core.columns, core.defaults
    name = core.member.filename

    def cell(row: list[str], term: str) -> str:
        index = cols.get(term)
        if index is None:
            return defaults.get(term, "")
        return row[index].strip() if index < len(row) else ""

    counts = _Counts()
    batch: list[dict[str, Any]] = []
    for line, row in _rows(zf, core):
        counts.read += 1
        if counts.read > limits.max_rows:
            raise ArchiveTooLarge(f"the archive holds more than {limits.max_rows} rows; import it in parts",
                                  detail={"limit_rows": limits.max_rows})
        lat_text, lon_text = cell(row, "decimalLatitude"), cell(row, "decimalLongitude")
        if not lat_text and not lon_text:
            counts.incomplete += 1
            continue
        lat, lon = _coordinate(lat_text, -90.0, 90.0), _coordinate(lon_text, -180.0, 180.0)
        bad = None
        if lat is None:
            bad = ("decimalLatitude", lat_text, "a number from -90 to 90")
        elif lon is None:
            bad = ("decimalLongitude", lon_text, "a number from -180 to 180")
        elif lat == 0.0 and lon == 0.0:
            bad = ("decimalLatitude,decimalLongitude", f"{lat_text},{lon_text}",
                   "a real place (0,0 marks a missing one)")
        if bad is not None:
            term, value, want = bad
            raise InvalidArchive(f"{name} line {line}: {term} is {value!r}, not {want}; nothing was imported",
                                 detail={"file": name, "line": line, "column": term, "value": value[:100]})
        season = _season(cell(row, "eventDate"), cell(row, "month"), cell(row, "day"))
        if season is None:
            counts.incomplete += 1
            continue
        taxon_id = matcher.match(scientific_name=cell(row, "scientificName"), rank=cell(row, "taxonRank"),
                                 species=cell(row, "species"), genus=cell(row, "genus"),
                                 family=cell(row, "family"), order=cell(row, "order"))
        if taxon_id is None:
            counts.unknown_taxon += 1
            continue
        batch.append({"import_id": import_id, "taxon_id": taxon_id, "latitude": lat, "longitude": lon,
                      "month": season[0], "day_of_year": season[1]})
        counts.imported += 1
        if len(batch) >= INSERT_BATCH:
            session.execute(insert(OccurrenceRecord), batch)
            batch = []
    if batch:
        session.execute(insert(OccurrenceRecord), batch)
    return counts


# -- imports -------------------------------------------------------------------------------------------


def list_imports(session: Session) -> list[OccurrenceImport]:
    return list(session.scalars(select(OccurrenceImport).order_by(OccurrenceImport.id)))


def get_import(session: Session, import_id: int) -> OccurrenceImport:
    row = session.get(OccurrenceImport, import_id)
    if row is None:
        raise NotFound(f"occurrence import {import_id} not found")
    return row


def delete_import(session: Session, import_id: int) -> int:
    """Delete an import and its records (committed here); returns how many records went."""
    row = get_import(session, import_id)
    n = session.scalar(select(func.count()).select_from(OccurrenceRecord)
                       .where(OccurrenceRecord.import_id == row.id)) or 0
    session.execute(delete(OccurrenceRecord).where(OccurrenceRecord.import_id == row.id))
    session.delete(row)
    session.commit()
    return int(n)


def record_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(OccurrenceRecord)) or 0)
