"""/api/v1/flavors/: visibility of public/private/disabled flavors, staff CRUD, constant queries."""

from __future__ import annotations

import pytest

from portal.models import AuditEvent
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem
from vms.models import Flavor, Instance

URL = "/api/v1/flavors/"


@pytest.fixture
def flavors(actors):
    public = Flavor.objects.create(name="m1.small", vcpus=1, ram_mib=1024, disk_gib=10)
    private_a = Flavor.objects.create(name="a.big", vcpus=8, ram_mib=16384, disk_gib=100, is_public=False)
    private_a.tenants.set([actors.tenant])
    private_b = Flavor.objects.create(name="b.gpu", vcpus=4, ram_mib=8192, disk_gib=50, is_public=False)
    private_b.tenants.set([actors.other_tenant])
    shared = Flavor.objects.create(name="ab.shared", vcpus=2, ram_mib=2048, disk_gib=20, is_public=False)
    shared.tenants.set([actors.tenant, actors.other_tenant])
    disabled = Flavor.objects.create(name="m1.old", vcpus=1, ram_mib=512, disk_gib=5, disabled=True)
    return {"public": public, "a": private_a, "b": private_b, "shared": shared, "disabled": disabled}


def detail(flavor) -> str:
    return f"{URL}{flavor.pk}/"


def names(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {row["name"] for row in response.json()["results"]}


# ---------------------------------------------------------------- access matrix


def test_list_matrix(actors, flavors):
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_retrieve_public_matrix(actors, flavors):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(flavors["public"]),
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_retrieve_private_matrix(actors, flavors):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(flavors["a"]),
        expected={"anonymous": 401, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_retrieve_disabled_matrix(actors, flavors):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(flavors["disabled"]),
        expected={"anonymous": 401, "outsider": 404, "member": 404, "tenant_admin": 404, "cloud_admin": 200},
    )


def test_create_matrix(actors):
    def url():
        Flavor.objects.filter(name="m2.new").delete()
        return URL

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data={"name": "m2.new", "vcpus": 2, "ram_mib": 4096, "disk_gib": 40},
        expected={"anonymous": 401, "outsider": 403, "member": 403, "tenant_admin": 403, "cloud_admin": 201},
    )


def test_patch_matrix(actors, flavors):
    assert_access_matrix(
        actors,
        method="patch",
        url=detail(flavors["a"]),
        data={"description": "for builds"},
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 403, "cloud_admin": 200},
    )


def test_delete_matrix(actors):
    def url():
        flavor = Flavor.objects.create(name=f"tmp{Flavor.objects.count()}", vcpus=1, ram_mib=64, disk_gib=1)
        flavor.is_public = False
        flavor.save()
        flavor.tenants.set([actors.tenant])
        return detail(flavor)

    assert_access_matrix(
        actors,
        method="delete",
        url=url,
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 403, "cloud_admin": 204},
    )


# ---------------------------------------------------------------- content


def test_private_flavors_only_for_their_tenants(actors, flavors):
    assert names(actors.client("member").get(URL)) == {"m1.small", "a.big", "ab.shared"}
    assert names(actors.client("tenant_admin").get(URL)) == {"m1.small", "a.big", "ab.shared"}
    assert names(actors.client("outsider").get(URL)) == {"m1.small", "b.gpu", "ab.shared"}
    assert names(actors.client("cloud_admin").get(URL)) == {f.name for f in flavors.values()}


def test_users_do_not_see_who_else_shares_a_flavor(actors, flavors):
    rows = actors.client("member").get(URL).json()["results"]
    assert all("tenants" not in row for row in rows)
    assert "tenants" not in actors.client("member").get(detail(flavors["shared"])).json()
    staff_view = actors.client("cloud_admin").get(detail(flavors["shared"])).json()
    assert sorted(staff_view["tenants"]) == sorted([actors.tenant.pk, actors.other_tenant.pk])


def test_tenant_filter(actors, flavors):
    staff = actors.client("cloud_admin")
    assert names(staff.get(URL, {"tenant": actors.other_tenant.pk})) == {"m1.small", "b.gpu", "ab.shared"}
    member = actors.client("member")
    assert names(member.get(URL, {"tenant": actors.tenant.pk})) == {"m1.small", "a.big", "ab.shared"}
    # the tenant must be one the user sees
    body = assert_problem(member.get(URL, {"tenant": actors.other_tenant.pk}), 400)
    assert "tenant" in body["errors"]


def test_other_filters_and_ordering(actors, flavors):
    staff = actors.client("cloud_admin")
    assert names(staff.get(URL, {"disabled": "true"})) == {"m1.old"}
    assert names(staff.get(URL, {"is_public": "false"})) == {"a.big", "b.gpu", "ab.shared"}
    assert names(staff.get(URL, {"search": "m1"})) == {"m1.small", "m1.old"}
    rows = staff.get(URL, {"ordering": "-vcpus"}).json()["results"]
    assert rows[0]["name"] == "a.big"


def test_create_private_flavor(actors):
    response = actors.client("cloud_admin").post(
        URL,
        {
            "name": "gpu.l",
            "vcpus": 16,
            "ram_mib": 65536,
            "disk_gib": 200,
            "is_public": False,
            "tenants": [actors.tenant.pk],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["tenants"] == [actors.tenant.pk]
    assert body["is_public"] is False
    flavor = Flavor.objects.get(pk=body["id"])
    assert list(flavor.tenants.all()) == [actors.tenant]
    assert AuditEvent.objects.filter(action="flavor.create", target_id=str(flavor.pk)).exists()
    assert names(actors.client("member").get(URL)) == {"gpu.l"}
    assert names(actors.client("outsider").get(URL)) == set()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "x", "vcpus": 0, "ram_mib": 64, "disk_gib": 1}, "vcpus"),
        ({"name": "x", "vcpus": 1, "ram_mib": 8, "disk_gib": 1}, "ram_mib"),
        ({"name": "x", "vcpus": 1, "ram_mib": 64, "disk_gib": 2**40}, "disk_gib"),
        ({"name": " ", "vcpus": 1, "ram_mib": 64, "disk_gib": 1}, "name"),
        ({"name": "x", "vcpus": 1, "ram_mib": 64, "disk_gib": 1, "tenants": [999999]}, "tenants"),
        ({"vcpus": 1, "ram_mib": 64, "disk_gib": 1}, "name"),
    ],
)
def test_create_validation(actors, data, field):
    body = assert_problem(actors.client("cloud_admin").post(URL, data, format="json"), 400)
    assert field in body["errors"]
    assert not Flavor.objects.exists()


def test_duplicate_name_is_conflict(actors, flavors):
    staff = actors.client("cloud_admin")
    data = {"name": "m1.small", "vcpus": 1, "ram_mib": 64, "disk_gib": 1}
    body = assert_problem(staff.post(URL, data, format="json"), 409)
    assert "name" in body["errors"]
    assert_problem(staff.patch(detail(flavors["a"]), {"name": "m1.small"}, format="json"), 409)


def test_update_flavor(actors, flavors):
    response = actors.client("cloud_admin").patch(
        detail(flavors["a"]), {"vcpus": 12, "tenants": [actors.other_tenant.pk], "disabled": False}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["vcpus"] == 12
    assert response.json()["tenants"] == [actors.other_tenant.pk]
    event = AuditEvent.objects.get(action="flavor.update")
    assert event.detail["vcpus"] == 12
    assert event.detail["tenants"] == ["tenant-b"]
    assert "a.big" not in names(actors.client("member").get(URL))


def test_delete_flavor(actors, flavors):
    staff = actors.client("cloud_admin")
    assert staff.delete(detail(flavors["public"])).status_code == 204
    assert not Flavor.objects.filter(pk=flavors["public"].pk).exists()
    assert AuditEvent.objects.filter(action="flavor.delete").count() == 1


def test_delete_flavor_in_use_is_conflict(actors, flavors):
    flavor = flavors["public"]
    Instance.objects.create(tenant=actors.tenant, name="vm", flavor=flavor, vcpus=1, ram_mib=1024, disk_gib=10)
    body = assert_problem(actors.client("cloud_admin").delete(detail(flavor)), 409)
    assert body["code"] == "conflict"
    assert Flavor.objects.filter(pk=flavor.pk).exists()


# ---------------------------------------------------------------- queries


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_list_has_constant_queries(actors, role):
    client = actors.client(role)

    def make_rows(n: int) -> None:
        for _ in range(n):
            flavor = Flavor.objects.create(
                name=f"x{Flavor.objects.count()}", vcpus=1, ram_mib=64, disk_gib=1, is_public=False
            )
            flavor.tenants.set([actors.tenant, actors.other_tenant])

    assert_constant_queries(make_rows, lambda: client.get(URL), budget=8)
