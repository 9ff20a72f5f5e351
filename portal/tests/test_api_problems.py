"""Every API error is an RFC 7807 problem+json document."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from portal.models import Membership, Tenant
from portal.testing import assert_problem

PROBLEM = "application/problem+json"


def test_400_validation_lists_field_errors(actors):
    response = actors.client("cloud_admin").post("/api/v1/tenants/", {"name": "", "enabled": "maybe"}, format="json")
    body = assert_problem(response, 400, "invalid")
    assert set(body["errors"]) == {"name", "enabled"}
    assert all(isinstance(messages, list) for messages in body["errors"].values())
    assert body["detail"] in body["errors"]["name"]


def test_400_from_a_service_names_the_field(actors):
    response = actors.client("tenant_admin").patch(f"/api/v1/tenants/{actors.tenant.pk}/", {"enabled": False})
    body = assert_problem(response, 400, "invalid")
    assert body["errors"] == {"enabled": [body["detail"]]}


def test_400_malformed_json(actors):
    client = actors.client("cloud_admin")
    response = client.generic("POST", "/api/v1/tenants/", "{not json", content_type="application/json")
    assert_problem(response, 400, "parse_error")


def test_401_anonymous(db):
    assert_problem(APIClient().get("/api/v1/tenants/"), 401, "not_authenticated")


def test_403_forbidden(actors):
    response = actors.client("member").patch(f"/api/v1/tenants/{actors.tenant.pk}/", {"name": "Mine"}, format="json")
    assert_problem(response, 403, "permission_denied")


def test_404_foreign_object(actors):
    response = actors.client("outsider").get(f"/api/v1/tenants/{actors.tenant.pk}/")
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize("path", ["/api/v1/nothing-here/", "/api/v1/tenants/abc/", "/api/v1/tenants/-1/"])
def test_404_unknown_addresses_are_problems_too(actors, path):
    assert_problem(actors.client("member").get(path), 404, "not_found")


def test_404_page_out_of_range(actors):
    assert_problem(actors.client("member").get("/api/v1/tenants/", {"page": 99}), 404, "not_found")


def test_405_method_not_allowed(actors):
    response = actors.client("cloud_admin").put(f"/api/v1/tenants/{actors.tenant.pk}/", {"name": "x"}, format="json")
    assert_problem(response, 405, "method_not_allowed")


def test_409_conflict(actors):
    membership = Membership.objects.get(tenant=actors.tenant, user=actors.tenant_admin)
    response = actors.client("tenant_admin").delete(f"/api/v1/memberships/{membership.pk}/")
    body = assert_problem(response, 409, "conflict")
    assert body["title"] == "Conflict"


def test_415_only_json_bodies(actors):
    response = actors.client("cloud_admin").post("/api/v1/tenants/", {"name": "Form"}, format="multipart")
    assert_problem(response, 415, "unsupported_media_type")


def test_missing_trailing_slash_redirects(actors):
    response = actors.client("member").get("/api/v1/tenants")
    assert response.status_code == 301
    assert response["Location"] == "/api/v1/tenants/"


def test_500_under_the_api_is_a_problem_without_the_details(actors, settings):
    """An unexpected error (a bug, or a part that is down) answers problem+json under /api/, HTML elsewhere."""
    settings.ROOT_URLCONF = "portal.tests.crash_urls"
    client = actors.client("member")
    client.raise_request_exception = False
    body = assert_problem(client.get("/api/v1/crash/"), 500, "server_error")
    assert "secret" not in str(body) and "qemu" not in str(body)
    chinese = client.get("/api/v1/crash/", HTTP_ACCEPT_LANGUAGE="zh-hans").json()
    assert chinese["title"] == "服务器错误"
    page = actors.client("member", api=False)
    page.raise_request_exception = False
    response = page.get("/crash/")
    assert response.status_code == 500 and response["Content-Type"].startswith("text/html")
    assert "secret" not in response.content.decode()


def test_a_database_away_answers_503_with_retry_after(actors, settings):
    """What PostgreSQL restarting looks like to a client (the real restart: vms/tests/test_fault_postgres.py)."""
    settings.ROOT_URLCONF = "portal.tests.crash_urls"
    client = actors.client("member")
    client.raise_request_exception = False
    response = client.get("/api/v1/away/")
    body = assert_problem(response, 503, "service_unavailable")
    assert response["Retry-After"] == "5" and "5432" not in str(body)
    page = actors.client("member", api=False)
    page.raise_request_exception = False
    response = page.get("/away/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert "门户正在重启" in response.content.decode() and "5432" not in response.content.decode()


def test_413_a_body_over_the_in_memory_limit(actors, settings):
    """Over DATA_UPLOAD_MAX_MEMORY_SIZE (Django's 2.5 MB) but under the server's own limit: problem+json 413,
    not Django's HTML 400 page; nothing is created."""
    client = actors.client("cloud_admin")
    name = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = client.generic("POST", "/api/v1/tenants/", json.dumps({"name": name}), content_type="application/json")
    problem = assert_problem(response, 413, "too_large")
    assert problem["detail"] == (
        f"The request body exceeds {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes; send a large file in chunks."
    )
    assert not Tenant.objects.filter(name=name).exists()


def test_413_is_a_problem_with_debug_on_too(actors, settings):
    """With DEBUG on, Django answers a SuspiciousOperation with its technical HTML page before handler400:
    an API client still gets problem+json."""
    settings.DEBUG = True
    name = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = actors.client("cloud_admin").generic(
        "POST", "/api/v1/tenants/", json.dumps({"name": name}), content_type="application/json"
    )
    assert_problem(response, 413, "too_large")
    assert not Tenant.objects.filter(name=name).exists()


def test_other_bad_requests_django_refuses_are_problems_too(actors):
    """Django's own 400s (SuspiciousOperation: here a Host header it does not serve) under /api/."""
    response = actors.client("member").get("/api/v1/tenants/", HTTP_HOST="evil.example")
    assert_problem(response, 400, "bad_request")


def test_json_values_of_another_type_are_refused_not_converted(actors):
    """DRF reads ``"name": 5`` as "5" and ``"enabled": 0`` as false; the API takes what its schema describes
    (``portal.api.strict``), and says which fields had the wrong type, with the other fields' errors."""
    admin = actors.client("cloud_admin")
    body = assert_problem(admin.post("/api/v1/tenants/", {"name": 5}, format="json"), 400)
    assert body["errors"]["name"] == ["Incorrect type. Expected a string."]
    tenant = f"/api/v1/tenants/{actors.tenant.pk}/"
    body = assert_problem(admin.patch(tenant, {"enabled": 0, "name": ""}, format="json"), 400)
    assert body["errors"]["enabled"] == ["Incorrect type. Expected a boolean."] and "name" in body["errors"]
    actors.tenant.refresh_from_db()
    assert actors.tenant.enabled  # nothing changed
    assert admin.patch(tenant, {"enabled": True}, format="json").status_code == 200
