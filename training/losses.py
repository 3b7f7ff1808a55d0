"""Long-tail tools: (taxonomy-aware) label smoothing and class-balanced sampling weights."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from service.core.modelcard import LabelTaxon


def smoothing_matrix(
    classes: Sequence[str],
    epsilon: float,
    taxonomy: Mapping[str, LabelTaxon] | None = None,
    *,
    genus_share: float = 0.5,
    family_share: float = 0.3,
) -> np.ndarray:
    """Target distributions for label smoothing: row ``y`` is the soft target of class ``y``.

    Plain smoothing (no taxonomy) keeps ``1 - epsilon`` on the true class and spreads ``epsilon`` evenly
    over the other classes. Taxonomy-aware smoothing gives ``genus_share`` of ``epsilon`` to the other
    classes of the same genus, ``family_share`` to the other classes of the same family (outside the
    genus), and the rest evenly to all other classes; a share with no class to receive it goes to the
    next coarser group.
    """
    c = len(classes)
    if not 0 <= epsilon < 1:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    q = np.zeros((c, c), dtype=np.float64)
    if c == 1 or epsilon == 0:
        np.fill_diagonal(q, 1.0)
        return q
    taxonomy = taxonomy or {}
    genus = [getattr(taxonomy.get(k), "genus", None) for k in classes]
    family = [getattr(taxonomy.get(k), "family", None) for k in classes]
    for y in range(c):
        others = np.array([j for j in range(c) if j != y])
        same_genus = [j for j in others if genus[y] and genus[j] == genus[y]]
        same_family = [j for j in others if family[y] and family[j] == family[y] and j not in same_genus]
        rest = epsilon
        if taxonomy:
            g = epsilon * genus_share if same_genus else 0.0
            f = epsilon * (family_share + (genus_share if not same_genus else 0.0)) if same_family else 0.0
            if same_genus:
                q[y, same_genus] += g / len(same_genus)
            if same_family:
                q[y, same_family] += f / len(same_family)
            rest = epsilon - g - f
        q[y, others] += rest / len(others)
        q[y, y] = 1.0 - epsilon
    return q


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against a fixed soft target per class (from :func:`smoothing_matrix`)."""

    def __init__(self, targets: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("targets", torch.as_tensor(targets, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        soft = self.targets[y]
        return -(soft * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def build_criterion(
    classes: Sequence[str],
    label_smoothing: float = 0.0,
    taxonomy: Mapping[str, LabelTaxon] | None = None,
    taxonomy_aware: bool = False,
) -> nn.Module:
    """Cross-entropy, with plain or taxonomy-aware label smoothing."""
    if label_smoothing <= 0:
        return nn.CrossEntropyLoss()
    return SoftTargetCrossEntropy(
        smoothing_matrix(classes, label_smoothing, taxonomy if taxonomy_aware else None)
    )


def balanced_weights(targets: Sequence[int]) -> list[float]:
    """Per-sample weights ``1 / count(class)``: each class is drawn equally often."""
    counts = Counter(targets)
    return [1.0 / counts[t] for t in targets]
