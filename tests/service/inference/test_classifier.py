"""The classifier: providers, thread settings, warm-up, calibration maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.core.errors import InvalidModel
from service.core.modelcard import ModelCard
from service.inference import classifier as clf_module
from service.inference.classifier import ProviderUnavailable, RuntimeOptions, load_classifier, logsumexp, softmax
from tests.helpers import write_tiny_model


def test_auto_provider_is_what_the_session_really_uses(tmp_path: Path) -> None:
    clf = load_classifier(write_tiny_model(tmp_path), RuntimeOptions(providers="auto"))
    real = clf.session.get_providers()
    assert clf.provider == ("cuda" if "CUDAExecutionProvider" in real else "cpu")
    if clf_module._cuda_works is False:  # onnxruntime-gpu without a usable GPU: quiet CPU fallback
        assert real == ["CPUExecutionProvider"]


def test_cpu_provider_and_thread_counts(tmp_path: Path) -> None:
    clf = load_classifier(write_tiny_model(tmp_path), RuntimeOptions(providers="cpu", intra_op_threads=1,
                                                                    inter_op_threads=1))
    assert clf.provider == "cpu" and clf.session.get_providers() == ["CPUExecutionProvider"]
    opts = clf.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1


def test_cuda_requested_without_a_working_gpu_fails_loudly(tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path)
    probe = load_classifier(folder, RuntimeOptions(providers="auto"))
    if probe.provider == "cuda":
        pytest.skip("this machine has a working CUDA provider")
    with pytest.raises(ProviderUnavailable, match="cuda"):
        load_classifier(folder, RuntimeOptions(providers="cuda"))


def test_unknown_provider_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known"):
        RuntimeOptions(providers="tpu")


def test_calibrated_probabilities_and_energy(tmp_path: Path) -> None:
    clf = load_classifier(write_tiny_model(tmp_path, temperature=2.5), RuntimeOptions(providers="cpu"))
    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)
    logits = clf.run(x)
    direct = ort.InferenceSession(str(clf.path / "model.onnx"),
                                  providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)
    probs = clf.probabilities(logits)
    expected = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    np.testing.assert_allclose(clf.energy(logits), 2.5 * np.log(np.exp(logits / 2.5).sum(axis=1)), rtol=1e-6)


def test_softmax_and_logsumexp_are_stable() -> None:
    big = np.array([[1000.0, 1000.0, -1000.0]])
    np.testing.assert_allclose(softmax(big), [[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(logsumexp(big), [1000.0 + np.log(2.0)])


# -- variants (an int8 QDQ network beside model.onnx) --------------------------------------------------


def _with_int8(tmp_path: Path, *, cpu_default: bool = True) -> Path:
    """A tiny model with an int8 variant quantized on photos of its three colours."""
    from tests.helpers import COLOR_LABELS, photo_bytes
    from training.quantize import INT8_FILENAME, preprocessed_batches, quantize_onnx, ship_variant

    folder = write_tiny_model(tmp_path)
    card = ModelCard.load(folder)
    photos = [photo_bytes(c, size=(48 + 8 * i, 40)) for c in COLOR_LABELS.values() for i in range(4)]
    trial = quantize_onnx(folder / "model.onnx", tmp_path / INT8_FILENAME, card.input,
                          preprocessed_batches(photos, card.input, batch_size=4))
    attempt = {"int8": {"top1": 1.0, "ece": 0.0, "n": 12}, "top1_drop": 0.0, "ece_rise": 0.0,
               "method": "minmax", "per_channel": True, "excluded_nodes": []}
    ship_variant(folder, trial, card, attempt, cpu_default=cpu_default, calibration_photos=len(photos))
    return folder


def test_cpu_runs_the_cards_int8_variant_and_fp32_on_request(tmp_path: Path) -> None:
    from service.core.imaging import decode_image
    from service.core.preprocess import preprocess
    from tests.helpers import COLOR_LABELS, photo_bytes

    folder = _with_int8(tmp_path)
    auto = load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="auto"))
    assert auto.variant == "int8"
    ops = {n.op_type for n in onnx.load(str(folder / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32 = load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="fp32"))
    assert fp32.variant == "fp32"
    assert load_classifier(folder, RuntimeOptions(providers="cpu")).variant == "fp32"  # the library default
    # auto on a machine whose CUDA does not work: the CPU, hence the variant; a working CUDA runs fp32.
    probe = load_classifier(folder, RuntimeOptions(providers="auto", cpu_variant="auto"))
    assert probe.variant == ("fp32" if probe.provider == "cuda" else "int8")

    spec = auto.card.input
    colours = list(COLOR_LABELS.values())
    batch = np.stack([preprocess(decode_image(photo_bytes(colours[i % 3], size=(40 + 7 * i, 64))).image, spec)
                      for i in range(12)])
    a, b = auto.run(batch), fp32.run(batch)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    assert np.abs(auto.probabilities(a) - fp32.probabilities(b)).max() < 0.1


def test_int8_setting_without_a_variant_runs_fp32(tmp_path: Path) -> None:
    clf = load_classifier(write_tiny_model(tmp_path), RuntimeOptions(providers="cpu", cpu_variant="int8"))
    assert clf.variant == "fp32"


def test_not_cpu_default_variant_runs_only_when_named(tmp_path: Path) -> None:
    folder = _with_int8(tmp_path, cpu_default=False)
    assert load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="auto")).variant == "fp32"
    assert load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="int8")).variant == "int8"


@pytest.mark.parametrize("damage", ["missing", "altered", "corrupt"])
def test_broken_variant_fails_by_name_and_falls_back_under_auto(tmp_path: Path, damage: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    folder = _with_int8(tmp_path)
    path = folder / "model.int8.onnx"
    if damage == "missing":
        path.unlink()
    elif damage == "altered":  # a valid network, but not the one the card vouches for
        path.write_bytes((folder / "model.onnx").read_bytes())
    else:  # garbage whose sha256 the card carries (the card was written for it): ONNX Runtime refuses it
        import hashlib

        path.write_bytes(b"not a network")
        card = ModelCard.load(folder)
        card.variants["int8"].sha256 = hashlib.sha256(b"not a network").hexdigest()
        card.save(folder)
    reason = {"missing": "missing", "altered": "sha256", "corrupt": "cannot load model.int8.onnx"}[damage]
    with pytest.raises(InvalidModel, match=reason):
        load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="int8"))
    with caplog.at_level("WARNING", logger="service.inference.classifier"):
        clf = load_classifier(folder, RuntimeOptions(providers="cpu", cpu_variant="auto"))
    assert clf.variant == "fp32"
    assert any(reason in r.getMessage() and "running model.onnx instead" in r.getMessage() for r in caplog.records)


def test_variant_card_rules() -> None:
    from pydantic import ValidationError

    from tests.helpers import tiny_card

    v = {"file": "model.int8.onnx", "sha256": "0" * 64, "cpu_default": True}
    card = tiny_card().model_dump(mode="json")
    assert ModelCard.model_validate({**card, "variants": {"int8": v}}).cpu_default_variant()[0] == "int8"
    for bad in ({"int8": {**v, "file": "model.onnx"}}, {"int8": {**v, "file": "../x.onnx"}},
                {"int8": {**v, "sha256": "xyz"}}, {"int8": v, "int8b": {**v, "file": "b.onnx"}},
                {"int8": v, "fp16": {**v, "cpu_default": False}}):
        with pytest.raises(ValidationError):
            ModelCard.model_validate({**card, "variants": bad})
    with pytest.raises(ValueError, match="cpu_variant"):
        RuntimeOptions(cpu_variant="int4")
