"""Each metric against an example computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.core.modelcard import LabelTaxon
from training import metrics

# Three photos, three classes. Scores chosen so the ranks are easy to read.
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # true 0: rank 1
        [0.5, 0.3, 0.2],  # true 1: rank 2 (predicted 0)
        [0.1, 0.3, 0.6],  # true 2: rank 1
    ]
)
TARGETS = np.array([0, 1, 2])


def test_topk_accuracy() -> None:
    assert metrics.topk_accuracy(PROBS, TARGETS, 1) == pytest.approx(2 / 3)
    assert metrics.topk_accuracy(PROBS, TARGETS, 2) == pytest.approx(1.0)
    assert metrics.topk_accuracy(PROBS, TARGETS, 5) == pytest.approx(1.0)  # k larger than C


def test_nll_by_hand() -> None:
    logits = np.log(PROBS)
    expected = -(math.log(0.7) + math.log(0.3) + math.log(0.6)) / 3
    assert metrics.nll(logits, TARGETS) == pytest.approx(expected)
    # Temperature 2 on log-probabilities: softmax of 0.5*log p = sqrt(p) normalised.
    p = np.sqrt(PROBS) / np.sqrt(PROBS).sum(1, keepdims=True)
    assert metrics.nll(logits, TARGETS, 2.0) == pytest.approx(-np.log(p[[0, 1, 2], [0, 1, 2]]).mean())


def test_mrr_by_hand() -> None:
    assert metrics.mrr(PROBS, TARGETS) == pytest.approx((1 + 1 / 2 + 1) / 3)


def test_per_class_macro_f1_and_f1a() -> None:
    preds = PROBS.argmax(1)  # [0, 0, 2]
    precision, recall, f1, support = metrics.per_class_prf(preds, TARGETS, 3)
    # class 0: tp 1, predicted 2, support 1 -> P .5, R 1, F1 2/3; class 1: 0; class 2: 1, 1, 1.
    assert precision.tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert recall.tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert f1.tolist() == pytest.approx([2 / 3, 0.0, 1.0])
    assert support.tolist() == [1, 1, 1]
    assert metrics.macro_f1(preds, TARGETS, 3) == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert metrics.f1a(preds, TARGETS, 3) == pytest.approx(2 / 3)  # classes 0 and 2 have F1 > 0.5


def test_confusion_matrix() -> None:
    cm = metrics.confusion_matrix(np.array([0, 0, 2]), TARGETS, 3)
    assert cm.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]


def test_ece_by_hand() -> None:
    # Confidences .7 (correct), .5 (wrong), .6 (correct) fall in three different bins of width 0.1:
    # ECE = (|1-.7| + |0-.5| + |1-.6|) / 3.
    assert metrics.ece(PROBS, TARGETS, n_bins=10) == pytest.approx((0.3 + 0.5 + 0.4) / 3)
    # One bin: |accuracy - mean confidence| = |2/3 - 0.6|.
    assert metrics.ece(PROBS, TARGETS, n_bins=1) == pytest.approx(abs(2 / 3 - 0.6))


def test_rank_accuracy_genus_and_family() -> None:
    classes = ["a", "b", "c"]
    taxonomy = {
        "a": LabelTaxon(genus="G1", family="F"),
        "b": LabelTaxon(genus="G1", family="F"),
        "c": LabelTaxon(genus="G2", family="F"),
    }
    preds = np.array([0, 0, 2, 0])
    targets = np.array([0, 1, 2, 2])
    # genus: a->a ok, b->a same genus ok, c->c ok, c->a wrong = 3/4; family: all F.
    assert metrics.rank_accuracy(preds, targets, classes, taxonomy, "genus") == pytest.approx(0.75)
    assert metrics.rank_accuracy(preds, targets, classes, taxonomy, "family") == pytest.approx(1.0)
    assert metrics.rank_accuracy(preds, targets, classes, {}, "genus") is None


def test_compute_metrics_combines_everything() -> None:
    m = metrics.compute_metrics(np.log(PROBS), TARGETS, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx(5 / 6)
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["genus_accuracy"] is None
