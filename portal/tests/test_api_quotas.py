"""/api/v1/quotas/: limits and usage, staff-only changes, validation, constant queries."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from portal.models import QUOTA_RESOURCES, AuditEvent, Membership, Quota, Tenant
from portal.testing import assert_access_matrix, assert_constant_queries
from vms.models import Flavor, Instance

URL = "/api/v1/quotas/"


def detail(tenant) -> str:
    return f"{URL}{tenant.pk}/"


def launch(tenant, name: str, *, vcpus: int = 2, ram_mib: int = 2048, disk_gib: int = 20) -> Instance:
    flavor, _ = Flavor.objects.get_or_create(
        name=f"f{vcpus}-{ram_mib}-{disk_gib}", defaults={"vcpus": vcpus, "ram_mib": ram_mib, "disk_gib": disk_gib}
    )
    return Instance.objects.create(
        tenant=tenant, name=name, flavor=flavor, vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib
    )


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


def test_patch_matrix(actors):
    assert_access_matrix(
        actors,
        method="patch",
        url=detail(actors.tenant),
        data={"limits": {"vcpus": 40}},
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 403, "cloud_admin": 200},
    )


def test_limits_and_usage(actors):
    launch(actors.tenant, "vm1")
    launch(actors.tenant, "vm2", vcpus=4, ram_mib=4096, disk_gib=40)
    launch(actors.other_tenant, "b1")
    body = actors.client("member").get(detail(actors.tenant)).json()
    assert body["tenant"] == actors.tenant.pk
    assert body["tenant_name"] == "Tenant A"
    assert set(body["limits"]) == set(QUOTA_RESOURCES) == set(body["usage"])
    assert body["limits"] == Quota.objects.get(tenant=actors.tenant).limits()
    assert body["usage"] == {
        "instances": 2,
        "vcpus": 6,
        "ram_mib": 6144,
        "disk_gib": 60,
        "snapshots": 0,
        "snapshot_mib": 0,
        "images": 0,
        "image_storage_gib": 0,
        "security_groups": 1,  # every tenant's "default" group and its two rules
        "security_group_rules": 2,
    }


def test_list_contains_only_visible_tenants(actors):
    def tenants(role: str) -> set[int]:
        return {row["tenant"] for row in actors.client(role).get(URL).json()["results"]}

    assert tenants("outsider") == {actors.other_tenant.pk}
    assert tenants("member") == {actors.tenant.pk}
    assert tenants("cloud_admin") == {actors.tenant.pk, actors.other_tenant.pk}
    launch(actors.other_tenant, "b1")
    rows = {row["tenant"]: row for row in actors.client("cloud_admin").get(URL).json()["results"]}
    assert rows[actors.other_tenant.pk]["usage"]["instances"] == 1
    assert rows[actors.tenant.pk]["usage"]["instances"] == 0


def test_patch_sets_limits_and_audits(actors):
    Quota.objects.filter(tenant=actors.tenant).update(vcpus=20, instances=10)
    response = actors.client("cloud_admin").patch(
        detail(actors.tenant), {"limits": {"vcpus": 40, "instances": -1}}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["limits"]["vcpus"] == 40
    assert response.json()["limits"]["instances"] == -1
    quota = Quota.objects.get(tenant=actors.tenant)
    assert (quota.vcpus, quota.instances) == (40, -1)
    event = AuditEvent.objects.get(action="quota.update")
    assert event.tenant_id == actors.tenant.pk
    assert event.detail == {"vcpus": [20, 40], "instances": [10, -1]}


def test_empty_patch_changes_nothing(actors):
    response = actors.client("cloud_admin").patch(detail(actors.tenant), {}, format="json")
    assert response.status_code == 200
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    "limits",
    [
        {"vcpus": -2},
        {"vcpus": "many"},
        {"vcpus": 1.5},
        {"vcpus": None},
        {"vcpus": 2**40},
        {"vcpus": 10, "ram_mib": -5},  # one bad value: nothing at all changes
        {"vcpus": 10, "gpus": 1},  # unknown resource
    ],
)
def test_patch_validation(actors, limits):
    before = Quota.objects.get(tenant=actors.tenant).limits()
    response = actors.client("cloud_admin").patch(detail(actors.tenant), {"limits": limits}, format="json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 400
    assert body["code"] == "invalid"
    assert "limits" in body["errors"]
    assert Quota.objects.get(tenant=actors.tenant).limits() == before
    assert not AuditEvent.objects.exists()


def test_patch_requires_an_object(actors):
    response = actors.client("cloud_admin").patch(detail(actors.tenant), {"limits": [1, 2]}, format="json")
    assert response.status_code == 400


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_list_has_constant_queries(actors, make_tenant, role):
    client = actors.client(role)

    def make_rows(n: int) -> None:
        for _ in range(n):
            tenant = make_tenant(f"Extra {Tenant.objects.count()}")
            Membership.objects.create(tenant=tenant, user=actors.member)
            launch(tenant, "vm")

    assert_constant_queries(make_rows, lambda: client.get(URL), budget=9)  # +1: security groups' usage


@pytest.mark.parametrize(("method", "on_detail"), [("post", False), ("delete", True), ("put", True)])
def test_quotas_cannot_be_created_or_deleted(actors, method, on_detail):
    assert_access_matrix(
        actors,
        method=method,
        url=detail(actors.tenant) if on_detail else URL,
        data={"limits": {"vcpus": 1}} if method != "delete" else None,
        expected={"anonymous": 401, "outsider": 405, "member": 405, "tenant_admin": 405, "cloud_admin": 405},
    )
    assert Quota.objects.filter(tenant=actors.tenant).exists()


def test_a_quota_is_found_by_its_tenant_even_when_the_ids_differ(actors):
    """The URL names the tenant: the quota row whose own id equals that tenant's id belongs to another tenant here."""
    a, b = actors.tenant, actors.other_tenant
    limits_a, limits_b = Quota.objects.get(tenant=a).limits(), Quota.objects.get(tenant=b).limits()
    Quota.objects.filter(tenant__in=[a, b]).delete()
    Quota.objects.create(pk=a.pk, tenant=b, **{**limits_b, "instances": 3})  # B's quota has A's id
    mine = Quota.objects.create(tenant=a, **{**limits_a, "instances": 5})
    assert mine.pk != a.pk
    member = APIClient()
    member.force_authenticate(actors.member)
    body = member.get(detail(a)).json()
    assert (body["tenant"], body["limits"]["instances"]) == (a.pk, 5)
    admin = APIClient()
    admin.force_authenticate(actors.cloud_admin)
    response = admin.patch(detail(a), {"limits": {"instances": 7}}, format="json")
    assert response.status_code == 200, response.content
    assert Quota.objects.get(tenant=a).instances == 7 and Quota.objects.get(tenant=b).instances == 3
