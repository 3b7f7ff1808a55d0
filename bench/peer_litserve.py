"""A peer for ``bench/identify.py --variants --peer``: LitServe serving the same ONNX file, its own batching.

    PEER_MODEL=models/pollinators/1 PEER_ONNX=model.int8.onnx python bench/peer_litserve.py --port 8001
    # POST /predict, multipart field "photos": the top-5 labels and calibrated probabilities

What a user would write with LitServe (https://lightning.ai/docs/litserve): one worker process per core
(``workers_per_device``), each batching up to ``--max-batch`` requests within ``--batch-timeout`` seconds and
running ONNX Runtime on one thread. Preprocessing is the service's own (:func:`service.core.imaging.decode_image`
at reduced size, :func:`service.core.preprocess.preprocess`), so only the serving around the model differs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


class OnnxClassifierAPI(ls.LitAPI):
    """Decode + preprocess per request, one ONNX Runtime call per batch, top-5 per photo."""

    def setup(self, device: str) -> None:
        sys.path.insert(0, str(ROOT))
        from service.core.modelcard import ModelCard
        from service.inference.classifier import RuntimeOptions, create_session

        folder = Path(os.environ["PEER_MODEL"])
        self.card = ModelCard.load(folder)
        self.spec = self.card.input
        self.session, _ = create_session(str(folder / os.environ.get("PEER_ONNX", "model.onnx")),
                                         RuntimeOptions(providers="cpu", intra_op_threads=1, inter_op_threads=1))
        self.t = self.card.calibration.temperature

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # LitServe reads the annotation: none = the form
        from service.core.imaging import decode_image
        from service.core.preprocess import decode_min_side, preprocess

        photo = request["photos"]
        data = photo.file.read() if hasattr(photo, "file") else bytes(photo)
        return preprocess(decode_image(data, min_side=decode_min_side(self.spec)).image, self.spec)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        logits = self.session.run([self.spec.output_name], {self.spec.input_name: x})[0].astype(np.float64)
        z = logits / self.t
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        top = np.argsort(-output)[:5]
        return {"predictions": [{"label": self.card.labels[i], "probability": float(output[i])} for i in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    args = parser.parse_args()
    api = OnnxClassifierAPI(max_batch_size=args.max_batch, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=120)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
