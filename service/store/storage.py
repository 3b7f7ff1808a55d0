"""Content-addressed photo storage: ``<media>/<sha[:2]>/<sha256>``, one file per distinct photo.

Files are written to a temporary name, fsynced and renamed, so a reader never sees half a photo. The
database decides which files must exist: a photo row refers to a file by its sha256. Writers and the
cleaners agree through a lock per sha256 (a PostgreSQL advisory lock; SQLite's write transaction is
already exclusive), taken in the transaction that inserts the rows:

* an upload writes its files, inserts its rows, then, holding the locks, re-creates any file that a
  cleaner removed meanwhile, and commits;
* a failed upload, and the start-up cleaner, delete a file only while holding its lock and only if no
  committed row refers to it.

So an acknowledged observation always has its files, and a failed one leaves no file behind.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from service.core.errors import InvalidRequest
from service.store.tables import Photo

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TMP_PREFIX = ".tmp-"


def check_sha256(value: str) -> str:
    """``value`` if it is 64 lowercase hex digits, else :class:`InvalidRequest` (no path ever escapes)."""
    if not SHA256_RE.fullmatch(value):
        raise InvalidRequest("a media id is a sha256: 64 lowercase hexadecimal digits")
    return value


def media_file(root: Path, sha256: str) -> Path:
    """Where the photo with this sha256 lives."""
    sha256 = check_sha256(sha256)
    return root / sha256[:2] / sha256


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_media(root: Path, sha256: str, data: bytes) -> bool:
    """Store ``data`` under its sha256 unless it is already there. Returns True when a file was created."""
    target = media_file(root, sha256)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return True


def _lock_key(sha256: str) -> int:
    value = int(sha256[:16], 16)
    return value - (1 << 64) if value >= (1 << 63) else value


def lock_media(session: Session, shas: Iterable[str]) -> None:
    """Take the per-photo locks for the rest of ``session``'s transaction (sorted: no deadlocks)."""
    if session.get_bind().dialect.name != "postgresql":
        # SQLite: the transaction began with BEGIN IMMEDIATE and holds the database write lock.
        session.execute(text("SELECT 1"))
        return
    for sha in sorted(set(shas)):
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(sha)})


def ensure_media(root: Path, blobs: Mapping[str, bytes]) -> None:
    """Re-create any of ``blobs`` whose file is missing (call while holding their locks)."""
    for sha, data in blobs.items():
        if not media_file(root, sha).exists():
            logger.info("re-creating media file %s removed by a concurrent cleaner", sha)
            write_media(root, sha, data)


def referenced(session: Session, shas: Iterable[str]) -> set[str]:
    wanted = list(set(shas))
    if not wanted:
        return set()
    return set(session.scalars(select(Photo.sha256).where(Photo.sha256.in_(wanted)).distinct()))


def remove_unreferenced(factory: sessionmaker[Session], root: Path, shas: Iterable[str]) -> int:
    """Delete the files of ``shas`` that no committed photo row refers to. Returns how many were deleted."""
    wanted = sorted(set(shas))
    if not wanted:
        return 0
    removed = 0
    with factory() as session, session.begin():
        lock_media(session, wanted)
        keep = referenced(session, wanted)
        for sha in wanted:
            if sha not in keep:
                path = media_file(root, sha)
                if path.exists():
                    path.unlink()
                    removed += 1
    return removed


def clean_temporary(root: Path, *, grace_seconds: float = 3600.0) -> int:
    """Remove temporary files (``.tmp-*``) older than ``grace_seconds`` left by a killed upload.

    Run at start and periodically (:mod:`service.store.housekeeping`): a long-running server must not keep
    what a crashed sibling process left. Younger files may be being written now and are left alone.
    Returns how many files were removed.
    """
    if not root.is_dir():
        return 0
    removed = 0
    cutoff = time.time() - grace_seconds
    for sub in root.iterdir():
        if not sub.is_dir() or len(sub.name) != 2:
            continue
        for path in sub.iterdir():
            if not path.name.startswith(TMP_PREFIX):
                continue
            try:
                if path.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:  # renamed or removed meanwhile
                continue
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        logger.info("removed %d temporary media files older than %.0f s", removed, grace_seconds)
    return removed


def clean_orphans(factory: sessionmaker[Session], root: Path, *, batch: int = 500,
                  grace_seconds: float = 3600.0) -> int:
    """Remove temporary files and photos no row refers to (left by a crash). Returns files removed.

    A temporary file younger than ``grace_seconds`` is left alone: another process sharing the media
    folder may be writing it right now (its rename would fail if it were deleted). Complete photos need no
    grace: they are removed under their lock only when no committed row refers to them, and a writer
    re-creates its files under the same lock before it commits.
    """
    if not root.is_dir():
        return 0
    removed = clean_temporary(root, grace_seconds=grace_seconds)
    found: list[str] = []
    for sub in root.iterdir():
        if not sub.is_dir() or len(sub.name) != 2:
            continue
        for path in sub.iterdir():
            if SHA256_RE.fullmatch(path.name) and path.name[:2] == sub.name:
                found.append(path.name)
    for i in range(0, len(found), batch):
        removed += remove_unreferenced(factory, root, found[i : i + batch])
    if removed:
        logger.info("removed %d orphan media files", removed)
    return removed
