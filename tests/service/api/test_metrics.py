"""GET /metrics: request counts, latencies by route, errors by status, batch sizes, active model."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.helpers import photo_bytes
from tests.service.identify_support import files, metric_value


def test_metrics_count_requests_errors_batches_and_model(client: TestClient) -> None:
    route = {"route": "/api/v1/identify"}
    before = client.get("/metrics").text
    assert client.post("/api/v1/identify", files=files(photo_bytes())).status_code == 200
    assert client.post("/api/v1/identify?top_k=0", files=files(photo_bytes())).status_code == 422
    assert client.get("/no/such/page/12345").status_code == 404
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text

    def delta(name: str, labels: dict[str, str] | None = None) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    assert delta("pollinid_http_requests_total", {**route, "status": "200", "method": "POST"}) == 1
    assert delta("pollinid_http_requests_total", {**route, "status": "422"}) == 1
    assert delta("pollinid_http_errors_total", {**route, "status": "422"}) == 1
    assert delta("pollinid_http_errors_total", {"status": "404", "route": "unmatched"}) == 1
    assert "/no/such/page/12345" not in after  # raw paths never become label values
    assert delta("pollinid_http_request_duration_seconds_count", route) == 2
    assert delta("pollinid_inference_batch_size_count") == 1
    assert delta("pollinid_identified_photos_total") == 1
    assert metric_value(after, "pollinid_model_active", {"name": "tiny", "version": "1"}) == 1
    assert metric_value(after, "pollinid_model_loaded") == 1


def test_responses_carry_the_server_processing_time(client: TestClient) -> None:
    r = client.get("/api/v1/health")
    assert float(r.headers["x-process-time-ms"]) >= 0
