"""Admins import occurrence downloads (GBIF Darwin Core Archives) as where-and-when evidence.

Mounted under ``/admin`` (admin role) by :mod:`service.api.routes.admin`. The upload is streamed to a temporary
file (never held in memory) and imported in one transaction by :mod:`service.nearby.occurrences`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from python_multipart.multipart import MultipartParser, parse_options_header

from service.api.deps import CurrentUser, SessionDep
from service.api.errors import BODY_ERRORS, errors
from service.api.schemas.occurrences import (
    OccurrenceImportDeleted,
    OccurrenceImportPublic,
    OccurrenceImportsPublic,
)
from service.core.errors import InvalidRequest, UnsupportedMediaType
from service.nearby import occurrences as occ

router = APIRouter(prefix="/occurrences", tags=["occurrences"])

FILE_FIELD = "file"
RAW_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")


class _Spool:
    """Writes one multipart file part (or a raw body) to a temporary file, within a byte limit."""

    def __init__(self, folder: Path, limit: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".occurrences-", suffix=".zip", dir=folder)
        self.path = Path(name)
        self.fh = os.fdopen(fd, "wb")
        self.limit = limit
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise occ.ArchiveTooLarge(f"the archive is over {self.limit} bytes, the limit",
                                      detail={"limit_bytes": self.limit})
        self.fh.write(data)

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


async def _receive_archive(request: Request, spool: _Spool) -> str:
    """Stream the request body's archive into ``spool``; returns its file name."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    ctype = content_type.decode("latin-1").lower()
    if ctype in RAW_TYPES:
        async for chunk in request.stream():
            spool.write(chunk)
        return request.query_params.get("name") or "occurrences.zip"
    if ctype != "multipart/form-data" or b"boundary" not in options:
        raise UnsupportedMediaType(f"send the archive as multipart/form-data in the field '{FILE_FIELD}' "
                                   "(or as the body, Content-Type application/zip)")
    part: dict[str, Any] = {}
    found: dict[str, Any] = {"name": None, "files": 0}
    header = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        part.clear()
        part["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(part["headers"].get("content-disposition", b""))
        part["is_file"] = disp.get(b"name") == FILE_FIELD.encode()
        if part["is_file"]:
            found["files"] += 1
            if found["files"] > 1:
                raise InvalidRequest(f"send one archive in the field '{FILE_FIELD}'")
            found["name"] = disp.get(b"filename", b"occurrences.zip").decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.get("is_file"):
            spool.write(data[start:end])

    parser = MultipartParser(options[b"boundary"], callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data})
    async for chunk in request.stream():
        parser.write(chunk)
    parser.finalize()
    if not found["files"]:
        raise InvalidRequest(f"send the archive in the multipart field '{FILE_FIELD}'",
                             detail={"field": FILE_FIELD})
    return str(found["name"] or "occurrences.zip")


@router.post("", response_model=OccurrenceImportPublic, status_code=status.HTTP_201_CREATED,
             responses=errors(*BODY_ERRORS, {409: "this archive (same sha256) was imported already",
                                             413: "over the upload, unpacked size, compression ratio or row "
                                                  "limit", 415: "not a multipart or zip body",
                                             422: "not a Darwin Core Archive of occurrences, a missing "
                                                  "latitude, longitude or date column, or a row with a bad "
                                                  "coordinate (line and value given); nothing was imported"}))
async def import_occurrences(request: Request, user: CurrentUser) -> OccurrenceImportPublic:
    """Import a GBIF occurrence download (Darwin Core Archive, a .zip) in the multipart field ``file``.

    All rows or none: a malformed, too large or bad-coordinate archive is refused whole. Rows are matched to
    the installation's taxa by species, else genus, family or order; rows of other taxa, and rows without
    coordinates or month, are counted and skipped.
    """
    settings = request.app.state.settings
    limits = occ.OccurrenceLimits.from_settings(settings)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.max_upload_bytes + 64 * 1024:
        raise occ.ArchiveTooLarge(f"the request is {length} bytes; archives are limited to "
                                  f"{limits.max_upload_bytes} bytes", detail={"limit_bytes": limits.max_upload_bytes})
    spool = _Spool(settings.data_dir / "tmp", limits.max_upload_bytes)
    try:
        name = await _receive_archive(request, spool)
        spool.close()
        user_id = user.id

        def run() -> OccurrenceImportPublic:
            with request.app.state.sessionmaker() as session:
                row = occ.import_archive(session, spool.path, file_name=Path(name).name or "occurrences.zip",
                                         limits=limits, user_id=user_id)
                return OccurrenceImportPublic.model_validate(row)

        return await run_in_threadpool(run)
    finally:
        spool.discard()


@router.get("", response_model=OccurrenceImportsPublic)
def list_occurrence_imports(session: SessionDep) -> OccurrenceImportsPublic:
    """Every occurrence download imported, with its counts."""
    rows = occ.list_imports(session)
    return OccurrenceImportsPublic(data=[OccurrenceImportPublic.model_validate(r) for r in rows], count=len(rows),
                                   records=occ.record_count(session))


@router.get("/{import_id}", response_model=OccurrenceImportPublic, responses=errors(404, 422))
def read_occurrence_import(import_id: int, session: SessionDep) -> OccurrenceImportPublic:
    return OccurrenceImportPublic.model_validate(occ.get_import(session, import_id))


@router.delete("/{import_id}", response_model=OccurrenceImportDeleted, responses=errors(404, 422))
def delete_occurrence_import(import_id: int, session: SessionDep) -> OccurrenceImportDeleted:
    """Delete one import and all its records."""
    return OccurrenceImportDeleted(id=import_id, records_deleted=occ.delete_import(session, import_id))
