"""The OpenAPI schema and its viewers, served offline (sidecar assets, no CDN)."""

from __future__ import annotations

import re

import pytest
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

ENDPOINTS = ("tenants", "memberships", "quotas", "flavors", "tokens", "audit-events")


@pytest.fixture
def schema(db) -> dict:
    response = APIClient().get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    return response.json()


def test_schema_is_valid_openapi_3(schema):
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)  # raises on an invalid document


def test_schema_lists_every_endpoint(schema):
    for name in ENDPOINTS:
        assert f"/api/v1/{name}/" in schema["paths"]
        assert f"/api/v1/{name}/{{{'tenant' if name == 'quotas' else 'id'}}}/" in schema["paths"]
    assert not any("{" in path and "format" in path for path in schema["paths"])
    assert not {"/api/v1/docs/", "/api/v1/redoc/", "/api/v1/schema/"} & set(schema["paths"])  # viewers are not API


def test_schema_documents_problems_and_token_auth(schema):
    assert schema["components"]["securitySchemes"]["apiToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["apiToken"]["description"],
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "401" in responses, f"{method} {path}"
            for status, response in responses.items():
                if status.startswith("4"):
                    assert list(response["content"]) == ["application/problem+json"], f"{method} {path} {status}"
            if method in {"post", "patch", "delete"}:
                assert {"403", "409"} <= set(responses), f"{method} {path}"
    assert "put" not in schema["paths"]["/api/v1/tenants/{id}/"]


def test_schema_yaml_default(db):
    response = APIClient().get("/api/v1/schema/")
    assert response.status_code == 200
    assert b"openapi: 3." in response.content


@pytest.mark.parametrize("url", ["/api/v1/docs/", "/api/v1/redoc/"])
def test_viewers_render_offline(client, url):
    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    urls = re.findall(r"""(?:src|href|action)=["']([^"']*)["']""", html)
    assert not [url for url in urls if "//" in url], urls
    assert "jsdelivr" not in html.lower()
    assert "https://" not in html  # no fonts or anything else from another origin
    assert "img-src 'self' data:" in response["Content-Security-Policy"]
    assert "/api/v1/schema/" in html
    assets = re.findall(r"""(?:src|href)=["'](/static/[^"']+)["']""", html)
    assert assets, "the viewer should load its assets from our static files"
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


@pytest.mark.browser
@pytest.mark.parametrize("url", ["/api/v1/docs/", "/api/v1/redoc/"])
def test_viewers_ask_nothing_of_the_internet(live_server, browser_page, url):
    """In a real browser, everything the viewer loads (scripts, styles, fonts, images) comes from the portal:
    requests to any other origin are recorded and aborted, and there must be none."""
    page, _errors = browser_page
    outside: list[str] = []

    def route(request_route):
        request = request_route.request
        if request.url.startswith(live_server.url):
            request_route.continue_()
        else:
            outside.append(request.url)
            request_route.abort()

    page.route("**/*", route)
    page.goto(f"{live_server.url}{url}")
    # Both viewers render the API's title once they have read the schema.
    page.get_by_text("labcloud", exact=False).first.wait_for()
    page.wait_for_load_state("networkidle")
    assert outside == [], outside
