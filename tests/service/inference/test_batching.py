"""Micro-batching: concurrent photos share one ONNX Runtime call; errors stay with their own request."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.inference.batching import BatcherStopped, InferenceError, MicroBatcher
from service.inference.classifier import RuntimeOptions, load_classifier
from service.settings import Settings
from tests.helpers import photo_bytes, write_tiny_model
from tests.service.identify_support import BLUE, RED, files, metric_value


@pytest.fixture
def tiny(tmp_path: Path):
    return load_classifier(write_tiny_model(tmp_path / "m"), RuntimeOptions(providers="cpu"))


def _x(value: float = 0.0, size: int = 32) -> np.ndarray:
    return np.full((3, size, size), value, dtype=np.float32)


def test_concurrent_submissions_share_one_batch(tiny) -> None:
    batcher = MicroBatcher(max_batch=8, max_wait_ms=300, eager=False)
    batcher.start()

    async def main():
        return await asyncio.gather(*(batcher.infer(tiny, _x(0.1 * i)) for i in range(5)))

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    assert [r.batch_size for r in results] == [5] * 5
    assert batcher.batches == 1
    single = tiny.run(_x(0.3)[None])[0]
    np.testing.assert_allclose(results[3].logits, single, rtol=1e-5, atol=1e-6)


def test_max_batch_splits_batches(tiny) -> None:
    batcher = MicroBatcher(max_batch=2, max_wait_ms=200, eager=False)
    batcher.start()

    async def main():
        return await asyncio.gather(*(batcher.infer(tiny, _x()) for _ in range(5)))

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    assert sorted(r.batch_size for r in results) == [1, 2, 2, 2, 2]


def test_eager_batcher_does_not_wait_for_nobody(tiny) -> None:
    batcher = MicroBatcher(max_batch=8, max_wait_ms=5000, eager=True)
    batcher.start()
    try:
        t0 = time.perf_counter()
        asyncio.run(batcher.infer(tiny, _x()))
        assert time.perf_counter() - t0 < 2.0
    finally:
        batcher.stop()


def test_a_bad_item_fails_alone_and_the_loop_survives(tiny) -> None:
    batcher = MicroBatcher(max_batch=8, max_wait_ms=200, eager=False)
    batcher.start()

    async def main():
        good = [batcher.submit(tiny, _x()) for _ in range(2)]
        bad = batcher.submit(tiny, np.zeros((3, 7, 9), dtype=np.float32))  # wrong shape: stack fails
        outcome = await asyncio.gather(*good, bad, return_exceptions=True)
        after = await batcher.infer(tiny, _x())
        return outcome, after

    try:
        outcome, after = asyncio.run(main())
    finally:
        batcher.stop()
    assert not isinstance(outcome[0], BaseException) and not isinstance(outcome[1], BaseException)
    assert isinstance(outcome[2], InferenceError) and "inference failed" in outcome[2].message
    assert after.logits.shape == (3,)
    assert batcher.running is False


def test_batches_never_mix_classifiers(tiny, tmp_path: Path) -> None:
    other = load_classifier(write_tiny_model(tmp_path / "o", "tiny", "2", size=16), RuntimeOptions("cpu"))
    batcher = MicroBatcher(max_batch=8, max_wait_ms=200, eager=False)
    batcher.start()

    async def main():
        return await asyncio.gather(batcher.infer(tiny, _x()), batcher.infer(other, _x(size=16)),
                                    batcher.infer(tiny, _x()), batcher.infer(other, _x(size=16)))

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    assert all(r.batch_size == 2 for r in results)


def test_stopped_batcher_refuses_with_503(tiny) -> None:
    batcher = MicroBatcher()

    async def main():
        batcher.submit(tiny, _x())

    with pytest.raises(BatcherStopped) as info:
        asyncio.run(main())
    assert info.value.status_code == 503


def test_concurrent_http_requests_share_batches(tmp_path: Path, sqlite_url: str, models_dir: Path) -> None:
    s = Settings(data_dir=tmp_path / "d", database_url=sqlite_url, models_dir=models_dir, max_wait_ms=400,
                 batch_eager=False, max_batch=16)
    with TestClient(create_app(s)) as client:
        before = client.get("/metrics").text
        n = 8
        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(
                lambda i: client.post("/api/v1/identify", files=files(photo_bytes(RED if i % 2 else BLUE))),
                range(n)))
        after = client.get("/metrics").text
    assert all(r.status_code == 200 for r in responses)
    labels = [r.json()["results"][0]["taxon"]["label"] for r in responses]
    assert labels == ["common_blue" if i % 2 == 0 else "red_admiral" for i in range(n)]
    sizes = [r.json()["images"][0]["timings_ms"]["batch_size"] for r in responses]
    assert max(sizes) > 1
    batches = (metric_value(after, "pollinid_inference_batch_size_count")
               - metric_value(before, "pollinid_inference_batch_size_count"))
    photos = (metric_value(after, "pollinid_inference_batch_size_sum")
              - metric_value(before, "pollinid_inference_batch_size_sum"))
    assert photos == n
    assert 1 <= batches < n  # photos / batch > 1: requests shared ONNX Runtime calls
