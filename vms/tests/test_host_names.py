"""Issue #17 (7d): members never learn the names, URIs or ids of the hosts (infrastructure is for cloud admins).

Written as a member watches: the live updates of the tenant's channel group (what ``/ws/live/`` relays
to every member, on the real Redis channel layer), the operations and the refusals the API answers.
The hosts have recognisable names and URIs; none of them may appear. Cloud admins (the ``staff``
group, the API's ``host`` field) still see where instances run.

The launch runs the real libvirt adapter on ``qemu:///system`` (one tiny guest with an empty disk); the
unreachable host is a real ``qemu+tcp://`` URI on a closed port of 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from images.models import Image
from portal.celery import app as celery_app
from portal.factories import make_flavor, make_host, make_instance
from vms import realtime
from vms.models import Host, Instance, Operation
from vms.realtime import STAFF_GROUP, tenant_group
from vms.tests.conftest import active_image
from vms.tests.watcher.test_loop import channel_layer, listen, receive  # noqa: F401 - fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("channel_layer")]
SECRET_HOST = "lctest-rack7-node"
MIB = 1024**2


def leaks(text: str, *hosts: Host) -> list[str]:
    """The host names, URIs and URI host parts found in ``text``."""
    found = []
    for host in hosts:
        for secret in {host.name, host.uri, host.uri.split("://", 1)[-1].split("/", 1)[0]} - {""}:
            if secret in text:
                found.append(secret)
    return found


def drain(layer, channel: str, *, until_finished: int | None = None) -> list[dict]:
    """Every event on ``channel``; with ``until_finished``, until that operation finished (else until quiet)."""
    events = []
    while True:
        message = receive(layer, channel, timeout=5 if until_finished else 0.5)
        if message is None:
            assert until_finished is None, f"operation {until_finished} did not finish: {events[-3:]}"
            return events
        event = message["event"]
        events.append(event)
        data = event["data"]
        if (
            until_finished is not None
            and event["type"] == "operation"
            and data["id"] == until_finished
            and data["state"] in {"succeeded", "failed"}
        ):
            return events


@pytest.fixture
def eager():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture
def tiny_image(actors, tmp_path, settings):
    settings.LABCLOUD_IMAGE_STORE = tmp_path / "store"
    source = tmp_path / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "16M"], check=True)
    return active_image(tenant=actors.tenant, source=source, name="tiny", virtual_size=16 * MIB)


def launch(actors, image: Image, name: str):
    response = actors.client("member").post(
        "/api/v1/instances/",
        {"tenant": actors.tenant.pk, "name": name, "flavor": make_flavor().pk, "image": image.pk},
        format="json",
    )
    assert response.status_code == 202, response.content
    return response.json()["operations"][0]["id"]


def test_live_instance_updates_carry_the_host_for_staff_only(actors, channel_layer):  # noqa: F811
    host = make_host(SECRET_HOST)
    instance = make_instance(actors.tenant, host=host, name="vm1")
    members = listen(channel_layer, tenant_group(actors.tenant.pk))
    staff = listen(channel_layer, STAFF_GROUP)
    realtime.instance_changed(instance)
    realtime.flush()
    [seen_by_members] = drain(channel_layer, members)
    [seen_by_staff] = drain(channel_layer, staff)
    assert seen_by_members["data"]["id"] == instance.pk
    assert "host_id" not in seen_by_members["data"]
    assert seen_by_staff["data"]["host_id"] == host.pk


@pytest.mark.libvirt_guests
def test_a_launch_tells_members_nothing_about_the_host(
    actors,
    portal_host,
    tiny_image,
    channel_layer,  # noqa: F811
    eager,
):
    """A real launch on qemu:///system (one tiny TCG guest with an empty disk: it only has to start)."""
    host = portal_host
    members = listen(channel_layer, tenant_group(actors.tenant.pk))
    operation_id = launch(actors, tiny_image, "web1")
    realtime.flush()
    events = drain(channel_layer, members, until_finished=operation_id)
    operation = Operation.objects.get(pk=operation_id)
    assert operation.state == Operation.State.SUCCEEDED, operation.error
    messages = [e["data"]["message"] for e in events if e["type"] == "operation"]
    assert any("Copying" in m for m in messages), messages  # the copy step was reported …
    assert not leaks(json.dumps(events), host), messages  # … without naming the host
    assert all("host_id" not in e["data"] for e in events if e["type"] == "instance")
    api = actors.client("member").get(f"/api/v1/operations/{operation_id}/")
    assert api.status_code == 200 and not leaks(api.content.decode(), host)


def test_a_failed_launch_on_an_unreachable_host_names_no_host(actors, tiny_image, channel_layer, eager):  # noqa: F811
    host = make_host(SECRET_HOST, uri="qemu+tcp://127.0.0.1:1/system")
    members = listen(channel_layer, tenant_group(actors.tenant.pk))
    operation_id = launch(actors, tiny_image, "web1")
    realtime.flush()
    events = drain(channel_layer, members, until_finished=operation_id)
    operation = Operation.objects.get(pk=operation_id)
    assert operation.state == Operation.State.FAILED and operation.error
    member = actors.client("member")
    for url in (f"/api/v1/operations/{operation_id}/", f"/api/v1/instances/{operation.target_id}/"):
        response = member.get(url)
        assert response.status_code == 200 and not leaks(response.content.decode(), host), response.content
    assert not leaks(json.dumps(events), host), events[-1]
    assert Instance.objects.get(pk=operation.target_id).state == Instance.State.ERROR


def test_refusals_name_no_host(actors, tiny_image):
    """The scheduler's and the capability refusals a member gets (409) name no host."""
    full = make_host(SECRET_HOST, memory_mib=64)
    cloud = make_host("lctest-cloud-east", kind=Host.Kind.OPENSTACK, uri="http://127.0.0.1:1/identity")
    member = actors.client("member")
    response = member.post(
        "/api/v1/instances/",
        {"tenant": actors.tenant.pk, "name": "big", "flavor": make_flavor().pk, "image": tiny_image.pk},
        format="json",
    )
    assert response.status_code == 409 and not leaks(response.content.decode(), full, cloud), response.content

    on_cloud = make_instance(actors.tenant, host=cloud, name="vm-cloud", state=Instance.State.RUNNING)
    response = member.post(f"/api/v1/instances/{on_cloud.pk}/disks/", {"size_gib": 1}, format="json")
    assert response.status_code == 409 and not leaks(response.content.decode(), cloud), response.content
    page = actors.client("member", api=False).get(f"/instances/{on_cloud.pk}/")
    assert page.status_code == 200 and not leaks(page.content.decode(), cloud)
    # cloud admins still see where it runs
    admin = actors.client("cloud_admin").get(f"/api/v1/instances/{on_cloud.pk}/")
    assert admin.json()["host"] == cloud.name


def test_a_snapshot_refused_on_a_nearly_full_pool_names_no_host(actors):
    """The storage guard's refusal (a snapshot on a host whose pool is nearly full) names no host either."""
    full = make_host(SECRET_HOST, pool_capacity=100 * 1024**3, pool_available=1024**3)
    instance = make_instance(actors.tenant, host=full, name="vm-full", state=Instance.State.SHUTOFF)
    response = actors.client("member").post(
        f"/api/v1/instances/{instance.pk}/snapshots/", {"name": "before"}, format="json"
    )
    assert response.status_code == 409, response.content
    assert "storage pool nearly full" in response.content.decode()
    assert not leaks(response.content.decode(), full), response.content


def test_the_audit_trail_names_no_host_to_tenant_admins(actors, tiny_image, eager):
    """A cloud admin copies the tenant's image to a host; the tenant's admins read that in their audit trail
    without the host's name (cloud admins still read it)."""
    unreachable = make_host(SECRET_HOST, uri="qemu+tcp://127.0.0.1:1/system")
    staff = actors.client("cloud_admin")
    response = staff.post(f"/api/v1/images/{tiny_image.pk}/distribute/", {"host": unreachable.pk}, format="json")
    assert response.status_code == 202, response.content

    trail = actors.client("tenant_admin").get("/api/v1/audit-events/", {"action": "image.distribute"}).json()
    (event,) = trail["results"]
    assert event["target_id"] == str(tiny_image.pk) and not leaks(json.dumps(event), unreachable), event
    (seen,) = staff.get("/api/v1/audit-events/", {"action": "image.distribute"}).json()["results"]
    assert seen["detail"]["host"] == SECRET_HOST

    # The copy failed (nothing listens there): the tenant reads why in general words, cloud admins in libvirt's.
    operation = Operation.objects.get(kind="image.distribute")
    assert operation.state == Operation.State.FAILED
    answer = actors.client("member").get(f"/api/v1/operations/{operation.pk}/").json()
    assert answer["error"].startswith("The host did not answer") and answer["error_detail"] is None
    assert not leaks(json.dumps(answer), unreachable), answer
    assert unreachable.uri in staff.get(f"/api/v1/operations/{operation.pk}/").json()["error_detail"]
