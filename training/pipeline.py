"""From labelled photos to a calibrated, evaluated, exported model: :func:`train` runs the whole recipe.

:func:`train` is a sequence of stages sharing one :class:`TrainingRun`:

1. :func:`start_run`: threads, seeds, the run folder and its ``config.json``;
2. :func:`load_photos`: load and check the data; hold out a group-aware slice of the training photos (early
   stopping and calibration); pick the evaluation split;
3. :func:`build_model`: the network, frozen before the stage the mode says;
4. :func:`build_loaders`: optionally cache the frozen prefix's activations, else decode photos;
5. :func:`fit`: warmup + cosine, checkpoints every epoch and early stopping on the held-out NLL;
6. :func:`balanced_finetune`: optional class-balanced fine-tune of the classifier;
7. :func:`calibrate_model`: temperature scaling and the OOD energy threshold on the held-out slice;
8. :func:`fit_committed_answers`: the committed answer's per-rank thresholds, on classes held out of a second
   model;
9. :func:`make_card`: the model card and ``model.pt``;
10. :func:`export_and_evaluate`: export to ONNX (parity-checked) and evaluate the *exported* model through the
    service's own classifier on the evaluation split; write the card and the report;
11. :func:`write_summary`: curves and ``summary.json`` in the run folder.
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from service.core.modelcard import InputSpec, ModelCard
from service.core.preprocess import decode_min_side
from training import backbones
from training.calibration import calibrate, card_calibration, fit_energy_threshold, fit_temperature
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
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
from training.metrics import nll as nll_metric
from training.transforms import AugmentConfig, EvalTransform, TrainTransform, worker_init_fn

if TYPE_CHECKING:
    from training.export import ExportResult

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


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


def _load_config_data(config: TrainConfig) -> LabelledData:
    """The run's photos, as the config names them."""
    return load_data(
        config.data_sources,
        valid=Path(config.valid) if config.valid else None,
        image_root=Path(config.image_root) if config.image_root else None,
        taxonomy_csv=Path(config.taxonomy) if config.taxonomy else None,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, progress_callback: ProgressCallback | None = None) -> dict[str, Any]:
    """Run the whole recipe, stage by stage; see the module docstring.

    Args:
        config: the run's settings.
        progress_callback: called with ``{"stage", "progress" (0..1), "message", ...}`` as work advances.

    Returns:
        A summary: run folder, export folder, metrics on the evaluation split, calibration, timings.
    """
    dist = setup_distributed(config.device)
    try:
        run = TrainingRun(config, dist, progress_callback)
        start_run(run)
        load_photos(run)
        build_model(run)
        build_loaders(run)
        fit(run)
        balanced_finetune(run)
        if not run.main:
            return {"rank": dist.rank}
        calibrate_model(run)
        fit_committed_answers(run)
        make_card(run)
        export_and_evaluate(run)
        return write_summary(run)
    finally:
        cleanup_distributed(dist)


@dataclass
class TrainingRun:
    """What the stages of one :func:`train` run share: its settings, and what each stage made for the next.

    The attributes below ``timings`` are set by the stage named in their comment; the stages run in the
    order :func:`train` lists them.
    """

    config: TrainConfig
    dist: DistInfo
    progress_callback: ProgressCallback | None = None
    t_start: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    # load_photos
    data: LabelledData = field(init=False)
    train_samples: list[Sample] = field(init=False)
    held: list[Sample] = field(init=False)  # early stopping (and calibration, unless calibrate_on=valid)
    eval_split: str | None = field(init=False)  # None: the held-out slice
    eval_samples: list[Sample] = field(init=False)
    calib_samples: list[Sample] = field(init=False)
    # build_model
    spec: InputSpec = field(init=False)
    model: backbones.StagedNet = field(init=False)
    start: int = field(init=False)  # first trained stage
    train_tf: TrainTransform = field(init=False)
    eval_tf: EvalTransform = field(init=False)
    cached: bool = field(init=False)  # trains on the frozen prefix's cached activations
    # build_loaders
    caches: dict[str, Any] = field(default_factory=dict)
    net: nn.Module = field(init=False)  # what the loaders feed: the model, or its suffix after the cache
    train_loader: Any = field(init=False)
    held_loader: Any = field(init=False)
    # fit
    criterion: nn.Module = field(init=False)
    scaler: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    # calibrate_model, fit_committed_answers
    exported: nn.Module = field(init=False)  # the exported network (the model, or its mirror average)
    calib_logits: np.ndarray = field(init=False)
    calibration: dict[str, Any] = field(init=False)
    answers: dict[str, Any] | None = None
    # make_card, export_and_evaluate
    version: str = field(init=False)
    card: ModelCard = field(init=False)
    export_dir: Path = field(init=False)
    evaluation: dict[str, Any] = field(init=False)

    @property
    def folder(self) -> Path:
        return Path(self.config.out)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def main(self) -> bool:
        """This process writes the files (the only one, or rank 0 of several)."""
        return self.dist.is_main

    @property
    def progress(self) -> bool:
        """Show progress bars."""
        return self.config.progress and self.main

    def report(self, stage: str, fraction: float, message: str, **extra: Any) -> None:
        """Log a step, and tell the progress callback (main process only)."""
        logger.info("%s: %s", stage, message)
        if self.progress_callback is not None and self.main:
            self.progress_callback({"stage": stage, "progress": round(fraction, 4), "message": message, **extra})

    def photo_loader(
        self,
        samples: list[Any],
        transform: Any,
        *,
        shuffle: bool,
        sample_weights: Any = None,
        drop_last: bool = False,
    ) -> torch.utils.data.DataLoader:
        """A loader of decoded photos (not the cache)."""
        config, dist = self.config, self.dist
        # Training views decode at full size (random crops may zoom in); evaluation as the service does.
        min_side = decode_min_side(self.spec) if isinstance(transform, EvalTransform) else None
        dataset = PhotoDataset(samples, self.data.class_index, transform, min_side=min_side)
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
            pin_memory=self.device.type == "cuda",
            drop_last=drop_last,
            persistent_workers=config.workers > 0,
        )


# -- the stages, in the order train() runs them ------------------------------------------------------------


def start_run(run: TrainingRun) -> None:
    """Threads, seeds, the run folder and its ``config.json``."""
    config = run.config
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    if run.main:
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")


def load_photos(run: TrainingRun) -> None:
    """Load and check the data; hold out a group-aware slice of the training photos; pick the evaluation and
    calibration photos."""
    config = run.config
    run.report("data", 0.0, f"reading {config.data}")
    run.data = _load_config_data(config)
    run.train_samples, run.held = group_split(run.data.splits["train"], config.holdout, seed=config.seed)
    run.eval_split, run.eval_samples = evaluation_split(run.data, run.held)
    run.calib_samples = run.held
    if config.calibrate_on == "valid":
        if not run.eval_split:
            raise ValueError("calibrate_on=valid needs a valid (or test) split")
        run.calib_samples = run.eval_samples
    if not run.held:
        raise ValueError("the held-out slice is empty; raise --holdout or add photos")
    run.report(
        "data",
        0.02,
        f"{len(run.data.classes)} classes; {len(run.train_samples)} training, {len(run.held)} held-out, "
        f"{len(run.eval_samples)} evaluation ({run.eval_split or 'held-out'}) photos",
        problems=run.data.report.lines(),
    )


def build_model(run: TrainingRun) -> None:
    """The network, frozen before the first trained stage, and the photo transforms."""
    config = run.config
    run.spec = input_spec_for(config)
    run.model = backbones.create_model(
        config.backbone,
        len(run.data.classes),
        pretrained=config.pretrained,
        weights=config.weights,
        input_size=run.spec.size,
        dropout=config.dropout,
    )
    run.start = run.model.split_index(config.mode, config.trainable_stages)
    run.model.freeze_before(run.start)
    run.model.to(run.device)
    run.train_tf = TrainTransform(run.spec, AugmentConfig(**config.augment), seed=config.seed)
    run.eval_tf = EvalTransform(run.spec)
    run.cached = config.cache and config.mode != "full" and run.start > 0


def build_loaders(run: TrainingRun) -> None:
    """The training and held-out loaders: over the frozen prefix's cached activations (built once, then found
    again), or over decoded photos."""
    config, dist = run.config, run.dist
    targets_train = [run.data.class_index[s.label] for s in run.train_samples]
    weights = balanced_weights(targets_train) if config.balanced_sampling else None
    if not run.cached:
        run.net = run.model
        run.train_loader = run.photo_loader(
            run.train_samples,
            run.train_tf,
            shuffle=True,
            sample_weights=weights,
            drop_last=len(run.train_samples) > config.batch_size,
        )
        run.held_loader = run.photo_loader(run.held, run.eval_tf, shuffle=False)
        return
    cache_dir = Path(config.cache_dir) if config.cache_dir else run.folder / "cache"
    run.report(
        "cache",
        0.03,
        f"caching stage-{run.start} activations: {config.views} views x {len(run.train_samples)} photos",
    )
    t0 = time.perf_counter()
    cb = (
        (lambda done, total: run.report("cache", 0.03 + 0.4 * done / total, f"{done}/{total} views"))
        if run.progress_callback
        else None
    )
    # Rank 0 builds the caches; the other processes wait, then reuse them (same keys).
    if dist.distributed and not run.main:
        torch.distributed.barrier()
    sets = {"train": run.train_samples, "held": run.held, "eval": run.eval_samples, "calib": run.calib_samples}
    run.caches = build_caches(
        config,
        run.model,
        run.start,
        sets,
        run.data.class_index,
        cache_dir,
        run.device,
        progress=run.progress,
        progress_callback=cb,
    )
    if dist.distributed and run.main:
        torch.distributed.barrier()
    run.timings["cache_seconds"] = time.perf_counter() - t0
    run.timings["cache_images_per_second"] = run.caches["train"].images_per_second
    run.net = backbones.Suffix(run.model, run.start).to(run.device)
    run.train_loader = CachedLoader(
        run.caches["train"],
        config.batch_size,
        shuffle=True,
        weights=weights,
        rank=dist.rank,
        world_size=dist.world_size,
        seed=config.seed,
    )
    run.held_loader = CachedLoader(run.caches["held"], 256)


def fit(run: TrainingRun) -> None:
    """Train with warmup + cosine, a checkpoint every epoch and early stopping on the held-out NLL (after
    temperature scaling); resume from ``last.pt`` when asked; end on the best epoch's weights."""
    config, dist, device, model = run.config, run.dist, run.device, run.model
    ddp_net: nn.Module = run.net
    if dist.distributed:
        ddp_net = nn.parallel.DistributedDataParallel(
            run.net, device_ids=[device.index] if device.type == "cuda" else None
        )
    run.criterion = build_criterion(
        run.data.classes, config.label_smoothing, run.data.taxonomy, config.taxonomy_smoothing
    ).to(device)
    optimizer = build_optimizer(model.parameters(), config.optimizer, config.lr, config.weight_decay)
    steps_per_epoch = max(1, len(run.train_loader))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, round(config.warmup_epochs * steps_per_epoch))
    )
    run.scaler = scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None

    history = run.history
    best_nll, bad_epochs, first_epoch = float("inf"), 0, 0
    last_ckpt, best_ckpt = run.folder / "last.pt", run.folder / "best.pt"
    if config.resume and last_ckpt.is_file():
        state = load_checkpoint(last_ckpt, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        first_epoch, best_nll, bad_epochs = state["epoch"] + 1, state["best_nll"], state["bad_epochs"]
        history[:] = state.get("history", [])
        run.report("train", 0.45, f"resumed from {last_ckpt} after epoch {state['epoch'] + 1}")

    t_train = time.perf_counter()
    for epoch in range(first_epoch, config.epochs):
        if bad_epochs >= config.patience:
            run.stopped_early = True
            break
        train_loader = run.train_loader
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        elif isinstance(
            getattr(train_loader, "sampler", None), torch.utils.data.distributed.DistributedSampler
        ):
            train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(
            ddp_net,
            train_loader,
            run.criterion,
            optimizer,
            device=device,
            scheduler=scheduler,
            scaler=scaler,
            max_grad_norm=config.max_grad_norm,
            progress=run.progress,
            desc=f"epoch {epoch + 1}/{config.epochs}",
        )
        logits, y, _ = evaluate(run.net, run.held_loader, device=device, amp=config.amp)
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
        if run.main:
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
                "classes": run.data.classes,
                "start_stage": run.start,
            }
            save_checkpoint(last_ckpt, state)
            if improved:
                save_checkpoint(best_ckpt, state)
            _write_history(run.folder / "metrics.csv", history)
        run.report(
            "train",
            0.45 + 0.4 * (epoch + 1) / config.epochs,
            f"epoch {epoch + 1}: loss {stats['loss']:.3f}, held-out NLL {held_nll:.3f} (T-scaled), "
            f"acc {held_acc:.3f} ({stats['images_per_second']:.0f} img/s)",
            epoch=epoch + 1,
        )
    else:
        run.stopped_early = bad_epochs >= config.patience and len(history) < config.epochs
    run.timings["train_seconds"] = time.perf_counter() - t_train
    if dist.distributed:
        torch.distributed.barrier()
    if best_ckpt.is_file():
        model.load_state_dict(load_checkpoint(best_ckpt, map_location=device)["model"])


def balanced_finetune(run: TrainingRun) -> None:
    """A class-balanced fine-tune of the classifier (the iNat 2018 winners' last step), when asked."""
    config, model = run.config, run.model
    if not (config.balanced_finetune_epochs > 0 and run.main):
        return
    run.report(
        "finetune",
        0.86,
        f"class-balanced fine-tune of the classifier, {config.balanced_finetune_epochs} epoch(s)",
    )
    head_start = model.split_index("linear")
    model.freeze_before(head_start)
    balanced = balanced_weights([run.data.class_index[s.label] for s in run.train_samples])
    if run.cached:
        # Run the cached suffix up to the pooled features once per view draw: cheap and exact.
        ft_loader: Any = CachedLoader(run.caches["train"], config.batch_size, weights=balanced, seed=config.seed + 1)
        ft_net: nn.Module = backbones.Suffix(model, run.start)
    else:
        ft_loader = run.photo_loader(run.train_samples, run.train_tf, shuffle=True, sample_weights=balanced)
        ft_net = model
    ft_opt = build_optimizer(model.parameters(), config.optimizer, config.lr * 0.1, config.weight_decay)
    for e in range(config.balanced_finetune_epochs):
        if hasattr(ft_loader, "set_epoch"):
            ft_loader.set_epoch(1000 + e)
        train_one_epoch(
            ft_net,
            ft_loader,
            run.criterion,
            ft_opt,
            device=run.device,
            scaler=run.scaler,
            progress=run.progress,
            desc=f"balanced {e + 1}",
        )
    model.freeze_before(run.start)


def calibrate_model(run: TrainingRun) -> None:
    """Temperature scaling and the OOD energy threshold on the held-out (or valid) photos."""
    config = run.config
    run.report(
        "calibrate",
        0.88,
        f"temperature scaling on {'valid' if config.calibrate_on == 'valid' else 'held-out'} photos",
    )
    # The exported network: the model, or the model averaged with its mirror image (calibrated as such, on
    # photos rather than on the cache, which holds no mirrored views).
    run.exported = backbones.MirrorAverage(run.model) if config.mirror_tta else run.model
    if config.mirror_tta:
        calib_loader: Any = run.photo_loader(run.calib_samples, run.eval_tf, shuffle=False)
        c_logits, c_y, _ = evaluate(run.exported, calib_loader, device=run.device, amp=config.amp)
    else:
        calib_loader = (
            CachedLoader(run.caches["calib"], 256)
            if run.cached
            else run.photo_loader(run.calib_samples, run.eval_tf, shuffle=False)
        )
        c_logits, c_y, _ = evaluate(run.net, calib_loader, device=run.device, amp=config.amp)
    run.calib_logits = c_logits
    run.calibration = calibrate(c_logits, c_y, ood_percentile=config.ood_percentile)
    run.report(
        "calibrate",
        0.9,
        f"T = {run.calibration['temperature']:.3f}; ECE {run.calibration['ece_before']:.4f} -> "
        f"{run.calibration['ece_after']:.4f}",
    )


def fit_committed_answers(run: TrainingRun) -> None:
    """The committed answer's per-rank thresholds, fitted on classes held out of a second model (on the
    feature cache), and the energy gate chosen with them."""
    config = run.config
    if config.fit_answers and run.cached and len(run.data.classes) >= 3:
        run.report("answers", 0.9, "fitting the committed answer's thresholds on held-out classes")
        answers = fit_answer_thresholds(
            config,
            run.data,
            run.caches["train"],
            run.caches["held"],
            run.start,
            run.spec.size,
            run.device,
            eval_cache=run.caches["eval"],
        )
        run.timings["answer_fit_seconds"] = answers["seconds"]
        # The energy gate chosen with the thresholds, at the same percentile of this model's own held-out energy.
        run.calibration["ood_energy_threshold"] = fit_energy_threshold(
            run.calib_logits, run.calibration["temperature"], answers["ood_percentile"]
        )
        if run.main:
            np.savez_compressed(run.folder / "leave_out.npz", **answers.pop("arrays"))
        run.report("answers", 0.91, f"answer thresholds {answers['thresholds']}")
        run.answers = answers
    elif config.fit_answers:
        logger.warning("answer thresholds are fitted on the feature cache (linear and partial modes) of three "
                       "or more classes; this run keeps the service's default threshold for every rank")


def make_card(run: TrainingRun) -> None:
    """The model card, and the torch weights with it in ``model.pt``."""
    config, data, answers, calibration = run.config, run.data, run.answers, run.calibration
    run.model.eval().cpu()
    run.version = config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    all_photos = [s for split in data.splits.values() for s in split]
    run.card = ModelCard(
        name=config.name,
        version=run.version,
        architecture=run.model.architecture,
        input=run.spec,
        labels=data.classes,
        taxonomy=data.taxonomy,
        calibration=card_calibration(
            calibration,
            answer_thresholds=answers["thresholds"] if answers else None,
            answer_fit=answers["fit"] if answers else None,
        ),
        training={
            "data_source": data.source,
            "data_hash": data_fingerprint(all_photos),
            "train_photos": len(run.train_samples),
            "heldout_photos": len(run.held),
            "evaluation_split": run.eval_split or "held-out",
            "evaluation_photos": len(run.eval_samples),
            "calibrated_on": "valid" if config.calibrate_on == "valid" else "held-out slice of train",
            "ood_percentile": config.ood_percentile,
            "config": asdict(config),
            "code_revision": _code_revision(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "epochs_run": len(run.history),
            "stopped_early": run.stopped_early,
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
        run.folder / "model.pt",
        {
            "model": run.model.state_dict(),
            "card": run.card.model_dump(mode="json"),
            "backbone": config.backbone,
            "dropout": config.dropout,
            "mirror_tta": config.mirror_tta,
        },
    )
    run.timings["total_before_export_seconds"] = time.perf_counter() - run.t_start


def export_and_evaluate(run: TrainingRun) -> None:
    """Export to ONNX (parity-checked), then evaluate the *exported* model through the service's own
    classifier on the evaluation split and write the card and the report (:func:`evaluate_export`)."""
    from training.export import export_model

    config = run.config
    run.export_dir = Path(config.export_dir) if config.export_dir else run.folder / "export" / config.name / run.version
    run.report("export", 0.92, f"exporting to {run.export_dir}")
    result = export_model(
        run.exported.eval().cpu(),
        run.card,
        run.export_dir,
        fp16=config.export_fp16,
        int8=config.export_int8,
        **export_photos(run.eval_samples, run.held),
        overwrite=True,
    )
    run.report("evaluate", 0.95, f"evaluating the exported model on {len(run.eval_samples)} photos")
    run.evaluation = evaluate_export(
        run.export_dir,
        run.card,
        result,
        run.eval_samples,
        run.data.classes,
        eval_split=run.eval_split,
        history=run.history,
        calibration=run.calibration,
        timings=run.timings,
        problems=run.data.report.lines(),
        t_start=run.t_start,
        tta=config.tta,
        progress=run.progress,
    )


def write_summary(run: TrainingRun) -> dict[str, Any]:
    """The learning curves and ``summary.json`` in the run folder; the run's summary."""
    card, metrics = run.card, run.evaluation["metrics"]
    if run.history:
        from training.report import plot_curves

        plot_curves(run.history, run.folder / "curves.png")
    (run.folder / "summary.json").write_text(
        json.dumps(
            {
                "export": str(run.export_dir),
                "metrics": card.metrics,
                "calibration": run.calibration,
                "timings": run.timings,
            },
            indent=2,
            default=str,
        )
    )
    run.report(
        "done",
        1.0,
        f"top-1 {metrics['top1']:.4f}, top-3 {metrics['top3']:.4f}, F1a {metrics['f1a']:.3f}, "
        f"ECE {metrics['ece']:.4f} on {len(run.eval_samples)} photos; model at {run.export_dir}",
    )
    return {
        "run": str(run.folder),
        "export": str(run.export_dir),
        "name": run.config.name,
        "version": run.version,
        "metrics": {k: v for k, v in card.metrics.items() if k != "per_class"},
        "calibration": run.calibration,
        "timings": run.timings,
        "history": run.history,
        "data_problems": run.data.report.lines(),
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
    data = _load_config_data(config)
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
