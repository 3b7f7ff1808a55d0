"""The classifier: providers, thread settings, warm-up, calibration maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

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
