"""/api/v1/audit-events/: read-only, tenant admins see their tenants' events, members none."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.models import AuditEvent
from portal.services import record_audit
from portal.testing import assert_access_matrix, assert_constant_queries

URL = "/api/v1/audit-events/"
ALL_ROLES = ("anonymous", "outsider", "member", "tenant_admin", "cloud_admin")


@pytest.fixture
def events(actors):
    a = record_audit(user=actors.tenant_admin, action="tenant.update", target=actors.tenant, tenant=actors.tenant)
    other = actors.other_tenant
    b = record_audit(user=actors.outsider, action="tenant.update", target=other, tenant=other)
    denied = record_audit(
        user=actors.member, action="instance.delete", tenant=actors.tenant, outcome=AuditEvent.Outcome.DENIED
    )
    global_event = record_audit(user=actors.cloud_admin, action="flavor.create")
    return {"a": a, "b": b, "denied": denied, "global": global_event}


def detail(event) -> str:
    return f"{URL}{event.pk}/"


def ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def test_list_matrix(actors, events):
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_retrieve_matrix(actors, events):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(events["a"]),
        expected={"anonymous": 401, "outsider": 404, "member": 404, "tenant_admin": 200, "cloud_admin": 200},
    )


@pytest.mark.parametrize(("method", "detail_url"), [("post", False), ("patch", True), ("delete", True)])
def test_audit_trail_is_read_only(actors, events, method, detail_url):
    url = detail(events["a"]) if detail_url else URL
    expected = dict.fromkeys(ALL_ROLES, 405)
    expected["anonymous"] = 401
    assert_access_matrix(actors, method=method, url=url, data={"action": "x"}, expected=expected)
    assert AuditEvent.objects.count() == 4


def test_who_sees_what(actors, events):
    assert ids(actors.client("member").get(URL)) == set()
    assert ids(actors.client("tenant_admin").get(URL)) == {events["a"].pk, events["denied"].pk}
    assert ids(actors.client("outsider").get(URL)) == {events["b"].pk}
    assert ids(actors.client("cloud_admin").get(URL)) == {event.pk for event in events.values()}


def test_fields(actors, events):
    body = actors.client("tenant_admin").get(detail(events["a"])).json()
    assert body == {
        "id": events["a"].pk,
        "created_at": body["created_at"],
        "user": actors.tenant_admin.pk,
        "username": "tadmin",
        "tenant": actors.tenant.pk,
        "action": "tenant.update",
        "target_type": "portal.tenant",
        "target_id": str(actors.tenant.pk),
        "target_repr": "Tenant A",
        "outcome": "success",
        "ip": None,
        "detail": {},
    }


def test_filters(actors, events):
    staff = actors.client("cloud_admin")
    assert ids(staff.get(URL, {"tenant": actors.tenant.pk})) == {events["a"].pk, events["denied"].pk}
    assert ids(staff.get(URL, {"action": "flavor.create"})) == {events["global"].pk}
    assert ids(staff.get(URL, {"action_prefix": "tenant."})) == {events["a"].pk, events["b"].pk}
    assert ids(staff.get(URL, {"outcome": "denied"})) == {events["denied"].pk}
    assert ids(staff.get(URL, {"username": "outsider"})) == {events["b"].pk}
    assert ids(staff.get(URL, {"target_type": "portal.tenant"})) == {events["a"].pk, events["b"].pk}
    AuditEvent.objects.filter(pk=events["b"].pk).update(created_at=timezone.now() - timedelta(days=10))
    week_ago = (timezone.now() - timedelta(days=7)).isoformat()
    assert events["b"].pk not in ids(staff.get(URL, {"created_at_after": week_ago}))
    assert ids(staff.get(URL, {"created_at_before": week_ago})) == {events["b"].pk}
    # bad values are problems, not silently ignored
    response = staff.get(URL, {"created_at_after": "last tuesday"})
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/problem+json")
    assert "created_at" in str(response.json()["errors"])
    # a tenant admin cannot filter on a tenant they do not see
    assert actors.client("tenant_admin").get(URL, {"tenant": actors.other_tenant.pk}).status_code == 400


def test_newest_first(actors, events):
    rows = actors.client("cloud_admin").get(URL).json()["results"]
    assert [row["id"] for row in rows] == sorted((event.pk for event in events.values()), reverse=True)


@pytest.mark.parametrize("role", ["tenant_admin", "cloud_admin"])
def test_list_has_constant_queries(actors, role):
    client = actors.client(role)

    def make_rows(n: int) -> None:
        for _ in range(n):
            record_audit(user=actors.member, action="test.event", target=actors.tenant, tenant=actors.tenant)

    assert_constant_queries(make_rows, lambda: client.get(URL), budget=8)


@pytest.mark.parametrize(
    ("bound", "status"),
    [
        ("0327-05-18T10:28:31.54+21:06", 200),  # an offset PostgreSQL would refuse as it is
        ("0001-01-01T00:00:00+14:00", 400),  # before year 1 in UTC
        ("not-a-date", 400),
    ],
)
def test_created_at_bounds_with_odd_offsets(actors, bound, status):
    client = actors.client("cloud_admin")
    response = client.get(URL, {"created_at_after": bound})
    assert response.status_code == status, response.content
