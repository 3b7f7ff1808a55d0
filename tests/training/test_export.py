"""ONNX export: opset, dynamic batch, embedded card, checker, parity, and nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.core.modelcard import ONNX_METADATA_KEY, InputSpec, ModelCard
from service.inference.classifier import RuntimeOptions, load_classifier
from training.backbones import create_model
from training.export import ExportError, export_model, load_card_from_onnx, parity_check, synthetic_photos

from .conftest import color_photo


def _card(name: str = "tiny", version: str = "1") -> ModelCard:
    return ModelCard(
        name=name,
        version=version,
        architecture="tiny_cnn",
        input=InputSpec(size=32, resize=32, resize_mode="longer_pad"),
        labels=["a", "b", "c"],
        calibration={"temperature": 1.5},
    )  # type: ignore[arg-type]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("tiny_cnn", 3)
    net.eval()
    # Non-trivial batch-norm statistics, so that eval mode matters.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def test_export_parity_and_card(tmp_path: Path) -> None:
    photos = [color_photo((200, 30, 30), (50, 37), seed=i) for i in range(3)]
    result = export_model(_model(), _card(), tmp_path / "tiny" / "1", photos=photos, int8=True, fp16=True)
    assert result.max_prob_diff <= 1e-4 and result.parity_images == 3 + len(synthetic_photos())
    model = onnx.load(str(result.onnx_path))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == [
        "logits"
    ]
    meta = {p.key: p.value for p in model.metadata_props}
    assert ModelCard.model_validate_json(meta[ONNX_METADATA_KEY]).labels == ["a", "b", "c"]
    assert load_card_from_onnx(result.onnx_path).calibration.temperature == 1.5
    # Dynamic batch, and the service accepts the folder as a model.
    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((5, 3, 32, 32), np.float32)})[0].shape == (5, 3)
    clf = load_classifier(result.folder, RuntimeOptions(providers="cpu"))
    assert clf.card.name == "tiny"
    assert set(result.variants) == {"fp16", "int8"} and all(p.is_file() for p in result.variants.values())


def test_parity_failure_raises(tmp_path: Path) -> None:
    good = export_model(_model(), _card(), tmp_path / "tiny" / "1")
    other = create_model("tiny_cnn", 3).eval()  # different weights
    with pytest.raises(ExportError, match="disagree"):
        parity_check(other, good.onnx_path, _card(), synthetic_photos(4))


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ExportError):
        export_model(_model(), _card(), tmp_path / "tiny" / "2", tolerance=-1.0)
    assert not (tmp_path / "tiny" / "2").exists()
    assert list((tmp_path / "tiny").iterdir()) == []  # no temporary folder either


def test_existing_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "tiny" / "1").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        export_model(_model(), _card(), tmp_path / "tiny" / "1")


def test_opset_below_17_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset"):
        export_model(_model(), _card(), tmp_path / "x", opset=13)
