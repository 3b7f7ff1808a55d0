"""The training run's settings, :class:`TrainConfig`, and the ``pollinid train`` flags derived from it.

Each field carries its command-line flag in its metadata (:func:`flag`): the help text, and where the
default guess is wrong the flag's name or how its text is parsed. :func:`add_arguments` adds one argparse
argument per field and :func:`config_values` reads them back, so a new field is one line here and shows up
in ``pollinid train --help`` and in ``config.json`` at once.

Torch-free: the command line builds its parser from this module (``pollinid serve`` runs without PyTorch).
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

FLAG = "flag"  # the metadata key of a field's command-line description


@dataclass(frozen=True)
class Flag:
    """How a :class:`TrainConfig` field appears on the command line.

    Attributes:
        help: the help text (the default is appended to it when the field has one).
        name: the flag; default ``--field-name``, and for a boolean that defaults to true ``--no-field-name``.
        parse: turns the flag's text into the value (argparse ``type``); default: from the field's type.
        repeat: the flag may be given several times; the values are collected in a list.
        required: the flag must be given.
    """

    help: str | None = None
    name: str | None = None
    parse: Callable[[str], Any] | None = None
    repeat: bool = False
    required: bool = False


def flag(help: str | None = None, **options: Any) -> dict[str, Flag]:
    """A field's metadata naming its command-line flag (:class:`Flag` arguments as keywords)."""
    return {FLAG: Flag(help, **options)}


def triple(text: str) -> list[float]:
    """``"0.5,0.5,0.5"`` -> three floats (the flag type of --mean/--std; the card checks std > 0)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}")
    return values


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run folder."""

    data: str | list[str] = field(metadata=flag(
        "ImageFolder root, CSV manifest or COCO/iNat JSON; give it several times to merge sources",
        repeat=True, required=True))
    out: str = field(default="runs/latest", metadata=flag("run folder (checkpoints, config, curves)"))
    valid: str | None = field(default=None, metadata=flag("a second manifest/JSON for the validation split"))
    image_root: str | None = field(default=None, metadata=flag("folder COCO file names are relative to"))
    taxonomy: str | None = field(default=None, metadata=flag(
        "taxonomy CSV (label,scientific_name,common_name,rank,genus,family,...)"))
    backbone: str = field(default="efficientnet_lite0", metadata=flag(
        "efficientnet_lite0/1/2, torchvision:<arch>, timm:<arch>, tiny_cnn"))
    weights: str | None = field(default=None, metadata=flag(
        "pretrained weights file (torchvision/timm backbones need one)"))
    pretrained: bool = field(default=True, metadata=flag("start from random weights"))
    mode: Literal["linear", "partial", "full"] = field(default="partial", metadata=flag("what is trained"))
    trainable_stages: int = field(default=2, metadata=flag("body stages trained in partial mode"))
    cache: bool = field(default=True, metadata=flag("do not cache the frozen prefix's activations (linear/partial)"))
    views: int = field(default=6, metadata=flag("augmented views cached per training photo"))
    clean_view: bool = field(default=False, metadata=flag(
        "make the first cached view of each photo the evaluation view (the service's layout)"))
    cache_dir: str | None = field(default=None, metadata=flag("where feature caches live (default RUN/cache)"))
    epochs: int = field(default=10, metadata=flag("training epochs"))
    batch_size: int = field(default=128, metadata=flag("photos per batch"))
    lr: float = field(default=1e-3, metadata=flag("peak learning rate"))
    weight_decay: float = field(default=0.05, metadata=flag("weight decay"))
    optimizer: Literal["adamw", "sgd"] = field(default="adamw", metadata=flag("optimizer"))
    warmup_epochs: float = field(default=1.0, metadata=flag(
        "epochs of linear learning-rate warmup before the cosine decay"))
    label_smoothing: float = field(default=0.1, metadata=flag("label smoothing"))
    taxonomy_smoothing: bool = field(default=False, metadata=flag(
        "give the smoothing mass to classes of the same genus and family"))
    balanced_sampling: bool = field(default=False, metadata=flag("class-balanced sampling"))
    balanced_finetune_epochs: int = field(default=0, metadata=flag(
        "final class-balanced fine-tune of the classifier (epochs)"))
    patience: int = field(default=3, metadata=flag("early stopping: epochs without held-out NLL improvement"))
    holdout: float = field(default=0.1, metadata=flag("share of training photos held out (group-aware)"))
    calibrate_on: Literal["holdout", "valid"] = field(default="holdout", metadata=flag(
        "the photos temperature scaling is fitted on"))
    ood_percentile: float = field(default=1.0, metadata=flag("percentile of held-out energy for the OOD gate"))
    input_size: int | None = field(default=None, metadata=flag(
        "network input size (default: the backbone's pretraining size)"))
    resize: int | None = field(default=None, metadata=flag(
        "resize before the crop (default: from the input size and the resize mode)"))
    resize_mode: Literal["shorter", "longer_pad", "stretch"] = field(default="longer_pad", metadata=flag(
        "how photos are resized to the input"))
    mean: list[float] | None = field(default=None, metadata=flag(
        "input normalisation mean R,G,B (default: what the backbone's pretrained weights expect)", parse=triple))
    std: list[float] | None = field(default=None, metadata=flag(
        "input normalisation std R,G,B (default: the backbone's)", parse=triple))
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = field(default="bilinear", metadata=flag(
        "resize filter"))
    dropout: float = field(default=0.2, metadata=flag("dropout before the classifier"))
    augment: dict[str, Any] = field(default_factory=dict, metadata=flag(
        'augmentation overrides as JSON, e.g. \'{"scale": [0.35, 1.0], "zoom_out": 0.3}\'', parse=json.loads))
    seed: int = field(default=0, metadata=flag("random seed"))
    workers: int = field(default=2, metadata=flag("DataLoader worker processes"))
    device: str = field(default="auto", metadata=flag("auto, cpu, cuda, cuda:N"))
    amp: bool = field(default=True, metadata=flag("no mixed precision on CUDA"))
    threads: int = field(default=0, metadata=flag("torch / ONNX Runtime threads (0 = all cores)"))
    resume: bool = field(default=False, metadata=flag("continue from RUN/last.pt"))
    max_grad_norm: float | None = field(default=5.0, metadata=flag("gradient clipping norm"))
    name: str = field(default="model", metadata=flag("model name in the card"))
    version: str | None = field(default=None, metadata=flag("model version (default: a UTC timestamp)"))
    export_dir: str | None = field(default=None, metadata=flag(
        "version folder to export to (default RUN/export/NAME/VERSION)"))
    export_fp16: bool = field(default=False, metadata=flag("also export fp16", name="--fp16"))
    export_int8: bool = field(default=False, metadata=flag("also export int8", name="--int8"))
    mirror_tta: bool = field(default=False, metadata=flag(
        "export the model averaged with its mirror image (one graph, twice the compute; calibrated as such)"))
    tta: bool = field(default=False, metadata=flag("also evaluate with test-time augmentation"))
    fit_answers: bool = field(default=True, metadata=flag(
        "keep the default committed-answer threshold instead of fitting per-rank ones on held-out classes"))
    answer_epochs: int | None = field(default=None, metadata=flag(
        "epochs of the leave-classes-out model (default epochs/2)"))
    answer_heldout_share: float = field(default=0.2, metadata=flag("share of labels held out of it"))
    answer_precision: float = field(default=0.98, metadata=flag("precision each answer rank must reach"))
    answer_max_heldout_species: float = field(default=0.05, metadata=flag(
        "share of held-out-class photos that may be named as a species"))
    progress: bool = field(default=True, metadata=flag("no progress bars"))

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


# -- the command line ------------------------------------------------------------------------------------


def flag_name(f: Field[Any]) -> str:
    """The field's command-line flag: its own, else ``--no-NAME`` for a switch that is on by default, else
    ``--NAME`` (underscores as dashes)."""
    meta: Flag = f.metadata[FLAG]
    if meta.name:
        return meta.name
    dashed = f.name.replace("_", "-")
    return f"--no-{dashed}" if f.default is True else f"--{dashed}"


def _value_type(annotation: Any) -> Any:
    """The type a flag's text becomes: ``X | None`` -> ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_arguments(parser: argparse.ArgumentParser, config: type[Any] = TrainConfig) -> None:
    """Add one argument per field of ``config`` (a dataclass whose fields carry :func:`flag` metadata).

    Every argument defaults to ``None`` ("not given"), so a ``--config`` file's values survive and the
    dataclass keeps the one default (:func:`config_values`).
    """
    hints = typing.get_type_hints(config)
    for f in fields(config):
        meta: Flag = f.metadata[FLAG]
        kind = _value_type(hints[f.name])
        help_text = meta.help
        if help_text is not None and f.default not in (MISSING, None) and kind is not bool:
            help_text += f" (default {f.default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if kind is bool:
            kwargs["action"] = "store_false" if f.default is True else "store_true"
        else:
            if meta.repeat:
                kwargs["action"] = "append"
            if meta.required:
                kwargs["required"] = True
            if typing.get_origin(kind) is Literal:
                kwargs["choices"] = list(typing.get_args(kind))
            elif meta.parse is not None:
                kwargs["type"] = meta.parse
            elif kind in (int, float):
                kwargs["type"] = kind
        parser.add_argument(flag_name(f), **kwargs)


def config_values(args: argparse.Namespace, config: type[Any] = TrainConfig) -> dict[str, Any]:
    """The options given: ``--config`` file's values, overridden by the flags given (``None``: not given).

    A single ``--data`` stays a plain path (as ``config.json`` has always stored it).
    """
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(json.loads(Path(args.config).read_text()))
    for f in fields(config):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    if isinstance(values.get("data"), list) and len(values["data"]) == 1:
        values["data"] = values["data"][0]
    return values
