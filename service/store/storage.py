"""Content-addressed photo storage: one object per distinct photo, key ``<sha[:2]>/<sha256>``.

The objects live in an :class:`~service.store.objects.ObjectStore`: the local media folder
(``<media>/<sha[:2]>/<sha256>``, the default) or ``<bucket>/<prefix>/media/`` of an S3-compatible store
(:func:`service.store.objects.media_store`). An object is visible only once complete (a local file is
written to a temporary name, fsynced and renamed; an S3 ``PutObject`` is atomic), so a reader never sees
half a photo. The database decides which objects must exist: a photo row refers to one by its sha256.
Writers and the cleaners agree through a lock per sha256 (a PostgreSQL advisory lock, shared by every
replica of one database; SQLite's write transaction is already exclusive), taken in the transaction that
inserts the rows:

* an upload writes its objects, inserts its rows, then, holding the locks, re-creates any object that a
  cleaner removed meanwhile, and commits;
* a failed upload, and the start-up cleaner, delete an object only while holding its lock and only if no
  committed row refers to it.

So an acknowledged observation always has its objects, and a failed one leaves none behind. A store that
is down raises :class:`~service.store.objects.StorageUnavailable` before anything is committed.

The functions take the store, or a local folder (a :class:`~pathlib.Path`, taken as a local store).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from service.core.errors import InvalidRequest
from service.store.objects import TMP_PREFIX, LocalStore, ObjectMissing, ObjectStore, fsync_dir
from service.store.tables import Photo

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
__all__ = ["TMP_PREFIX", "check_sha256", "clean_orphans", "clean_temporary", "ensure_media", "fetch_media",
           "lock_media", "media_file", "media_key", "referenced", "remove_unreferenced", "write_media"]
_fsync_dir = fsync_dir  # the name this module had


def check_sha256(value: str) -> str:
    """``value`` if it is 64 lowercase hex digits, else :class:`InvalidRequest` (no path ever escapes)."""
    if not SHA256_RE.fullmatch(value):
        raise InvalidRequest("a media id is a sha256: 64 lowercase hexadecimal digits")
    return value


def media_key(sha256: str) -> str:
    """The object key of the photo with this sha256: ``<sha[:2]>/<sha256>``."""
    sha256 = check_sha256(sha256)
    return f"{sha256[:2]}/{sha256}"


def media_file(root: Path, sha256: str) -> Path:
    """Where the photo with this sha256 lives in the local media folder ``root``."""
    return root / media_key(sha256)


def as_store(root: ObjectStore | Path) -> ObjectStore:
    """``root`` itself, or a local store over the folder ``root``."""
    return root if isinstance(root, ObjectStore) else LocalStore(Path(root))


def write_media(root: ObjectStore | Path, sha256: str, data: bytes) -> bool:
    """Store ``data`` under its sha256 unless it is already there. Returns True when an object was created."""
    store = as_store(root)
    key = media_key(sha256)
    if store.exists(key):
        return False
    store.put(key, data)
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


def ensure_media(root: ObjectStore | Path, blobs: Mapping[str, bytes]) -> None:
    """Re-create any of ``blobs`` whose object is missing (call while holding their locks)."""
    store = as_store(root)
    for sha, data in blobs.items():
        if not store.exists(media_key(sha)):
            logger.info("re-creating media object %s removed by a concurrent cleaner", sha)
            store.put(media_key(sha), data)


def referenced(session: Session, shas: Iterable[str]) -> set[str]:
    wanted = list(set(shas))
    if not wanted:
        return set()
    return set(session.scalars(select(Photo.sha256).where(Photo.sha256.in_(wanted)).distinct()))


def remove_unreferenced(factory: sessionmaker[Session], root: ObjectStore | Path, shas: Iterable[str]) -> int:
    """Delete the objects of ``shas`` that no committed photo row refers to. Returns how many were deleted."""
    store = as_store(root)
    wanted = sorted(set(shas))
    if not wanted:
        return 0
    removed = 0
    with factory() as session, session.begin():
        lock_media(session, wanted)
        keep = referenced(session, wanted)
        for sha in wanted:
            if sha not in keep:
                key = media_key(sha)
                if store.exists(key):
                    store.delete(key)
                    removed += 1
    return removed


def clean_temporary(root: ObjectStore | Path, *, grace_seconds: float = 3600.0) -> int:
    """Remove temporary files (``.tmp-*``) older than ``grace_seconds`` left by a killed upload.

    Run at start and periodically (:mod:`service.store.housekeeping`): a long-running server must not keep
    what a crashed sibling process left. Younger files may be being written now and are left alone.
    An object store has no temporary objects (a ``PutObject`` is all or nothing): nothing to do.
    Returns how many files were removed.
    """
    store = as_store(root)
    if not isinstance(store, LocalStore):
        return 0
    folder = store.root
    if not folder.is_dir():
        return 0
    removed = 0
    cutoff = time.time() - grace_seconds
    for sub in folder.iterdir():
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


def _stored_shas(store: ObjectStore) -> Iterable[str]:
    if isinstance(store, LocalStore):  # only the two-level layout (not a recursive walk of the folder)
        if not store.root.is_dir():
            return
        for folder in store.root.iterdir():
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for path in folder.iterdir():
                if SHA256_RE.fullmatch(path.name) and path.name[:2] == folder.name:
                    yield path.name
        return
    for key in store.list():
        first, _, sha = key.partition("/")
        if SHA256_RE.fullmatch(sha) and sha[:2] == first:
            yield sha


def clean_orphans(factory: sessionmaker[Session], root: ObjectStore | Path, *, batch: int = 500,
                  grace_seconds: float = 3600.0) -> int:
    """Remove temporary files and photos no row refers to (left by a crash). Returns objects removed.

    A temporary file younger than ``grace_seconds`` is left alone: another process sharing the media
    folder may be writing it right now (its rename would fail if it were deleted). Complete photos need no
    grace: they are removed under their lock only when no committed row refers to them, and a writer
    re-creates its objects under the same lock before it commits (also across replicas sharing a bucket and
    a PostgreSQL database).
    """
    store = as_store(root)
    removed = clean_temporary(store, grace_seconds=grace_seconds)
    found = list(_stored_shas(store))
    for i in range(0, len(found), batch):
        removed += remove_unreferenced(factory, store, found[i : i + batch])
    if removed:
        logger.info("removed %d orphan media objects from %s", removed, store.url)
    return removed


def fetch_media(root: ObjectStore | Path, shas: Iterable[str], dest: Path) -> int:
    """Copy the photos ``shas`` from the store into the local folder ``dest`` (same layout), skipping those
    already there; each file is written to a temporary name and renamed. Returns how many were copied.

    A retrain job's child reads local files: with an object store, its photos are fetched into its work
    folder first. A photo no longer in the store is skipped (logged): its row went away meanwhile.
    """
    store = as_store(root)
    copied = 0
    for sha in sorted(set(shas)):
        target = media_file(dest, sha)
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{TMP_PREFIX}{sha}"
        try:
            store.download(media_key(sha), tmp)
        except ObjectMissing:
            logger.warning("photo %s is not in %s: left out", sha, store.url)
            tmp.unlink(missing_ok=True)
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(target)
        copied += 1
    return copied
