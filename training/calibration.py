"""Post-hoc calibration: temperature scaling and the out-of-distribution energy threshold.

Both are fitted on held-out photos (never the training photos) and stored in the model card's
``calibration`` block, which the service applies to every prediction.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from training.metrics import ece, nll, softmax

if TYPE_CHECKING:
    from service.core.modelcard import Calibration


def fit_temperature(
    logits: np.ndarray, targets: np.ndarray, *, lo: float = 0.05, hi: float = 20.0, iterations: int = 80
) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` (golden-section search on log T).

    The NLL is convex in 1/T, so a one-dimensional search over log T finds the optimum reliably.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, targets, math.exp(c)), nll(logits, targets, math.exp(d))
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, targets, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, targets, math.exp(d))
    return float(math.exp((a + b) / 2))


def energy_scores(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy score ``T * logsumexp(logits / T)`` per row (higher = more like the training classes)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(axis=1)
    return temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


def fit_energy_threshold(logits: np.ndarray, temperature: float = 1.0, percentile: float = 1.0) -> float:
    """The ``percentile``-th percentile of the energy scores of in-distribution photos.

    A photo scoring below it looks unlike the known species (only ``percentile`` % of known-species
    photos do), and the service then holds back species answers.
    """
    return float(np.percentile(energy_scores(logits, temperature), percentile))


def calibrate(
    logits: np.ndarray, targets: np.ndarray, *, ood_percentile: float | None = 1.0
) -> dict[str, float | None]:
    """Fit temperature and OOD threshold; return the model card's ``calibration`` block.

    Returns:
        ``{"temperature", "ood_energy_threshold", "ece_before", "ece_after", "nll_before", "nll_after"}``.
    """
    t = fit_temperature(logits, targets)
    return {
        "temperature": t,
        "ood_energy_threshold": (
            fit_energy_threshold(logits, t, ood_percentile) if ood_percentile is not None else None
        ),
        "ece_before": ece(softmax(logits), targets),
        "ece_after": ece(softmax(logits, t), targets),
        "nll_before": nll(logits, targets),
        "nll_after": nll(logits, targets, t),
    }


def card_calibration(
    fit: dict[str, float],
    *,
    answer_thresholds: dict[str, float] | None = None,
    answer_fit: dict[str, Any] | None = None,
) -> Calibration:
    """The model card's calibration block from what :func:`calibrate` returned (and the answer thresholds)."""
    from service.core.modelcard import Calibration

    return Calibration(
        temperature=fit["temperature"],
        ood_energy_threshold=fit["ood_energy_threshold"],
        ece_before=fit["ece_before"],
        ece_after=fit["ece_after"],
        answer_thresholds=answer_thresholds,
        answer_fit=answer_fit,
    )
