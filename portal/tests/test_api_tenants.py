"""/api/v1/tenants/: access matrix, content, writes through the services, constant queries."""

from __future__ import annotations

import pytest

from portal.models import AuditEvent, Membership, Quota, Tenant
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem
from vms.models import Flavor, Instance

URL = "/api/v1/tenants/"


def detail(tenant) -> str:
    return f"{URL}{tenant.pk}/"


# ---------------------------------------------------------------- access matrix


def test_list_matrix(actors):
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_retrieve_matrix(actors):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(actors.tenant),
        expected={"anonymous": 401, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_create_matrix(actors):
    def url():
        Tenant.objects.filter(name="Tenant New").delete()
        return URL

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data={"name": "Tenant New"},
        expected={"anonymous": 401, "outsider": 403, "member": 403, "tenant_admin": 403, "cloud_admin": 201},
    )


def test_patch_matrix(actors):
    assert_access_matrix(
        actors,
        method="patch",
        url=detail(actors.tenant),
        data={"description": "Lab of the A team"},
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_delete_matrix(actors):
    def url():
        tenant = Tenant.objects.create(name=f"Doomed {Tenant.objects.count()}", slug=f"doomed-{Tenant.objects.count()}")
        Membership.objects.create(tenant=tenant, user=actors.member, role=Membership.Role.MEMBER)
        Membership.objects.create(tenant=tenant, user=actors.tenant_admin, role=Membership.Role.ADMIN)
        return detail(tenant)

    assert_access_matrix(
        actors,
        method="delete",
        url=url,
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 403, "cloud_admin": 204},
    )


# ---------------------------------------------------------------- content


def names(response) -> dict[str, str | None]:
    assert response.status_code == 200, response.content
    return {row["name"]: row["role"] for row in response.json()["results"]}


def test_list_shows_own_tenants_with_role(actors):
    assert names(actors.client("outsider").get(URL)) == {"Tenant B": "admin"}
    assert names(actors.client("member").get(URL)) == {"Tenant A": "member"}
    assert names(actors.client("tenant_admin").get(URL)) == {"Tenant A": "admin"}
    assert names(actors.client("cloud_admin").get(URL)) == {"Tenant A": None, "Tenant B": None}


def test_retrieve_fields(actors):
    body = actors.client("member").get(detail(actors.tenant)).json()
    assert body == {
        "id": actors.tenant.pk,
        "name": "Tenant A",
        "slug": "tenant-a",
        "description": "",
        "enabled": True,
        "created_at": body["created_at"],
        "role": "member",
    }


def test_filter_enabled_and_search(actors):
    Tenant.objects.filter(pk=actors.other_tenant.pk).update(enabled=False)
    staff = actors.client("cloud_admin")
    assert names(staff.get(URL, {"enabled": "false"})) == {"Tenant B": None}
    assert names(staff.get(URL, {"enabled": "true"})) == {"Tenant A": None}
    assert names(staff.get(URL, {"search": "tenant-b"})) == {"Tenant B": None}
    assert names(staff.get(URL, {"ordering": "-name"})) == {"Tenant B": None, "Tenant A": None}
    # a disabled tenant is gone for its members
    assert names(actors.client("outsider").get(URL)) == {}


def test_create_with_initial_limits(actors):
    response = actors.client("cloud_admin").post(
        URL, {"name": "  Tenant C ", "description": "third", "limits": {"vcpus": 4, "instances": -1}}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Tenant C"
    assert body["slug"] == "tenant-c"
    assert body["role"] is None
    quota = Quota.objects.get(tenant_id=body["id"])
    assert quota.vcpus == 4
    assert quota.instances == -1
    event = AuditEvent.objects.get(action="tenant.create")
    assert event.tenant_id == body["id"]
    assert event.username == "cloudadmin"
    assert event.ip == "127.0.0.1"


def test_create_refuses_duplicates_and_bad_limits(actors):
    staff = actors.client("cloud_admin")
    body = assert_problem(staff.post(URL, {"name": "Tenant A"}, format="json"), 409)
    assert "name" in body["errors"]
    body = assert_problem(staff.post(URL, {"name": "Tenant D", "limits": {"vcpus": -2}}, format="json"), 400)
    assert "limits" in body["errors"]
    body = assert_problem(staff.post(URL, {"name": "Tenant D", "limits": {"gpus": 1}}, format="json"), 400)
    assert "gpus" in body["errors"]["limits"]
    assert not Tenant.objects.filter(name="Tenant D").exists()


def test_tenant_admin_renames_but_cannot_disable(actors):
    client = actors.client("tenant_admin")
    response = client.patch(detail(actors.tenant), {"name": "Tenant A1", "description": "d"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "Tenant A1"
    assert response.json()["role"] == "admin"
    event = AuditEvent.objects.get(action="tenant.update")
    assert event.detail == {"name": "Tenant A1", "description": "d"}
    assert event.tenant_id == actors.tenant.pk

    body = assert_problem(client.patch(detail(actors.tenant), {"enabled": False}, format="json"), 400)
    assert "enabled" in body["errors"]
    actors.tenant.refresh_from_db()
    assert actors.tenant.enabled


def test_cloud_admin_disables_tenant(actors):
    response = actors.client("cloud_admin").patch(detail(actors.tenant), {"enabled": False}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["enabled"] is False
    # its members no longer see it
    assert actors.client("member").get(detail(actors.tenant)).status_code == 404


def test_rename_conflict(actors):
    assert_problem(actors.client("cloud_admin").patch(detail(actors.tenant), {"name": "Tenant B"}, format="json"), 409)


def test_delete_writes_audit_and_cascades(actors):
    tenant_id = actors.tenant.pk
    response = actors.client("cloud_admin").delete(detail(actors.tenant))
    assert response.status_code == 204
    assert not Tenant.objects.filter(pk=tenant_id).exists()
    assert not Membership.objects.filter(tenant_id=tenant_id).exists()
    event = AuditEvent.objects.get(action="tenant.delete")
    assert event.target_id == str(tenant_id)
    assert event.target_repr == "Tenant A"


def test_delete_refused_while_instances_exist(actors):
    flavor = Flavor.objects.create(name="small", vcpus=1, ram_mib=512, disk_gib=5)
    Instance.objects.create(tenant=actors.tenant, name="vm1", flavor=flavor, vcpus=1, ram_mib=512, disk_gib=5)
    body = assert_problem(actors.client("cloud_admin").delete(detail(actors.tenant)), 409)
    assert body["code"] == "conflict"
    assert Tenant.objects.filter(pk=actors.tenant.pk).exists()
    assert not AuditEvent.objects.filter(action="tenant.delete").exists()


def test_put_is_not_offered(actors):
    response = actors.client("cloud_admin").put(detail(actors.tenant), {"name": "X"}, format="json")
    assert_problem(response, 405)


# ---------------------------------------------------------------- queries


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_list_has_constant_queries(actors, make_tenant, role):
    client = actors.client(role)

    def make_rows(n: int) -> None:
        for _ in range(n):
            tenant = make_tenant(f"Extra {Tenant.objects.count()}")
            Membership.objects.create(tenant=tenant, user=actors.member, role=Membership.Role.MEMBER)

    assert_constant_queries(make_rows, lambda: client.get(URL), budget=8)
