"""From labelled photos to a calibrated, evaluated, exported model: :func:`train` runs the whole recipe.

Steps: load and check the data; hold out a group-aware slice of the training photos (early stopping and
calibration); build the model and freeze what the mode says; optionally cache the frozen prefix's
activations; train with warmup + cosine, checkpoints every epoch and early stopping on the held-out NLL;
optional class-balanced fine-tune of the classifier; temperature scaling and the OOD energy threshold on
the held-out slice; export to ONNX (parity-checked) and evaluate the *exported* model through the
service's own classifier on the evaluation split; write the report.
"""

from __future__ import annotations

import csv
import json
import logging
import platform
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from service.core.modelcard import InputSpec, ModelCard
from service.core.preprocess import decode_min_side
from training import backbones
from training.calibration import calibrate, card_calibration, fit_energy_threshold, fit_temperature
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import (
    LabelledData,
    PhotoDataset,
    Sample,
    collate_skip_none,
    data_fingerprint,
    group_split,
    load_data,
)
from training.engine import (
    DistInfo,
    build_optimizer,
    cleanup_distributed,
    evaluate,
    select_device,
    setup_distributed,
    train_one_epoch,
    warmup_cosine,
)
from training.features import CachedLoader, cache_features
from training.losses import balanced_weights, build_criterion
from training.metrics import HEADLINE_METRICS
from training.transforms import AugmentConfig, EvalTransform, TrainTransform, worker_init_fn

if TYPE_CHECKING:
    from training.export import ExportResult

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run folder."""

    data: str | list[str]
    out: str = "runs/latest"
    valid: str | None = None
    image_root: str | None = None
    taxonomy: str | None = None
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    pretrained: bool = True
    mode: Literal["linear", "partial", "full"] = "partial"
    trainable_stages: int = 2
    cache: bool = True
    views: int = 6
    clean_view: bool = False
    cache_dir: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    taxonomy_smoothing: bool = False
    balanced_sampling: bool = False
    balanced_finetune_epochs: int = 0
    patience: int = 3
    holdout: float = 0.1
    calibrate_on: Literal["holdout", "valid"] = "holdout"
    ood_percentile: float = 1.0
    input_size: int | None = None
    resize: int | None = None
    resize_mode: Literal["shorter", "longer_pad", "stretch"] = "longer_pad"
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    dropout: float = 0.2
    augment: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    threads: int = 0
    resume: bool = False
    max_grad_norm: float | None = 5.0
    name: str = "model"
    version: str | None = None
    export_dir: str | None = None
    export_fp16: bool = False
    export_int8: bool = False
    mirror_tta: bool = False
    tta: bool = False
    fit_answers: bool = True
    answer_epochs: int | None = None
    answer_heldout_share: float = 0.2
    answer_precision: float = 0.98
    answer_max_heldout_species: float = 0.05
    progress: bool = True

    @property
    def data_sources(self) -> list[Path]:
        """The data sources: one path, or several merged (``--data A --data B``)."""
        return [Path(d) for d in ([self.data] if isinstance(self.data, str) else self.data)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, refusing unknown keys (they are usually typos)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def _code_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or None
    except Exception:
        return None


def input_spec_for(config: TrainConfig) -> InputSpec:
    """The card's input spec from the config (the architecture's pretraining size by default)."""
    size = config.input_size or backbones.default_input_size(config.backbone)
    resize = config.resize or (round(size * 256 / 224) if config.resize_mode == "shorter" else size)
    mean, std = backbones.default_normalization(config.backbone)
    return InputSpec(
        size=size,
        resize=resize,
        resize_mode=config.resize_mode,
        interpolation=config.interpolation,
        mean=tuple(config.mean) if config.mean else mean,
        std=tuple(config.std) if config.std else std,
    )


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    keys = list(history[0])
    for row in history[1:]:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, progress_callback: ProgressCallback | None = None) -> dict[str, Any]:
    """Run the whole recipe; see the module docstring.

    Args:
        config: the run's settings.
        progress_callback: called with ``{"stage", "progress" (0..1), "message", ...}`` as work advances.

    Returns:
        A summary: run folder, export folder, metrics on the evaluation split, calibration, timings.
    """
    dist = setup_distributed(config.device)
    try:
        return _train(config, dist, progress_callback)
    finally:
        cleanup_distributed(dist)


def _train(config: TrainConfig, dist: DistInfo, progress_callback: ProgressCallback | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    device = dist.device
    run = Path(config.out)
    main = dist.is_main
    progress = config.progress and main

    def report(stage: str, fraction: float, message: str, **extra: Any) -> None:
        logger.info("%s: %s", stage, message)
        if progress_callback is not None and main:
            progress_callback({"stage": stage, "progress": round(fraction, 4), "message": message, **extra})

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")

    # -- data ------------------------------------------------------------------------------------------
    report("data", 0.0, f"reading {config.data}")
    data: LabelledData = load_data(
        config.data_sources,
        valid=Path(config.valid) if config.valid else None,
        image_root=Path(config.image_root) if config.image_root else None,
        taxonomy_csv=Path(config.taxonomy) if config.taxonomy else None,
    )
    train_samples, held = group_split(data.splits["train"], config.holdout, seed=config.seed)
    eval_split, eval_samples = evaluation_split(data, held)
    calib_samples = held
    if config.calibrate_on == "valid":
        if not eval_split:
            raise ValueError("calibrate_on=valid needs a valid (or test) split")
        calib_samples = eval_samples
    if not held:
        raise ValueError("the held-out slice is empty; raise --holdout or add photos")
    classes, ci = data.classes, data.class_index
    report(
        "data",
        0.02,
        f"{len(classes)} classes; {len(train_samples)} training, {len(held)} held-out, "
        f"{len(eval_samples)} evaluation ({eval_split or 'held-out'}) photos",
        problems=data.report.lines(),
    )

    # -- model -----------------------------------------------------------------------------------------
    spec = input_spec_for(config)
    model = backbones.create_model(
        config.backbone,
        len(classes),
        pretrained=config.pretrained,
        weights=config.weights,
        input_size=spec.size,
        dropout=config.dropout,
    )
    start = model.split_index(config.mode, config.trainable_stages)
    model.freeze_before(start)
    model.to(device)
    train_tf = TrainTransform(spec, AugmentConfig(**config.augment), seed=config.seed)
    eval_tf = EvalTransform(spec)
    eval_min_side = decode_min_side(spec)  # decode evaluation photos exactly as the service does
    cached = config.cache and config.mode != "full" and start > 0
    targets_train = [ci[s.label] for s in train_samples]
    weights = balanced_weights(targets_train) if config.balanced_sampling else None
    cache_dir = Path(config.cache_dir) if config.cache_dir else run / "cache"
    timings: dict[str, float] = {}

    def photo_loader(
        samples: list[Any],
        transform: Any,
        *,
        shuffle: bool,
        sample_weights: Any = None,
        drop_last: bool = False,
    ) -> torch.utils.data.DataLoader:
        # Training views decode at full size (random crops may zoom in); evaluation as the service does.
        min_side = eval_min_side if isinstance(transform, EvalTransform) else None
        dataset = PhotoDataset(samples, ci, transform, min_side=min_side)
        sampler: Any = None
        if sample_weights is not None:
            sampler = torch.utils.data.WeightedRandomSampler(sample_weights, len(samples), replacement=True)
        elif dist.distributed and shuffle:
            sampler = torch.utils.data.distributed.DistributedSampler(
                dataset, dist.world_size, dist.rank, shuffle=True, seed=config.seed
            )
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=config.workers,
            collate_fn=collate_skip_none,
            worker_init_fn=worker_init_fn,
            pin_memory=device.type == "cuda",
            drop_last=drop_last,
            persistent_workers=config.workers > 0,
        )

    if cached:
        report(
            "cache",
            0.03,
            f"caching stage-{start} activations: {config.views} views x {len(train_samples)} photos",
        )
        t0 = time.perf_counter()
        cb = (
            (lambda done, total: report("cache", 0.03 + 0.4 * done / total, f"{done}/{total} views"))
            if progress_callback
            else None
        )
        caches = {}
        # Rank 0 builds the caches; the other processes wait, then reuse them (same keys).
        if dist.distributed and not main:
            torch.distributed.barrier()
        caches = build_caches(
            config,
            model,
            start,
            {"train": train_samples, "held": held, "eval": eval_samples, "calib": calib_samples},
            ci,
            cache_dir,
            device,
            progress=progress,
            progress_callback=cb,
        )
        if dist.distributed and main:
            torch.distributed.barrier()
        timings["cache_seconds"] = time.perf_counter() - t0
        timings["cache_images_per_second"] = caches["train"].images_per_second
        net: nn.Module = backbones.Suffix(model, start).to(device)
        train_loader: Any = CachedLoader(
            caches["train"],
            config.batch_size,
            shuffle=True,
            weights=weights,
            rank=dist.rank,
            world_size=dist.world_size,
            seed=config.seed,
        )
        held_loader: Any = CachedLoader(caches["held"], 256)
    else:
        net = model
        train_loader = photo_loader(
            train_samples,
            train_tf,
            shuffle=True,
            sample_weights=weights,
            drop_last=len(train_samples) > config.batch_size,
        )
        held_loader = photo_loader(held, eval_tf, shuffle=False)

    ddp_net: nn.Module = net
    if dist.distributed:
        ddp_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    criterion = build_criterion(classes, config.label_smoothing, data.taxonomy, config.taxonomy_smoothing).to(
        device
    )
    optimizer = build_optimizer(model.parameters(), config.optimizer, config.lr, config.weight_decay)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, round(config.warmup_epochs * steps_per_epoch))
    )
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None

    history: list[dict[str, Any]] = []
    best_nll, bad_epochs, first_epoch = float("inf"), 0, 0
    last_ckpt, best_ckpt = run / "last.pt", run / "best.pt"
    if config.resume and last_ckpt.is_file():
        state = load_checkpoint(last_ckpt, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        first_epoch, best_nll, bad_epochs = state["epoch"] + 1, state["best_nll"], state["bad_epochs"]
        history = state.get("history", [])
        report("train", 0.45, f"resumed from {last_ckpt} after epoch {state['epoch'] + 1}")

    from training.metrics import nll as nll_metric

    t_train = time.perf_counter()
    stopped_early = False
    for epoch in range(first_epoch, config.epochs):
        if bad_epochs >= config.patience:
            stopped_early = True
            break
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        elif isinstance(
            getattr(train_loader, "sampler", None), torch.utils.data.distributed.DistributedSampler
        ):
            train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(
            ddp_net,
            train_loader,
            criterion,
            optimizer,
            device=device,
            scheduler=scheduler,
            scaler=scaler,
            max_grad_norm=config.max_grad_norm,
            progress=progress,
            desc=f"epoch {epoch + 1}/{config.epochs}",
        )
        logits, y, _ = evaluate(net, held_loader, device=device, amp=config.amp)
        # Early stopping watches the held-out NLL after temperature scaling: label smoothing keeps the raw
        # logits under-confident, so their NLL can rise while the ranking (what calibration keeps) improves.
        held_temperature = fit_temperature(logits, y)
        held_nll = nll_metric(logits, y, held_temperature)
        held_acc = float((logits.argmax(1) == y).mean())
        improved = held_nll < best_nll - 1e-4
        best_nll, bad_epochs = (held_nll, 0) if improved else (best_nll, bad_epochs + 1)
        row = {
            "epoch": epoch + 1,
            "train_loss": round(stats["loss"], 5),
            "train_accuracy": round(stats["accuracy"], 5),
            "held_nll": round(held_nll, 5),
            "held_nll_uncalibrated": round(nll_metric(logits, y), 5),
            "held_temperature": round(held_temperature, 4),
            "held_accuracy": round(held_acc, 5),
            "lr": optimizer.param_groups[0]["lr"],
            "images": stats["images"],
            "seconds": round(stats["seconds"], 2),
            "images_per_second": round(stats["images_per_second"], 1),
        }
        history.append(row)
        if main:
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None,
                "best_nll": best_nll,
                "bad_epochs": bad_epochs,
                "history": history,
                "config": asdict(config),
                "classes": classes,
                "start_stage": start,
            }
            save_checkpoint(last_ckpt, state)
            if improved:
                save_checkpoint(best_ckpt, state)
            _write_history(run / "metrics.csv", history)
        report(
            "train",
            0.45 + 0.4 * (epoch + 1) / config.epochs,
            f"epoch {epoch + 1}: loss {stats['loss']:.3f}, held-out NLL {held_nll:.3f} (T-scaled), "
            f"acc {held_acc:.3f} ({stats['images_per_second']:.0f} img/s)",
            epoch=epoch + 1,
        )
    else:
        stopped_early = bad_epochs >= config.patience and len(history) < config.epochs
    timings["train_seconds"] = time.perf_counter() - t_train
    if dist.distributed:
        torch.distributed.barrier()
    if best_ckpt.is_file():
        model.load_state_dict(load_checkpoint(best_ckpt, map_location=device)["model"])

    # -- class-balanced fine-tune of the classifier (iNat 2018 winners' last step) ---------------------
    if config.balanced_finetune_epochs > 0 and main:
        report(
            "finetune",
            0.86,
            f"class-balanced fine-tune of the classifier, {config.balanced_finetune_epochs} epoch(s)",
        )
        head_start = model.split_index("linear")
        model.freeze_before(head_start)
        balanced = balanced_weights(targets_train)
        if cached:
            # Run the cached suffix up to the pooled features once per view draw: cheap and exact.
            ft_loader: Any = CachedLoader(
                caches["train"], config.batch_size, weights=balanced, seed=config.seed + 1
            )
            ft_net: nn.Module = backbones.Suffix(model, start)
        else:
            ft_loader = photo_loader(train_samples, train_tf, shuffle=True, sample_weights=balanced)
            ft_net = model
        ft_opt = build_optimizer(model.parameters(), config.optimizer, config.lr * 0.1, config.weight_decay)
        for e in range(config.balanced_finetune_epochs):
            if hasattr(ft_loader, "set_epoch"):
                ft_loader.set_epoch(1000 + e)
            train_one_epoch(
                ft_net,
                ft_loader,
                criterion,
                ft_opt,
                device=device,
                scaler=scaler,
                progress=progress,
                desc=f"balanced {e + 1}",
            )
        model.freeze_before(start)

    if not main:
        return {"rank": dist.rank}

    # -- calibration on held-out photos ----------------------------------------------------------------
    report(
        "calibrate",
        0.88,
        f"temperature scaling on {'valid' if config.calibrate_on == 'valid' else 'held-out'} photos",
    )
    # The exported network: the model, or the model averaged with its mirror image (calibrated as such, on
    # photos rather than on the cache, which holds no mirrored views).
    exported: nn.Module = backbones.MirrorAverage(model) if config.mirror_tta else model
    if config.mirror_tta:
        calib_loader: Any = photo_loader(calib_samples, eval_tf, shuffle=False)
        c_logits, c_y, _ = evaluate(exported, calib_loader, device=device, amp=config.amp)
    else:
        calib_loader = (
            CachedLoader(caches["calib"], 256) if cached else photo_loader(calib_samples, eval_tf, shuffle=False)
        )
        c_logits, c_y, _ = evaluate(net, calib_loader, device=device, amp=config.amp)
    calibration = calibrate(c_logits, c_y, ood_percentile=config.ood_percentile)
    report(
        "calibrate",
        0.9,
        f"T = {calibration['temperature']:.3f}; ECE {calibration['ece_before']:.4f} -> "
        f"{calibration['ece_after']:.4f}",
    )

    # -- committed-answer thresholds, fitted on classes held out of a second model ------------------------
    answers: dict[str, Any] | None = None
    if config.fit_answers and cached and len(classes) >= 3:
        report("answers", 0.9, "fitting the committed answer's thresholds on held-out classes")
        answers = fit_answer_thresholds(
            config, data, caches["train"], caches["held"], start, spec.size, device, eval_cache=caches["eval"]
        )
        timings["answer_fit_seconds"] = answers["seconds"]
        # The energy gate chosen with the thresholds, at the same percentile of this model's own held-out energy.
        calibration["ood_energy_threshold"] = fit_energy_threshold(
            c_logits, calibration["temperature"], answers["ood_percentile"]
        )
        if main:
            np.savez_compressed(run / "leave_out.npz", **answers.pop("arrays"))
        report("answers", 0.91, f"answer thresholds {answers['thresholds']}")
    elif config.fit_answers:
        logger.warning("answer thresholds are fitted on the feature cache (linear and partial modes) of three "
                       "or more classes; this run keeps the service's default threshold for every rank")

    # -- card, torch weights ---------------------------------------------------------------------------
    model.eval().cpu()
    version = config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    all_photos = [s for split in data.splits.values() for s in split]
    card = ModelCard(
        name=config.name,
        version=version,
        architecture=model.architecture,
        input=spec,
        labels=classes,
        taxonomy=data.taxonomy,
        calibration=card_calibration(
            calibration,
            answer_thresholds=answers["thresholds"] if answers else None,
            answer_fit=answers["fit"] if answers else None,
        ),
        training={
            "data_source": data.source,
            "data_hash": data_fingerprint(all_photos),
            "train_photos": len(train_samples),
            "heldout_photos": len(held),
            "evaluation_split": eval_split or "held-out",
            "evaluation_photos": len(eval_samples),
            "calibrated_on": "valid" if config.calibrate_on == "valid" else "held-out slice of train",
            "ood_percentile": config.ood_percentile,
            "config": asdict(config),
            "code_revision": _code_revision(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "epochs_run": len(history),
            "stopped_early": stopped_early,
            "data_problems": data.report.as_dict(),
            "calibration_nll": {"before": calibration["nll_before"], "after": calibration["nll_after"]},
            "test_time_augmentation": (
                "mirror: logits averaged over the photo and its mirror image, inside the graph (2x compute)"
                if config.mirror_tta
                else None
            ),
        },
    )
    save_checkpoint(
        run / "model.pt",
        {
            "model": model.state_dict(),
            "card": card.model_dump(mode="json"),
            "backbone": config.backbone,
            "dropout": config.dropout,
            "mirror_tta": config.mirror_tta,
        },
    )
    timings["total_before_export_seconds"] = time.perf_counter() - t_start

    # -- export + evaluation of the exported model -----------------------------------------------------
    from training.export import export_model

    export_dir = Path(config.export_dir) if config.export_dir else run / "export" / config.name / version
    report("export", 0.92, f"exporting to {export_dir}")
    result = export_model(
        exported.eval().cpu(),
        card,
        export_dir,
        fp16=config.export_fp16,
        int8=config.export_int8,
        **export_photos(eval_samples, held),
        overwrite=True,
    )
    report("evaluate", 0.95, f"evaluating the exported model on {len(eval_samples)} photos")
    evaluation = evaluate_export(
        export_dir,
        card,
        result,
        eval_samples,
        classes,
        eval_split=eval_split,
        history=history,
        calibration=calibration,
        timings=timings,
        problems=data.report.lines(),
        t_start=t_start,
        tta=config.tta,
        progress=progress,
    )
    metrics = evaluation["metrics"]
    if history:
        from training.report import plot_curves

        plot_curves(history, run / "curves.png")
    (run / "summary.json").write_text(
        json.dumps(
            {
                "export": str(export_dir),
                "metrics": card.metrics,
                "calibration": calibration,
                "timings": timings,
            },
            indent=2,
            default=str,
        )
    )
    report(
        "done",
        1.0,
        f"top-1 {metrics['top1']:.4f}, top-3 {metrics['top3']:.4f}, F1a {metrics['f1a']:.3f}, "
        f"ECE {metrics['ece']:.4f} on {len(eval_samples)} photos; model at {export_dir}",
    )
    return {
        "run": str(run),
        "export": str(export_dir),
        "name": config.name,
        "version": version,
        "metrics": {k: v for k, v in card.metrics.items() if k != "per_class"},
        "calibration": calibration,
        "timings": timings,
        "history": history,
        "data_problems": data.report.lines(),
    }


def evaluate_export(
    export_dir: Path,
    card: ModelCard,
    result: ExportResult,
    eval_samples: Sequence[Sample],
    classes: Sequence[str],
    *,
    eval_split: str | None,
    history: list[dict[str, Any]],
    calibration: dict[str, Any],
    timings: dict[str, float],
    problems: list[str],
    t_start: float,
    tta: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """The end of every export: evaluate the folder, fill ``card.metrics``, write the card and the report.

    The exported ``model.onnx`` is evaluated through the service's classifier on ``eval_samples`` (plus
    field-like composites, and TTA when asked), each quantized variant in ``result.variants`` too; then the
    card (``model.json`` and the copy embedded in every ONNX file) and ``report.*`` are written. Used by
    :func:`train` and by :func:`training.ensemble.run_ensemble`.

    Args:
        export_dir: the exported version folder.
        card: its card; ``metrics`` and ``training["timings"]`` / ``["parity_max_prob_diff"]`` are filled in.
        result: what :func:`training.export.export_model` returned.
        eval_samples: the evaluation photos.
        classes: the label list (checked against the card's).
        eval_split: the name of the evaluation split (``None``: the held-out slice).
        history: per-epoch rows for the report (empty when nothing was trained).
        calibration: the calibration block (:func:`training.calibration.calibrate`).
        timings: seconds so far; ``total_seconds`` is added.
        problems: data problems for the report.
        t_start: ``time.perf_counter()`` when the run started.
        tta: also evaluate with test-time augmentation.
        progress: show progress bars.

    Returns:
        The evaluation of ``model.onnx`` (:func:`training.evaluation.evaluate_model_dir`).
    """
    from training.evaluation import evaluate_model_dir
    from training.export import write_card
    from training.report import write_report

    evaluation = evaluate_model_dir(export_dir, eval_samples, classes, tta=tta, field=True, progress=progress)
    metrics = evaluation["metrics"]
    variants = {}
    for kind, path in result.variants.items():
        v = evaluate_model_dir(export_dir, eval_samples, classes, onnx_file=path.name, progress=progress)
        variants[kind] = {
            "file": path.name,
            "size_bytes": path.stat().st_size,
            "top1": v["metrics"]["top1"],
            "top3": v["metrics"]["top3"],
            "ece": v["metrics"]["ece"],
            "images_per_second": v["timing"]["images_per_second"],
        }
    timings["total_seconds"] = time.perf_counter() - t_start
    card.metrics = {k: metrics[k] for k in ("n", *HEADLINE_METRICS)}
    card.metrics["evaluation_split"] = eval_split or "held-out"
    card.metrics["per_class"] = metrics["per_class"]
    card.metrics["answers"] = summarize_answers(evaluation["answers"])
    if "field" in evaluation:
        fm = evaluation["field"]["metrics"]
        card.metrics["field_composites"] = {
            **{k: fm[k] for k in ("top1", "top3", "nll", "ece")},
            "description": evaluation["field"]["description"],
        }
    if "tta" in evaluation:
        card.metrics["tta"] = {k: evaluation["tta"]["metrics"][k] for k in ("top1", "top3", "nll", "ece")}
    if variants:
        card.metrics["variants"] = variants
    card.training["timings"] = {k: round(v, 2) for k, v in timings.items()}
    card.training["parity_max_prob_diff"] = result.max_prob_diff
    write_card(export_dir, card)
    write_report(
        export_dir,
        card=card,
        evaluation=evaluation,
        history=history,
        calibration=calibration,
        timings=timings,
        variants=variants,
        problems=problems,
    )
    return evaluation


def build_caches(
    config: TrainConfig,
    model: backbones.StagedNet,
    start: int,
    sets: dict[str, list[Sample]],
    class_index: dict[str, int],
    cache_dir: Path,
    device: torch.device,
    *,
    progress: bool = False,
    progress_callback: Any = None,
) -> dict[str, Any]:
    """The frozen prefix's activations of each photo set: ``config.views`` augmented views of ``train`` (view 0
    laid out as the service sees it with ``clean_view``), one service view of every other set. Built once,
    then found again by their key."""
    spec = input_spec_for(config)
    train_tf = TrainTransform(spec, AugmentConfig(**config.augment), seed=config.seed)
    eval_tf = EvalTransform(spec)
    caches = {}
    for key, samples in sets.items():
        tf: Any = train_tf if key == "train" else eval_tf
        caches[key] = cache_features(
            model,
            start,
            PhotoDataset(samples, class_index, tf, min_side=None if key == "train" else decode_min_side(spec)),
            views=config.views if key == "train" else 1,
            cache_dir=cache_dir,
            batch_size=64,
            num_workers=config.workers,
            device=device,
            seed=config.seed,
            threads=config.threads,
            progress=progress,
            progress_callback=progress_callback,
            clean_transform=eval_tf if (key == "train" and config.clean_view) else None,
        )
    return caches


def fit_answers_for_run(run: Path, model_dir: Path, *, epochs: int | None = None) -> dict[str, Any]:
    """Fit the committed answer's thresholds for a finished run and write them into its exported model.

    Re-creates the run's data, split and feature caches from ``RUN/config.json`` (the caches are found
    again when the run's cache folder is still there), trains the leave-classes-out model, and rewrites
    ``model.json`` and the card embedded in ``model.onnx``.
    """
    from training.evaluation import evaluate_model_dir
    from training.export import write_card
    from training.report import write_report

    config = TrainConfig.from_dict(json.loads((Path(run) / "config.json").read_text()))
    if epochs is not None:
        config.answer_epochs = epochs
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = select_device(config.device)
    data = load_data(
        config.data_sources,
        valid=Path(config.valid) if config.valid else None,
        image_root=Path(config.image_root) if config.image_root else None,
        taxonomy_csv=Path(config.taxonomy) if config.taxonomy else None,
    )
    train_samples, held = group_split(data.splits["train"], config.holdout, seed=config.seed)
    spec = input_spec_for(config)
    _seed_everything(config.seed)  # the same prefix weights as the run's, so its caches are found again
    model = backbones.create_model(
        config.backbone, len(data.classes), pretrained=config.pretrained, weights=config.weights,
        input_size=spec.size, dropout=config.dropout,
    )
    start = model.split_index(config.mode, config.trainable_stages)
    model.freeze_before(start)
    cache_dir = Path(config.cache_dir) if config.cache_dir else Path(run) / "cache"
    _, eval_samples = evaluation_split(data, held)
    sets = {"train": train_samples, "held": held, "eval": eval_samples}
    caches = build_caches(config, model, start, sets, data.class_index, cache_dir, device)
    answers = fit_answer_thresholds(
        config, data, caches["train"], caches["held"], start, spec.size, device, eval_cache=caches["eval"]
    )
    card = ModelCard.load(Path(model_dir))
    if card.labels != data.classes:
        raise ValueError(f"{model_dir} has other labels than the run's data; is it this run's model?")
    np.savez_compressed(Path(run) / "leave_out.npz", **answers.pop("arrays"))
    card.calibration.answer_thresholds = answers["thresholds"]
    card.calibration.answer_fit = answers["fit"]
    # The energy gate chosen with the thresholds, at the same percentile of this model's own held-out energy.
    calib_samples = eval_samples if config.calibrate_on == "valid" else held
    held_logits = evaluate_model_dir(Path(model_dir), calib_samples, data.classes)["logits"]
    card.calibration.ood_energy_threshold = fit_energy_threshold(
        held_logits, card.calibration.temperature, answers["ood_percentile"]
    )
    write_card(Path(model_dir), card)
    # The committed answers of the model itself, with its new thresholds, in the card and the report.
    evaluation = evaluate_model_dir(Path(model_dir), eval_samples, data.classes, field=True)
    card.metrics["answers"] = summarize_answers(evaluation["answers"])
    if "field" in evaluation and "field_composites" in card.metrics:
        card.metrics["field_composites"]["answers"] = summarize_answers(evaluation["field"]["answers"])
    write_card(Path(model_dir), card)
    write_report(
        Path(model_dir),
        card=card,
        evaluation=evaluation,
        history=_read_history(Path(run) / "metrics.csv"),
        timings=card.training.get("timings"),
        problems=data.report.lines(),
    )
    return answers


def _read_history(path: Path) -> list[dict[str, Any]]:
    """The per-epoch rows :func:`_write_history` wrote (numbers as numbers); none when the file is missing."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: float(v) if k != "epoch" else int(float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(fh)]


def fit_answer_thresholds(
    config: TrainConfig,
    data: LabelledData,
    train_cache: Any,
    held_cache: Any,
    start: int,
    input_size: int,
    device: torch.device,
    *,
    eval_cache: Any = None,
) -> dict[str, Any]:
    """Run :func:`training.leave_out.leave_classes_out` with the run's own recipe."""
    from training.leave_out import leave_classes_out

    return leave_classes_out(
        classes=data.classes,
        taxonomy=data.taxonomy,
        train_cache=train_cache,
        held_cache=held_cache,
        eval_cache=eval_cache,
        backbone=config.backbone,
        start=start,
        input_size=input_size,
        epochs=config.answer_epochs or max(1, config.epochs // 2),
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        taxonomy_smoothing=config.taxonomy_smoothing,
        dropout=config.dropout,
        weights=config.weights,
        pretrained=config.pretrained,
        share=config.answer_heldout_share,
        seed=config.seed,
        ood_percentile=config.ood_percentile,
        target_precision=config.answer_precision,
        max_heldout_species=config.answer_max_heldout_species,
        device=device,
    )


def summarize_answers(answers: dict[str, Any]) -> dict[str, Any]:
    """The committed answers' headline figures for the card (the report has them all)."""
    keys = ("precision", "coverage", "known_species_at_species", "no_insect_claimed_insect", "top1_by_order")
    out = {k: answers[k] for k in keys if k in answers}
    out["by_rank"] = {r: v for r, v in answers["by_rank"].items() if v["answered"]}
    return out


def evaluation_split(data: LabelledData, held: list[Sample]) -> tuple[str | None, list[Sample]]:
    """The split the exported model is evaluated on: ``test``, else ``valid``, else the held-out slice (``None``)."""
    name = "test" if data.splits.get("test") else "valid" if data.splits.get("valid") else None
    return name, (data.splits[name] if name else held)


def export_photos(eval_samples: Sequence[Sample], held: Sequence[Sample]) -> dict[str, list[Any]]:
    """The photos an export is checked with, as :func:`training.export.export_model` keyword arguments.

    ``photos``: up to 8 evaluation photos spread over the split (ONNX Runtime vs torch parity);
    ``calibration_photos``: the first 64 held-out photos (int8 calibration). Decoded as the service does;
    unreadable ones are left out.
    """

    def opened(samples: Sequence[Sample]) -> list[Any]:
        return [p for p in (_open_rgb(s.path) for s in samples) if p is not None]

    return {
        "photos": opened(eval_samples[:: max(1, len(eval_samples) // 8)][:8]),
        "calibration_photos": opened(held[:64]),
    }


def _open_rgb(path: Path) -> Any:
    from service.core.imaging import decode_image

    try:
        return decode_image(Path(path).read_bytes()).image
    except Exception:
        return None
