"""Bad input to /identify: each case is a clear 4xx JSON error, and the service keeps serving."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.settings import Settings
from tests.helpers import photo_bytes
from tests.service.identify_support import files, png_header_only, red_jpeg


def _assert_error(r: Any, status: int, code: str, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code, err
    for word in words:
        assert word.lower() in err["message"].lower(), err
    return err  # type: ignore[no-any-return]


def _still_serving(client: TestClient) -> None:
    r = client.post("/api/v1/identify", files=files(red_jpeg()))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["taxon"]["label"] == "red_admiral"


def _truncated_jpeg() -> bytes:
    data = photo_bytes(size=(256, 192))
    return data[: len(data) // 2]


CASES: dict[str, tuple[Callable[[TestClient], Any], int, str, tuple[str, ...]]] = {
    "empty upload": (lambda c: c.post("/api/v1/identify", files=files(b"")), 422, "invalid_image",
                     ("empty",)),
    "non-image bytes": (lambda c: c.post("/api/v1/identify", files=files(b"%PDF-1.4 not a photo" * 20)),
                        415, "unsupported_media_type", ("JPEG",)),
    "truncated JPEG": (lambda c: c.post("/api/v1/identify", files=files(_truncated_jpeg())), 422,
                       "invalid_image", ("truncated",)),
    "50,000 x 50,000 PNG": (lambda c: c.post("/api/v1/identify",
                                             files=files(png_header_only(50_000, 50_000), mime="image/png")),
                            422, "invalid_image", ("pixels",)),
    "six photos": (lambda c: c.post("/api/v1/identify", files=files(*[red_jpeg()] * 6)), 422,
                   "invalid_request", ("at most 5",)),
    "top_k=0": (lambda c: c.post("/api/v1/identify?top_k=0", files=files(red_jpeg())), 422,
                "invalid_request", ("top_k",)),
    "top_k=1000": (lambda c: c.post("/api/v1/identify?top_k=1000", files=files(red_jpeg())), 422,
                   "invalid_request", ("top_k", "50")),
    "top_k not a number": (lambda c: c.post("/api/v1/identify?top_k=many", files=files(red_jpeg())), 422,
                           "invalid_request", ("top_k",)),
    "unknown taxon": (lambda c: c.post("/api/v1/identify?taxon=Bombus", files=files(red_jpeg())), 422,
                      "invalid_request", ("Bombus",)),
    "missing images field": (lambda c: c.post("/api/v1/identify", data={"photo": "x"}), 422,
                             "invalid_request", ("images",)),
    "no body at all": (lambda c: c.post("/api/v1/identify"), 422, "invalid_request", ("images",)),
    "images sent as text": (lambda c: c.post("/api/v1/identify", data={"images": "not a file"}), 422,
                            "invalid_request", ("images",)),
    "unaccepted format (ICO)": (lambda c: c.post("/api/v1/identify", files=files(_ico())), 415,
                                "unsupported_media_type", ("ICO",)),
}


def _ico() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 0, 0)).save(buf, "ICO")
    return buf.getvalue()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_4xx_and_the_service_keeps_serving(client: TestClient, case: str) -> None:
    send, status, code, words = CASES[case]
    _assert_error(send(client), status, code, *words)
    _still_serving(client)


def test_error_names_the_bad_photo(client: TestClient) -> None:
    r = client.post("/api/v1/identify", files=files(red_jpeg(), _truncated_jpeg()))
    err = _assert_error(r, 422, "invalid_image", "photo 2")
    assert "1-photo.jpg" in err["message"]
    _still_serving(client)


def test_photo_over_the_upload_limit(tmp_path, sqlite_url, models_dir) -> None:
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models_dir,
                 max_upload_bytes=20_000)
    big = photo_bytes(size=(400, 300), quality=95)
    assert len(big) > 20_000
    with TestClient(create_app(s)) as client:
        err = _assert_error(client.post("/api/v1/identify", files=files(red_jpeg(), big)), 413,
                            "payload_too_large", "photo 2", "20000")
        assert err["detail"]["limit_bytes"] == 20_000
        _still_serving(client)


def test_request_body_over_the_cap_is_refused_from_content_length(tmp_path, sqlite_url, models_dir) -> None:
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models_dir,
                 max_request_bytes=50_000)
    with TestClient(create_app(s)) as client:
        big = photo_bytes(size=(500, 400), quality=95)
        assert len(big) > 50_000
        r = client.post("/api/v1/identify", files=files(big))
        _assert_error(r, 413, "payload_too_large", "50000")
        # Content-Length alone decides: a huge declared body is refused without being sent in full.
        r = client.post("/api/v1/identify", content=b"x" * 10,
                        headers={"content-length": "999999999", "content-type": "multipart/form-data; b=x"})
        _assert_error(r, 413, "payload_too_large")
        _still_serving(client)


def test_streamed_body_over_the_cap_is_refused(tmp_path, sqlite_url, models_dir) -> None:
    """A chunked body (no Content-Length) is counted as it arrives."""
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models_dir,
                 max_request_bytes=50_000)
    boundary = "pollinidboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def chunks():
        yield head
        for _ in range(20):
            yield b"\xff" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    with TestClient(create_app(s)) as client:
        r = client.post("/api/v1/identify", content=chunks(),
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        _assert_error(r, 413, "payload_too_large")
        _still_serving(client)


def test_no_model_answers_503_model_unavailable(tmp_path, sqlite_url) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    s = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=empty)
    with TestClient(create_app(s)) as client:
        _assert_error(client.post("/api/v1/identify", files=files(red_jpeg())), 503, "model_unavailable",
                      "no model")
        assert client.get("/api/v1/health").status_code == 200
