"""Retrain without the original photos (training/replay.py): the last layer found in ONNX graphs, the replay kit,
a new layer whose old rows do not move, and old-class accuracy kept on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.modelcard import ModelCard
from service.inference.classifier import RuntimeOptions, load_classifier
from training.data import read_imagefolder
from training.evaluation import evaluate_model_dir
from training.replay import (
    FeatureExtractor,
    build_kit,
    find_head,
    fit_head,
    load_kit,
    logits_of,
    write_head_model,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "replay"
NEW = ("blue_morpho", "painted_lady")


def test_matmul_add_head_is_found_replaced_and_reproduced(tmp_path: Path, color_dataset: Path) -> None:
    import onnx

    from tests.helpers import write_tiny_model

    src = write_tiny_model(tmp_path / "m", "tiny", "1")
    head = find_head(onnx.load(str(src / "model.onnx")))
    assert head.weight.shape == (3, 3) and head.bias.shape == (3,) and not head.transposed
    extractor = FeatureExtractor(src)
    splits, _, _ = read_imagefolder(color_dataset)
    paths = [s.path for s in splits["valid"]]
    feats, kept = extractor.features(paths)
    assert feats.shape == (len(paths), 3) and kept == list(range(len(paths)))
    flipped, kept2 = extractor.features(paths[:2], flip=True)
    assert flipped.shape == (4, 3) and kept2 == [0, 0, 1, 1]
    # A fourth row appended: the exported network gives exactly features @ W.T + b.
    weight = np.vstack([head.weight, np.array([[1.0, 1.0, -2.0]], np.float32)])
    bias = np.append(head.bias, 0.5).astype(np.float32)
    card = ModelCard.load(src).model_copy(update={"version": "2", "labels": [*ModelCard.load(src).labels, "x"]})
    write_head_model(src, tmp_path / "m" / "tiny" / "2", weight, bias, card)
    clf = load_classifier(tmp_path / "m" / "tiny" / "2", RuntimeOptions(providers="cpu"))
    from service.core.imaging import decode_image
    from service.core.preprocess import preprocess

    batch = np.stack([preprocess(decode_image(Path(p).read_bytes()).image, card.input) for p in paths])
    assert np.allclose(clf.run(batch), logits_of(feats, weight, bias), atol=1e-4)


def test_fit_head_keeps_the_old_rows_exactly() -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 8)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    centers = rng.normal(scale=3, size=(4, 8))
    x = np.concatenate([centers[k] + rng.normal(scale=0.3, size=(20, 8)) for k in range(4)]).astype(np.float32)
    y = np.repeat(np.arange(4), 20)
    w, b, report = fit_head(weight, bias, x, y, 1, epochs=200)
    assert w.shape == (4, 8) and b.shape == (4,)
    assert np.array_equal(w[:3], weight) and np.array_equal(b[:3], bias)
    assert report["old_rows_frozen"] and report["train_accuracy"] > 0.2
    new_pred = logits_of(x[y == 3], w, b).argmax(1)
    assert (new_pred == 3).mean() > 0.9
    with pytest.raises(ValueError, match="no training features"):
        fit_head(weight, bias, x[y < 3], y[y < 3], 1)


def _bundled() -> Path:
    """The bundled release (pollinators/1: its labels include the fixture species)."""
    versions = sorted((ROOT / "models").glob("*/*/model.onnx"))
    assert versions, "no bundled model under models/"
    return versions[-1].parent


@pytest.mark.slow
def test_retrain_without_base_photos_keeps_old_class_accuracy_on_real_photos(tmp_path: Path) -> None:
    """A release that lacks two species (the bundled network with their rows cut out) learns them from 12
    photos each plus a replay kit of 3 photos per old class; the old classes lose nothing on real photos."""
    pytest.importorskip("torch")
    src = _bundled()
    card = ModelCard.load(src)
    splits, _, _ = read_imagefolder(FIXTURES)
    if not {s.label for s in splits["train"]} <= set(card.labels):
        pytest.skip(f"the bundled model {card.name}/{card.version} lacks the fixture classes")
    extractor = FeatureExtractor(src, threads=2)
    keep = [i for i, label in enumerate(card.labels) if label not in NEW]
    old_labels = [card.labels[i] for i in keep]
    release = tmp_path / "models" / card.name / "1"
    reduced = card.model_copy(update={"version": "1", "labels": old_labels,
                                      "taxonomy": {k: v for k, v in card.taxonomy.items() if k not in NEW}})
    write_head_model(src, release, extractor.head.weight[keep], extractor.head.bias[keep], reduced)

    old = {split: [s for s in samples if s.label not in NEW] for split, samples in splits.items()}
    kit = load_kit(build_kit(release, old, tmp_path / "kit", per_class=3))
    assert kit.train_features.dtype == np.float32 and len(kit.eval_labels) == 40
    assert (tmp_path / "kit" / "replay.npz").stat().st_size < 200_000

    new_train = [s for s in splits["train"] if s.label in NEW]
    base = FeatureExtractor(release, threads=2)
    feats, kept = base.features([s.path for s in new_train], flip=True)
    labels = old_labels + list(NEW)
    y_new = np.array([labels.index(new_train[i].label) for i in kept])
    weight, bias, _ = fit_head(base.head.weight, base.head.bias, np.concatenate([kit.train_features, feats]),
                               np.concatenate([kit.train_labels, y_new]), len(NEW))
    cand_card = reduced.model_copy(update={"version": "2", "labels": labels, "taxonomy": card.taxonomy})
    write_head_model(release, tmp_path / "models" / card.name / "2", weight, bias, cand_card)

    # Through ONNX Runtime and the service's preprocessing, on photos neither layer was fitted on.
    old_valid = [s for s in splits["valid"] if s.label not in NEW]
    before = evaluate_model_dir(release, old_valid)
    after = evaluate_model_dir(tmp_path / "models" / card.name / "2", old_valid)
    right_before = before["logits"].argmax(1) == before["targets"]
    right_after = after["logits"].argmax(1) == after["targets"]
    assert right_before.sum() >= 30  # the release itself is good on these 40 photos
    assert (right_before & ~right_after).sum() <= 0, "an old-class photo is now claimed by a new class"
    new_valid = [s for s in splits["valid"] if s.label in NEW]
    learnt = evaluate_model_dir(tmp_path / "models" / card.name / "2", new_valid)
    assert (learnt["logits"].argmax(1) == learnt["targets"]).mean() >= 0.8
