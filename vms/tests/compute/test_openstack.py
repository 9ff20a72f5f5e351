"""The portal drives a real OpenStack cloud (the devcloud, scripts/devcloud/) through its services and tasks.

Same services, same tasks, same rows as for libvirt hosts: a placement rule sends a tenant's instances
to the cloud, the launch task makes the tenant's Keystone project, the Nova flavor and the Glance image
(each once), boots the server and waits for ACTIVE; power actions, resize, snapshots, console and
delete go to Nova; quota and flavor edits reach the cloud; the watcher copies Nova's states back.

Everything made in the cloud is named with this module's own ``lc-ostest-<random>-`` prefix
(``LABCLOUD_DOMAIN_PREFIX``) and removed after each test, also when it fails. The Celery tasks run
in-process (eager) when the request's transaction commits.
"""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
from django.urls import reverse

from images.models import Image, ImageReplica
from portal.backends.openstack import OpenStackAuth, OpenStackDriver
from portal.backends.openstack_testing import ROOT, DevCloud, devcloud_fixture  # noqa: F401
from portal.services import ConflictError, ServiceError, set_quota
from portal.testing import free_port
from vms import lifecycle, operations
from vms.compute import compute_for
from vms.compute.openstack import login, mirror
from vms.compute.openstack.firewall import cloud_group_name
from vms.consoles import tokens
from vms.models import (
    DEFAULT_GROUP,
    CloudFlavor,
    CloudProject,
    Flavor,
    Host,
    Instance,
    Keypair,
    Operation,
    PlacementRule,
    SecurityGroup,
    Snapshot,
)
from vms.scheduler import NoValidHost
from vms.security_groups import (
    add_rule,
    create_security_group,
    delete_rule,
    delete_security_group,
    set_instance_security_groups,
)
from vms.tests.conftest import active_image, fake_ssh_key, watcher_running
from vms.watcher import HostWatcher

pytestmark = [pytest.mark.openstack, pytest.mark.django_db]

TINY_QCOW2 = ROOT / "var" / "test-media" / "tiny.qcow2"  # built by scripts/build_test_media.sh
PREFIX = f"lc-ostest-{uuid.uuid4().hex[:8]}-"


@pytest.fixture(scope="module")
def admin_driver(devcloud: DevCloud):
    """The test's own view of the cloud (as its admin), to check what the portal did and to clean up."""
    a = devcloud.auth
    drv = OpenStackDriver(
        OpenStackAuth(
            auth_url=a["auth_url"],
            username=a["username"],
            password=a["password"],
            project_name=a["project_name"],
            region_name=devcloud.region_name,
        )
    )
    yield drv
    drv.close()


def _cleanup(drv: OpenStackDriver) -> None:
    conn = drv.conn
    for server in drv.list_servers():
        if server.name.startswith(PREFIX):
            drv.delete(server.id)
    for group in conn.network.security_groups():
        if (group.name or "").startswith(PREFIX):
            conn.network.delete_security_group(group, ignore_missing=True)
    for image in conn.image.images():
        if (image.name or "").startswith(PREFIX):
            drv.delete_image(image_id=image.id)
    for flavor in conn.compute.flavors(is_public="None"):
        if flavor.name.startswith(PREFIX):
            drv.delete_flavor(flavor_id=flavor.id)
    for project in conn.identity.projects():
        if project.name.startswith(PREFIX):
            drv.set_compute_quota(project_id=project.id, instances=-1, cores=-1, ram_mib=-1)
            drv.delete_project(project_id=project.id)


@pytest.fixture
def os_cloud(devcloud: DevCloud, admin_driver, settings, tmp_path):
    """A Host row of kind openstack for the devcloud (password login, managed projects), cleaned up after."""
    settings.LABCLOUD_DOMAIN_PREFIX = PREFIX
    settings.LABCLOUD_IMAGE_STORE = tmp_path / "images"
    settings.LABCLOUD_IMAGE_STORE.mkdir()
    settings.LABCLOUD_CLOUD_POLL_SECONDS = 0.2
    a = devcloud.auth
    host = Host.objects.create(
        name=f"{PREFIX}cloud",
        kind=Host.Kind.OPENSTACK,
        auth_url=a["auth_url"],
        region=devcloud.region_name,
        credentials=login.encrypt_credentials(
            {"username": a["username"], "password": a["password"], "project_name": a["project_name"]}
        ),
        state=Host.State.UP,
    )
    yield host
    login.forget_driver(host)
    _cleanup(admin_driver)


@pytest.fixture
def scene(os_cloud, make_tenant, make_user):
    """A tenant whose instances go to the cloud, a member, a public and a private flavor, a private image."""
    tenant = make_tenant("os-a", instances=4, vcpus=8, ram_mib=4096, disk_gib=20, snapshots=4)
    user = make_user("os-member")
    tenant.memberships.create(user=user, role="member")
    small = Flavor.objects.create(name="os.small", vcpus=1, ram_mib=128, disk_gib=1)
    large = Flavor.objects.create(name="os.large", vcpus=2, ram_mib=256, disk_gib=1, is_public=False)
    large.tenants.add(tenant)
    image = active_image(tenant=tenant, source=TINY_QCOW2, name="tiny", virtual_size=20 * 1024**2)
    PlacementRule.objects.create(tenant=tenant, host=os_cloud)
    return tenant, user, small, large, image


def ok(operation: Operation) -> Operation:
    assert operation.state == Operation.State.SUCCEEDED, f"{operation.kind}: {operation.error}"
    return operation


def launch(run_tasks, *, tenant, user, flavor, image, name="vm", **extra):
    result = run_tasks(
        lambda: lifecycle.launch_instances(actor=user, tenant=tenant, name=name, flavor=flavor, image=image, **extra)
    )
    operation = result.operations[0]
    operation.refresh_from_db()
    return Instance.objects.get(pk=result.instances[0].pk), operation


def test_launch_makes_project_flavor_image_once_and_boots(scene, os_cloud, admin_driver, run_tasks):
    tenant, user, small, _, image = scene
    key = fake_ssh_key("os@labcloud")
    keypair = Keypair.objects.create(tenant=tenant, owner=user, name="k", public_key=key, fingerprint="x")

    instance, op = launch(
        run_tasks, tenant=tenant, user=user, flavor=small, image=image, keypair=keypair, user_data="#cloud-config\n"
    )
    ok(op)
    assert instance.host == os_cloud and instance.state == Instance.State.RUNNING and instance.task == ""
    server = admin_driver.state(instance.cloud_id)
    assert server.state == "running" and server.name == instance.domain_name
    # the tenant's own project, the portal's user a member there, the tenant's quota pushed to Nova
    project = CloudProject.objects.get(host=os_cloud, tenant=tenant)
    assert project.managed and server.project_id == project.project_id
    found = admin_driver.conn.identity.get_project(project.project_id)
    assert found.name == f"{PREFIX}os-a"
    assert "member" in admin_driver.project_roles(project_id=project.project_id)
    quota = admin_driver.compute_quota(project_id=project.project_id)
    assert (quota.instances, quota.cores, quota.ram_mib) == (4, 8, 4096)
    # the Nova flavor is the portal's flavor, the image the portal's file, private to the project
    assert server.flavor_name == f"{PREFIX}os.small" and (server.vcpus, server.ram_mib) == (1, 128)
    replica = ImageReplica.objects.get(image=image, host=os_cloud)
    glance = admin_driver.image(image_id=replica.cloud_image_id)
    assert (glance.visibility, glance.owner, glance.status) == ("private", project.project_id, "active")
    assert server.image_id == replica.cloud_image_id
    assert server.key_name  # the member's key went in as a Nova keypair
    raw = admin_driver.conn.compute.get_server(instance.cloud_id)
    assert raw.metadata["labcloud_instance"] == str(instance.uuid)

    # a second launch reuses all three: no second image, no new flavor
    second, op2 = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="vm2")
    ok(op2)
    names = [i.name for i in admin_driver.conn.image.images() if (i.name or "").startswith(PREFIX)]
    assert names == [f"{PREFIX}tiny"]
    assert len(admin_driver.find_flavors(name=f"{PREFIX}os.small")) == 1
    assert CloudProject.objects.filter(tenant=tenant).count() == 1

    # deleting removes the server from Nova and the row (its quota) from the portal
    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=second)))
    assert not Instance.objects.filter(pk=second.pk).exists()
    assert all(s.id != second.cloud_id for s in admin_driver.list_servers(project_id=project.project_id))


def test_power_resize_snapshot_console_and_delete(scene, os_cloud, admin_driver, run_tasks, client):
    tenant, user, small, large, image = scene
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image)
    ok(op)

    def act(action: str, expected: str) -> None:
        ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action=action)))
        instance.refresh_from_db()
        assert instance.state == expected, action
        assert admin_driver.state(instance.cloud_id).state == {"shutoff": "shutoff"}.get(expected, expected)

    act("stop", Instance.State.SHUTOFF)
    act("start", Instance.State.RUNNING)
    act("pause", Instance.State.PAUSED)
    act("resume", Instance.State.RUNNING)
    act("reboot", Instance.State.RUNNING)
    act("reset", Instance.State.RUNNING)
    act("shutdown", Instance.State.SHUTOFF)

    # resize to the private flavor: created in Nova with access for the tenant's project only
    ok(run_tasks(lambda: lifecycle.resize_instance(actor=user, instance=instance, flavor=large)))
    instance.refresh_from_db()
    server = admin_driver.state(instance.cloud_id)
    assert server.flavor_name == f"{PREFIX}os.large" and (server.vcpus, server.ram_mib) == (2, 256)
    assert instance.flavor == large and instance.state == Instance.State.SHUTOFF
    nova_flavor = admin_driver.find_flavors(name=f"{PREFIX}os.large")[0]
    project = CloudProject.objects.get(host=os_cloud, tenant=tenant).project_id
    assert not nova_flavor.is_public
    assert [a["tenant_id"] for a in admin_driver.conn.compute.get_flavor_access(nova_flavor)] == [project]

    # what the cloud cannot do is refused before anything is queued
    for refuse in (
        lambda: lifecycle.attach_disk(actor=user, instance=instance, size_gib=1),
        lambda: lifecycle.set_resources(actor=user, instance=instance, vcpus=1),
    ):
        with pytest.raises(ConflictError, match="OpenStack cloud"):
            refuse()

    # snapshots are Glance images of the tenant's project
    act("start", Instance.State.RUNNING)
    ok(run_tasks(lambda: lifecycle.create_snapshot(actor=user, instance=instance, name="snap1")))
    snap = Snapshot.objects.get(instance=instance, name="snap1")
    assert snap.state == Snapshot.State.AVAILABLE and snap.cloud_id
    assert admin_driver.image(image_id=snap.cloud_id).owner == project
    ok(run_tasks(lambda: lifecycle.delete_snapshot(actor=user, snapshot=snap)))
    assert not Snapshot.objects.filter(pk=snap.pk).exists()
    assert admin_driver.conn.image.find_image(snap.cloud_id, ignore_missing=True) is None

    # the console ticket is Nova's noVNC console: its proxy takes the websocket with Nova's token
    ticket = tokens.open_console(user=user, instance=instance)
    parts = urlsplit(ticket.url)
    assert parts.scheme == "ws" and parts.hostname == "127.0.0.1" and parts.port == 16080
    assert "token=" in parts.query
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: 127.0.0.1:16080\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: binary\r\nOrigin: http://127.0.0.1:16080\r\n\r\n"
            ).encode()
        )
        # Nova's proxy accepts the token, connects to the console's VNC server and relays its RFB banner
        received = b""
        while b"RFB 003." not in received:
            chunk = sock.recv(4096)
            assert chunk, f"the proxy closed the websocket: {received!r}"
            received += chunk
        assert received.startswith(b"HTTP/1.1 101")

    # the same through the pages: the instance page says what the cloud cannot do; the ticket is Nova's
    client.force_login(user)
    page = client.get(reverse("instance_detail", args=[instance.pk])).content.decode()
    assert 'id="lc-instance-not-offered"' in page and 'id="lc-instance-disks"' not in page
    assert 'data-lc-action="snapshot_revert"' not in page
    reply = client.post(reverse("instance_console_ticket", args=[instance.pk]), HTTP_ORIGIN="http://testserver")
    assert reply.status_code == 201, reply.content
    assert reply.json()["url"].startswith("ws://127.0.0.1:16080/") and reply.json()["protocol"] == "vnc"

    # a snapshot left at delete time goes with the instance
    ok(run_tasks(lambda: lifecycle.create_snapshot(actor=user, instance=instance, name="snap2")))
    left = Snapshot.objects.get(instance=instance, name="snap2").cloud_id
    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))
    assert admin_driver.conn.image.find_image(left, ignore_missing=True) is None
    assert all(s.id != instance.cloud_id for s in admin_driver.list_servers())


def test_quota_and_flavor_edits_reach_the_cloud_and_nova_refuses_on_its_own(
    scene, os_cloud, admin_driver, run_tasks, make_user
):
    tenant, user, small, large, image = scene
    ok(launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image)[1])
    project = CloudProject.objects.get(host=os_cloud, tenant=tenant)
    admin = make_user("os-admin", staff=True)

    # a quota edit is pushed to Nova and read back
    run_tasks(lambda: set_quota(actor=admin, tenant=tenant, limits={"instances": 3, "vcpus": 6, "ram_mib": 2048}))
    quota = admin_driver.compute_quota(project_id=project.project_id)
    assert (quota.instances, quota.cores, quota.ram_mib) == (3, 6, 2048)
    project.refresh_from_db()
    assert project.quota_synced_at is not None and project.quota_error == ""

    # a flavor edit recreates the Nova flavor; access follows the portal's tenants
    vm = Instance.objects.get(tenant=tenant)
    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=vm, action="stop")))
    ok(run_tasks(lambda: lifecycle.resize_instance(actor=user, instance=vm, flavor=large)))
    run_tasks(lambda: Flavor.objects.filter(pk=large.pk).first().save())  # unchanged: nothing recreated
    before = CloudFlavor.objects.get(flavor=large).cloud_id
    large.ram_mib = 192

    def edit():
        large.save()

    run_tasks(edit)
    after = CloudFlavor.objects.get(flavor=large).cloud_id
    nova = admin_driver.find_flavors(name=f"{PREFIX}os.large")
    assert after != before and [(f.id, f.ram) for f in nova] == [(after, 192)]
    run_tasks(lambda: large.tenants.clear())
    assert admin_driver.conn.compute.get_flavor_access(after) == [] or all(
        a["tenant_id"] != project.project_id for a in admin_driver.conn.compute.get_flavor_access(after)
    )

    # Nova's own quota refuses (someone lowered it in the cloud): the user reads why, nothing is left behind
    admin_driver.set_compute_quota(project_id=project.project_id, instances=1, cores=-1, ram_mib=-1)
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="over")
    assert op.state == Operation.State.FAILED and "quota" in op.error.lower()
    assert instance.state == Instance.State.ERROR and "quota" in instance.state_reason.lower()
    assert [s.name for s in admin_driver.list_servers(project_id=project.project_id)] == [
        Instance.objects.get(name="vm").domain_name
    ]


def test_watcher_follows_nova(scene, os_cloud, admin_driver, run_tasks, settings):
    tenant, user, small, _, image = scene
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image)
    ok(op)
    watcher = HostWatcher()
    watcher.poll_clouds(full=True)

    admin_driver.stop(instance.cloud_id)  # changed behind the portal's back
    watcher.poll_clouds()  # changes-since the last poll
    instance.refresh_from_db()
    assert instance.state == Instance.State.SHUTOFF

    admin_driver.delete(instance.cloud_id)
    watcher.poll_clouds()  # deleted servers are listed by changes-since
    instance.refresh_from_db()
    assert instance.state == Instance.State.ERROR and "deleted in the cloud" in instance.state_reason
    assert watcher.cloud_polls == 3


def test_the_running_watcher_follows_nova_from_its_cloud_thread(
    transactional_db, scene, os_cloud, admin_driver, run_tasks, settings
):
    """The watcher's loop (not a direct call) polls the cloud in its own thread and applies what changed."""
    tenant, user, small, _, image = scene
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image)
    ok(op)
    settings.WATCHER_CLOUD_POLL_SECONDS = 0.5
    watcher = HostWatcher(host_names=[os_cloud.name], reconcile_seconds=300, capacity_seconds=300)

    def wait_until(condition, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what} within {timeout} s"
            time.sleep(0.2)

    with watcher_running(watcher, name="lctest-cloud-watcher", join_timeout=60):
        assert watcher.ready.wait(10)
        # The full reconcile at start runs in the cloud thread after ``ready``: the change must come after it,
        # or that reconcile (not a changes-since poll) may be the one that sees it.
        wait_until(lambda: watcher.cloud_polls >= 1, "the reconcile at start")
        polls_before = watcher.cloud_polls
        admin_driver.stop(instance.cloud_id)  # behind the portal's back
        wait_until(lambda: Instance.objects.get(pk=instance.pk).state == Instance.State.SHUTOFF, "the instance off")
        wait_until(lambda: watcher.cloud_polls > polls_before, "the poll that saw it to end")  # a changes-since poll


def test_full_reconcile_finds_a_server_gone(scene, os_cloud, admin_driver, run_tasks):
    tenant, user, small, _, image = scene
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image)
    ok(op)
    Instance.objects.filter(pk=instance.pk).update(cloud_id=str(uuid.uuid4()))  # a server Nova never had
    counts = compute_for(os_cloud).reconcile(os_cloud)
    instance.refresh_from_db()
    assert counts["vanished"] == 1 and instance.state == Instance.State.ERROR


def test_cloud_down_and_bad_credentials_are_clear_and_leave_nothing(scene, os_cloud, admin_driver, run_tasks):
    tenant, user, small, _, image = scene
    # bad credentials: Keystone refuses; the launch fails with that reason
    os_cloud.credentials = login.encrypt_credentials(
        {"username": "admin", "password": "wrong", "project_name": "admin"}
    )
    os_cloud.save()
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="badauth")
    assert op.state == Operation.State.FAILED and instance.state == Instance.State.ERROR
    # The portal's credentials are the cloud admins' business: they read Keystone's refusal, members a general text.
    assert "credentials" in op.error_detail.lower() or "auth" in op.error_detail.lower()
    assert op.error == operations.HOST_FAILED
    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))

    # cloud down: nothing listens there; the launch fails fast and says so; verify marks the cloud down
    os_cloud.auth_url = f"http://127.0.0.1:{free_port()}/v3"
    os_cloud.save()
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="down")
    assert op.state == Operation.State.FAILED
    assert "not answer" in op.error.lower() or "unreachable" in op.error.lower(), op.error
    assert not CloudProject.objects.filter(tenant=tenant).exists()
    login.verify_cloud(host=os_cloud)
    os_cloud.refresh_from_db()
    assert os_cloud.state == Host.State.DOWN and os_cloud.state_reason
    # a cloud known to be down takes no new instances: the scheduler says why at once
    with pytest.raises(NoValidHost, match="cloud down"):
        lifecycle.launch_instances(actor=user, tenant=tenant, name="later", flavor=small, image=image)
    assert not Instance.objects.filter(name="later").exists()
    assert [s for s in admin_driver.list_servers() if s.name.startswith(PREFIX)] == []


def test_existing_project_mapping_and_image_visibility(scene, os_cloud, admin_driver, run_tasks, make_user):
    from vms.hosts import map_cloud_project

    tenant, user, small, _, image = scene
    os_cloud.project_mode = Host.ProjectMode.EXISTING
    os_cloud.save()
    # not mapped yet: a clear refusal, nothing made in the cloud
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="unmapped")
    assert op.state == Operation.State.FAILED and "not mapped to a project" in op.error
    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))

    existing = admin_driver.ensure_project(name=f"{PREFIX}existing")
    root = make_user("os-root", staff=True)
    run_tasks(lambda: map_cloud_project(actor=root, host=os_cloud, tenant=tenant, project_id=existing.id))
    # the mapping pushes the tenant's quota to the project at once (on commit), as for a managed project
    quota = admin_driver.compute_quota(project_id=existing.id)
    assert (quota.instances, quota.cores, quota.ram_mib) == (4, 8, 4096)
    mapped = CloudProject.objects.get(host=os_cloud, tenant=tenant)
    assert mapped.quota_synced_at is not None and mapped.quota_error == "" and not mapped.managed
    Image.objects.filter(pk=image.pk).update(visibility=Image.Visibility.PUBLIC, tenant=None)
    image.refresh_from_db()
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="mapped")
    ok(op)
    assert admin_driver.state(instance.cloud_id).project_id == existing.id
    glance = admin_driver.image(image_id=ImageReplica.objects.get(image=image, host=os_cloud).cloud_image_id)
    assert glance.visibility == "public"


def test_deleting_a_tenant_removes_its_managed_project(os_cloud, admin_driver, run_tasks, make_tenant, make_user):
    from portal.services import delete_tenant

    tenant = make_tenant("os-gone", instances=2, vcpus=2, ram_mib=512)
    project_id = mirror.project_for(host=os_cloud, tenant=tenant)
    assert admin_driver.compute_quota(project_id=project_id).instances == 2
    run_tasks(lambda: delete_tenant(actor=make_user("os-root", staff=True), tenant=tenant))
    assert admin_driver.conn.identity.find_project(project_id, ignore_missing=True) is None


def test_a_server_whose_id_was_never_stored_is_still_found_and_deleted(scene, os_cloud, admin_driver, run_tasks):
    tenant, user, small, _, image = scene
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image)
    ok(op)
    server_id = instance.cloud_id
    Instance.objects.filter(pk=instance.pk).update(cloud_id="")  # as if the worker died right after Nova said yes
    instance.refresh_from_db()
    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))
    assert all(s.id != server_id for s in admin_driver.list_servers())


def test_a_failed_launch_keeps_its_reason_after_the_watcher_polls(scene, os_cloud, admin_driver, run_tasks):
    tenant, user, small, _, image = scene
    project_id = mirror.project_for(host=os_cloud, tenant=tenant)
    admin_driver.set_compute_quota(project_id=project_id, instances=0, cores=-1, ram_mib=-1)
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="refused")
    assert op.state == Operation.State.FAILED and "quota" in instance.state_reason.lower()
    HostWatcher().poll_clouds(full=True)
    HostWatcher().poll_clouds()
    instance.refresh_from_db()
    assert instance.state == Instance.State.ERROR and "quota" in instance.state_reason.lower()


def test_image_copies_follow_visibility_and_go_with_the_image(scene, os_cloud, admin_driver, run_tasks, make_user):
    from images import services as image_services

    tenant, user, small, _, image = scene
    Image.objects.filter(pk=image.pk).update(visibility=Image.Visibility.PUBLIC)
    image.refresh_from_db()
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image)
    ok(op)
    copy_id = ImageReplica.objects.get(image=image, host=os_cloud).cloud_image_id
    assert admin_driver.image(image_id=copy_id).visibility == "public"

    # made private again: the copy leaves public view at once (not at the next launch)
    image.visibility = Image.Visibility.PRIVATE
    run_tasks(lambda: image.save())
    left = admin_driver.conn.image.find_image(copy_id, ignore_missing=True)
    assert left is None or left.visibility == "private"

    # deleting the image (after its instance) deletes every copy in the clouds too
    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))
    ok(launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="again")[1])
    copy_id = ImageReplica.objects.get(image=image, host=os_cloud).cloud_image_id
    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=Instance.objects.get(name="again"))))
    image_services.delete_image(actor=make_user("os-imgadmin", staff=True), image=image)
    assert admin_driver.conn.image.find_image(copy_id, ignore_missing=True) is None


def test_a_shared_image_leaves_the_projects_of_tenants_taken_off_its_list(
    scene, os_cloud, admin_driver, run_tasks, make_tenant, make_user
):
    from images import sharing as image_sharing

    tenant, user, small, _, image = scene
    other = make_tenant("os-b", instances=2, vcpus=2, ram_mib=512, disk_gib=4)
    other_user = make_user("os-b-member")
    other.memberships.create(user=other_user, role="member")
    PlacementRule.objects.create(tenant=other, host=os_cloud)
    owner = make_user("os-img-owner", staff=True)
    share = image_sharing.share_image(actor=owner, image=image, reference=other.slug)
    # pending: the other tenant may not launch it, and its project is no member of any copy
    with pytest.raises(ServiceError, match="not available to this tenant"):
        launch(run_tasks, tenant=other, user=other_user, flavor=small, image=share.image, name="too-early")
    image_sharing.accept_share(actor=owner, share=share)
    image = share.image
    for who, where in ((user, tenant), (other_user, other)):
        ok(launch(run_tasks, tenant=where, user=who, flavor=small, image=image, name=f"on-{where.slug}")[1])
    copy_id = ImageReplica.objects.get(image=image, host=os_cloud).cloud_image_id
    projects = {t.slug: CloudProject.objects.get(host=os_cloud, tenant=t).project_id for t in (tenant, other)}
    assert admin_driver.image(image_id=copy_id).visibility == "shared"
    assert admin_driver.image_members(image_id=copy_id) == sorted(projects.values())

    # removed by its tenant (rejected after accepting): its project stops being a member at once; the owner's stays
    run_tasks(lambda: image_sharing.reject_share(actor=owner, share=share))
    assert admin_driver.image_members(image_id=copy_id) == [projects[tenant.slug]]
    # accepted again, then withdrawn by the owner: a member only from a launch on, none after the withdrawal
    run_tasks(lambda: image_sharing.accept_share(actor=owner, share=share))
    run_tasks(lambda: image_sharing.unshare_image(actor=owner, image=image, reference=other.slug))
    assert admin_driver.image_members(image_id=copy_id) == [projects[tenant.slug]]
    # an identical image of its own (same file) reuses that Glance copy: its launch makes it a member again,
    # and a later sync of the first image keeps it, since the copy now backs its image too
    own = active_image(
        tenant=other, source=TINY_QCOW2, name="tiny-b", virtual_size=20 * 1024**2, visibility=Image.Visibility.SHARED
    )
    ok(launch(run_tasks, tenant=other, user=other_user, flavor=small, image=own, name="again")[1])
    assert ImageReplica.objects.get(image=own, host=os_cloud).cloud_image_id == copy_id
    assert admin_driver.image_members(image_id=copy_id) == sorted(projects.values())
    run_tasks(lambda: image.save())
    assert admin_driver.image_members(image_id=copy_id) == sorted(projects.values())


def test_servers_join_the_clouds_network_and_report_their_address(scene, os_cloud, admin_driver, run_tasks):
    tenant, user, small, _, image = scene
    net_api = admin_driver.conn.network
    net = net_api.create_network(name=f"{PREFIX}net", shared=True)
    try:
        net_api.create_subnet(network_id=net.id, ip_version=4, cidr="10.97.0.0/24", enable_dhcp=False)
        os_cloud.os_network = net.id
        os_cloud.save()
        instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="netted")
        ok(op)
        assert len(instance.addresses) == 1 and instance.addresses[0].startswith("10.97.0.")
        ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))
    finally:
        for port in net_api.ports(network_id=net.id):
            net_api.delete_port(port)
        net_api.delete_network(net)


def test_a_glance_copy_deleted_in_the_cloud_is_uploaded_again(scene, os_cloud, admin_driver, run_tasks):
    tenant, user, small, _, image = scene
    ok(launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image)[1])
    copy_id = ImageReplica.objects.get(image=image, host=os_cloud).cloud_image_id
    admin_driver.delete_image(image_id=copy_id)  # behind the portal's back
    instance, op = launch(run_tasks, tenant=tenant, user=user, flavor=small, image=image, name="vm2")
    ok(op)
    new_copy = ImageReplica.objects.get(image=image, host=os_cloud).cloud_image_id
    assert new_copy != copy_id and admin_driver.state(instance.cloud_id).image_id == new_copy


def test_security_groups_are_neutron_groups_of_the_tenants_project(scene, os_cloud, admin_driver, run_tasks):
    """The tenant's groups become Neutron groups in its project with the same rules (IPv4, the remote group as
    Neutron's), its server gets the instance's groups; rule and group changes follow; a deleted group goes."""
    tenant, user, small, _, image = scene
    net_api = admin_driver.conn.network
    net = net_api.create_network(name=f"{PREFIX}sgnet", shared=True)
    try:
        net_api.create_subnet(network_id=net.id, ip_version=4, cidr="10.98.0.0/24", enable_dhcp=False)
        os_cloud.os_network = net.id
        os_cloud.save()
        default = SecurityGroup.objects.get(tenant=tenant, name=DEFAULT_GROUP)
        web = create_security_group(actor=user, tenant=tenant, name="web")
        add_rule(actor=user, group=web, direction="ingress", protocol="tcp", port_min=80, remote_cidr="10.0.0.0/8")
        instance, op = launch(
            run_tasks,
            tenant=tenant,
            user=user,
            flavor=small,
            image=image,
            name="guarded",
            security_groups=[default, web],
        )
        ok(op)
        project_id = CloudProject.objects.get(host=os_cloud, tenant=tenant).project_id
        names = {g: cloud_group_name(str(g.uuid)) for g in (default, web)}

        def neutron_rules(group) -> set[tuple]:
            (found,) = list(net_api.security_groups(name=names[group], project_id=project_id))
            return {
                (r.direction, r.ether_type, r.protocol, r.port_range_min, r.port_range_max, r.remote_ip_prefix,
                 r.remote_group_id)
                for r in net_api.security_group_rules(security_group_id=found.id)
            }  # fmt: skip

        def group_id(group) -> str:
            return next(iter(net_api.security_groups(name=names[group], project_id=project_id))).id

        assert neutron_rules(default) == {
            ("egress", "IPv4", None, None, None, None, None),
            ("ingress", "IPv4", None, None, None, None, group_id(default)),
        }
        assert neutron_rules(web) == {
            ("egress", "IPv4", None, None, None, None, None),
            ("ingress", "IPv4", "tcp", 80, 80, "10.0.0.0/8", None),
        }
        server_groups = admin_driver.server_security_group_ids(instance.cloud_id, project_id=project_id)
        assert server_groups == {group_id(default), group_id(web)}

        rule = run_tasks(lambda: add_rule(actor=user, group=web, direction="ingress", protocol="icmp"))
        assert ("ingress", "IPv4", "icmp", None, None, None, None) in neutron_rules(web)
        run_tasks(lambda: delete_rule(actor=user, rule=rule))
        assert ("ingress", "IPv4", "icmp", None, None, None, None) not in neutron_rules(web)

        run_tasks(lambda: set_instance_security_groups(actor=user, instance=instance, groups=[web]))
        assert admin_driver.server_security_group_ids(instance.cloud_id, project_id=project_id) == {group_id(web)}

        ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))
        web_name = names[web]
        run_tasks(lambda: delete_security_group(actor=user, group=web))
        assert not list(net_api.security_groups(name=web_name, project_id=project_id))
        # Two groups of one name (two launches that made it at once): both callers settle on the same one.
        name = cloud_group_name("race")
        first = net_api.create_security_group(name=name, project_id=project_id)
        second = net_api.create_security_group(name=name, project_id=project_id)
        kept = admin_driver.ensure_security_group(project_id=project_id, name=name)
        assert kept == min(first.id, second.id)
        assert [g.id for g in net_api.security_groups(name=name, project_id=project_id)] == [kept]
    finally:
        for port in net_api.ports(network_id=net.id):
            net_api.delete_port(port)
        net_api.delete_network(net)
