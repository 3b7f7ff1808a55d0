"""Reference photos of a taxon: what the suggestion cards show to compare with.

First the photos of *validated* observations of the taxon (or of a taxon below it) whose licence allows reuse
with credit, newest first, one per observation, shown as small copies made on demand (no EXIF, so no
position leaks; cached per replica under ``data_dir/reference-thumbs``; the originals come from the media
store, the local folder or the S3 bucket). Then the bundled, licence-clear set shipped beside the models
(:mod:`service.core.references`, ``pollinid references build``). Photos of observations that are not
validated, or whose licence is not in :data:`REUSABLE_LICENCES`, are never listed nor served.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps
from pydantic import ValidationError
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from service.core.errors import InvalidImage, NotFound, PayloadTooLarge, UnsupportedMediaType
from service.core.imaging import DecodeLimits, decode_image
from service.core.references import FILE_PATTERN, INDEX_FILENAME, ReferenceIndex, ReferenceTaxon
from service.core.vocabulary import Licence, ObservationStatus
from service.observations.taxa import subtree_condition
from service.settings import Settings
from service.store.objects import ObjectMissing, StorageUnavailable, media_store
from service.store.storage import check_sha256, media_key
from service.store.tables import Observation, Photo, Taxon, TaxonLabel, User

logger = logging.getLogger(__name__)

# Every licence a volunteer can give allows showing the photo with credit in this non-commercial service
# (CC-BY-NC included); a licence added to the vocabulary later is not reused until it is listed here.
REUSABLE_LICENCES: frozenset[str] = frozenset({Licence.cc0.value, Licence.cc_by.value, Licence.cc_by_nc.value})
MAX_LIMIT = 12
THUMB_SIDE = 320
THUMB_QUALITY = 80
BUNDLED_URL = "/api/v1/reference-photos/bundled/"
OBSERVATION_URL = "/api/v1/reference-photos/observations/"
_FILE_RE = re.compile(FILE_PATTERN)
_THUMB_RE = re.compile(r"^([0-9a-f]{64})\.jpg$")

Source = Literal["observation", "bundled"]


@dataclass(frozen=True)
class ReferencePhoto:
    url: str
    width: int
    height: int
    credit: str
    licence: str
    source: Source
    taxon_id: int
    scientific_name: str
    observation_id: int | None = None


# -- the bundled set ------------------------------------------------------------------------------------


@dataclass
class BundledSet:
    folder: Path
    index: ReferenceIndex
    by_name: dict[str, ReferenceTaxon] = field(default_factory=dict)
    by_label: dict[str, ReferenceTaxon] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file → sha256

    def __post_init__(self) -> None:
        for entry in self.index.taxa:
            self.by_name.setdefault(entry.name.casefold(), entry)
            self.by_label.setdefault(entry.label, entry)
            for photo in entry.photos:
                self.files[photo.file] = photo.sha256

    def find(self, scientific_name: str, labels: list[str]) -> ReferenceTaxon | None:
        for label in labels:
            if label in self.by_label:
                return self.by_label[label]
        return self.by_name.get(scientific_name.casefold())


_cache: dict[Path, tuple[float, BundledSet | None]] = {}
_cache_lock = threading.Lock()


def bundled_set(folder: Path) -> BundledSet | None:
    """The bundled set in ``folder`` (read again when its index changes); None when there is none or it does
    not parse (logged: the cards then show the observations' photos only)."""
    path = folder / INDEX_FILENAME
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    with _cache_lock:
        cached = _cache.get(folder)
        if cached is not None and cached[0] == mtime:
            return cached[1]
    try:
        index = ReferenceIndex.model_validate(json.loads(path.read_text(encoding="utf-8")))
        result: BundledSet | None = BundledSet(folder, index)
    except (OSError, ValueError, ValidationError) as exc:
        logger.warning("the reference photos' index %s cannot be read: %s", path, exc)
        result = None
    with _cache_lock:
        _cache[folder] = (mtime, result)
    return result


def bundled_file(settings: Settings, name: str) -> tuple[Path, str]:
    """The file of a bundled photo and its sha256.

    Raises:
        NotFound: a name that is not a photo of the index (no path ever leaves the folder).
    """
    refs = bundled_set(settings.references_path) if _FILE_RE.fullmatch(name) else None
    sha = refs.files.get(name) if refs is not None else None
    path = settings.references_path / name
    if refs is None or sha is None or not path.is_file():
        raise NotFound(f"reference photo {name!r} not found")
    return path, sha


# -- photos of validated observations --------------------------------------------------------------------


def _eligible() -> list[ColumnElement[bool]]:
    return [Observation.status == ObservationStatus.validated.value,
            Observation.licence.in_(sorted(REUSABLE_LICENCES))]


def credit_for(observer: str, licence: str) -> str:
    return f"{observer}, {licence}" if licence == Licence.cc0.value else f"© {observer}, {licence}"


def _thumb_path(settings: Settings, sha256: str) -> Path:
    return settings.reference_thumbs_path / sha256[:2] / f"{sha256}.jpg"


def ensure_thumbnail(settings: Settings, sha256: str) -> Path:
    """The small copy of a stored photo (at most :data:`THUMB_SIDE` px a side, JPEG, no EXIF), made once.

    Raises:
        NotFound: the store has no such photo. StorageUnavailable: the store is down.
        InvalidImage (and the other decoding errors): the stored photo cannot be decoded.
    """
    path = _thumb_path(settings, sha256)
    if path.is_file():
        return path
    try:
        data = media_store(settings).open(media_key(sha256)).read()
    except ObjectMissing:
        raise NotFound(f"photo {sha256} not found") from None
    limits = DecodeLimits(max_bytes=max(settings.max_upload_bytes, len(data)), max_pixels=settings.max_image_pixels,
                          max_side=settings.max_image_side)
    image = decode_image(data, limits=limits, min_side=THUMB_SIDE).image  # oriented, RGB, EXIF dropped
    if max(image.size) > THUMB_SIDE:
        image = ImageOps.contain(image, (THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)  # concurrent makers write the same bytes; the last rename wins
    return path


def observation_thumbnail(session: Session, settings: Settings, name: str) -> tuple[Path, str]:
    """The small copy of a photo of a validated, reusable observation (``<sha256>.jpg``) and its sha256.

    Raises:
        NotFound: no such photo, or none of its observations is validated with a reusable licence (a photo
            waiting for specialists, or kept private, is never served here).
    """
    match = _THUMB_RE.fullmatch(name)
    sha256 = check_sha256(match.group(1)) if match else None
    found = None
    if sha256 is not None:
        found = session.scalar(
            select(Photo.id).join(Observation, Observation.id == Photo.observation_id)
            .where(Photo.sha256 == sha256, *_eligible()).limit(1))
    session.rollback()  # end the read before talking to the store
    if found is None or sha256 is None:
        raise NotFound(f"reference photo {name!r} not found")
    return ensure_thumbnail(settings, sha256), sha256


def _observation_photos(session: Session, settings: Settings, taxon: Taxon, limit: int) -> list[ReferencePhoto]:
    rows = session.execute(
        select(Photo.sha256, Observation.id, Observation.licence, User.name, Taxon.id, Taxon.scientific_name)
        .join(Observation, Observation.id == Photo.observation_id)
        .join(User, User.id == Observation.observer_id)
        .join(Taxon, Taxon.id == Observation.taxon_id)
        .where(*_eligible(), subtree_condition(Observation.taxon_id, taxon))
        .order_by(Observation.id.desc(), Photo.position)
        .limit(limit * 5)  # at most 5 photos an observation: enough rows for ``limit`` observations
    ).all()
    session.rollback()  # end the read before talking to the store
    out: list[ReferencePhoto] = []
    seen_obs: set[int] = set()
    seen_sha: set[str] = set()
    for sha, obs_id, licence, observer, taxon_id, name in rows:
        if obs_id in seen_obs or sha in seen_sha:
            continue
        try:
            path = ensure_thumbnail(settings, sha)
            with Image.open(path) as img:
                width, height = img.size
        except StorageUnavailable as exc:
            logger.warning("reference photos of taxon %s: the object store is down (%s)", taxon.id, exc.message)
            break
        except (NotFound, InvalidImage, UnsupportedMediaType, PayloadTooLarge, OSError) as exc:
            logger.warning("reference photo %s of observation %s skipped: %s", sha, obs_id, exc)
            continue
        seen_obs.add(obs_id)
        seen_sha.add(sha)
        out.append(ReferencePhoto(url=f"{OBSERVATION_URL}{sha}.jpg", width=width, height=height,
                                  credit=credit_for(observer, licence), licence=licence, source="observation",
                                  taxon_id=taxon_id, scientific_name=name, observation_id=obs_id))
        if len(out) >= limit:
            break
    return out


# -- both ---------------------------------------------------------------------------------------------------


def _bundled_photos(session: Session, settings: Settings, taxon: Taxon, limit: int) -> list[ReferencePhoto]:
    refs = bundled_set(settings.references_path)
    if refs is None or limit <= 0:
        return []
    nodes = list(session.execute(
        select(Taxon.id, Taxon.scientific_name)
        .where(or_(Taxon.id == taxon.id, Taxon.path.startswith(taxon.path, autoescape=True)))
        .order_by(Taxon.id != taxon.id, Taxon.scientific_name, Taxon.id)  # the taxon itself first
    ).all())
    labels: dict[int, list[str]] = {}
    for label, tid in session.execute(
            select(TaxonLabel.label, TaxonLabel.taxon_id).where(TaxonLabel.taxon_id.in_([n.id for n in nodes]))
            .order_by(TaxonLabel.label)):
        labels.setdefault(tid, []).append(label)
    found = [(tid, name, entry) for tid, name in nodes
             if (entry := refs.find(name, labels.get(tid, []))) is not None]
    out: list[ReferencePhoto] = []
    depth = 0
    # Round robin: a genus or family shows one photo of each of its species before a second of any.
    while len(out) < limit and any(depth < len(e.photos) for _, _, e in found):
        for tid, name, entry in found:
            if depth < len(entry.photos) and len(out) < limit:
                photo = entry.photos[depth]
                source = refs.index.sources[entry.source]
                out.append(ReferencePhoto(url=f"{BUNDLED_URL}{photo.file}", width=photo.width, height=photo.height,
                                          credit=source.credit, licence=source.licence.value, source="bundled",
                                          taxon_id=tid, scientific_name=name))
        depth += 1
    return out


def taxon_photos(session: Session, settings: Settings, taxon: Taxon, *, limit: int = 3) -> list[ReferencePhoto]:
    """Up to ``limit`` photos of ``taxon`` and the taxa below it: validated observations first, then the
    bundled set."""
    bundled = _bundled_photos(session, settings, taxon, limit)
    observed = _observation_photos(session, settings, taxon, limit)
    return [*observed, *bundled][:limit]
