"""The training loop as plain functions (``train_one_epoch``, ``evaluate``), the schedule and DDP set-up."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Where this process stands in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    return device


def setup_distributed(requested_device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (nccl on GPUs, gloo on the CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(requested_device)
    if world_size <= 1:
        return DistInfo(device=device)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    logger.info("distributed: rank %d/%d on %s", rank, world_size, device)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group."""
    if info.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def warmup_cosine(total_steps: int, warmup_steps: int, min_factor: float = 0.01) -> Callable[[int], float]:
    """LR factor for ``LambdaLR``: linear warmup to 1, then cosine decay to ``min_factor``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, progress))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(
    params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; known: ['adamw', 'sgd']")


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    max_grad_norm: float | None = None,
    progress: bool = False,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss, accuracy, images and images per second.

    The scheduler is stepped every batch. AMP (float16 autocast + gradient scaling) is used when a
    ``scaler`` is given and the device is CUDA.
    """
    from tqdm import tqdm

    model.train()
    use_amp = scaler is not None and device.type == "cuda"
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for batch in bar:
        if batch is None:  # every photo of the batch failed to decode
            continue
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(x)
            loss = criterion(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        if use_amp:
            assert scaler is not None
            scaler.scale(loss).backward()
            if max_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if max_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = len(y)
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == y).sum().item())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.3f}")
    elapsed = time.perf_counter() - start
    return {
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "images": seen,
        "seconds": elapsed,
        "images_per_second": seen / max(elapsed, 1e-9),
    }


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device,
    amp: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Logits and targets of every photo in ``loader`` (in loader order), with timing.

    Returns:
        (logits float32 (N, C), targets int64 (N,), {"images", "seconds", "images_per_second"}).
    """
    from tqdm import tqdm

    model.eval()
    outs, ys = [], []
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        if batch is None:
            continue
        x = batch[0].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        outs.append(logits.float().cpu())
        ys.append(batch[1].cpu())
    elapsed = time.perf_counter() - start
    logits_np = torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)
    targets = torch.cat(ys).numpy().astype(np.int64) if ys else np.zeros((0,), np.int64)
    return (
        logits_np,
        targets,
        {"images": len(targets), "seconds": elapsed, "images_per_second": len(targets) / max(elapsed, 1e-9)},
    )
