"""/api/v1/operations/: read-only progress of long actions; tenant members see their tenants', staff all."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from portal.testing import assert_access_matrix, assert_constant_queries
from vms import operations
from vms.models import Host, Operation

URL = "/api/v1/operations/"


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()


@pytest.fixture
def ops(actors):
    host = Host.objects.create(name="lctest-ops", uri="qemu:///system")
    a = operations.create_operation(
        kind="image.process", target=actors.tenant, tenant=actors.tenant, user=actors.member
    )
    operations.progress(operation=a, percent=40, message="Converting to qcow2")
    b = operations.create_operation(
        kind="image.import", target=actors.other_tenant, tenant=actors.other_tenant, user=actors.outsider
    )
    operations.fail(operation=b, error="Download failed: 404")
    infra = operations.create_operation(kind="host.check", target=host, tenant=None, user=actors.cloud_admin)
    operations.begin(operation_id=infra.pk)
    operations.succeed(operation=infra)
    return {"a": a, "b": b, "infra": infra}


def detail(operation) -> str:
    return f"{URL}{operation.pk}/"


def ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    return response.json()


# ---------------------------------------------------------------- access matrix


def test_list_matrix(actors, ops):
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


@pytest.mark.parametrize(
    ("which", "outsider", "members"),
    [("a", 404, 200), ("b", 200, 404), ("infra", 404, 404)],
)
def test_retrieve_matrix(actors, ops, which, outsider, members):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(ops[which]),
        expected={
            "anonymous": 401,
            "outsider": outsider,
            "member": members,
            "tenant_admin": members,
            "cloud_admin": 200,
        },
    )


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_read_only(actors, ops, method):
    url = URL if method == "post" else detail(ops["a"])
    assert_access_matrix(
        actors,
        method=method,
        url=url,
        data={"state": "succeeded"} if method != "delete" else None,
        expected={"anonymous": 401, "outsider": 405, "member": 405, "tenant_admin": 405, "cloud_admin": 405},
    )
    assert Operation.objects.get(pk=ops["a"].pk).state == Operation.State.QUEUED


# ---------------------------------------------------------------- content


def test_who_sees_what(actors, ops):
    assert ids(actors.client("member").get(URL)) == {ops["a"].pk}
    assert ids(actors.client("tenant_admin").get(URL)) == {ops["a"].pk}
    assert ids(actors.client("outsider").get(URL)) == {ops["b"].pk}
    assert ids(actors.client("cloud_admin").get(URL)) == {op.pk for op in ops.values()}


def test_fields_show_the_progress(actors, ops):
    row = actors.client("member").get(detail(ops["a"])).json()
    assert row == {
        "id": ops["a"].pk,
        "uuid": str(ops["a"].uuid),
        "kind": "image.process",
        "tenant": actors.tenant.pk,
        "user": "member",
        "target_type": "portal.tenant",
        "target_id": str(actors.tenant.pk),
        "target_repr": "Tenant A",
        "state": "queued",
        "progress": 40,
        "message": "Converting to qcow2",
        "error": "",
        "error_detail": None,  # the backend's words: for cloud admins only
        "cancel_requested": False,  # a cloud admin asked a migration to stop
        "result": None,  # a finished migration's figures
        "created_at": row["created_at"],
        "started_at": None,
        "finished_at": None,
    }
    failed = actors.client("outsider").get(detail(ops["b"])).json()
    assert failed["state"] == "failed" and failed["error"] == "Download failed: 404" and failed["finished_at"]
    infra = actors.client("cloud_admin").get(detail(ops["infra"])).json()
    assert infra["tenant"] is None and infra["progress"] == 100 and infra["started_at"]


def test_a_deleted_user_leaves_a_null_username(actors, ops):
    actors.member.delete()
    assert actors.client("tenant_admin").get(detail(ops["a"])).json()["user"] is None


def test_filters(actors, ops):
    staff = actors.client("cloud_admin")
    assert ids(staff.get(URL, {"tenant": actors.tenant.pk})) == {ops["a"].pk}
    assert ids(staff.get(URL, {"kind": "image.import"})) == {ops["b"].pk}
    assert ids(staff.get(URL, {"state": "succeeded"})) == {ops["infra"].pk}
    assert ids(staff.get(URL, {"target_type": "vms.host"})) == {ops["infra"].pk}
    assert ids(staff.get(URL, {"target_type": "portal.tenant", "target_id": actors.other_tenant.pk})) == {ops["b"].pk}
    assert ids(staff.get(URL, {"ordering": "kind"})) == {op.pk for op in ops.values()}
    assert_problem(staff.get(URL, {"state": "sleeping"}), 400)
    # A tenant you cannot see is not a valid choice.
    assert_problem(actors.client("member").get(URL, {"tenant": actors.other_tenant.pk}), 400)


def test_newest_first(actors, ops):
    rows = actors.client("cloud_admin").get(URL).json()["results"]
    assert [row["id"] for row in rows] == [ops["infra"].pk, ops["b"].pk, ops["a"].pk]


def test_list_queries_are_constant(actors):
    def make_rows(n):
        for _i in range(n):
            for tenant, user in ((actors.tenant, actors.member), (actors.other_tenant, actors.outsider)):
                operations.create_operation(kind="image.process", target=tenant, tenant=tenant, user=user)
            operations.create_operation(kind="host.check", target=actors.tenant, tenant=None, user=None)

    for role in ("member", "cloud_admin"):
        client = actors.client(role)

        def request(client=client):
            response = client.get(URL, {"page_size": 200})
            assert response.status_code == 200

        assert_constant_queries(make_rows, request, budget=8)
