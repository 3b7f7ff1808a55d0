"""Training throughput benchmark: feature caching, cached-feature epochs against a full fine-tune, and a timed
end-to-end ``linear`` run.

Usage::

    python bench/train.py --data /path/to/lepidoptera100 [--device auto] [--photos 512] [--skip-linear]

Prints one table. On a GPU the same code runs the frozen prefix and the training in PyTorch (AMP) and also
samples GPU utilisation during the full fine-tune epoch (``torch.cuda.utilization``, needs pynvml).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from training import backbones
from training.backbones import Suffix
from training.data import PhotoDataset, collate_skip_none, load_data
from training.engine import select_device, train_one_epoch
from training.features import CachedLoader, cache_features
from training.pipeline import TrainConfig, input_spec_for, train
from training.transforms import EvalTransform, TrainTransform, worker_init_fn


def _gpu_sampler(device: torch.device, samples: list[float], stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            try:
                samples.append(float(torch.cuda.utilization(device)))
            except Exception:  # pynvml missing
                return
            time.sleep(0.2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ImageFolder root (train/ and valid/)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--photos", type=int, default=512, help="photos for the throughput measurements")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-linear", action="store_true", help="skip the end-to-end linear run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    data = load_data(Path(args.data))
    samples = data.splits["train"][:: max(1, len(data.splits["train"]) // args.photos)][: args.photos]
    config = TrainConfig(data=args.data, backbone=args.backbone)
    spec = input_spec_for(config)
    model = backbones.create_model(args.backbone, len(data.classes), input_size=spec.size)
    rows: list[tuple[str, str]] = []
    load = os.getloadavg()[0]
    print(
        f"# device {device} ({_device_name(device)}), "
        f"{os.cpu_count()} cores, torch {torch.__version__}, load average {load:.1f} at start"
    )

    with tempfile.TemporaryDirectory() as tmp:
        ci = data.class_index
        train_tf = TrainTransform(spec, seed=0)
        # 1. Caching: the frozen prefix (everything before the last 2 body stages) over augmented views.
        start = model.split_index("partial", 2)
        model.freeze_before(start)
        cache = cache_features(
            model,
            start,
            PhotoDataset(samples, ci, train_tf),
            views=1,
            cache_dir=Path(tmp),
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=device,
            progress=False,
        )
        engine = "ONNX Runtime" if device.type == "cpu" else "PyTorch AMP"
        rows.append(
            (
                f"feature caching, partial prefix ({engine}, decode+augment in {args.workers} workers)",
                f"{cache.images_per_second:.1f} images/s",
            )
        )
        # Baseline for the caching engine: the same prefix in eager PyTorch.
        model.eval().to(device)
        x = torch.stack([EvalTransform(spec)(img) for img in _first_images(samples, 32)]).to(device)
        with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
            model.forward_until(x[:4], start)
            t0 = time.perf_counter()
            model.forward_until(x, start)
            if device.type == "cuda":
                torch.cuda.synchronize()
        rows.append(
            (
                "  baseline: same prefix in eager PyTorch (batch 32, no decoding)",
                f"{len(x) / (time.perf_counter() - t0):.1f} images/s",
            )
        )

        # 2. One epoch on the cache (partial: last 2 stages + head) vs the pooled-feature head (linear).
        def cached_epoch_rate(split: int, features: Any) -> float:
            """Images/s of one training epoch of the trainable part after ``split`` on cached inputs."""
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            stats = train_one_epoch(Suffix(model, split).to(device), CachedLoader(features, 128, shuffle=True),
                                    torch.nn.CrossEntropyLoss(), optimizer, device=device)
            return float(stats["images_per_second"])

        rows.append(("training epoch, partial mode on cached activations",
                     f"{cached_epoch_rate(start, cache):.1f} images/s"))
        head = model.split_index("linear")
        model.freeze_before(head)
        pooled = cache_features(
            model,
            head,
            PhotoDataset(samples, ci, EvalTransform(spec)),
            views=1,
            cache_dir=Path(tmp),
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=device,
            progress=False,
        )
        rows.append(("training epoch, linear mode on cached pooled features",
                     f"{cached_epoch_rate(head, pooled):.0f} images/s"))

        # 3. Baseline: a full fine-tune epoch from photos (everything trainable, augmentation in workers).
        model.freeze_before(0)
        model.to(device)
        loader = torch.utils.data.DataLoader(
            PhotoDataset(samples[:256], ci, train_tf),
            batch_size=32,
            shuffle=True,
            num_workers=args.workers,
            collate_fn=collate_skip_none,
            worker_init_fn=worker_init_fn,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        util: list[float] = []
        stop = threading.Event()
        if device.type == "cuda":
            _gpu_sampler(device, util, stop)
        scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        stats = train_one_epoch(
            model, loader, torch.nn.CrossEntropyLoss(), optimizer, device=device, scaler=scaler
        )
        stop.set()
        rows.append(
            (
                "  baseline: full fine-tune epoch from photos (batch 32)",
                f"{stats['images_per_second']:.1f} images/s",
            )
        )
        if device.type == "cuda":
            rows.append(
                (
                    "  GPU utilisation during the full fine-tune epoch",
                    f"{statistics.mean(util):.0f}% mean" if util else "not measurable (pynvml missing)",
                )
            )
        else:
            rows.append(("  GPU utilisation", "not measured: no GPU on this machine"))

        # 4. End-to-end linear mode on the whole data set (cache, train, calibrate, export, evaluate).
        if not args.skip_linear:
            t0 = time.perf_counter()
            result = train(
                TrainConfig(
                    data=args.data,
                    out=str(Path(tmp) / "linear"),
                    backbone=args.backbone,
                    mode="linear",
                    views=1,
                    epochs=15,
                    lr=3e-3,
                    batch_size=256,
                    workers=args.workers,
                    threads=args.threads,
                    progress=False,
                    name="bench",
                    version="linear",
                    device=args.device,
                )
            )
            elapsed = time.perf_counter() - t0
            m = result["metrics"]
            rows.append(
                (
                    "linear mode end to end (cache 1 view, 15 epochs, calibrate, export, evaluate)",
                    f"{elapsed / 60:.1f} min ({'under' if elapsed < 600 else 'OVER'} 10 min); "
                    f"valid top-1 {m['top1']:.3f}, top-3 {m['top3']:.3f}, ECE {m['ece']:.3f}",
                )
            )
            rows.append(
                (
                    "  of which caching / head training",
                    f"{result['timings'].get('cache_seconds', 0):.0f} s / "
                    f"{result['timings']['train_seconds']:.0f} s",
                )
            )

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  result")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"# load average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def _first_images(samples: list, n: int) -> list:  # type: ignore[type-arg]
    from service.core.imaging import decode_image

    return [decode_image(s.path.read_bytes()).image for s in samples[:n]]


if __name__ == "__main__":
    sys.exit(main())
