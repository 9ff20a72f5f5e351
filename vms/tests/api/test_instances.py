"""/api/v1/instances/: access matrix of every endpoint and action, launches with quota and placement,
actions queued as operations (202), disks and snapshots, constant queries.

No guest boots here: on-commit hooks do not run inside the test transaction, so the operations are
recorded (and the instances marked busy) but no Celery task runs.
"""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.utils import translation
from django.utils.translation import gettext
from rest_framework import serializers
from rest_framework.test import APIRequestFactory

from images.models import Image
from portal import factories
from portal.models import AuditEvent
from portal.services import create_api_token, set_quota
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem
from vms import lifecycle, operations
from vms.access import may_read_user_data
from vms.api.instances import InstanceDetailSerializer, InstanceSerializer
from vms.models import Flavor, Host, Instance, InstanceDisk, Keypair, Operation, Snapshot
from vms.selectors import instance_usage

URL = "/api/v1/instances/"
OK = {"anonymous": 401, "outsider": 404, "member": 202, "tenant_admin": 202, "cloud_admin": 202}
READ = {"anonymous": 401, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200}
GIB = 1024**3


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()


@pytest.fixture
def host(db):
    return Host.objects.create(
        name="node1",
        uri="test:///default",
        state=Host.State.UP,
        cpus=8,
        memory_mib=16384,
        pool_capacity=100 * GIB,
        pool_available=90 * GIB,
    )


@pytest.fixture
def flavors(db):
    return {
        "small": Flavor.objects.create(name="m1.small", vcpus=2, ram_mib=1024, disk_gib=5),
        "big": Flavor.objects.create(name="m1.big", vcpus=4, ram_mib=4096, disk_gib=20),
    }


@pytest.fixture
def image(actors):
    return Image.objects.create(
        name="debian",
        tenant=actors.tenant,
        owner=actors.member,
        disk_format="qcow2",
        stored_format="qcow2",
        size=1024,
        virtual_size=GIB,
        status=Image.Status.ACTIVE,
    )


@pytest.fixture
def make_instance(actors, host, flavors, image):
    def make(*, tenant=None, state=Instance.State.RUNNING, name=None, **fields) -> Instance:
        flavor = fields.pop("flavor", flavors["small"])
        values = {"vcpus": 1, "ram_mib": 512, **fields}
        return factories.make_instance(
            tenant or actors.tenant,
            flavor,
            host,
            owner=actors.member,
            name=name or f"vm{Instance.objects.count() + 1}",
            image=image,
            state=state,
            **values,
        )

    return make


def detail(instance) -> str:
    return f"{URL}{instance.pk}/"


def launch_body(actors, flavors, image, /, **extra) -> dict:
    return {"tenant": actors.tenant.pk, "name": "web", "flavor": flavors["small"].pk, "image": image.pk, **extra}


def usage(tenant) -> dict:
    return instance_usage([tenant.pk]).get(tenant.pk, {})


# ---------------------------------------------------------------- access matrix


def test_list_matrix(actors, make_instance):
    make_instance()
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_list_shows_only_your_tenants(actors, make_instance):
    mine = make_instance()
    theirs = make_instance(tenant=actors.other_tenant)
    rows = actors.client("member").get(URL).json()["results"]
    assert [row["id"] for row in rows] == [mine.pk]
    assert [r["id"] for r in actors.client("outsider").get(URL).json()["results"]] == [theirs.pk]
    assert {r["id"] for r in actors.client("cloud_admin").get(URL).json()["results"]} == {mine.pk, theirs.pk}


@pytest.mark.parametrize("reader", ["member", "tenant_admin", "cloud_admin"])
def test_rows_are_what_the_declared_fields_give(actors, make_instance, reader, settings):
    """The list builds its rows directly (speed); they equal DRF's field-by-field output with the readers'
    differences applied: the host for cloud admins only, the stored reason translated, user-data in the
    detail for those who may read it."""
    settings.TIME_ZONE = "Asia/Shanghai"  # datetimes as DRF gives them, in a zone that is not UTC
    keypair = Keypair.objects.create(tenant=actors.tenant, owner=actors.member, name="k", public_key="ssh-ed25519 A")
    rows = [
        make_instance(),
        make_instance(state=Instance.State.ERROR, state_reason="No host could take the instance.", task="delete"),
        make_instance(state=Instance.State.SHUTOFF, keypair=keypair, addresses=["10.0.0.5"]),
        make_instance(installing=True, mac_address="52:54:00:00:00:01", user_data="#cloud-config\n"),
        make_instance(state=Instance.State.BUILDING),
    ]
    Instance.objects.filter(pk=rows[2].pk).update(owner=None)
    Instance.objects.filter(pk=rows[4].pk).update(host=None, image=None)
    request = APIRequestFactory().get(URL)
    request.user = getattr(actors, reader)
    with translation.override("zh-hans"):
        for serializer_class in (InstanceSerializer, InstanceDetailSerializer):
            serializer = serializer_class(context={"request": request})
            for row in Instance.objects.select_related("flavor", "host", "owner").filter(pk__in=[r.pk for r in rows]):
                expected = serializers.ModelSerializer.to_representation(serializer, row)
                if reader != "cloud_admin":
                    expected["host"] = None
                expected["state_reason"] = gettext(row.state_reason) if row.state_reason else ""
                if serializer_class is InstanceDetailSerializer and not may_read_user_data(
                    user=request.user, instance=row
                ):
                    expected["user_data"] = None
                got = serializer.to_representation(row)
                assert got == expected and list(got) == list(expected), row.name


def test_retrieve_matrix(actors, make_instance):
    assert_access_matrix(actors, method="get", url=detail(make_instance()), expected=READ)


def test_create_matrix(actors, host, flavors, image):
    def url():
        Instance.objects.all().delete()
        return URL

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data=launch_body(actors, flavors, image),
        # the outsider cannot name tenant A: it "does not exist" for them (400, like every tenant field)
        expected={"anonymous": 401, "outsider": 400, "member": 202, "tenant_admin": 202, "cloud_admin": 202},
    )


def test_destroy_matrix(actors, make_instance):
    assert_access_matrix(actors, method="delete", url=lambda: detail(make_instance()), expected=OK)


ACTIONS = [
    # (path, state needed, body, extra instance fields)
    ("start", Instance.State.SHUTOFF, None, {}),
    ("shutdown", Instance.State.RUNNING, None, {}),
    ("stop", Instance.State.RUNNING, None, {}),
    ("reboot", Instance.State.RUNNING, None, {}),
    ("reset", Instance.State.RUNNING, None, {}),
    ("pause", Instance.State.RUNNING, None, {}),
    ("resume", Instance.State.PAUSED, None, {}),
    ("finish-install", Instance.State.RUNNING, None, {"installing": True}),
    ("resize", Instance.State.SHUTOFF, "big", {}),
    ("resources", Instance.State.RUNNING, {"vcpus": 2}, {}),
    ("disks", Instance.State.RUNNING, {"size_gib": 2}, {}),
    ("snapshots", Instance.State.RUNNING, {"name": "before-upgrade"}, {}),
]


@pytest.mark.parametrize(("path", "state", "body", "fields"), ACTIONS, ids=[a[0] for a in ACTIONS])
def test_action_matrix(actors, make_instance, flavors, path, state, body, fields):
    data = {"flavor": flavors["big"].pk} if body == "big" else body

    def url():
        return f"{detail(make_instance(state=state, **fields))}{path}/"

    assert_access_matrix(actors, method="post", url=url, data=data, expected=OK)


def test_capture_matrix(actors, make_instance, monkeypatch):
    def fake_capture(*, actor, instance, name, ip=None):
        # The real service needs the instance's disk on this machine; the API around it is what is tested.
        image = Image.objects.create(
            name=f"{name}{Image.objects.count()}", tenant=instance.tenant, disk_format="qcow2", status="converting"
        )
        operations.create_operation(kind="image.capture", target=image, tenant=instance.tenant, user=actor)
        return image

    monkeypatch.setattr(lifecycle, "capture_instance", fake_capture)
    assert_access_matrix(
        actors,
        method="post",
        url=lambda: f"{detail(make_instance(state=Instance.State.SHUTOFF))}capture/",
        data={"name": "golden"},
        expected=OK,
    )
    body = actors.client("member").post(
        f"{detail(make_instance(state=Instance.State.SHUTOFF))}capture/", {"name": "golden"}, format="json"
    )
    assert body.status_code == 202
    assert body.json()["image"]["status"] == "converting"
    assert body.json()["operation"]["kind"] == "image.capture"


def test_capture_needs_a_shut_off_instance(actors, make_instance):
    body = assert_problem(
        actors.client("member").post(f"{detail(make_instance())}capture/", {"name": "golden"}, format="json"), 409
    )
    assert "while it is running" in body["detail"]


def test_capture_on_an_unanswering_host_is_a_problem(actors, make_instance, host):
    Host.objects.filter(pk=host.pk).update(storage_pool="no-such-pool")
    instance = make_instance(state=Instance.State.SHUTOFF)
    response = actors.client("member").post(f"{detail(instance)}capture/", {"name": "golden"}, format="json")
    body = assert_problem(response, 409)
    assert "did not answer" in body["detail"]
    assert not Image.objects.filter(name="golden").exists()


def test_detach_disk_matrix(actors, make_instance):
    def url():
        instance = make_instance()
        disk = InstanceDisk.objects.create(tenant=instance.tenant, instance=instance, size_gib=1, volume="v")
        return f"{detail(instance)}disks/{disk.pk}/"

    assert_access_matrix(actors, method="delete", url=url, expected=OK)


def _snapshot(instance, name="snap") -> Snapshot:
    return Snapshot.objects.create(
        tenant=instance.tenant,
        instance=instance,
        name=name,
        state=Snapshot.State.AVAILABLE,
        vcpus=instance.vcpus,
        ram_mib=instance.ram_mib,
        disk_gib=instance.disk_gib,
    )


def test_snapshot_revert_and_delete_matrix(actors, make_instance):
    def url(suffix=""):
        instance = make_instance()
        return f"{detail(instance)}snapshots/{_snapshot(instance).pk}/{suffix}"

    assert_access_matrix(actors, method="post", url=lambda: url("revert/"), expected=OK)
    assert_access_matrix(actors, method="delete", url=url, expected=OK)


def test_nested_reads_matrix(actors, make_instance):
    instance = make_instance()
    snapshot = _snapshot(instance)
    InstanceDisk.objects.create(tenant=instance.tenant, instance=instance, size_gib=1, volume="v")
    for path in ("disks/", "snapshots/", f"snapshots/{snapshot.pk}/"):
        assert_access_matrix(actors, method="get", url=f"{detail(instance)}{path}", expected=READ)


def test_other_instances_children_are_not_found(actors, make_instance):
    a, b = make_instance(), make_instance()
    disk = InstanceDisk.objects.create(tenant=b.tenant, instance=b, size_gib=1, volume="v")
    snapshot = _snapshot(b)
    client = actors.client("member")
    assert_problem(client.delete(f"{detail(a)}disks/{disk.pk}/"), 404)
    assert_problem(client.get(f"{detail(a)}snapshots/{snapshot.pk}/"), 404)
    assert_problem(client.post(f"{detail(a)}snapshots/{snapshot.pk}/revert/"), 404)
    assert_problem(client.delete(f"{detail(a)}snapshots/{2**70}/"), 404)
    assert not Operation.objects.exists()


# ---------------------------------------------------------------- launch


def test_launch_three_reserves_quota_at_once(actors, host, flavors, image):
    response = actors.client("member").post(URL, launch_body(actors, flavors, image, count=3), format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert [row["name"] for row in body["instances"]] == ["web-1", "web-2", "web-3"]
    assert all(row["task"] == "launch" and row["host"] is None for row in body["instances"])  # staff only
    assert "user_data" not in body["instances"][0]
    assert [op["kind"] for op in body["operations"]] == ["instance.launch"] * 3
    assert {op["target_id"] for op in body["operations"]} == {str(row["id"]) for row in body["instances"]}
    assert usage(actors.tenant) == {"instances": 3, "vcpus": 6, "ram_mib": 3072, "disk_gib": 15, "snapshot_mib": 0}
    assert Instance.objects.filter(task="launch", host=host).count() == 3


def test_launch_over_quota_creates_nothing(actors, host, flavors, image):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"instances": 2})
    response = actors.client("member").post(URL, launch_body(actors, flavors, image, count=3), format="json")
    body = assert_problem(response, 403, "quota_exceeded")
    assert body["resource"] == "instances" and body["requested"] == 3 and body["limit"] == 2
    assert "Quota exceeded" in body["detail"]
    assert not Instance.objects.exists() and not Operation.objects.exists()


@pytest.mark.parametrize("setup", ["no host", "host down", "host full"])
def test_launch_without_a_host_creates_nothing(actors, host, flavors, image, setup):
    if setup == "no host":
        host.delete()
    elif setup == "host down":
        Host.objects.filter(pk=host.pk).update(state=Host.State.DOWN)
    else:
        Host.objects.filter(pk=host.pk).update(cpus=1, cpu_allocation_ratio=1.0)
    body = assert_problem(actors.client("member").post(URL, launch_body(actors, flavors, image), format="json"), 409)
    assert "host" in body["detail"].lower()
    assert not Instance.objects.exists() and not Operation.objects.exists()


@pytest.mark.parametrize(
    ("change", "field", "status"),
    [
        ({"count": 0}, "count", 400),
        ({"count": 51}, "count", 400),
        ({"name": ""}, "name", 400),
        ({"name": "bad/name"}, "name", 400),
        ({"flavor": 999999}, "flavor", 400),
        ({"image": 999999}, "image", 400),
        ({"tenant": None}, "tenant", 400),
        ({"keypair": 999999}, "keypair", 400),
        ({"user_data": "x" * (64 * 1024 + 1)}, "user_data", 400),
    ],
)
def test_launch_validation(actors, host, flavors, image, change, field, status):
    body = assert_problem(
        actors.client("member").post(URL, launch_body(actors, flavors, image, **change), format="json"), status
    )
    assert field in body["errors"], body
    assert not Instance.objects.exists()


def test_launch_refuses_images_and_flavors_the_tenant_cannot_use(actors, host, flavors, image):
    private_b = Image.objects.create(name="b", tenant=actors.other_tenant, disk_format="qcow2", status="active")
    client = actors.client("member")
    # an image of another tenant does not exist for the member
    assert_problem(client.post(URL, launch_body(actors, flavors, image, image=private_b.pk), format="json"), 400)
    # staff see it, but the service refuses it for tenant A
    staff = actors.client("cloud_admin")
    body = assert_problem(staff.post(URL, launch_body(actors, flavors, image, image=private_b.pk), format="json"), 400)
    assert "not available to this tenant" in body["detail"]
    Image.objects.filter(pk=image.pk).update(status=Image.Status.UPLOADING)
    body = assert_problem(client.post(URL, launch_body(actors, flavors, image), format="json"), 400)
    assert "not active" in body["detail"]
    assert not Instance.objects.exists()


def test_duplicate_name_is_conflict(actors, make_instance, flavors, image):
    make_instance(name="web")
    assert_problem(actors.client("member").post(URL, launch_body(actors, flavors, image), format="json"), 409)
    assert Instance.objects.count() == 1


def test_user_data_shown_in_detail_only(actors, host, flavors, image):
    client = actors.client("member")
    body = launch_body(actors, flavors, image, user_data="#cloud-config\npackages: [htop]\n")
    instance_id = client.post(URL, body, format="json").json()["instances"][0]["id"]
    assert "user_data" not in client.get(URL).json()["results"][0]
    assert client.get(f"{URL}{instance_id}/").json()["user_data"] == "#cloud-config\npackages: [htop]\n"


# ---------------------------------------------------------------- actions


def test_action_queues_an_operation(actors, make_instance):
    instance = make_instance(state=Instance.State.RUNNING)
    response = actors.client("member").post(f"{detail(instance)}shutdown/")
    assert response.status_code == 202, response.content
    operation = Operation.objects.get(pk=response.json()["id"])
    assert operation.kind == "instance.shutdown" and operation.state == "queued"
    assert operation.target_id == str(instance.pk) and operation.tenant == actors.tenant
    instance.refresh_from_db()
    assert instance.task == "shutdown" and instance.desired_power_state == "stopped"
    assert AuditEvent.objects.filter(action="instance.shutdown", target_id=str(instance.pk)).exists()


def test_busy_instance_is_conflict(actors, make_instance):
    instance = make_instance(task="resize")
    body = assert_problem(actors.client("member").post(f"{detail(instance)}reboot/"), 409, "conflict")
    assert "busy" in body["detail"]
    assert_problem(actors.client("member").delete(detail(instance)), 409)
    assert not Operation.objects.exists()


def test_action_not_allowed_in_state_is_conflict(actors, make_instance):
    instance = make_instance(state=Instance.State.RUNNING)
    body = assert_problem(actors.client("member").post(f"{detail(instance)}start/"), 409)
    assert "while it is running" in body["detail"]
    assert_problem(actors.client("member").post(f"{detail(instance)}finish-install/"), 409)
    instance.refresh_from_db()
    assert instance.task == ""


def test_read_only_token_cannot_act(actors, make_instance):
    instance = make_instance(state=Instance.State.SHUTOFF)
    _token, raw = create_api_token(user=actors.member, name="ro", scope="read")
    client = actors.client("anonymous")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get(detail(instance)).status_code == 200
    assert_problem(client.post(f"{detail(instance)}start/"), 403)
    assert_problem(client.delete(detail(instance)), 403)
    assert_problem(client.post(f"{detail(instance)}snapshots/", {"name": "s"}, format="json"), 403)
    assert not Operation.objects.exists()


def test_delete_queues_and_marks_deleting(actors, make_instance):
    instance = make_instance()
    response = actors.client("tenant_admin").delete(detail(instance))
    assert response.status_code == 202
    assert response.json()["kind"] == "instance.delete"
    instance.refresh_from_db()
    assert instance.state == Instance.State.DELETING and instance.task == "delete"
    assert_problem(actors.client("member").delete(detail(instance)), 409)


def test_delete_cancels_a_launch_no_worker_runs(actors, host, flavors, image):
    client = actors.client("member")
    launched = client.post(URL, launch_body(actors, flavors, image), format="json").json()
    instance_id, launch_id = launched["instances"][0]["id"], launched["operations"][0]["id"]
    response = client.delete(f"{URL}{instance_id}/")
    assert response.status_code == 202, response.content
    assert response.json()["kind"] == "instance.delete"
    assert Operation.objects.get(pk=launch_id).state == Operation.State.FAILED


def test_resize_reserves_the_difference(actors, make_instance, flavors):
    instance = make_instance(state=Instance.State.SHUTOFF, vcpus=2, ram_mib=1024)
    client = actors.client("member")
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"vcpus": 3})
    body = assert_problem(
        client.post(f"{detail(instance)}resize/", {"flavor": flavors["big"].pk}, format="json"), 403, "quota_exceeded"
    )
    assert body["resource"] == "vcpus" and body["requested"] == 2
    instance.refresh_from_db()
    assert instance.flavor == flavors["small"] and instance.task == ""
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"vcpus": 4})
    response = client.post(f"{detail(instance)}resize/", {"flavor": flavors["big"].pk}, format="json")
    assert response.status_code == 202, response.content
    assert usage(actors.tenant)["vcpus"] == 4 and usage(actors.tenant)["disk_gib"] == 20
    instance.refresh_from_db()
    assert instance.flavor == flavors["big"] and instance.task == "resize"


def test_resize_validation(actors, make_instance, flavors):
    instance = make_instance(state=Instance.State.SHUTOFF)
    client = actors.client("member")
    body = assert_problem(client.post(f"{detail(instance)}resize/", {}, format="json"), 400)
    assert "flavor" in body["errors"]
    body = assert_problem(
        client.post(f"{detail(instance)}resize/", {"flavor": flavors["small"].pk}, format="json"), 400
    )
    assert "already has flavor" in body["detail"]


def test_resources_validation(actors, make_instance):
    instance = make_instance(state=Instance.State.RUNNING)
    client = actors.client("member")
    assert_problem(client.post(f"{detail(instance)}resources/", {}, format="json"), 400)
    body = assert_problem(client.post(f"{detail(instance)}resources/", {"vcpus": 64}, format="json"), 400)
    assert "vcpus" in body["errors"]
    body = assert_problem(client.post(f"{detail(instance)}resources/", {"ram_mib": 1024}, format="json"), 409)
    assert "shut off" in body["detail"]
    Instance.objects.filter(pk=instance.pk).update(state=Instance.State.SHUTOFF)
    response = client.post(f"{detail(instance)}resources/", {"ram_mib": 1024}, format="json")
    assert response.status_code == 202
    instance.refresh_from_db()
    assert instance.ram_mib == 1024 and instance.task == "set_resources"


def test_snapshot_quota(actors, make_instance):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"snapshots": 1})
    first, second = make_instance(), make_instance()
    client = actors.client("member")
    response = client.post(f"{detail(first)}snapshots/", {"name": "s1", "description": "before"}, format="json")
    assert response.status_code == 202, response.content
    snapshot = Snapshot.objects.get()
    assert snapshot.state == Snapshot.State.CREATING and snapshot.description == "before"
    assert response.json()["kind"] == "instance.snapshot_create"
    body = assert_problem(client.post(f"{detail(second)}snapshots/", {"name": "s1"}, format="json"), 403)
    assert body["resource"] == "snapshots"
    assert Snapshot.objects.count() == 1
    rows = client.get(f"{detail(first)}snapshots/").json()
    assert [row["name"] for row in rows] == ["s1"]


def test_snapshot_name_rules(actors, make_instance):
    instance = make_instance()
    _snapshot(instance, "taken")
    client = actors.client("member")
    assert (
        "name"
        in assert_problem(client.post(f"{detail(instance)}snapshots/", {"name": "-x"}, format="json"), 400)["errors"]
    )
    assert_problem(client.post(f"{detail(instance)}snapshots/", {"name": "taken"}, format="json"), 409)


def test_revert_needs_an_available_snapshot(actors, make_instance):
    instance = make_instance()
    snapshot = _snapshot(instance)
    Snapshot.objects.filter(pk=snapshot.pk).update(state=Snapshot.State.CREATING)
    assert_problem(actors.client("member").post(f"{detail(instance)}snapshots/{snapshot.pk}/revert/"), 409)


def test_attach_disk_counts_disk_quota(actors, make_instance):
    instance = make_instance()
    before = usage(actors.tenant)["disk_gib"]
    client = actors.client("member")
    response = client.post(f"{detail(instance)}disks/", {"size_gib": 3}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["kind"] == "instance.attach_disk"
    assert usage(actors.tenant)["disk_gib"] == before + 3
    rows = client.get(f"{detail(instance)}disks/").json()
    assert [(row["size_gib"], row["attached"]) for row in rows] == [(3, False)]
    Instance.objects.filter(pk=instance.pk).update(task="")
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"disk_gib": before + 4})
    body = assert_problem(client.post(f"{detail(instance)}disks/", {"size_gib": 2}, format="json"), 403)
    assert body["resource"] == "disk_gib"
    assert InstanceDisk.objects.count() == 1
    assert (
        "size_gib"
        in assert_problem(client.post(f"{detail(instance)}disks/", {"size_gib": 0}, format="json"), 400)["errors"]
    )


def test_detach_disk_queues(actors, make_instance):
    instance = make_instance()
    disk = InstanceDisk.objects.create(tenant=instance.tenant, instance=instance, size_gib=1, volume="v", attached=True)
    response = actors.client("member").delete(f"{detail(instance)}disks/{disk.pk}/")
    assert response.status_code == 202
    assert response.json()["kind"] == "instance.detach_disk"
    assert Operation.objects.get().params["disk_id"] == disk.pk


# ---------------------------------------------------------------- filters and ordering


def test_filters_and_ordering(actors, make_instance, host):
    make_instance(name="web-1", state=Instance.State.RUNNING)
    make_instance(name="db-1", state=Instance.State.SHUTOFF)
    make_instance(name="web-b", tenant=actors.other_tenant)
    staff, member = actors.client("cloud_admin"), actors.client("member")

    def names(client, **params):
        response = client.get(URL, params)
        assert response.status_code == 200, response.content
        return [row["name"] for row in response.json()["results"]]

    assert names(member, state="shutoff") == ["db-1"]
    assert sorted(names(member, name="WEB")) == ["web-1"]
    assert names(member, ordering="name") == ["db-1", "web-1"]
    assert names(staff, tenant=actors.other_tenant.pk) == ["web-b"]
    assert len(names(staff, host=host.pk)) == 3
    assert "host" in assert_problem(member.get(URL, {"host": host.pk}), 400)["errors"]  # staff only
    assert "tenant" in assert_problem(member.get(URL, {"tenant": actors.other_tenant.pk}), 400)["errors"]
    row = member.get(URL).json()["results"][0]
    assert row["host"] is None and "uri" not in row and row["flavor_name"] == "m1.small"  # hosts: staff only
    assert {row["host"] for row in staff.get(URL).json()["results"]} == {"node1"}


# ---------------------------------------------------------------- queries


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_list_has_constant_queries(actors, make_instance, role):
    client = actors.client(role)

    def make_rows(n: int) -> None:
        for _ in range(n):
            make_instance()

    assert_constant_queries(make_rows, lambda: client.get(URL), budget=6)


def test_snapshot_list_has_constant_queries(actors, make_instance):
    instance = make_instance()
    client = actors.client("member")

    def make_rows(n: int) -> None:
        for _ in range(n):
            _snapshot(instance, f"s{Snapshot.objects.count()}")

    assert_constant_queries(make_rows, lambda: client.get(f"{detail(instance)}snapshots/"), budget=6)


def test_staff_cannot_launch_into_a_disabled_tenant(actors, flavors, image, host):
    actors.tenant.enabled = False
    actors.tenant.save(update_fields=["enabled"])
    response = actors.client("cloud_admin").post(URL, launch_body(actors, flavors, image), format="json")
    assert response.status_code in (400, 404, 409), response.content
    assert not Instance.objects.exists() and not Operation.objects.exists()


def test_list_rows_decide_actions_as_each_instance_alone(actors, make_instance, host, flavors, image):
    """The list answers rows alike from one answer (``allowed_actions(memo=…)``) and reads only some of the
    host's, owner's and flavor's columns: over instances that differ in every way the decision reads (state,
    task, installing, adoption, a host down, an OpenStack cloud with and without a network, no host), each row's
    actions are what the instance alone gets, and the page costs the same queries with one row as with all."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from vms.actions import allowed_actions

    down = Host.objects.create(name="node-down", uri="test:///default", state=Host.State.DOWN)
    cloud = Host.objects.create(name="cloud", kind=Host.Kind.OPENSTACK, state=Host.State.UP, os_network="net-1")
    bare_cloud = Host.objects.create(name="cloud-2", kind=Host.Kind.OPENSTACK, state=Host.State.UP)
    make_instance(name="solo")
    client = actors.client("cloud_admin")
    with CaptureQueriesContext(connection) as one:
        assert client.get(URL).status_code == 200
    variants = [
        {"state": Instance.State.SHUTOFF},
        {"state": Instance.State.PAUSED},
        {"state": Instance.State.ERROR, "task": "delete"},
        {"state": Instance.State.RUNNING, "task": "reboot"},
        {"state": Instance.State.DELETING, "task": "delete"},
        {"state": Instance.State.RUNNING, "installing": True},
        {"state": Instance.State.RUNNING, "adopted": True},
        {"state": Instance.State.RUNNING, "host": down},
        {"state": Instance.State.SHUTOFF, "host": down},
        {"state": Instance.State.RUNNING, "host": cloud},
        {"state": Instance.State.RUNNING, "host": bare_cloud},
        {"state": Instance.State.BUILDING, "host": None},
    ]
    for number, fields in enumerate(variants):
        target = fields.pop("host", host)
        instance = make_instance(name=f"v{number}", **fields)
        Instance.objects.filter(pk=instance.pk).update(host=target)
    with CaptureQueriesContext(connection) as many:
        rows = client.get(URL, {"page_size": 100}).json()["results"]
    assert len(many) == len(one)
    assert len(rows) == len(variants) + 1
    for row in rows:
        alone = Instance.objects.select_related("host").get(pk=row["id"])
        assert row["allowed_actions"] == allowed_actions(alone), row["name"]
    assert len({tuple(row["allowed_actions"]) for row in rows}) >= 8  # the variants do differ
