"""Identification: photos in, calibrated taxa out.

:func:`identify` is the one code path behind ``POST /api/v1/identify`` and behind the model's prediction
stored with each observation. Per request:

1. take the active :class:`~service.inference.classifier.Classifier` once (a swap during the request does not
   affect it: every photo runs on that model);
2. decode and preprocess every photo in the decode thread pool (never on the event loop), JPEGs with DCT
   scaling;
3. submit the tensors to the :class:`~service.inference.batching.MicroBatcher`, which runs them with other requests'
   photos in one ONNX Runtime call on its own thread;
4. calibrate (``softmax(logits / T)``), optionally restrict to a subtree (renormalised), fuse the photos,
   and roll the scores up the taxonomy.

**Fusion** is the mean of the photos' calibrated probabilities (not the mean of log-probabilities): one
blurred or badly framed photo lowers the confidence instead of vetoing the right answer, and the fused
scores stay calibrated probabilities that sum to one.

**Unknown species.** When the card has ``calibration.ood_energy_threshold`` and the photos' mean energy
score ``T * logsumexp(logits / T)`` is below it, the answer is flagged ``out_of_distribution`` and the
roll-up stops at genus or coarser, so an insect the model does not know never comes back as a confident
species (the ranked candidates are still listed, as candidates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import telemetry as metrics
from service.core.errors import InvalidRequest, ModelUnavailable, PayloadTooLarge, PollinidError
from service.core.imaging import DecodedImage, DecodeLimits, decode_image
from service.core.modelcard import InputSpec
from service.core.preprocess import decode_min_side, preprocess
from service.core.taxonomy import committed_answer, plain_answer, thresholds_for
from service.inference.batching import InferenceResult, MicroBatcher
from service.inference.classifier import Classifier, RuntimeOptions
from service.inference.registry import ModelRegistry
from service.inference.results import (
    IdentifyResponse,
    ModelRef,
    PhotoResult,
    RollupPublic,
    TaxonPublic,
    TaxonScore,
)
from service.settings import Settings

logger = logging.getLogger(__name__)

OOD_FINEST_RANK = "genus"


@dataclass
class PreparedPhoto:
    """A decoded, preprocessed photo ready for the network."""

    tensor: np.ndarray
    width: int
    height: int
    format: str
    draft_scale: int
    decode_ms: float


def decode_limits(settings: Settings) -> DecodeLimits:
    return DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels,
                        max_side=settings.max_image_side)


def prepare_photo(data: bytes, spec: InputSpec, limits: DecodeLimits) -> PreparedPhoto:
    """Decode untrusted bytes (DCT-scaled when far larger than needed) and preprocess them for ``spec``."""
    t0 = time.perf_counter()
    decoded = decode_image(data, limits=limits, min_side=decode_min_side(spec))
    return prepare_decoded(spec, decoded, t0)


def prepare_decoded(spec: InputSpec, decoded: DecodedImage, started: float) -> PreparedPhoto:
    """Preprocess a photo already decoded (at ``decode_min_side(spec)``) for ``spec``.

    The observation path decodes each upload once, for its metadata, and calls this on the same pixels;
    ``started`` is when that decode began (``time.perf_counter()``), for the timings.
    """
    tensor = preprocess(decoded.image, spec)
    ow, oh = decoded.original_size
    dw, dh = decoded.image.size
    if (dw > dh) != (ow > oh) and dw != dh:  # EXIF orientation turned the photo by 90 degrees
        ow, oh = oh, ow
    return PreparedPhoto(tensor=tensor, width=ow, height=oh, format=decoded.format,
                         draft_scale=decoded.draft_scale, decode_ms=(time.perf_counter() - started) * 1000.0)


# -- wiring (called from the app's lifespan) ------------------------------------------------------------


async def start_identification(state: Any, settings: Settings) -> None:
    """Create the registry (and load the active model), the batcher, the decode pool and the poller.

    ``state`` is ``app.state``; it must already hold ``sessionmaker``.
    """
    # Keep uploads up to the per-photo limit in memory instead of spooling them to a temporary file
    # (Starlette's default spools anything over 1 MiB to disk; the bytes are read back at once anyway).
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes)
    from service.store.objects import model_store

    registry = ModelRegistry(settings.models_dir, state.sessionmaker, RuntimeOptions.from_settings(settings),
                             default_model=settings.default_model, object_store=model_store(settings),
                             cache_dir=settings.model_cache_path)  # versions shared through the object store
    registry.on_swap(metrics.record_model_swap)
    metrics.MODEL_LOADED.set(0)
    await asyncio.to_thread(registry.start)
    batcher = MicroBatcher(max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                           eager=settings.batch_eager, on_batch=metrics.record_batch)
    batcher.start()
    workers = settings.decode_threads or os.cpu_count() or 2
    state.registry = registry
    state.batcher = batcher
    state.decode_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pollinid-decode")
    state.model_poller = asyncio.create_task(_poll_models(registry, settings.model_poll_seconds),
                                             name="pollinid-model-poller")


async def stop_identification(state: Any) -> None:
    """Stop the poller, finish queued batches and shut the pools down."""
    poller = getattr(state, "model_poller", None)
    if poller is not None:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    batcher = getattr(state, "batcher", None)
    if batcher is not None:
        await asyncio.to_thread(batcher.stop)
    pool = getattr(state, "decode_pool", None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


async def _poll_models(registry: ModelRegistry, interval: float) -> None:
    """Pick up activations made by other processes sharing the database."""
    while True:
        await asyncio.sleep(max(0.05, interval))
        try:
            await asyncio.to_thread(registry.sync)
        except Exception:  # keep polling whatever happens
            logger.exception("model poll failed")


# -- identification -------------------------------------------------------------------------------------


def _taxon_public(clf: Classifier, key: str) -> TaxonPublic:
    cache: dict[Any, Any] = clf.cache.setdefault("taxon_public", {})
    found = cache.get(key)
    if found is None:
        node = clf.tree.nodes[key]
        ranks = {n.rank: n.name for n in clf.tree.lineage(key)[1:]}
        ranks.setdefault(node.rank, node.name)
        info = node.info
        found = TaxonPublic(label=node.label, scientific_name=node.name, common_name=node.common_name,
                            common_names=node.all_common_names(), rank=node.rank,
                            genus=ranks.get("genus") or (info.genus if info else None),
                            family=ranks.get("family") or (info.family if info else None),
                            order=ranks.get("order") or (info.order if info else None))
        cache[key] = found
    return found


def _allowed_mask(clf: Classifier, taxon: str) -> tuple[np.ndarray, TaxonPublic]:
    nodes = clf.tree.find(taxon.strip())
    if not nodes:
        raise InvalidRequest(
            f"unknown taxon {taxon!r}: model {clf.name}/{clf.version} knows no taxon of that name, label or "
            "common name", detail={"taxon": taxon})
    allowed: set[str] = set()
    for node in nodes:
        allowed |= clf.tree.descendant_labels(node.key)
    mask = np.array([lbl in allowed for lbl in clf.card.labels], dtype=bool)
    return mask, _taxon_public(clf, nodes[0].key)


def _restrict(probs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Zero the labels outside the subtree and renormalise each row."""
    if mask is None:
        return probs
    kept = probs * mask
    sums = kept.sum(axis=-1, keepdims=True)
    uniform = mask / max(1, int(mask.sum()))
    return np.where(sums > 0, kept / np.where(sums > 0, sums, 1.0), uniform)


def answer_thresholds(clf: Classifier, default: float) -> dict[str, float]:
    """The committed answer's per-rank thresholds: the card's fitted ones, else ``default`` everywhere."""
    cache: dict[Any, Any] = clf.cache.setdefault("answer_thresholds", {})
    if default not in cache:
        cache[default] = thresholds_for(clf.card.calibration.answer_thresholds, default)
    found: dict[str, float] = cache[default]
    return found


def answer_scores(clf: Classifier, probs: np.ndarray, k: int, threshold: float, ood: bool,
                  mask: np.ndarray | None = None) -> tuple[list[TaxonScore], RollupPublic | None]:
    """Top-k labels and the committed answer for one row of calibrated probabilities (see
    :func:`answer_logits`)."""
    labels = clf.card.labels
    candidates = np.flatnonzero(mask) if mask is not None else np.arange(len(labels))
    k = min(k, len(candidates))
    top = candidates[np.argpartition(-probs[candidates], k - 1)[:k]] if k < len(candidates) else candidates
    top = top[np.argsort(-probs[top], kind="stable")]
    results = [TaxonScore(taxon=_taxon_public(clf, clf.tree.label_key(labels[i])), score=float(probs[i]))
               for i in top]
    nonzero = np.flatnonzero(probs > 0)
    scores = {labels[i]: float(probs[i]) for i in nonzero}
    found = committed_answer(clf.tree, scores, answer_thresholds(clf, threshold),
                             finest_rank=OOD_FINEST_RANK if ood else None)
    roll = None
    if found is not None:
        roll = RollupPublic(taxon=_taxon_public(clf, found.key), rank=found.rank, score=round(found.score, 6),
                            kind=found.kind, answer=plain_answer(clf.tree, found))  # type: ignore[arg-type]
    return results, roll


@dataclass
class Answer:
    """What the model says about the photos of one individual (:func:`answer_logits`)."""

    results: list[TaxonScore]  # top-k of the fused scores
    rollup: RollupPublic | None  # the committed answer on the fused scores
    out_of_distribution: bool  # the photos' mean energy is below the card's threshold
    energies: np.ndarray  # per photo
    photo_ood: list[bool]
    photos: list[tuple[list[TaxonScore], RollupPublic | None]]  # per photo: top-k and committed answer


def answer_logits(clf: Classifier, logits: np.ndarray, top_k: int, threshold: float,
                  mask: np.ndarray | None = None) -> Answer:
    """From the logits of the photos of one individual to the answer: calibrate, restrict to the subtree
    ``mask``, gate unknown species by energy, fuse, and take the top-k and the committed answer (fused and
    per photo).

    The one answer path: ``/identify``, the prediction stored with an observation and ``pollinid predict``
    all call it.
    """
    probs = _restrict(clf.probabilities(logits), mask)
    energies = clf.energy(logits)
    gate = clf.card.calibration.ood_energy_threshold
    photo_ood = [bool(gate is not None and e < gate) for e in energies]
    fused_ood = bool(gate is not None and float(energies.mean()) < gate)
    results, rollup = answer_scores(clf, probs.mean(axis=0), top_k, threshold, fused_ood, mask)
    if len(probs) == 1:
        photos = [(results, rollup)]
    else:
        photos = [answer_scores(clf, p, top_k, threshold, ood, mask) for p, ood in zip(probs, photo_ood, strict=True)]
    return Answer(results=results, rollup=rollup, out_of_distribution=fused_ood, energies=energies,
                  photo_ood=photo_ood, photos=photos)


async def identify(state: Any, images: list[bytes], *, top_k: int, taxon: str | None,
                   filenames: list[str | None] | None = None) -> IdentifyResponse:
    """Identify the insect shown in 1–5 photos of one individual.

    Args:
        state: ``app.state`` (settings, registry, batcher, decode pool).
        images: the photos' bytes, untrusted.
        top_k: how many taxa to list (1..``settings.max_top_k``).
        taxon: restrict answers to this subtree (any taxon name, model label or common name of the active
            model's taxonomy); scores are renormalised within it.
        filenames: optional names of the photos, echoed in the per-photo results.

    Raises:
        InvalidRequest: wrong number of photos, ``top_k`` out of range, unknown ``taxon``.
        InvalidImage, UnsupportedMediaType, PayloadTooLarge: a photo that cannot be decoded.
        ModelUnavailable: no model is loaded.
    """
    t_start = time.perf_counter()
    settings: Settings = state.settings
    n = len(images)
    if n < 1:
        raise InvalidRequest("send at least one photo in the multipart field 'photos'")
    if n > settings.max_images:
        raise InvalidRequest(f"send at most {settings.max_images} photos of the same individual; got {n}",
                             detail={"max_images": settings.max_images, "received": n})
    if not 1 <= top_k <= settings.max_top_k:
        raise InvalidRequest(f"top_k must be between 1 and {settings.max_top_k}; got {top_k}",
                             detail={"min": 1, "max": settings.max_top_k, "received": top_k})
    for i, data in enumerate(images):
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"photo {i + 1} is {len(data)} bytes; the limit is "
                                  f"{settings.max_upload_bytes} bytes per photo",
                                  detail={"photo": i + 1, "limit_bytes": settings.max_upload_bytes})

    registry: ModelRegistry = state.registry
    clf = registry.current  # this request's model, whatever happens to the registry meanwhile
    if clf is None:
        raise ModelUnavailable("no model is loaded; the service cannot identify photos yet"
                               + (f" ({registry.last_error})" if registry.last_error else ""))
    mask, taxon_filter = _allowed_mask(clf, taxon) if taxon else (None, None)

    batcher: MicroBatcher = state.batcher
    loop = asyncio.get_running_loop()
    limits = decode_limits(settings)
    spec = clf.card.input
    names = list(filenames or []) + [None] * (n - len(filenames or []))
    batcher.expect(n)
    submitted = 0
    try:
        t_decode = time.perf_counter()
        outcomes = await asyncio.gather(
            *(loop.run_in_executor(state.decode_pool, prepare_photo, data, spec, limits) for data in images),
            return_exceptions=True)
        decode_wall = (time.perf_counter() - t_decode) * 1000.0
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, PollinidError):
                which = f"photo {i + 1}" + (f" ({names[i]})" if names[i] else "")
                raise type(outcome)(f"{which}: {outcome.message}", detail=outcome.detail) from outcome
            if isinstance(outcome, BaseException):
                raise outcome
        prepared: list[PreparedPhoto] = list(outcomes)  # type: ignore[arg-type]
        futures = []
        for photo in prepared:
            futures.append(batcher.submit(clf, photo.tensor, announced=True))
            submitted += 1
    finally:
        batcher.release(n - submitted)
    return await _answer(state, clf, prepared, futures, mask=mask, taxon_filter=taxon_filter, top_k=top_k,
                         names=names, t_start=t_start, decode_wall=decode_wall)


async def identify_prepared(state: Any, clf: Classifier, prepared: list[PreparedPhoto], *,
                            top_k: int) -> IdentifyResponse:
    """Identify photos already decoded and preprocessed for ``clf`` (by :func:`prepare_decoded`).

    The prediction stored with a new observation: the upload was decoded, and its limits checked, once
    by :func:`service.observations.photos.decode_uploads`; this only runs the model on those tensors.
    """
    t_start = time.perf_counter()
    n = len(prepared)
    batcher: MicroBatcher = state.batcher
    batcher.expect(n)  # the photos of one observation go into one batch
    futures = []
    try:
        for photo in prepared:
            futures.append(batcher.submit(clf, photo.tensor, announced=True))
    finally:
        batcher.release(n - len(futures))
    return await _answer(state, clf, prepared, futures, mask=None, taxon_filter=None, top_k=top_k,
                         names=[None] * n, t_start=t_start, decode_wall=sum(p.decode_ms for p in prepared))


async def _answer(state: Any, clf: Classifier, prepared: list[PreparedPhoto],
                  futures: list[asyncio.Future[InferenceResult]], *, mask: np.ndarray | None,
                  taxon_filter: TaxonPublic | None, top_k: int, names: list[str | None], t_start: float,
                  decode_wall: float) -> IdentifyResponse:
    """Wait for the logits, then calibrate, fuse and roll up: the answer for the photos of one individual."""
    settings: Settings = state.settings
    n = len(prepared)
    inferred: list[InferenceResult] = list(await asyncio.gather(*futures))

    t_post = time.perf_counter()
    answer = answer_logits(clf, np.stack([r.logits for r in inferred]), top_k, settings.rollup_threshold, mask)
    photo_ood = answer.photo_ood

    photos: list[PhotoResult] = []
    for i, (photo, res) in enumerate(zip(prepared, inferred, strict=True)):
        results, roll = answer.photos[i]
        photos.append(PhotoResult(
            index=i, filename=names[i], width=photo.width, height=photo.height, format=photo.format,
            draft_scale=photo.draft_scale, results=results, rollup=roll, energy=round(float(answer.energies[i]), 4),
            out_of_distribution=photo_ood[i],
            timings_ms={"decode": round(photo.decode_ms, 3), "queue": round(res.queue_ms, 3),
                        "inference": round(res.run_ms, 3), "batch_size": float(res.batch_size)}))
        metrics.DECODE_SECONDS.observe(photo.decode_ms / 1000.0)
    metrics.PHOTOS.inc(n)
    if any(photo_ood):
        metrics.OUT_OF_DISTRIBUTION.inc(sum(photo_ood))
    now = time.perf_counter()
    timings = {
        "decode": round(decode_wall, 3),
        "queue": round(max(r.queue_ms for r in inferred), 3),
        "inference": round(max(r.run_ms for r in inferred), 3),
        "postprocess": round((now - t_post) * 1000.0, 3),
        "total": round((now - t_start) * 1000.0, 3),
    }
    return IdentifyResponse(model=ModelRef(name=clf.name, version=clf.version), results=answer.results,
                            rollup=answer.rollup, out_of_distribution=answer.out_of_distribution,
                            taxon_filter=taxon_filter, images=photos, timings_ms=timings)
