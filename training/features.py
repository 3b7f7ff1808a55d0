"""Cache the activations of a frozen network prefix once, then train the rest on the cache.

``linear`` mode caches pooled feature vectors; ``partial`` mode caches the activation before its trainable
stages, for several augmented views of every training photo (the views are fixed at caching time, and each
epoch draws one view per photo). On the CPU the frozen prefix runs in ONNX Runtime, several times faster
than eager PyTorch for mobile networks; on a GPU it runs in PyTorch with autocast.

A cache lives in ``<cache_dir>/<key>/`` where the key hashes the prefix's weights, the transform, the photo
list and the number of views, so an unchanged run reuses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.backbones import StagedNet
from training.data import PhotoDataset, collate_skip_none, data_fingerprint
from training.transforms import worker_init_fn

logger = logging.getLogger(__name__)


class _Prefix(nn.Module):
    def __init__(self, model: StagedNet, stop: int) -> None:
        super().__init__()
        self.model = model
        self.stop = stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_until(x, self.stop)


def prefix_digest(model: StagedNet, stop: int) -> str:
    """Hash of the frozen prefix's weights (part of the cache key)."""
    h = hashlib.sha256()
    for name, tensor in nn.ModuleList(model.stages[:stop]).state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class FeatureCache:
    """Cached activations: ``feats[v * n + i]`` is view ``v`` of photo ``i``."""

    feats: np.ndarray  # (views * n, ...) float16 (memory-mapped)
    labels: np.ndarray  # (n,) int64
    ok: np.ndarray  # (n,) bool: the photo decoded
    views: int
    path: Path
    images_per_second: float = 0.0
    reused: bool = False

    @property
    def n(self) -> int:
        return len(self.labels)


def _run_prefix_onnx(model: StagedNet, stop: int, sample: torch.Tensor, threads: int) -> Any:
    import onnxruntime as ort

    buf = io.BytesIO()
    prefix = _Prefix(model, stop).eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            prefix,
            (sample[:1],),
            buf,
            input_names=["input"],
            output_names=["features"],
            dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {"input": x.numpy()})[0]

    return run


def cache_features(
    model: StagedNet,
    stop: int,
    dataset: PhotoDataset,
    *,
    views: int,
    cache_dir: Path,
    batch_size: int = 64,
    num_workers: int = 2,
    device: torch.device | None = None,
    seed: int = 0,
    threads: int = 0,
    progress: bool = True,
    progress_callback: Any = None,
    clean_transform: Any = None,
) -> FeatureCache:
    """Run ``model.stages[:stop]`` over ``views`` passes of ``dataset`` and store the outputs.

    Args:
        model: the network; its prefix must be frozen (eval mode is set here).
        stop: index of the first stage that is *not* cached.
        dataset: photos with their transform (random for training views, the service's for evaluation).
        views: passes over the dataset (use 1 with a deterministic transform).
        cache_dir: parent folder of caches.
        batch_size, num_workers: DataLoader settings (workers decode and augment).
        device: ``cuda`` runs the prefix in PyTorch with autocast; ``cpu`` in ONNX Runtime.
        seed: base seed of the augmentations (view ``v`` uses ``seed + v``).
        threads: ONNX Runtime intra-op threads (0 = all cores).
        progress: show a tqdm bar.
        progress_callback: called as ``callback(done_images, total_images)``.
        clean_transform: when given, view 0 uses it instead of the dataset's transform (e.g. the evaluation
            transform: one view per photo laid out exactly as the service will see it).
    """
    from tqdm import tqdm

    device = device or torch.device("cpu")
    describe = getattr(dataset.transform, "describe", lambda: repr(dataset.transform))()
    key_doc = {
        "architecture": model.architecture,
        "stop": stop,
        "prefix": prefix_digest(model, stop),
        "transform": describe,
        "data": data_fingerprint(dataset.samples),
        "views": views,
        "seed": seed,
        "version": 1,
    }
    if dataset.min_side is not None:
        key_doc["min_side"] = dataset.min_side
    if clean_transform is not None:
        key_doc["clean_view"] = getattr(clean_transform, "describe", lambda: repr(clean_transform))()
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = Path(cache_dir) / key
    n = len(dataset)
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        logger.info("reusing feature cache %s (%d photos x %d views)", folder, n, views)
        return FeatureCache(
            np.load(folder / "feats.npy", mmap_mode="r"),
            np.load(folder / "labels.npy"),
            np.load(folder / "ok.npy"),
            views,
            folder,
            meta.get("images_per_second", 0.0),
            reused=True,
        )
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    labels = np.array([dataset.class_index[s.label] for s in dataset.samples], dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    feats: np.ndarray | None = None
    use_onnx = device.type == "cpu"
    runner = None
    total = views * n
    done = 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"caching {folder.name[:8]}", unit="img", disable=not progress)
    augment = dataset.transform
    for v in range(views):
        dataset.transform = clean_transform if (v == 0 and clean_transform is not None) else augment
        generator = torch.Generator().manual_seed(seed + v)
        if hasattr(dataset.transform, "rng"):
            import random

            dataset.transform.rng = random.Random(seed + v)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_skip_none,
            worker_init_fn=worker_init_fn,
            generator=generator,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        for batch in loader:
            if batch is None:
                continue
            x, _, idx = batch
            if use_onnx:
                if runner is None:
                    runner = _run_prefix_onnx(model, stop, x, threads)
                out = runner(x)
            else:
                with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
                    out = model.forward_until(x.to(device, non_blocking=True), stop).float().cpu().numpy()
            if feats is None:
                feats = np.lib.format.open_memmap(
                    folder / "feats.tmp.npy", mode="w+", dtype=np.float16, shape=(total, *out.shape[1:])
                )
            rows = v * n + idx.numpy()
            feats[rows] = out.astype(np.float16)
            ok[idx.numpy()] = True
            done += len(idx)
            bar.update(len(idx))
            if progress_callback is not None:
                progress_callback(done, total)
    bar.close()
    if feats is None:
        raise ValueError("no photo could be decoded; nothing to cache")
    elapsed = time.perf_counter() - start
    feats.flush()
    del feats
    (folder / "feats.tmp.npy").replace(folder / "feats.npy")
    np.save(folder / "labels.npy", labels)
    np.save(folder / "ok.npy", ok)
    ips = done / max(elapsed, 1e-9)
    (folder / "meta.json").write_text(
        json.dumps({**key_doc, "n": n, "images_per_second": ips, "seconds": elapsed}, indent=2, default=str)
    )
    logger.info("cached %d views in %.1fs (%.1f images/s) -> %s", done, elapsed, ips, folder)
    return FeatureCache(np.load(folder / "feats.npy", mmap_mode="r"), labels, ok, views, folder, ips)


class CachedLoader:
    """Batches of (features, label) drawn from a cache: one random view of each photo per epoch.

    Args:
        cache: the cache.
        batch_size: photos per batch.
        shuffle: shuffle photos each epoch (training).
        weights: per-photo sampling weights (class-balanced sampling draws with replacement).
        rank, world_size: DDP sharding (each process takes every ``world_size``-th photo).
        seed: base seed; the epoch set by :meth:`set_epoch` is added.
        in_memory: load the cache into RAM as float16 once (fast batches).
    """

    def __init__(
        self,
        cache: FeatureCache,
        batch_size: int,
        *,
        shuffle: bool = False,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        in_memory: bool = True,
    ) -> None:
        self.cache = cache
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.epoch = 0
        self.feats = torch.from_numpy(np.array(cache.feats)) if in_memory else None
        self.labels = torch.from_numpy(cache.labels)
        self.indices = torch.from_numpy(np.flatnonzero(cache.ok))
        self.dataset = self  # lets callers treat it like a DataLoader

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle and view draw (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
        idx = self.indices
        if self.weights is not None:
            w = self.weights[idx]
            order = idx[torch.multinomial(w, len(idx), replacement=True, generator=g)]
        elif self.shuffle:
            order = idx[torch.randperm(len(idx), generator=g)]
        else:
            order = idx
        per_rank = -(-len(order) // self.world_size)
        order = torch.cat([order, order[: per_rank * self.world_size - len(order)]])  # even shards
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = -(-len(self.indices) // self.world_size)
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        g = torch.Generator().manual_seed(self.seed + 104729 * self.epoch + 1)
        views = (
            torch.randint(0, self.cache.views, (len(order),), generator=g)
            if self.shuffle or self.weights is not None
            else torch.zeros(len(order), dtype=torch.long)
        )
        n = self.cache.n
        for start in range(0, len(order), self.batch_size):
            photos = order[start : start + self.batch_size]
            rows = views[start : start + self.batch_size] * n + photos
            if self.feats is not None:
                x = self.feats[rows].float()
            else:
                rows = torch.sort(rows).values  # memory-mapped reads want increasing rows
                x = torch.from_numpy(np.asarray(self.cache.feats[rows.numpy()])).float()
                photos = rows % n
            yield x, self.labels[photos]
