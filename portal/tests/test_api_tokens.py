"""/api/v1/tokens/ and Bearer authentication with personal API tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from portal.models import ApiToken, AuditEvent
from portal.services import create_api_token, revoke_api_token
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem

URL = "/api/v1/tokens/"


def detail(token) -> str:
    return f"{URL}{token.pk}/"


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


# ---------------------------------------------------------------- access matrix


def test_list_matrix(actors):
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_retrieve_matrix(actors):
    token, _raw = create_api_token(user=actors.member, name="laptop")
    # tokens are personal: even cloud admins do not see other people's
    assert_access_matrix(
        actors,
        method="get",
        url=detail(token),
        expected={"anonymous": 401, "outsider": 404, "member": 200, "tenant_admin": 404, "cloud_admin": 404},
    )


def test_create_matrix(actors):
    assert_access_matrix(
        actors,
        method="post",
        url=URL,
        data={"name": "ci", "scope": "write"},
        expected={"anonymous": 401, "outsider": 201, "member": 201, "tenant_admin": 201, "cloud_admin": 201},
    )


def test_delete_matrix(actors):
    def url():
        token, _raw = create_api_token(user=actors.member, name="laptop")
        return detail(token)

    assert_access_matrix(
        actors,
        method="delete",
        url=url,
        expected={"anonymous": 401, "outsider": 404, "member": 204, "tenant_admin": 404, "cloud_admin": 404},
    )


# ---------------------------------------------------------------- content


def test_create_shows_secret_once(actors):
    client = actors.client("member")
    expires = timezone.now() + timedelta(days=30)
    response = client.post(URL, {"name": "ci", "scope": "write", "expires_at": expires.isoformat()}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    raw = body["token"]
    assert raw.startswith("lc_")
    assert body["prefix"] == raw[:10]
    assert body["scope"] == "write"
    assert body["is_active"] is True
    assert "digest" not in body
    token = ApiToken.objects.get(pk=body["id"])
    assert token.digest == ApiToken.hash(raw)
    assert token.user == actors.member
    event = AuditEvent.objects.get(action="token.create")
    assert event.username == "member"
    assert event.detail == {"scope": "write"}

    listed = client.get(URL).json()["results"]
    assert [row["id"] for row in listed] == [token.pk]
    shown = client.get(detail(token)).json()
    for row in (listed[0], shown):
        assert "token" not in row
        assert "digest" not in row
        assert raw not in str(row)


def test_create_validation(actors):
    client = actors.client("member")
    past = (timezone.now() - timedelta(days=1)).isoformat()
    body = assert_problem(client.post(URL, {"name": "old", "expires_at": past}, format="json"), 400)
    assert "expires_at" in body["errors"]
    body = assert_problem(client.post(URL, {"name": "x", "scope": "admin"}, format="json"), 400)
    assert "scope" in body["errors"]
    body = assert_problem(client.post(URL, {"name": "  "}, format="json"), 400)
    assert "name" in body["errors"]
    assert not ApiToken.objects.exists()


def test_delete_revokes_but_keeps_the_row(actors):
    token, raw = create_api_token(user=actors.member, name="laptop")
    client = actors.client("member")
    assert client.delete(detail(token)).status_code == 204
    token.refresh_from_db()
    assert token.revoked_at is not None
    row = client.get(detail(token)).json()
    assert row["revoked_at"] is not None
    assert row["is_active"] is False
    assert AuditEvent.objects.filter(action="token.revoke", target_id=str(token.pk)).count() == 1
    assert_problem(bearer(raw).get("/api/v1/tenants/"), 401)


def test_filters(actors):
    active, _ = create_api_token(user=actors.member, name="a", scope="write")
    revoked, _ = create_api_token(user=actors.member, name="r")
    revoke_api_token(actor=actors.member, token=revoked)
    client = actors.client("member")

    def ids(params) -> set[int]:
        return {row["id"] for row in client.get(URL, params).json()["results"]}

    assert ids({"active": "true"}) == {active.pk}
    assert ids({"active": "false"}) == {revoked.pk}
    assert ids({"scope": "write"}) == {active.pk}


# ---------------------------------------------------------------- Bearer authentication


def test_valid_token_authenticates_and_records_use(actors):
    token, raw = create_api_token(user=actors.member, name="cli")
    assert token.last_used_at is None
    response = bearer(raw).get("/api/v1/tenants/")
    assert response.status_code == 200
    assert [row["name"] for row in response.json()["results"]] == ["Tenant A"]
    token.refresh_from_db()
    assert token.last_used_at is not None


@pytest.mark.parametrize(
    "header",
    ["Bearer garbage", "Bearer lc_not-a-real-token", "Bearer", "Bearer two parts", "Bearer lc_é"],
)
def test_bad_tokens_are_401(db, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/tenants/")
    body = assert_problem(response, 401)
    assert body["code"] == "authentication_failed"
    assert response["WWW-Authenticate"] == "Bearer"


def test_revoked_and_expired_tokens_are_401(actors):
    revoked, raw_revoked = create_api_token(user=actors.member, name="old")
    revoke_api_token(actor=actors.member, token=revoked)
    expired, raw_expired = create_api_token(user=actors.member, name="exp", expires_at=timezone.now() + timedelta(1))
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_problem(bearer(raw_revoked).get(URL), 401)
    assert_problem(bearer(raw_expired).get(URL), 401)


def test_token_of_inactive_user_is_401(actors):
    _token, raw = create_api_token(user=actors.member, name="cli")
    actors.member.is_active = False
    actors.member.save()
    assert_problem(bearer(raw).get(URL), 401)


def test_anonymous_gets_401_with_challenge(db):
    response = APIClient().get(URL)
    body = assert_problem(response, 401)
    assert body["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Bearer"


def test_read_only_token_cannot_write(actors):
    _token, raw = create_api_token(user=actors.member, name="ro", scope="read")
    client = bearer(raw)
    assert client.get(URL).status_code == 200
    body = assert_problem(client.post(URL, {"name": "more"}, format="json"), 403)
    assert body["code"] == "permission_denied"
    assert ApiToken.objects.count() == 1


def test_write_token_may_create_tokens(actors):
    _token, raw = create_api_token(user=actors.member, name="rw", scope="write")
    response = bearer(raw).post(URL, {"name": "child", "scope": "read"}, format="json")
    assert response.status_code == 201, response.content
    assert ApiToken.objects.get(pk=response.json()["id"]).user == actors.member


def test_a_token_made_with_a_token_never_outlives_it(actors):
    from datetime import timedelta

    from django.utils import timezone

    parent_expiry = timezone.now() + timedelta(hours=1)
    _parent, raw = create_api_token(user=actors.member, name="short", scope="write", expires_at=parent_expiry)
    for body in ({"name": "forever"}, {"name": "later", "expires_at": (parent_expiry + timedelta(days=9)).isoformat()}):
        response = bearer(raw).post(URL, body, format="json")
        assert response.status_code == 201, response.content
        assert ApiToken.objects.get(pk=response.json()["id"]).expires_at == parent_expiry


# ---------------------------------------------------------------- queries


def test_list_has_constant_queries(actors):
    client = actors.client("member")

    def make_rows(n: int) -> None:
        for i in range(n):
            create_api_token(user=actors.member, name=f"t{i}")

    assert_constant_queries(make_rows, lambda: client.get(URL), budget=8)


@pytest.mark.parametrize("method", ["patch", "put"])
def test_tokens_cannot_be_edited(actors, method):
    token, _raw = create_api_token(user=actors.member, name="laptop")
    assert_access_matrix(
        actors,
        method=method,
        url=detail(token),
        data={"scope": "write"},
        expected={"anonymous": 401, "outsider": 405, "member": 405, "tenant_admin": 405, "cloud_admin": 405},
    )
    token.refresh_from_db()
    assert token.scope == "read"
