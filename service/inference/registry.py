"""The model registry: which model versions exist, which one is active, and hot swaps between them.

Model versions live in ``<folder>/<name>/<version>/{model.onnx, model.json}`` and are recorded in the
``model_versions`` table; the row with ``active=True`` is the version every process serves. Two folders:
the releases (``models_dir``, the bundled read-only ``models/`` by default) and the trained versions
(``trained_dir``, under the data folder); a trained version registered in the database is found through its
row's path even by a registry that was not given ``trained_dir``. Each version has a state
(:mod:`service.inference.versions`): with nothing active, only a released (else gate-passed) version is activated by
default, and activating a candidate, a failed or a retired version needs ``force`` and a reason. A version is
validated (see :func:`service.inference.classifier.load_classifier`) before it can serve: a corrupt or mismatched
model is refused with :class:`~service.core.errors.InvalidModel` and the process keeps the version it had.

With an object store (``POLLINID_OBJECT_STORE_URL``, :mod:`service.store.model_objects`), trained versions
are shared through it: a version this process does not have on disk is downloaded into its cache folder
(``<data_dir>/model-cache``, every file checked against the stored sha256) when it is listed, activated or
served, and state changes are written into the stored card too. Releases stay local.

Swaps are atomic: the new session is built and warmed up first, then one reference is replaced. A
request holds the :class:`~service.inference.classifier.Classifier` it started with, so requests in flight finish
on the old session. Each process polls the database (:meth:`ModelRegistry.sync`) and picks up an
activation made by another process.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.core.errors import Conflict, InvalidModel, InvalidRequest, NotFound
from service.core.modelcard import CARD_FILENAME, ONNX_FILENAME, ModelCard
from service.inference.classifier import Classifier, ProviderUnavailable, RuntimeOptions, load_classifier
from service.inference.versions import DEFAULT_STATES, FORCE_STATES, Origin, VersionState, disk_state, write_card_state
from service.store.model_objects import CorruptVersion, fetch_version, stored_versions, update_file
from service.store.objects import ObjectStore, StorageUnavailable
from service.store.tables import ModelActivation, ModelVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """A model version folder found on disk; ``error`` says why it cannot serve (card-level checks)."""

    name: str
    version: str
    path: Path
    card: ModelCard | None
    error: str | None = None
    origin: str = Origin.release.value
    remote: bool = False  # a copy of a version in the object store, in this process's cache folder

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    def sort_key(self) -> tuple[Any, ...]:
        """Newest last: by the card's creation time, then by natural version order."""
        created = self.card.created.timestamp() if self.card is not None else 0.0
        return (created, _natural(self.version))


def _natural(text: str) -> tuple[tuple[int, Any], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p)


def read_entry(ver_dir: Path, origin: str = Origin.release.value) -> ModelEntry:
    """One ``<name>/<version>`` folder (its card read, not its network)."""
    card: ModelCard | None = None
    error: str | None = None
    try:
        card = ModelCard.load(ver_dir / CARD_FILENAME)
    except FileNotFoundError:
        error = f"no {CARD_FILENAME} (the model card)"
    except Exception as exc:
        error = f"the model card does not parse: {exc}"
    if card is not None and (card.name, card.version) != (ver_dir.parent.name, ver_dir.name):
        error = (f"the card says {card.name}/{card.version} but the folder is "
                 f"{ver_dir.parent.name}/{ver_dir.name}")
    return ModelEntry(ver_dir.parent.name, ver_dir.name, ver_dir, card, error, origin)


def scan_models(models_dir: Path, origin: str = Origin.release.value) -> list[ModelEntry]:
    """Every ``<name>/<version>`` folder holding a ``model.onnx``, oldest first.

    Only the card is read here; the full validation happens when a version is loaded.
    """
    entries: list[ModelEntry] = []
    if not models_dir.is_dir():
        return entries
    for name_dir in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for ver_dir in sorted(p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (ver_dir / ONNX_FILENAME).is_file():
                entries.append(read_entry(ver_dir, origin))
    entries.sort(key=ModelEntry.sort_key)
    return entries


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


class ModelRegistry:
    """Knows the model versions on disk and in the database, and holds the active classifier.

    Args:
        models_dir: the folder of released model versions (read only).
        sessionmaker: database sessions (the ``model_versions`` table).
        options: ONNX Runtime providers and thread counts.
        default_model: when no version is active, the newest released (else gate-passed) version of this
            model name is activated (else of any model).
        trained_dir: the folder retrain jobs write their versions into (scanned as well); trained versions
            recorded in the database are found through their rows in any case.
        object_store: where trained versions are shared between hosts (``models/`` of the object store), or
            None; ``cache_dir`` is where this process keeps the versions it downloads from it.
    """

    def __init__(self, models_dir: Path, sessionmaker: sessionmaker[Session], options: RuntimeOptions, *,
                 default_model: str | None = None, trained_dir: Path | None = None,
                 object_store: ObjectStore | None = None, cache_dir: Path | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.trained_dir = Path(trained_dir) if trained_dir is not None else None
        self.object_store = object_store
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.sessionmaker = sessionmaker
        self.options = options
        self.default_model = default_model
        self._current: Classifier | None = None
        self._lock = threading.RLock()  # serialises loads and swaps; reads of _current need no lock
        self._failed: dict[tuple[str, str], str] = {}  # versions that failed to load, and why
        self.last_error: str | None = None
        self.entries: list[ModelEntry] = []
        self._listeners: list[Any] = []

    # -- reading ----------------------------------------------------------------------------------------
    @property
    def current(self) -> Classifier | None:
        """The classifier serving now (one atomic reference read), or None when no model is loaded."""
        return self._current

    def on_swap(self, callback: Any) -> None:
        """Call ``callback(old, new)`` after every swap (used for metrics)."""
        self._listeners.append(callback)

    def list_versions(self) -> list[dict[str, Any]]:
        """Registered versions with their state, most recently registered first."""
        with self.sessionmaker() as session:
            rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())).all()
        current = self._current.key if self._current else None
        on_disk = {e.key: e for e in self.entries}
        out = []
        for row in rows:
            entry = on_disk.get((row.name, row.version))
            out.append({"name": row.name, "version": row.version, "path": row.path, "active": row.active,
                        "loaded": (row.name, row.version) == current,
                        "state": row.state, "origin": row.origin, "state_reason": row.state_reason,
                        "registered_at": row.registered_at, "activated_at": row.activated_at,
                        "error": self._failed.get((row.name, row.version)) or (entry.error if entry else
                                                                                 "missing from disk")})
        return out

    # -- disk and database ------------------------------------------------------------------------------
    def scan(self) -> list[ModelEntry]:
        """Scan both folders and record every version with a readable card in the database.

        A trained version with the name and version of a release is refused (the release wins).
        """
        releases = scan_models(self.models_dir, Origin.release.value)
        trained = (scan_models(self.trained_dir, Origin.trained.value)
                   if self.trained_dir is not None and not _same_dir(self.trained_dir, self.models_dir) else [])
        seen = {e.path.resolve() for e in releases + trained}
        try:
            with self.sessionmaker() as session:
                paths = [(str(r[0]), str(r[1] or "")) for r in session.execute(
                    select(ModelVersion.path, ModelVersion.origin).where(ModelVersion.origin == Origin.trained))]
        except Exception:  # the schema may predate the origin column during an upgrade
            logger.warning("cannot read the trained model versions from the database", exc_info=True)
            paths = []
        for path, _ in paths:
            folder = Path(path)
            if (folder / ONNX_FILENAME).is_file() and folder.resolve() not in seen:
                trained.append(read_entry(folder, Origin.trained.value))
                seen.add(folder.resolve())
        trained += self._stored_entries({e.key for e in releases + trained})
        release_keys = {e.key for e in releases}
        entries = list(releases)
        for entry in trained:
            if entry.key in release_keys:
                entry = ModelEntry(entry.name, entry.version, entry.path, entry.card,
                                   f"a released version {entry.name}/{entry.version} already exists: this trained "
                                   f"copy in {entry.path.parent.parent} is ignored", entry.origin)
            entries.append(entry)
        entries.sort(key=ModelEntry.sort_key)
        self.entries = entries
        for entry in self.entries:
            if entry.error:
                logger.warning("model %s/%s in %s cannot serve: %s", entry.name, entry.version, entry.path,
                               entry.error)
        valid = [e for e in self.entries if e.card is not None and e.error is None]
        for entry in valid:
            self._ensure_row(entry)
        return self.entries

    def _fetch(self, name: str, version: str, manifest: dict[str, Any] | None = None) -> Path | None:
        """The cached copy of a stored version (downloaded when missing or stale), None if not stored.

        Raises:
            InvalidModel: the stored files do not match their sha256.
            StorageUnavailable: the object store is down.
        """
        if self.object_store is None or self.cache_dir is None:
            return None
        try:
            return fetch_version(self.object_store, name, version, self.cache_dir, manifest=manifest)
        except CorruptVersion as exc:
            raise InvalidModel(str(exc)) from exc

    def _stored_entries(self, known: set[tuple[str, str]]) -> list[ModelEntry]:
        """The object store's versions that no local folder holds, from this process's cache."""
        if self.object_store is None or self.cache_dir is None:
            return []
        try:
            keys = stored_versions(self.object_store)
        except StorageUnavailable as exc:
            logger.warning("cannot list the model versions of the object store: %s", exc.message)
            return []
        out = []
        for key in keys:
            if key in known:
                continue
            try:
                folder = self._fetch(*key)
            except (StorageUnavailable, InvalidModel) as exc:
                logger.warning("model %s/%s of the object store not fetched: %s", *key, exc.message)
                continue
            if folder is not None:
                out.append(replace(read_entry(folder, Origin.trained.value), remote=True))
        return out

    def _store_state(self, name: str, version: str, state: str, reason: str | None) -> None:
        """Write a trained version's state into its card in the object store (the database stays the truth)."""
        if self.object_store is None:
            return

        def change(data: bytes) -> bytes:
            card = json.loads(data)
            card["status"], card["status_reason"] = state, reason
            return (json.dumps(card, indent=2) + "\n").encode()

        try:
            update_file(self.object_store, name, version, CARD_FILENAME, change)
        except (StorageUnavailable, ValueError) as exc:
            logger.warning("state of model %s/%s not written to the object store: %s", name, version, exc)

    def _local_folder(self, name: str, version: str, row_path: str) -> Path:
        for entry in self.entries:
            if entry.key == (name, version) and entry.remote:
                return entry.path
        return Path(row_path)

    def _ensure_row(self, entry: ModelEntry) -> None:
        assert entry.card is not None
        card_json = entry.card.model_dump(mode="json")
        for _ in range(3):  # several processes may register the same folder at once
            with self.sessionmaker() as session:
                row = session.scalar(select(ModelVersion).where(ModelVersion.name == entry.name,
                                                                ModelVersion.version == entry.version))
                if row is None:
                    session.add(ModelVersion(name=entry.name, version=entry.version, path=str(entry.path),
                                             active=False, card=card_json, origin=entry.origin,
                                             state=disk_state(entry.card, entry.path, entry.origin),
                                             state_changed_at=datetime.now(UTC)))
                elif ((row.path != str(entry.path) and not entry.remote) or row.card != card_json
                      or row.state is None or row.origin != entry.origin):
                    # A cached copy of a stored version keeps the row's path (the host that trained it).
                    if not entry.remote:
                        row.path = str(entry.path)
                    row.card, row.origin = card_json, entry.origin
                    if row.state is None:  # a row registered before states existed
                        row.state = disk_state(entry.card, entry.path, entry.origin)
                        row.state_changed_at = datetime.now(UTC)
                else:
                    return
                try:
                    session.commit()
                    return
                except IntegrityError:
                    session.rollback()
        logger.warning("could not register model %s/%s (concurrent registrations)", entry.name, entry.version)

    def _active_row(self) -> tuple[str, str] | None:
        with self.sessionmaker() as session:
            row = session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))
                                  .order_by(ModelVersion.activated_at.desc())).first()
            return (row.name, row.version) if row is not None else None

    def _folder(self, name: str, version: str) -> Path:
        """Where ``name/version`` lives: a scanned entry's folder, else its row's path, else a release's."""
        for entry in self.entries:
            if entry.key == (name, version) and entry.error is None:
                return entry.path
        try:
            with self.sessionmaker() as session:
                path = session.scalar(select(ModelVersion.path).where(ModelVersion.name == name,
                                                                      ModelVersion.version == version))
        except Exception:
            path = None
        if path and (Path(path) / ONNX_FILENAME).is_file():
            return Path(path)
        fetched = self._fetch(name, version)  # a version shared through the object store
        if fetched is not None:
            return fetched
        return self.models_dir / name / version

    def folder(self, name: str, version: str) -> Path:
        """The local folder of ``name/version`` (a stored version is fetched into the cache first)."""
        return self._folder(name, version)

    def _load(self, name: str, version: str) -> Classifier:
        folder = self._folder(name, version)
        if not (folder / ONNX_FILENAME).is_file():
            known = sorted(f"{e.name}/{e.version}" for e in self.scan())
            raise NotFound(f"model {name}/{version} is not in {self.models_dir}"
                           + (f" nor in {self.trained_dir}" if self.trained_dir else "") + f"; known: {known}")
        try:
            return load_classifier(folder, self.options, expected=(name, version))
        except ProviderUnavailable as exc:
            raise InvalidModel(f"{name}/{version}: {exc}") from exc

    def _swap(self, clf: Classifier, reason: str) -> None:
        with self._lock:
            old = self._current
            self._current = clf  # the one atomic reference swap
            self.last_error = None
        logger.info("serving model %s/%s on %s (%s)%s", clf.name, clf.version, clf.provider, reason,
                    f"; was {old.name}/{old.version}" if old else "")
        for cb in self._listeners:
            try:
                cb(old, clf)
            except Exception:  # a metrics hook must never break a swap
                logger.exception("model swap listener failed")

    def _mark_active(self, name: str, version: str, *, only_if_none: bool = False, force: bool = False,
                     user_id: int | None = None, reason: str | None = None) -> tuple[str, str]:
        """Make ``name/version`` the one active row and record who and why; return the active row after.

        With ``only_if_none``, another process's activation made meanwhile wins. A candidate, failed or
        retired version needs ``force`` (checked here, inside the transaction); a gate-passed one becomes
        released.

        Raises:
            Conflict: the version's state needs ``force``.
        """
        with self.sessionmaker() as session, session.begin():
            # Lock every row so that concurrent activations serialise (PostgreSQL); SQLite's
            # BEGIN IMMEDIATE already holds the write lock.
            session.execute(select(ModelVersion.id).with_for_update()).all()
            current = session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))
                                      .order_by(ModelVersion.activated_at.desc())).first()
            if only_if_none and current is not None:
                return (current.name, current.version)
            target = session.scalar(select(ModelVersion).where(ModelVersion.name == name,
                                                               ModelVersion.version == version))
            if target is None:
                folder = self._folder(name, version)
                entry = read_entry(folder, self._origin_of(folder))
                target = ModelVersion(name=name, version=version, path=str(folder), active=False,
                                      card=entry.card.model_dump(mode="json") if entry.card else {},
                                      origin=entry.origin, state=disk_state(entry.card, folder, entry.origin),
                                      state_changed_at=datetime.now(UTC))
                session.add(target)
                session.flush()
            state = target.state or VersionState.released.value
            if state in FORCE_STATES and not force:
                raise Conflict(f"model {name}/{version} is {state}: activating it needs force=true and a reason "
                               "(it is recorded)", detail={"state": state})
            session.execute(update(ModelVersion).where(ModelVersion.active.is_(True),
                                                       ModelVersion.id != target.id).values(active=False))
            target.active = True
            target.activated_at = datetime.now(UTC)
            session.add(ModelActivation(name=name, version=version, state=state, user_id=user_id,
                                        forced=bool(force and state in FORCE_STATES), reason=reason,
                                        previous=f"{current.name}/{current.version}" if current else None))
            promoted = state == VersionState.gate_passed.value
            if promoted:
                target.state = VersionState.released.value
                target.state_reason = reason or "activated after passing its gate"
                target.state_changed_at = datetime.now(UTC)
            folder_path, origin = Path(target.path), target.origin
        if promoted and origin == Origin.trained:
            why = reason or "activated after passing its gate"
            write_card_state(self._local_folder(name, version, str(folder_path)), VersionState.released.value,
                             reason=why)
            self._store_state(name, version, VersionState.released.value, why)
        if force and state in FORCE_STATES:
            logger.warning("model %s/%s activated by force although it is %s (user %s): %s", name, version, state,
                           user_id, reason)
        return (name, version)

    def _origin_of(self, folder: Path) -> str:
        try:
            if folder.resolve().is_relative_to(self.models_dir.resolve()):
                return Origin.release.value
        except OSError:
            pass
        return Origin.trained.value

    def states(self) -> dict[tuple[str, str], str]:
        """Each registered version's state."""
        with self.sessionmaker() as session:
            return {(str(r[0]), str(r[1])): str(r[2] or VersionState.released.value) for r in session.execute(
                select(ModelVersion.name, ModelVersion.version, ModelVersion.state))}

    def set_state(self, name: str, version: str, state: str, *, reason: str | None = None) -> None:
        """Record a version's new state in the database and, for a trained version, in its card.

        Raises:
            NotFound: no such registered version.
            Conflict: retiring the active version.
        """
        if state not in {s.value for s in VersionState}:
            raise InvalidRequest(f"unknown state {state!r}; known: {[s.value for s in VersionState]}")
        with self.sessionmaker() as session, session.begin():
            row = session.scalar(select(ModelVersion).where(ModelVersion.name == name,
                                                            ModelVersion.version == version).with_for_update())
            if row is None:
                raise NotFound(f"model {name}/{version} is not registered")
            if state == VersionState.retired and row.active:
                raise Conflict(f"model {name}/{version} is active: activate another version before retiring it")
            row.state, row.state_reason, row.state_changed_at = state, reason, datetime.now(UTC)
            folder, origin = self._local_folder(name, version, row.path), row.origin
        if origin == Origin.trained:
            write_card_state(folder, state, reason=reason)
            self._store_state(name, version, state, reason)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> Classifier | None:
        """Scan, then load the active version (activating a default one when none is active).

        Never raises for model problems: with no servable model the service starts, says so in the log,
        and reports not ready.
        """
        self.scan()
        active = self._active_row()
        if active is not None:
            try:
                self._swap(self._load(*active), "active in the database")
                return self._current
            except (InvalidModel, NotFound, StorageUnavailable) as exc:
                if not isinstance(exc, StorageUnavailable):  # the store may be back at the next poll
                    self._failed[active] = exc.message
                self.last_error = exc.message
                logger.error("the active model %s/%s cannot be served: %s; falling back to the newest valid "
                             "model without changing the database", active[0], active[1], exc.message)
        for entry in self._candidates():
            try:
                clf = self._load(entry.name, entry.version)
            except (InvalidModel, NotFound, StorageUnavailable) as exc:
                if not isinstance(exc, StorageUnavailable):
                    self._failed[entry.key] = exc.message
                self.last_error = exc.message
                logger.error("model %s/%s refused: %s", entry.name, entry.version, exc.message)
                continue
            if active is None:
                winner = self._mark_active(entry.name, entry.version, only_if_none=True,
                                           reason="no model was active: the newest released version")
                if winner != entry.key:  # another process activated something first: serve that
                    try:
                        self._swap(self._load(*winner), "activated by another process")
                        return self._current
                    except (InvalidModel, NotFound, StorageUnavailable) as exc:
                        logger.error("model %s/%s activated elsewhere cannot be served here: %s",
                                     winner[0], winner[1], exc.message)
                self._swap(clf, "no model was active: activated the newest valid version"
                           + (f" of default model {self.default_model!r}"
                              if self.default_model == entry.name else ""))
            else:
                self._swap(clf, "fallback: the active version cannot be served")
            return self._current
        if not self.entries:
            self.last_error = f"no model found in {self.models_dir}"
            logger.warning("no model found in %s (expected <name>/<version>/model.onnx + model.json): the "
                           "service runs, but /api/v1/identify answers 503 until a model is installed and "
                           "activated", self.models_dir)
        else:
            logger.error("no servable model in %s: /api/v1/identify answers 503 (last error: %s)",
                         self.models_dir, self.last_error)
        return None

    def _candidates(self) -> list[ModelEntry]:
        """Versions to try when none is active, best first: released ones, newest first, then gate-passed ones.

        Never a candidate, a version that failed its gate, or a retired one.
        """
        try:
            states = self.states()
        except Exception:
            logger.warning("cannot read model version states; only releases are considered", exc_info=True)
            states = {}
        valid = [e for e in self.entries if e.error is None and e.key not in self._failed]

        def state(e: ModelEntry) -> str:
            return states.get(e.key) or disk_state(e.card, e.path, e.origin)

        skipped = [f"{e.name}/{e.version} ({state(e)})" for e in valid if state(e) not in DEFAULT_STATES]
        if skipped:
            logger.info("not activated by default: %s", ", ".join(skipped))
        valid = [e for e in valid if state(e) in DEFAULT_STATES]
        if self.default_model:
            preferred = [e for e in valid if e.name == self.default_model]
            if not preferred:
                logger.warning("default model %r not found in %s; using the newest model found",
                               self.default_model, self.models_dir)
            else:
                valid = preferred
        ordered = list(reversed(valid))
        return sorted(ordered, key=lambda e: DEFAULT_STATES.index(state(e)))  # stable: newest first per state

    def activate(self, name: str, version: str, *, force: bool = False, user_id: int | None = None,
                 reason: str | None = None) -> Classifier:
        """Validate and load ``name/version``, make it the active row (recorded with who and why), swap it in.

        Raises:
            NotFound: no such folder.
            InvalidModel: the version cannot serve; the current version keeps serving.
            Conflict: the version is a candidate, failed its gate or is retired, and ``force`` is not set.
            InvalidRequest: ``force`` without a reason.
        """
        if force and not (reason and reason.strip()):
            raise InvalidRequest("activating with force needs a reason (it is recorded with your name)")
        with self._lock:
            try:
                clf = self._load(name, version)
            except InvalidModel as exc:
                logger.error("refused to activate %s/%s: %s (still serving %s)", name, version, exc.message,
                             f"{self._current.name}/{self._current.version}" if self._current else "nothing")
                raise
            self.scan()
            self._mark_active(name, version, force=force, user_id=user_id, reason=reason)
            self._failed.pop((name, version), None)
            self._swap(clf, "activated")
            return clf

    def sync(self) -> bool:
        """Pick up an activation made by another process. Returns True when the model was swapped."""
        try:
            active = self._active_row()
        except Exception:
            logger.warning("cannot read the active model from the database", exc_info=True)
            return False
        if active is None:
            return False
        current = self._current.key if self._current else None
        if active == current or active in self._failed:
            return False
        with self._lock:
            if self._current is not None and self._current.key == active:
                return False
            try:
                clf = self._load(*active)
            except StorageUnavailable as exc:  # try again at the next poll
                logger.warning("model %s/%s was activated but the object store is unavailable: %s", active[0],
                               active[1], exc.message)
                return False
            except (InvalidModel, NotFound) as exc:
                self._failed[active] = exc.message
                self.last_error = exc.message
                logger.error("model %s/%s was activated but cannot be served here: %s (still serving %s)",
                             active[0], active[1], exc.message,
                             f"{current[0]}/{current[1]}" if current else "nothing")
                return False
            self._swap(clf, "activated by another process")
            return True
