"""/api/v1/hosts/ and /api/v1/unmanaged-domains/: cloud admins only (others see nothing), URI rules,
capacity read-only, refresh against libvirt's test driver, adoption with quota, constant queries."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import cache

from portal.factories import make_host
from portal.models import AuditEvent
from portal.services import create_api_token, set_quota
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem
from vms.models import Flavor, Host, Instance, UnmanagedDomain

URL = "/api/v1/hosts/"
UNMANAGED = "/api/v1/unmanaged-domains/"
LIST = {"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200}
GIB = 1024**3


def staff_only(status: int) -> dict:
    return {"anonymous": 401, "outsider": 404, "member": 404, "tenant_admin": 404, "cloud_admin": status}


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()


@pytest.fixture
def host(db):
    return make_host("node1")


@pytest.fixture
def flavor(db):
    return Flavor.objects.create(name="m1.small", vcpus=2, ram_mib=1024, disk_gib=10)


def make_unmanaged(host: Host, name: str = "stray") -> UnmanagedDomain:
    return UnmanagedDomain.objects.create(
        host=host, uuid=uuid.uuid4(), name=name, state="running", vcpus=2, memory_mib=1024
    )


def detail(host) -> str:
    return f"{URL}{host.pk}/"


# ---------------------------------------------------------------- access matrix


def test_list_matrix(actors, host):
    assert_access_matrix(actors, method="get", url=URL, expected=LIST)
    assert actors.client("member").get(URL).json()["results"] == []
    assert [row["name"] for row in actors.client("cloud_admin").get(URL).json()["results"]] == ["node1"]


def test_retrieve_matrix(actors, host):
    assert_access_matrix(actors, method="get", url=detail(host), expected=staff_only(200))


def test_create_matrix(actors):
    def url():
        Host.objects.filter(name="new").delete()
        return URL

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data={"name": "new", "uri": "qemu+ssh://root@node9/system"},
        expected={"anonymous": 401, "outsider": 403, "member": 403, "tenant_admin": 403, "cloud_admin": 201},
    )


def test_patch_matrix(actors, host):
    assert_access_matrix(actors, method="patch", url=detail(host), data={"enabled": False}, expected=staff_only(200))


def test_delete_matrix(actors):
    assert_access_matrix(actors, method="delete", url=lambda: detail(make_host()), expected=staff_only(204))


def test_refresh_matrix(actors, host):
    assert_access_matrix(actors, method="post", url=f"{detail(host)}refresh/", expected=staff_only(200))


# ---------------------------------------------------------------- behaviour


def test_create_host(actors):
    response = actors.client("cloud_admin").post(
        URL,
        {"name": "node2", "uri": "qemu+tls://node2.lab/system", "virt_type": "kvm", "cpu_allocation_ratio": 2.0},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "unknown" and body["cpus"] is None and body["kind"] == "libvirt"
    host = Host.objects.get(name="node2")
    assert host.virt_type == "kvm" and host.cpu_allocation_ratio == 2.0
    assert AuditEvent.objects.filter(action="host.create", target_id=str(host.pk)).exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "x", "uri": "http://node/"}, "uri"),
        ({"name": "x", "uri": "qemu+ssh://node/system?command=/bin/sh"}, "uri"),
        ({"name": "x", "uri": "qemu+ssh://node/system?socket=/tmp/s"}, "uri"),
        ({"name": " ", "uri": "qemu:///system"}, "name"),
        ({"uri": "qemu:///system"}, "name"),
        ({"name": "x", "uri": "qemu:///system", "vnc_listen": "0.0.0.0"}, "vnc_listen"),  # noqa: S104 - refused
        ({"name": "x", "uri": "qemu:///system", "cpu_mode": "custom"}, "cpu_model"),
        ({"name": "x", "uri": "qemu:///system", "ram_allocation_ratio": 0}, "ram_allocation_ratio"),
    ],
)
def test_create_validation(actors, data, field):
    body = assert_problem(actors.client("cloud_admin").post(URL, data, format="json"), 400)
    assert field in body["errors"], body
    assert not Host.objects.exists()


def test_duplicate_name_is_conflict(actors, host):
    staff = actors.client("cloud_admin")
    body = assert_problem(staff.post(URL, {"name": "node1", "uri": "qemu:///system"}, format="json"), 409)
    assert "name" in body["errors"]
    other = make_host("node2")
    assert_problem(staff.patch(detail(other), {"name": "node1"}, format="json"), 409)


def test_capacity_is_read_only(actors, host):
    response = actors.client("cloud_admin").patch(
        detail(host), {"cpus": 512, "state": "down", "storage_pool": "images"}, format="json"
    )
    assert response.status_code == 200, response.content
    host.refresh_from_db()
    assert host.cpus == 8 and host.state == Host.State.UP and host.storage_pool == "images"
    assert AuditEvent.objects.get(action="host.update").detail["fields"] == ["storage_pool"]


def test_patch_checks_the_uri(actors, host):
    body = assert_problem(
        actors.client("cloud_admin").patch(detail(host), {"uri": "qemu+ssh://h/system?netcat=nc"}, format="json"), 400
    )
    assert "uri" in body["errors"]
    host.refresh_from_db()
    assert host.uri == "test:///default"


def test_delete_host_with_instances_is_conflict(actors, host, flavor):
    Instance.objects.create(
        tenant=actors.tenant, name="vm", flavor=flavor, vcpus=2, ram_mib=1024, disk_gib=10, host=host
    )
    body = assert_problem(actors.client("cloud_admin").delete(detail(host)), 409, "conflict")
    assert "instances" in body["detail"]
    assert Host.objects.filter(pk=host.pk).exists()


def test_delete_host(actors, host):
    make_unmanaged(host)
    assert actors.client("cloud_admin").delete(detail(host)).status_code == 204
    assert not Host.objects.exists() and not UnmanagedDomain.objects.exists()
    assert AuditEvent.objects.filter(action="host.delete").exists()


def test_refresh_reads_capacity_from_the_host(actors):
    host = make_host("node1", state=Host.State.UNKNOWN, cpus=None, memory_mib=None)
    response = actors.client("cloud_admin").post(f"{detail(host)}refresh/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "up" and body["cpus"] == 16 and body["pool_capacity"] > 0
    assert body["libvirt_version"]


def test_refresh_of_an_unreachable_host_marks_it_down(actors):
    host = make_host("node1", storage_pool="no-such-pool")
    body = actors.client("cloud_admin").post(f"{detail(host)}refresh/").json()
    assert body["state"] == "down" and "no-such-pool" in body["state_reason"]


def test_read_only_token_cannot_refresh(actors, host):
    _token, raw = create_api_token(user=actors.cloud_admin, name="ro", scope="read")
    client = actors.client("anonymous")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get(detail(host)).status_code == 200
    assert_problem(client.post(f"{detail(host)}refresh/"), 403)


def test_filters(actors, host):
    make_host("node2", state=Host.State.DOWN, enabled=False)
    staff = actors.client("cloud_admin")
    assert [r["name"] for r in staff.get(URL, {"state": "down"}).json()["results"]] == ["node2"]
    assert [r["name"] for r in staff.get(URL, {"enabled": "true"}).json()["results"]] == ["node1"]
    assert [r["name"] for r in staff.get(URL, {"ordering": "-name"}).json()["results"]] == ["node2", "node1"]


def test_host_list_has_constant_queries(actors):
    client = actors.client("cloud_admin")

    def make_rows(n: int) -> None:
        for _ in range(n):
            make_host()

    assert_constant_queries(make_rows, lambda: client.get(URL), budget=6)


# ---------------------------------------------------------------- unmanaged domains


def test_unmanaged_list_and_retrieve_matrix(actors, host):
    domain = make_unmanaged(host)
    assert_access_matrix(actors, method="get", url=UNMANAGED, expected=LIST)
    assert actors.client("tenant_admin").get(UNMANAGED).json()["results"] == []
    assert_access_matrix(actors, method="get", url=f"{UNMANAGED}{domain.pk}/", expected=staff_only(200))
    row = actors.client("cloud_admin").get(UNMANAGED).json()["results"][0]
    assert row["host_name"] == "node1" and row["uuid"] == str(domain.uuid)


def test_adopt_matrix(actors, host, flavor):
    def url():
        Instance.objects.all().delete()
        return f"{UNMANAGED}{make_unmanaged(host).pk}/adopt/"

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data={"tenant": actors.tenant.pk, "flavor": flavor.pk, "name": "adopted"},
        expected=staff_only(201),
    )


def test_adopt_creates_an_instance_with_quota(actors, host, flavor):
    domain = make_unmanaged(host, "legacy-db")
    response = actors.client("cloud_admin").post(
        f"{UNMANAGED}{domain.pk}/adopt/", {"tenant": actors.tenant.pk, "flavor": flavor.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "legacy-db" and body["uuid"] == str(domain.uuid) and body["host"] == "node1"
    assert body["state"] == "running" and body["vcpus"] == 2 and body["tenant"] == actors.tenant.pk
    assert not UnmanagedDomain.objects.exists()
    assert actors.client("member").get(f"/api/v1/instances/{body['id']}/").status_code == 200


def test_adopt_over_quota_or_taken_name_changes_nothing(actors, host, flavor):
    domain = make_unmanaged(host)
    staff = actors.client("cloud_admin")
    url = f"{UNMANAGED}{domain.pk}/adopt/"
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"vcpus": 1})
    body = assert_problem(staff.post(url, {"tenant": actors.tenant.pk, "flavor": flavor.pk}, format="json"), 403)
    assert body["resource"] == "vcpus"
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"vcpus": 10})
    Instance.objects.create(tenant=actors.tenant, name="stray", flavor=flavor, vcpus=2, ram_mib=1024, disk_gib=10)
    assert_problem(staff.post(url, {"tenant": actors.tenant.pk, "flavor": flavor.pk}, format="json"), 409)
    body = assert_problem(staff.post(url, {"flavor": flavor.pk}, format="json"), 400)
    assert "tenant" in body["errors"]
    assert UnmanagedDomain.objects.filter(pk=domain.pk).exists()
    assert Instance.objects.count() == 1


def test_unmanaged_list_has_constant_queries(actors, host):
    client = actors.client("cloud_admin")

    def make_rows(n: int) -> None:
        for _ in range(n):
            make_unmanaged(make_host(), "d")

    assert_constant_queries(make_rows, lambda: client.get(UNMANAGED), budget=6)
