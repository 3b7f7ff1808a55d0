"""int8 variants: static QDQ quantization of a tiny real network, shipped only when it keeps its accuracy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.cli.main import main
from service.core.modelcard import ModelCard
from service.inference.classifier import RuntimeOptions, load_classifier
from tests.helpers import COLOR_LABELS, write_tiny_model
from training.data import Sample
from training.quantize import (
    INT8_FILENAME,
    QuantizeError,
    is_qdq,
    pick_calibration,
    preprocessed_batches,
    quantize_onnx,
    quantize_version,
    sensitive_nodes,
)

from .conftest import color_photo


def _samples(root: Path, split: str) -> list[Sample]:
    return [Sample(path=p, label=p.parent.name) for p in sorted((root / split).glob("*/*.jpg"))]


def test_quantize_onnx_writes_a_qdq_network_that_agrees_with_fp32(color_dataset: Path, tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path)
    card = ModelCard.load(folder)
    photos = [s.path for s in _samples(color_dataset, "train")]
    dst = quantize_onnx(folder / "model.onnx", folder / INT8_FILENAME, card.input,
                        preprocessed_batches(photos, card.input, batch_size=4))
    assert is_qdq(dst)
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and ops & {"MatMul", "Gemm"}
    assert not is_qdq(folder / "model.onnx")
    assert not list(folder.glob(".quantize.*"))  # no work files left behind

    import onnxruntime as ort

    batch = np.concatenate(list(preprocessed_batches([s.path for s in _samples(color_dataset, "valid")],
                                                     card.input)))
    fp32 = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": batch})[0]
    int8 = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]
    assert int8.shape == fp32.shape
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9
    assert np.abs(int8 - fp32).max() < 0.5  # close, and not identical: really quantized
    assert np.abs(int8 - fp32).max() > 0


def test_quantize_onnx_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path)
    card = ModelCard.load(folder)
    with pytest.raises(ValueError, match="no calibration photo"):
        quantize_onnx(folder / "model.onnx", folder / INT8_FILENAME, card.input, [])
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantize_onnx(folder / "model.onnx", folder / INT8_FILENAME, card.input,
                      [np.zeros((1, 3, 32, 32), np.float32)], method="magic")
    (tmp_path / "broken.onnx").write_bytes(b"not a network")
    with pytest.raises(QuantizeError, match="could not quantize"):
        quantize_onnx(tmp_path / "broken.onnx", tmp_path / "out.onnx", card.input,
                      [np.zeros((1, 3, 32, 32), np.float32)])
    assert not (folder / INT8_FILENAME).exists() and not (tmp_path / "out.onnx").exists()


def test_unreadable_calibration_photo_is_skipped(tmp_path: Path) -> None:
    card = ModelCard.load(write_tiny_model(tmp_path))
    good = tmp_path / "good.jpg"
    color_photo((200, 30, 30)).save(good)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    batches = list(preprocessed_batches([tmp_path / "bad.jpg", good], card.input))
    assert [b.shape for b in batches] == [(1, 3, 32, 32)]


def test_pick_calibration_covers_every_label(color_dataset: Path) -> None:
    samples = _samples(color_dataset, "train")
    picked = pick_calibration(samples, 6, seed=1)
    assert len(picked) == 6 and {s.label for s in picked} == set(COLOR_LABELS)
    assert pick_calibration(samples, 6, seed=1) == picked  # seeded
    assert len(pick_calibration(samples, 1000)) == len(samples)


def test_sensitive_nodes_are_the_first_conv_and_the_logits_node(tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path)
    model = onnx.load(str(folder / "model.onnx"))
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    onnx.save(model, str(folder / "model.onnx"))
    assert sensitive_nodes(folder / "model.onnx", ModelCard.load(folder).input) == ["n2"]  # no Conv; Add


def test_quantize_version_ships_the_variant_and_the_service_loads_it(color_dataset: Path, tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path)
    fp32_bytes = (folder / "model.onnx").read_bytes()
    result = quantize_version(folder, _samples(color_dataset, "train"), _samples(color_dataset, "valid"),
                              calibration_photos=12)
    assert result["shipped"] and result["calibration_photos"] == 12
    attempt = result["attempts"][0]
    assert attempt["passed"] and attempt["top1_drop"] <= 0.005 and attempt["ece_rise"] <= 0.01
    assert (folder / "model.onnx").read_bytes() == fp32_bytes  # the reference network is never touched
    card = ModelCard.load(folder)
    variant = card.variants["int8"]
    assert variant.file == INT8_FILENAME and variant.cpu_default
    assert variant.sha256 == hashlib.sha256((folder / INT8_FILENAME).read_bytes()).hexdigest()
    assert variant.top1 == attempt["int8"]["top1"] and variant.quantization["calibration"] == "minmax"
    assert card.cpu_default_variant() == ("int8", variant)
    assert not [p.name for p in tmp_path.rglob(".*")]  # no work folder left behind

    auto = load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="auto"))
    assert auto.variant == "int8" and auto.describe()["variant"] == "int8"
    fp32 = load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="fp32"))
    assert fp32.variant == "fp32"


def test_quantize_version_that_misses_writes_nothing(color_dataset: Path, tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path)
    before = (folder / "model.json").read_text()
    # A criterion no quantized network can meet: the ECE may not rise at all and top-1 must rise.
    result = quantize_version(folder, _samples(color_dataset, "train"), _samples(color_dataset, "valid"),
                              calibration_photos=6, methods=["minmax", "percentile"], max_top1_drop=-0.5)
    assert not result["shipped"] and [a["method"] for a in result["attempts"]] == ["minmax", "percentile"]
    assert not any(a["passed"] for a in result["attempts"])
    assert (folder / "model.json").read_text() == before and not (folder / INT8_FILENAME).exists()


def test_pollinid_quantize_cli(color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_tiny_model(tmp_path)
    out = tmp_path / "result.json"
    assert main(["quantize", "--model", str(folder), "--data", str(color_dataset), "--calibration-photos", "9",
                 "--dry-run", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["shipped"] is False and not (folder / INT8_FILENAME).exists()
    capsys.readouterr()
    assert main(["quantize", "--model", str(folder), "--data", str(color_dataset), "--calibration-photos", "9",
                 "--not-cpu-default"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["shipped"] and printed["variant"]["cpu_default"] is False
    assert ModelCard.load(folder).cpu_default_variant() is None
    assert load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="auto")).variant == "fp32"
    assert load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="int8")).variant == "int8"
    assert main(["quantize", "--model", str(tmp_path / "nowhere"), "--data", str(color_dataset)]) == 2
    assert "no readable model card" in capsys.readouterr().err


def test_predict_runs_the_variant_the_service_would(color_dataset: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_tiny_model(tmp_path)
    quantize_version(folder, _samples(color_dataset, "train"), _samples(color_dataset, "valid"), calibration_photos=9)
    photo = sorted((color_dataset / "valid" / "red_admiral").glob("*.jpg"))[0]
    answers = {}
    for variant in ("auto", "fp32"):
        assert main(["predict", "--model", str(folder), str(photo), "--variant", variant]) == 0
        answers[variant] = json.loads(capsys.readouterr().out)[0]
    assert answers["auto"]["network"] == "int8" and answers["fp32"]["network"] == "fp32"
    top = {v: a["results"][0]["taxon"]["label"] for v, a in answers.items()}
    assert top == {"auto": "red_admiral", "fp32": "red_admiral"}
