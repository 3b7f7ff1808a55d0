"""Trained model versions in the object store, and each replica's local cache of them.

A version folder (``model.onnx``, ``model.json``, ``gate.json``, a replay kit, ...) is uploaded as
``<name>/<version>/<file>`` under the store's ``models/``, then its manifest ``<name>/<version>/version.json``
(every file with its sha256 and size) is written last: a version is in the store once its manifest is, so a
reader never finds half a version. A replica that needs a version it does not have (to list, activate or
serve it) downloads it into its cache folder (``<data_dir>/model-cache/<name>/<version>``): every file is
checked against the manifest's sha256 and size in a temporary folder, which is then renamed into place.
A later change of a file (the card's state) rewrites that file and the manifest; caches compare manifests
and fetch only what changed.

Released versions (the bundled ``models/`` folder) stay local: every replica has them in its package.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.hashing import file_sha256
from service.store.objects import ObjectMissing, ObjectStore, check_key

logger = logging.getLogger(__name__)

MANIFEST = "version.json"
CACHE_MANIFEST = ".version.json"  # the manifest a cached copy was built from
# Pauses before reading the manifest again when a fetched file does not match it (a concurrent rewrite).
REFETCH_PAUSES = (0.1, 0.3, 0.6)


class CorruptVersion(ValueError):
    """A stored version whose files do not match its manifest."""


def _files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and not name.endswith(".tmp"):
                path = Path(dirpath) / name
                out[path.relative_to(folder).as_posix()] = path
    return out


def _prefix(name: str, version: str) -> str:
    return f"{check_key(name)}/{check_key(version)}"


def read_manifest(store: ObjectStore, name: str, version: str) -> dict[str, Any] | None:
    """The stored manifest of ``name/version``, or None when the store does not hold it."""
    try:
        data: dict[str, Any] = json.loads(store.get(f"{_prefix(name, version)}/{MANIFEST}"))
    except ObjectMissing:
        return None
    return data


def _put_manifest(store: ObjectStore, name: str, version: str, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    manifest = {"name": name, "version": version, "files": files, "updated_at": datetime.now(UTC).isoformat()}
    store.put(f"{_prefix(name, version)}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    return manifest


def upload_version(store: ObjectStore, folder: Path, name: str, version: str) -> dict[str, Any]:
    """Upload every file of ``folder`` as ``name/version``, then its manifest. Returns the manifest."""
    files: dict[str, dict[str, Any]] = {}
    for rel, path in _files(Path(folder)).items():
        store.put_file(f"{_prefix(name, version)}/{rel}", path)
        files[rel] = {"sha256": file_sha256(path), "size": path.stat().st_size}
    manifest = _put_manifest(store, name, version, files)
    logger.info("model %s/%s uploaded to %s (%d files)", name, version, store.url, len(files))
    return manifest


def update_file(store: ObjectStore, name: str, version: str, rel: str,
                change: Callable[[bytes], bytes]) -> bool:
    """Rewrite one stored file of ``name/version`` with ``change(old bytes)`` and its manifest entry.

    Returns False when the store does not hold the version (a local-only one).
    """
    manifest = read_manifest(store, name, version)
    if manifest is None or rel not in manifest.get("files", {}):
        return False
    key = f"{_prefix(name, version)}/{check_key(rel)}"
    data = change(store.get(key))
    store.put(key, data)
    files = dict(manifest["files"])
    files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    _put_manifest(store, name, version, files)
    return True


def stored_versions(store: ObjectStore) -> list[tuple[str, str]]:
    """``(name, version)`` of every complete version in the store (those with a manifest)."""
    out = []
    for key in store.list():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST:
            out.append((parts[0], parts[1]))
    return sorted(out)


def _cached_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((folder / CACHE_MANIFEST).read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        return None


def fetch_version(store: ObjectStore, name: str, version: str, cache_root: Path, *,
                  manifest: dict[str, Any] | None = None) -> Path | None:
    """The local folder of ``name/version`` in ``cache_root``, downloaded (or refreshed) from the store.

    Returns None when the store does not hold the version. A file that does not match the manifest may have
    been rewritten meanwhile by another replica (:func:`update_file` writes the file, then the manifest): the
    manifest is read again and the fetch retried a few times (within about a second) before the version is
    taken as corrupt.

    Raises:
        CorruptVersion: a file whose sha256 or size differs from the manifest (nothing is cached).
        StorageUnavailable: the store is down.
    """
    manifest = manifest if manifest is not None else read_manifest(store, name, version)
    for pause in (*REFETCH_PAUSES, None):
        if manifest is None:
            return None
        try:
            return _fetch_once(store, name, version, cache_root, manifest)
        except CorruptVersion:
            if pause is None:
                raise
            time.sleep(pause)
            manifest = read_manifest(store, name, version)
    raise AssertionError("unreachable")  # pragma: no cover


def _fetch_once(store: ObjectStore, name: str, version: str, cache_root: Path,
                manifest: dict[str, Any]) -> Path:
    target = Path(cache_root) / _prefix(name, version)
    old = _cached_manifest(target)
    if old is not None and old.get("files") == manifest.get("files"):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        old_files = (old or {}).get("files", {})
        for rel, info in manifest.get("files", {}).items():
            dest = tmp / check_key(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if old_files.get(rel) == info and (target / rel).is_file():
                shutil.copy2(target / rel, dest)  # unchanged since the cached copy
            else:
                store.download(f"{_prefix(name, version)}/{rel}", dest)
            if dest.stat().st_size != info.get("size") or file_sha256(dest) != info.get("sha256"):
                raise CorruptVersion(f"model {name}/{version}: {rel} in {store.url} does not match its "
                                     "manifest's sha256")
        (tmp / CACHE_MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        if target.exists():  # a stale copy: move it aside, then put the new one in its place
            aside = target.parent / f".old-{version}-{uuid.uuid4().hex[:8]}"
            with contextlib.suppress(FileNotFoundError):
                target.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process of this data folder cached it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            if _cached_manifest(target) is None:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("model %s/%s fetched from %s into %s", name, version, store.url, target)
    return target
