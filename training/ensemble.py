"""Several trained runs as one model: ``pollinid ensemble``.

The members (``RUN/model.pt`` of several ``pollinid train`` runs, e.g. EfficientNet-Lite0 at 224 px and
Lite2 at 260 px) become one network, :class:`Ensemble`: the photo is preprocessed once, at the largest
member's input spec, each member sees it resized (bilinear) to its own size, and the ensemble averages the
members' *calibrated* probabilities (each member's logits divided by its own card's temperature). That
network is calibrated again as a whole (temperature and OOD energy threshold) on the members' held-out
slice, re-created from their cards, then exported, parity-checked, evaluated and reported exactly like a
trained model (:func:`training.pipeline.evaluate_export`), so the service serves it as any other version.

The output ("logits") is ``log(mean_i p_i) + mean_i E_i``, where ``p_i = softmax(z_i / T_i)`` and
``E_i = T_i * logsumexp(z_i / T_i)`` is member ``i``'s energy score. The added term is the same for every
class, so it changes no probability at any temperature (softmax is shift-invariant); it keeps the energy
score meaningful for the service's OOD gate, which ``log(mean p)`` alone would not (its logsumexp is 0
for every photo).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.core.modelcard import ModelCard
from service.core.preprocess import decode_min_side

logger = logging.getLogger(__name__)

#: The data options of a member's ``training["config"]`` that decide its split.
DATA_OPTIONS = ("data", "valid", "image_root", "taxonomy", "holdout", "seed")


class EnsembleError(ValueError):
    """The members cannot be combined, or one of them cannot be read (the message says which and why)."""


class Ensemble(nn.Module):
    """Members averaged in probability, each at its own input size and with its own temperature.

    Args:
        members: the member networks (logits out; possibly :class:`~training.backbones.MirrorAverage`).
        sizes: each member's input side in pixels.
        temperatures: each member's calibrated temperature.
        architectures: names for :attr:`architecture` (default: each member's ``architecture`` attribute).

    Attributes:
        input_size: the ensemble's input side: the largest member's.
        architecture: e.g. ``ensemble(efficientnet_lite0@224,efficientnet_lite2@260)``.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        sizes: Sequence[int],
        temperatures: Sequence[float],
        architectures: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not members or not len(members) == len(sizes) == len(temperatures):
            raise ValueError("an ensemble needs one size and one temperature per member, and members")
        if any(t <= 0 for t in temperatures):
            raise ValueError(f"temperatures must be positive, got {list(temperatures)}")
        self.members = nn.ModuleList(members)
        self.sizes = [int(s) for s in sizes]
        self.temperatures = [float(t) for t in temperatures]
        self.input_size = max(self.sizes)
        names = list(architectures or [getattr(m, "architecture", type(m).__name__) for m in members])
        self.architecture = "ensemble(" + ",".join(f"{a}@{s}" for a, s in zip(names, self.sizes, strict=True)) + ")"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, 3, input_size, input_size) -> (N, classes): log mean probability + mean energy."""
        log_probs, energies = [], []
        for member, size, t in zip(self.members, self.sizes, self.temperatures, strict=True):
            xi = x
            if size != self.input_size:
                xi = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            z = member(xi).float() / t
            log_probs.append(torch.log_softmax(z, dim=1))
            energies.append(t * torch.logsumexp(z, dim=1, keepdim=True))
        n = len(log_probs)
        mean_log_prob = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(n)
        return mean_log_prob + torch.stack(energies).mean(dim=0)


@dataclass
class Member:
    """A loaded member run."""

    path: Path
    module: nn.Module
    card: ModelCard
    mirror_tta: bool


def load_member(path: Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the exported network of a run from its ``model.pt`` (also what ``pollinid export`` does).

    Returns:
        (the network in eval mode, averaged with its mirror image when the run used ``--mirror-tta``; its card).

    Raises:
        EnsembleError: no such file, not a checkpoint, or a checkpoint without a model card.
    """
    return _load(Path(path))[:2]


def _load(path: Path) -> tuple[nn.Module, ModelCard, bool]:
    from training import backbones
    from training.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(path)
    except FileNotFoundError:
        raise EnsembleError(f"{path}: no such file; give a run's model.pt written by `pollinid train`") from None
    except Exception as exc:
        raise EnsembleError(f"{path}: not a readable pollinid checkpoint ({exc})") from exc
    if "card" not in state or "backbone" not in state:
        raise EnsembleError(f"{path} has no model card; use RUN/model.pt")
    card = ModelCard.model_validate(state["card"])
    model = backbones.create_model(
        state["backbone"],
        card.num_classes,
        pretrained=False,
        input_size=card.input.size,
        dropout=state.get("dropout", 0.0),
    )
    model.load_state_dict(state["model"])
    mirror = bool(state.get("mirror_tta"))
    module: nn.Module = backbones.MirrorAverage(model) if mirror else model
    return module.eval(), card, mirror


def _member_top1(member: Member) -> float | None:
    """The member's top-1: from its card, else from its run's ``summary.json`` (``model.pt`` is saved before
    the run's evaluation, so its card has no metrics)."""
    if "top1" in member.card.metrics:
        return member.card.metrics["top1"]
    summary = member.path.parent / "summary.json"
    try:
        return json.loads(summary.read_text())["metrics"]["top1"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_members(cards: Sequence[ModelCard], paths: Sequence[Path | str]) -> dict[str, Any]:
    """Refuse members that cannot be combined; return the data options their split was made with.

    The members must have the same labels in the same order and the same input normalisation and resize
    rule (one preprocessing feeds them all), and must have held out the same photos: same hold-out share,
    seed and data (``training.data_hash``), so that the ensemble is calibrated on photos none of them trained on.

    Raises:
        EnsembleError: naming the first member that differs from the first one, and how.
    """
    if len(cards) < 2:
        raise EnsembleError(f"an ensemble needs at least two members, got {len(cards)}")
    first, first_path = cards[0], paths[0]
    for card, path in zip(cards[1:], paths[1:], strict=True):
        where = f"member {path} differs from {first_path}"
        if card.labels != first.labels:
            if set(card.labels) == set(first.labels):
                raise EnsembleError(f"{where}: same labels in another order (the members' outputs must line up)")
            only_here = sorted(set(card.labels) - set(first.labels))[:5]
            only_there = sorted(set(first.labels) - set(card.labels))[:5]
            raise EnsembleError(
                f"{where}: different labels ({len(card.labels)} vs {len(first.labels)}; only in {path}: "
                f"{only_here}, only in {first_path}: {only_there})"
            )
        for key in ("mean", "std", "resize_mode"):
            mine, theirs = getattr(card.input, key), getattr(first.input, key)
            if mine != theirs:
                raise EnsembleError(f"{where}: input {key} {mine} vs {theirs} (one preprocessing feeds all members)")
    configs = []
    for card, path in zip(cards, paths, strict=True):
        config = card.training.get("config")
        if not isinstance(config, dict) or any(k not in config for k in ("data", "holdout", "seed")):
            raise EnsembleError(
                f"member {path}: its card has no training config (was it written by `pollinid train`?); "
                "the held-out slice cannot be re-created"
            )
        configs.append(config)
    for card, config, path in zip(cards[1:], configs[1:], paths[1:], strict=True):
        where = f"member {path} differs from {first_path}"
        for key in ("holdout", "seed"):
            if config[key] != configs[0][key]:
                raise EnsembleError(
                    f"{where}: {key} {config[key]} vs {configs[0][key]}; the members must hold out the same "
                    "photos (same --holdout and --seed) for the ensemble to be calibrated on unseen photos"
                )
        mine, theirs = card.training.get("data_hash"), first.training.get("data_hash")
        if mine and theirs and mine != theirs:
            raise EnsembleError(
                f"{where}: trained on other photos (data hash {mine} vs {theirs}); their held-out slices differ"
            )
    return {k: configs[0].get(k) for k in DATA_OPTIONS}


def run_ensemble(
    members: Sequence[Path | str],
    data: str | None,
    out: Path | str,
    *,
    name: str | None = None,
    version: str | None = None,
    valid: str | None = None,
    image_root: str | None = None,
    taxonomy: str | None = None,
    int8: bool = False,
    fp16: bool = False,
    tta: bool = False,
    ood_percentile: float = 1.0,
    threads: int = 0,
    workers: int = 0,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Combine trained runs into one calibrated, exported, evaluated model version folder.

    Args:
        members: two or more ``RUN/model.pt`` files.
        data: the photos (ImageFolder, manifest, COCO/iNat JSON); ``None``: the data the members were trained
            on, with the ``valid``/``image_root``/``taxonomy`` options of their run (from the first card).
            Given, the card's ``valid``/``image_root``/``taxonomy`` are not used: pass them again if needed.
        out: the version folder to write, e.g. ``models/NAME/VERSION`` (replaced if it exists).
        name: the card's model name (default: the first member's).
        version: the card's version (default: a UTC timestamp).
        valid, image_root, taxonomy: as for ``pollinid train`` (with ``data``).
        int8, fp16: also write quantized variants (evaluated too).
        tta: also evaluate with test-time augmentation.
        ood_percentile: percentile of held-out energy scores for the OOD gate.
        threads: torch threads (0 = all cores).
        workers: DataLoader workers for the calibration pass.
        batch_size: photos per batch in the calibration pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` for the calibration pass (export runs on the CPU).
        progress: show progress bars.

    Returns:
        ``{"export", "name", "version", "metrics" (without per-class rows), "calibration", "timings"}``.

    Raises:
        EnsembleError: a member cannot be read, or the members or the data do not fit together.
    """
    from training.calibration import calibrate, card_calibration
    from training.data import PhotoDataset, collate_skip_none, data_fingerprint, group_split, load_data
    from training.engine import evaluate, select_device
    from training.export import export_model
    from training.pipeline import _code_revision, evaluate_export, evaluation_split, export_photos
    from training.transforms import EvalTransform

    t_start = time.perf_counter()
    if threads > 0:
        torch.set_num_threads(threads)
    paths = [Path(p) for p in members]
    if len(paths) < 2:
        raise EnsembleError(f"an ensemble needs at least two members, got {len(paths)}")
    loaded = [Member(p, *_load(p)) for p in paths]
    cards = [m.card for m in loaded]
    options = check_members(cards, paths)
    labels = cards[0].labels
    if data is not None:
        options.update(data=data, valid=valid, image_root=image_root, taxonomy=taxonomy)

    # -- the members' split, re-created --------------------------------------------------------------
    logger.info("reading %s", options["data"])
    photos = load_data(
        Path(options["data"]),
        valid=Path(options["valid"]) if options["valid"] else None,
        image_root=Path(options["image_root"]) if options["image_root"] else None,
        taxonomy_csv=Path(options["taxonomy"]) if options["taxonomy"] else None,
    )
    if photos.classes != labels:
        raise EnsembleError(
            f"the labels of {options['data']} ({len(photos.classes)}) are not the members' ({len(labels)}); "
            "the members' held-out slice can only be re-created from the data they were trained on"
        )
    all_photos = [s for split in photos.splits.values() for s in split]
    data_hash = data_fingerprint(all_photos)
    if data_hash != cards[0].training.get("data_hash"):
        logger.warning(
            "the photos of %s are not exactly those the members were trained on (data hash %s vs %s): the "
            "held-out slice may differ from theirs",
            options["data"],
            data_hash,
            cards[0].training.get("data_hash"),
        )
    _, held = group_split(photos.splits["train"], float(options["holdout"]), seed=int(options["seed"]))
    if not held:
        raise EnsembleError("the held-out slice is empty; the ensemble has nothing to be calibrated on")
    eval_split, eval_samples = evaluation_split(photos, held)

    # -- the network; one preprocessing (the largest member's spec) ---------------------------------
    largest = max(range(len(loaded)), key=lambda i: cards[i].input.size)
    spec = cards[largest].input
    ensemble = Ensemble(
        [m.module for m in loaded],
        [c.input.size for c in cards],
        [c.calibration.temperature for c in cards],
        [c.architecture for c in cards],
    )

    # -- calibration on the held-out photos -----------------------------------------------------------
    try:
        dev = select_device(device)
    except ValueError as exc:
        raise EnsembleError(str(exc)) from None
    logger.info("calibrating %s on %d held-out photos (%s)", ensemble.architecture, len(held), dev)
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        PhotoDataset(held, photos.class_index, EvalTransform(spec), min_side=decode_min_side(spec)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skip_none,
    )
    logits, y, _ = evaluate(ensemble.to(dev), loader, device=dev, progress=progress, desc="calibrate")
    calibration = calibrate(logits, y, ood_percentile=ood_percentile)
    timings: dict[str, float] = {"calibration_seconds": time.perf_counter() - t0}
    logger.info(
        "T = %.3f; ECE %.4f -> %.4f", calibration["temperature"], calibration["ece_before"], calibration["ece_after"]
    )

    # -- card, export, evaluation, report -----------------------------------------------------------
    ensemble.eval().cpu()
    card = ModelCard(
        name=name or cards[0].name,
        version=version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        architecture=ensemble.architecture,
        input=spec,
        labels=labels,
        taxonomy=photos.taxonomy or cards[0].taxonomy,
        calibration=card_calibration(calibration),
        training={
            "ensemble_of": [
                {
                    "name": m.card.name,
                    "version": m.card.version,
                    "architecture": m.card.architecture,
                    "input_size": m.card.input.size,
                    "temperature": m.card.calibration.temperature,
                    "top1": _member_top1(m),
                    "mirror_tta": m.mirror_tta,
                    "checkpoint": str(m.path),
                }
                for m in loaded
            ],
            "combination": (
                "mean of the members' temperature-scaled probabilities; each member sees the input resized "
                "(bilinear) to its own size; output log(mean p) + mean member energy"
            ),
            "data_source": photos.source,
            "data_hash": data_hash,
            "data_options": options,
            "heldout_photos": len(held),
            "evaluation_split": eval_split or "held-out",
            "evaluation_photos": len(eval_samples),
            "calibrated_on": "held-out slice of train",
            "ood_percentile": ood_percentile,
            "code_revision": _code_revision(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "data_problems": photos.report.as_dict(),
            "calibration_nll": {"before": calibration["nll_before"], "after": calibration["nll_after"]},
        },
    )
    out = Path(out)
    logger.info("exporting to %s", out)
    t0 = time.perf_counter()
    result = export_model(
        ensemble,
        card,
        out,
        fp16=fp16,
        int8=int8,
        **export_photos(eval_samples, held),
        overwrite=True,
    )
    timings["export_seconds"] = time.perf_counter() - t0
    logger.info("evaluating the exported ensemble on %d photos", len(eval_samples))
    evaluate_export(
        out,
        card,
        result,
        eval_samples,
        labels,
        eval_split=eval_split,
        history=[],
        calibration=calibration,
        timings=timings,
        problems=photos.report.lines(),
        t_start=t_start,
        tta=tta,
        progress=progress,
    )
    return {
        "export": str(out),
        "name": card.name,
        "version": card.version,
        "metrics": {k: v for k, v in card.metrics.items() if k != "per_class"},
        "calibration": calibration,
        "timings": timings,
    }
