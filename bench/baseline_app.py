"""The naive baseline the identification service is measured against (``bench/identify.py``).

A plain FastAPI handler that does what a first prototype would: decode the whole photo with Pillow,
apply torchvision's evaluation transforms, and run the PyTorch network eagerly, one request at a time
(a lock around the handler), with the same weights as the ONNX model under test.

Configured by environment variables (set by the benchmark): ``BENCH_TORCH_WEIGHTS`` (a state dict for
EfficientNet-Lite0), ``BENCH_NUM_CLASSES``, ``BENCH_RESIZE``, ``BENCH_SIZE``, ``BENCH_MEAN`` and
``BENCH_STD`` (comma-separated; by default EfficientNet-Lite's TensorFlow scaling to [-1, 1]).
"""

from __future__ import annotations

import io
import os
import threading
import time
from typing import Any

import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from torchvision import transforms


def _triple(name: str, default: str) -> list[float]:
    return [float(v) for v in os.environ.get(name, default).split(",")]


def build_network(weights: str, num_classes: int) -> torch.nn.Module:
    """EfficientNet-Lite0 with the given state dict, in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    net.load_state_dict(state)
    return net.eval()


def create_baseline_app() -> FastAPI:
    net = build_network(os.environ["BENCH_TORCH_WEIGHTS"], int(os.environ.get("BENCH_NUM_CLASSES", "1000")))
    transform = transforms.Compose([
        transforms.Resize(int(os.environ.get("BENCH_RESIZE", "256"))),
        transforms.CenterCrop(int(os.environ.get("BENCH_SIZE", "224"))),
        transforms.ToTensor(),
        transforms.Normalize(_triple("BENCH_MEAN", "0.5,0.5,0.5"), _triple("BENCH_STD", "0.5,0.5,0.5")),
    ])
    lock = threading.Lock()
    app = FastAPI(title="naive baseline")

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    @app.post("/identify")
    def identify(photos: list[UploadFile] = File(...)) -> dict[str, Any]:
        """Full decode, torchvision transforms, eager PyTorch; one request at a time."""
        with lock:
            out = []
            for upload in photos:
                t0 = time.perf_counter()
                img = Image.open(io.BytesIO(upload.file.read())).convert("RGB")
                x = transform(img).unsqueeze(0)
                t1 = time.perf_counter()
                with torch.no_grad():
                    probs = torch.softmax(net(x), dim=1)[0]
                t2 = time.perf_counter()
                top = torch.topk(probs, 5)
                out.append({"results": [{"index": int(i), "score": float(s)}
                                        for s, i in zip(top.values, top.indices, strict=True)],
                            "timings_ms": {"decode": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000}})
            return {"images": out}

    return app


app = create_baseline_app() if os.environ.get("BENCH_TORCH_WEIGHTS") else None
