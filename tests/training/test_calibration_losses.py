"""Temperature scaling, the OOD energy threshold, label smoothing matrices and balanced weights."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.modelcard import LabelTaxon
from training.calibration import calibrate, energy_scores, fit_energy_threshold, fit_temperature
from training.losses import balanced_weights, smoothing_matrix


def _overconfident(
    n: int = 4000, c: int = 5, true_t: float = 3.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / true_t): the best temperature is true_t."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=(n, c))
    p = np.exp(logits / true_t)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in p])
    return logits, y


def test_fit_temperature_recovers_the_true_temperature() -> None:
    logits, y = _overconfident()
    assert fit_temperature(logits, y) == pytest.approx(3.0, rel=0.1)


def test_calibrate_lowers_ece() -> None:
    logits, y = _overconfident()
    cal = calibrate(logits, y)
    assert cal["ece_after"] < cal["ece_before"] / 2
    assert cal["nll_after"] < cal["nll_before"]


def test_energy_and_threshold_by_hand() -> None:
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    assert energy_scores(logits).tolist() == pytest.approx([np.log(2.0), np.log(4.0)])
    assert energy_scores(logits, 2.0)[0] == pytest.approx(2 * np.log(2.0))
    scores = np.arange(101, dtype=float)[:, None] * np.array([[1.0, -50.0]])  # energy ~ row value
    assert fit_energy_threshold(scores, 1.0, 10) == pytest.approx(10.0, abs=1e-6)


def test_plain_smoothing_matrix() -> None:
    q = smoothing_matrix(["a", "b", "c", "d", "e"], 0.1)
    assert q.sum(1) == pytest.approx(np.ones(5))
    assert q[0, 0] == pytest.approx(0.9)
    assert q[0, 1] == pytest.approx(0.025)


def test_taxonomy_smoothing_gives_mass_to_genus_and_family() -> None:
    classes = ["a1", "a2", "b1", "z"]
    taxonomy = {
        "a1": LabelTaxon(genus="A", family="F"),
        "a2": LabelTaxon(genus="A", family="F"),
        "b1": LabelTaxon(genus="B", family="F"),
        "z": LabelTaxon(genus="Z", family="Y"),
    }
    q = smoothing_matrix(classes, 0.2, taxonomy, genus_share=0.5, family_share=0.3)
    assert q.sum(1) == pytest.approx(np.ones(4))
    # a1: genus mate a2 gets .1 + uniform .04/3; family mate b1 .06 + .04/3; z only .04/3.
    assert q[0].tolist() == pytest.approx([0.8, 0.1 + 0.04 / 3, 0.06 + 0.04 / 3, 0.04 / 3])
    # z has no genus or family mates: everything uniform.
    assert q[3, :3].tolist() == pytest.approx([0.2 / 3] * 3)
    # b1 has no genus mate: the genus share moves to the family.
    assert q[2, 0] == pytest.approx(q[2, 1]) and q[2, 0] > q[2, 3]


def test_balanced_weights() -> None:
    w = balanced_weights([0, 0, 0, 1])
    assert w == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
