"""Admin site of hosts, instances, snapshots, extra disks and unmanaged domains: staff only, runtime fields
read-only, power actions and deletion through vms.lifecycle, capacity refresh, adoption through vms.hosts."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.admin import helpers
from django.contrib.messages import get_messages
from django.urls import reverse

from portal import factories
from portal.testing import assert_access_matrix, assert_constant_queries
from vms.models import Flavor, Host, Instance, InstanceDisk, Operation, Snapshot, UnmanagedDomain

pytestmark = pytest.mark.django_db

STAFF_ONLY = {"anonymous": 302, "outsider": 302, "member": 302, "tenant_admin": 302, "cloud_admin": 200}
GIB = 1024**3
CHANGELISTS = ["host", "instance", "snapshot", "instancedisk", "unmanageddomain"]


@pytest.fixture
def host(db):
    return Host.objects.create(
        name="node1",
        uri="test:///default",
        storage_pool="default-pool",
        state=Host.State.UP,
        cpus=8,
        memory_mib=16384,
        pool_capacity=100 * GIB,
        pool_available=90 * GIB,
    )


@pytest.fixture
def flavor(db):
    return Flavor.objects.create(name="m1.small", vcpus=2, ram_mib=1024, disk_gib=10)


@pytest.fixture
def make_instance(actors, host, flavor):
    def make(*, state=Instance.State.RUNNING, **fields) -> Instance:
        instance = factories.make_instance(
            fields.pop("tenant", actors.tenant),
            flavor,
            host,
            owner=actors.member,
            name=fields.pop("name", f"vm{Instance.objects.count() + 1}"),
            vcpus=2,
            ram_mib=1024,
            disk_gib=10,
            state=state,
            **fields,
        )
        Snapshot.objects.create(tenant=instance.tenant, instance=instance, name="s", state="available")
        InstanceDisk.objects.create(tenant=instance.tenant, instance=instance, size_gib=1, volume=f"v{instance.pk}")
        return instance

    return make


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def changelist(model: str) -> str:
    return reverse(f"admin:vms_{model}_changelist")


def run_action(client, model: str, action: str, objs, **extra):
    data = {"action": action, helpers.ACTION_CHECKBOX_NAME: [o.pk for o in objs], **extra}
    return client.post(changelist(model), data, follow=True)


@pytest.mark.parametrize("model", CHANGELISTS)
def test_changelists_are_for_cloud_admins_only(actors, make_instance, model):
    make_instance()
    assert_access_matrix(actors, method="GET", url=changelist(model), expected=STAFF_ONLY, api=False)


def test_change_pages_are_for_cloud_admins_only(actors, make_instance, host):
    instance = make_instance()
    for url in (
        reverse("admin:vms_instance_change", args=[instance.pk]),
        reverse("admin:vms_instance_delete", args=[instance.pk]),
        reverse("admin:vms_host_change", args=[host.pk]),
    ):
        assert_access_matrix(actors, method="GET", url=url, expected=STAFF_ONLY, api=False)


@pytest.mark.parametrize("model", CHANGELISTS)
def test_changelists_have_constant_queries(actors, host, flavor, model, client):
    client.force_login(actors.cloud_admin)

    def make_rows(n: int) -> None:
        for _ in range(n):
            i = Instance.objects.count() + 1
            node = Host.objects.create(name=f"n{i}", uri="qemu:///system")
            instance = Instance.objects.create(
                tenant=actors.tenant, name=f"vm{i}", flavor=flavor, vcpus=1, ram_mib=64, disk_gib=1, host=node
            )
            Snapshot.objects.create(tenant=actors.tenant, instance=instance, name="s")
            InstanceDisk.objects.create(tenant=actors.tenant, instance=instance, size_gib=1, volume=f"v{i}")
            UnmanagedDomain.objects.create(host=node, uuid=uuid.uuid4(), name=f"d{i}", state="running")

    def request():
        response = client.get(changelist(model))
        assert response.status_code == 200

    assert_constant_queries(make_rows, request, budget=10)


def test_nothing_is_added_in_the_admin(actors, client):
    client.force_login(actors.cloud_admin)
    for model in ("instance", "snapshot", "instancedisk", "unmanageddomain"):
        assert client.get(reverse(f"admin:vms_{model}_add")).status_code == 403


def test_instance_runtime_fields_are_read_only(actors, make_instance, client):
    instance = make_instance()
    client.force_login(actors.cloud_admin)
    url = reverse("admin:vms_instance_change", args=[instance.pk])
    html = client.get(url).content.decode()
    assert 'name="name"' in html
    for field in ("state", "task", "host", "vcpus", "tenant", "flavor", "addresses", "user_data"):
        assert f'name="{field}"' not in html, field
    response = client.post(url, {"name": "renamed", "state": "error", "vcpus": 64})
    assert response.status_code == 302, response.content
    instance.refresh_from_db()
    assert instance.name == "renamed" and instance.state == Instance.State.RUNNING and instance.vcpus == 2
    # The same name rules as a launch: one line, no slash (it becomes the libvirt domain's title).
    response = client.post(url, {"name": "two\nlines/here"})
    assert response.status_code == 200 and "without “/”" in response.content.decode()
    instance.refresh_from_db()
    assert instance.name == "renamed"


def test_host_capacity_is_read_only(actors, host, client):
    client.force_login(actors.cloud_admin)
    html = client.get(reverse("admin:vms_host_change", args=[host.pk])).content.decode()
    assert 'name="uri"' in html
    for field in ("cpus", "memory_mib", "pool_capacity", "pool_available", "state", "last_seen"):
        assert f'name="{field}"' not in html, field


def test_refresh_capacity_action(actors, client):
    host = Host.objects.create(name="node1", uri="test:///default", storage_pool="default-pool")
    down = Host.objects.create(name="node2", uri="test:///default", storage_pool="missing")
    client.force_login(actors.cloud_admin)
    response = run_action(client, "host", "refresh_capacity", [host, down])
    assert response.status_code == 200
    host.refresh_from_db()
    down.refresh_from_db()
    assert host.state == Host.State.UP and host.cpus == 16
    assert down.state == Host.State.DOWN
    text = " ".join(messages_of(response))
    assert "node1: 16 CPUs" in text and "node2 did not answer" in text


def test_start_and_shutdown_actions(actors, make_instance, client):
    off = make_instance(state=Instance.State.SHUTOFF)
    on = make_instance(state=Instance.State.RUNNING)
    client.force_login(actors.cloud_admin)
    response = run_action(client, "instance", "start_instances", [off, on])
    text = " ".join(messages_of(response))
    assert "1 instance queued." in text and "while it is running" in text
    assert list(Operation.objects.values_list("kind", "target_id")) == [("instance.start", str(off.pk))]
    run_action(client, "instance", "shutdown_instances", [on])
    on.refresh_from_db()
    assert on.task == "shutdown" and on.desired_power_state == "stopped"


def test_delete_goes_through_the_lifecycle(actors, make_instance, client):
    instance = make_instance()
    busy = make_instance(task="resize")
    client.force_login(actors.cloud_admin)
    page = client.get(reverse("admin:vms_instance_delete", args=[instance.pk]))
    assert page.status_code == 200 and b"permission to delete" not in page.content
    response = client.post(reverse("admin:vms_instance_delete", args=[instance.pk]), {"post": "yes"}, follow=True)
    assert "Deletion of 1 instance queued." in " ".join(messages_of(response))
    instance.refresh_from_db()  # the row stays until the worker has removed the domain and disks
    assert instance.state == Instance.State.DELETING and instance.task == "delete"
    assert Operation.objects.get().kind == "instance.delete"
    response = run_action(client, "instance", "delete_selected", [busy], post="yes")
    assert "busy" in " ".join(messages_of(response))
    assert Instance.objects.filter(pk=busy.pk, task="resize").exists()


def test_adopt_action_asks_then_adopts(actors, host, flavor, client):
    domain = UnmanagedDomain.objects.create(host=host, uuid=uuid.uuid4(), name="legacy", state="shutoff", vcpus=2)
    client.force_login(actors.cloud_admin)
    page = client.post(changelist("unmanageddomain"), {"action": "adopt", helpers.ACTION_CHECKBOX_NAME: [domain.pk]})
    html = page.content.decode()
    assert page.status_code == 200 and "Adopt this domain" in html and 'name="tenant"' in html and "legacy" in html
    response = client.post(
        changelist("unmanageddomain"),
        {
            "action": "adopt",
            helpers.ACTION_CHECKBOX_NAME: [domain.pk],
            "apply": "1",
            "tenant": actors.tenant.pk,
            "flavor": flavor.pk,
            "name": "legacy-vm",
        },
        follow=True,
    )
    assert "1 domain adopted." in " ".join(messages_of(response))
    instance = Instance.objects.get()
    assert (instance.name, instance.tenant, instance.uuid, instance.state) == (
        "legacy-vm",
        actors.tenant,
        domain.uuid,
        Instance.State.SHUTOFF,
    )
    assert not UnmanagedDomain.objects.exists()


def test_adopt_action_reports_refusals(actors, host, flavor, client):
    domain = UnmanagedDomain.objects.create(host=host, uuid=uuid.uuid4(), name="vm1", state="running")
    Instance.objects.create(tenant=actors.tenant, name="vm1", flavor=flavor, vcpus=1, ram_mib=64, disk_gib=1)
    client.force_login(actors.cloud_admin)
    data = {"action": "adopt", helpers.ACTION_CHECKBOX_NAME: [domain.pk], "apply": "1"}
    response = client.post(changelist("unmanageddomain"), {**data, "tenant": actors.tenant.pk, "flavor": flavor.pk})
    assert "already has an instance" in " ".join(messages_of(response))
    assert UnmanagedDomain.objects.filter(pk=domain.pk).exists()
    # an incomplete form is shown again
    page = client.post(changelist("unmanageddomain"), {**data, "flavor": flavor.pk})
    assert page.status_code == 200 and 'name="tenant"' in page.content.decode()
