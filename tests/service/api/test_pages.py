"""The pages and the API docs are served by the service itself, with no external origin."""

import re

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.routes.pages import PAGES


def test_every_page_exists(settings):
    assert set(PAGES) == {"/", "/expert", "/admin"}
    for filename in PAGES.values():
        assert (settings.frontend_dir / filename).is_file(), filename


def test_pages_are_served_with_a_strict_csp(settings):
    with TestClient(create_app(settings)) as client:
        for path in PAGES:
            response = client.get(path)
            assert response.status_code == 200, path
            assert "text/html" in response.headers["content-type"]
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp
            # Every asset the page references is local and exists.
            for ref in re.findall(r'(?:src|href)="([^"]+)"', response.text):
                if ref.startswith(("data:", "#")):
                    continue
                assert ref.startswith("/"), f"{path} references a non-local asset {ref}"
                if ref.startswith("/static/"):
                    assert client.get(ref).status_code == 200, ref


def test_openapi_docs_work_offline(settings):
    with TestClient(create_app(settings)) as client:
        html = client.get("/docs").text
        assert "/docs-assets/swagger-ui-bundle.js" in html
        assert "cdn" not in html.lower()
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        assert client.get("/openapi.json").json()["info"]["title"] == "pollinid"


def test_unknown_api_route_is_a_json_404(settings):
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/v1/nope")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_a_missing_static_file_is_a_json_404(settings):
    with TestClient(create_app(settings)) as client:
        response = client.get("/static/no-such-file.js")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["code"] == "not_found"
        assert client.get("/no-such-page").status_code == 404
