"""Asking for a migration (vms.moves): who may, where it goes, what it holds, what is refused — without guests.

The migrations themselves, with real guests on two libvirt daemons, are in
vms/tests/compute/test_migration.py. Hosts here are rows on libvirt's ``test:///default``; the
operations are queued, not run.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import libvirt
import pytest

from portal.backends.base import NicFilter
from portal.backends.libvirt.migration import (
    DiskMove,
    MigrationPlan,
    about_to_finish,
    migration_flags,
    rewrite_domain_xml,
)
from portal.factories import make_flavor, make_host, make_instance
from portal.services import ConflictError, NotAllowed
from portal.testing import assert_access_matrix
from vms import actions, moves
from vms.models import Host, Instance, Operation, Snapshot
from vms.scheduler import NoValidHost, host_loads

pytestmark = pytest.mark.django_db
URL = "/api/v1/instances/{}/migrate/"


@pytest.fixture
def two_hosts():
    return make_host("lctest-src"), make_host("lctest-dst")


def test_access_matrix(actors, two_hosts):
    source, _destination = two_hosts

    def fresh() -> str:
        return URL.format(make_instance(actors.tenant, host=source).pk)

    assert_access_matrix(
        actors,
        method="post",
        url=fresh,
        data={},
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 403, "cloud_admin": 202},
    )


def test_members_never_see_migrate_among_their_actions(actors, two_hosts):
    instance = make_instance(actors.tenant, host=two_hosts[0])
    assert "migrate" not in actions.allowed_actions(instance)
    assert actions.allowed_admin_actions(instance) == ["migrate"]
    body = actors.client("member").get(f"/api/v1/instances/{instance.pk}/").json()
    assert "migrate" not in body["allowed_actions"]
    with pytest.raises(NotAllowed):
        moves.migrate_instance(actor=actors.tenant_admin, instance=instance)


def test_the_scheduler_picks_the_other_host_and_holds_the_size_there(actors, two_hosts):
    source, destination = two_hosts
    flavor = make_flavor("lctest.mig", vcpus=2, ram_mib=2048, disk_gib=10)
    instance = make_instance(actors.tenant, flavor, host=source)
    before = host_loads([destination])[destination.pk]
    operation = moves.migrate_instance(actor=actors.cloud_admin, instance=instance)
    instance.refresh_from_db()
    assert operation.kind == "instance.migrate"
    assert operation.params == {
        "from_host": source.name,
        "to_host": destination.name,
        "to_host_id": destination.pk,
        "live": True,
    }
    assert instance.task == "migrate" and instance.migration_target == destination and instance.host == source
    after = host_loads([destination])[destination.pk]
    assert (after.vcpus - before.vcpus, after.ram_mib - before.ram_mib, after.disk_gib - before.disk_gib) == (
        2,
        2048,
        10,
    )
    assert host_loads([source])[source.pk].ram_mib == 2048  # still counted where it runs
    assert "migrate" not in actions.allowed_admin_actions(instance)  # busy until it has moved


def test_a_shut_off_instance_migrates_cold(actors, two_hosts):
    instance = make_instance(actors.tenant, host=two_hosts[0], state=Instance.State.SHUTOFF)
    operation = moves.migrate_instance(actor=actors.cloud_admin, instance=instance, host=two_hosts[1])
    assert operation.params["live"] is False


def test_refusals_change_nothing(actors, two_hosts):
    source, destination = two_hosts
    instance = make_instance(actors.tenant, host=source)
    admin = actors.cloud_admin
    with pytest.raises(ConflictError, match="on that host already"):
        moves.migrate_instance(actor=admin, instance=instance, host=source)
    cloud = Host.objects.create(name="lctest-cloud", kind=Host.Kind.OPENSTACK, auth_url="http://127.0.0.1:1/v3")
    with pytest.raises(ConflictError, match="cannot migrate"):
        moves.migrate_instance(actor=admin, instance=instance, host=cloud)
    Host.objects.filter(pk=destination.pk).update(enabled=False)
    with pytest.raises(NoValidHost, match="disabled"):
        moves.migrate_instance(actor=admin, instance=instance)
    Host.objects.filter(pk=destination.pk).update(enabled=True, memory_mib=64)
    with pytest.raises(NoValidHost, match="not enough RAM"):
        moves.migrate_instance(actor=admin, instance=instance)
    Host.objects.filter(pk=destination.pk).update(memory_mib=16384)
    Snapshot.objects.create(instance=instance, tenant=instance.tenant, name="before")
    with pytest.raises(ConflictError, match="snapshots"):
        moves.migrate_instance(actor=admin, instance=instance)
    Snapshot.objects.filter(instance=instance).delete()
    Instance.objects.filter(pk=instance.pk).update(state=Instance.State.PAUSED)
    instance.refresh_from_db()
    with pytest.raises(ConflictError, match="paused"):
        moves.migrate_instance(actor=admin, instance=instance)
    instance.refresh_from_db()
    assert (instance.task, instance.migration_target) == ("", None)
    assert not Operation.objects.filter(kind="instance.migrate").exists()


def test_instances_on_a_cloud_cannot_migrate_through_the_registry(actors):
    cloud = Host.objects.create(name="lctest-cloud", kind=Host.Kind.OPENSTACK, auth_url="http://127.0.0.1:1/v3")
    instance = make_instance(actors.tenant, host=cloud)
    assert not actions.offered(instance, "migrate")
    with pytest.raises(ConflictError, match="cannot migrate"):
        moves.migrate_instance(actor=actors.cloud_admin, instance=instance)
    response = actors.client("cloud_admin").post(URL.format(instance.pk), {}, format="json")
    assert response.status_code == 409, response.content
    assert "cannot migrate" in response.json()["detail"]


def test_adopted_instances_do_not_migrate(actors, two_hosts):
    instance = make_instance(actors.tenant, host=two_hosts[0], adopted=True)
    assert not actions.offered(instance, "migrate")


def test_api_checks_live_against_the_state_and_a_hidden_host_is_invalid(actors, two_hosts):
    instance = make_instance(actors.tenant, host=two_hosts[0])
    admin = actors.client("cloud_admin")
    response = admin.post(URL.format(instance.pk), {"live": False}, format="json")
    assert response.status_code == 409 and "migrates live" in response.json()["detail"]
    response = admin.post(URL.format(instance.pk), {"host": 999999}, format="json")
    assert response.status_code == 400
    response = admin.post(URL.format(instance.pk), {"host": two_hosts[1].pk, "live": True}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["kind"] == "instance.migrate"


def test_cancel_only_running_migrations_and_only_cloud_admins(actors, two_hosts):
    instance = make_instance(actors.tenant, host=two_hosts[0])
    operation = moves.migrate_instance(actor=actors.cloud_admin, instance=instance)
    url = f"/api/v1/operations/{operation.pk}/cancel/"
    assert actors.client("member").post(url).status_code == 403
    assert actors.client("outsider").post(url).status_code == 404
    response = actors.client("cloud_admin").post(url)
    assert response.status_code == 200, response.content
    assert response.json()["cancel_requested"] is True
    operation.refresh_from_db()
    assert operation.cancel_requested
    other = Operation.objects.create(kind="instance.reboot", target_type="vms.instance", target_id=str(instance.pk))
    response = actors.client("cloud_admin").post(f"/api/v1/operations/{other.pk}/cancel/")
    assert response.status_code == 409


def test_dashboard_offers_migrate_to_cloud_admins_only(actors, two_hosts):
    instance = make_instance(actors.tenant, host=two_hosts[0])
    page = actors.client("member", api=False).get(f"/instances/{instance.pk}/").content.decode()
    assert "lc-instance-migrate" not in page
    admin = actors.client("cloud_admin", api=False)
    page = admin.get(f"/instances/{instance.pk}/").content.decode()
    assert "lc-instance-migrate" in page and "lctest-dst" in page
    response = admin.post(f"/instances/{instance.pk}/migrate/", {"migrate-host": two_hosts[1].pk})
    assert response.status_code == 302
    instance.refresh_from_db()
    assert instance.task == "migrate" and instance.migration_target == two_hosts[1]
    operation = Operation.objects.get(kind="instance.migrate")
    page = admin.get(f"/instances/{instance.pk}/").content.decode()
    assert "lc-migration-cancel" in page
    admin.post(f"/instances/{instance.pk}/operations/{operation.pk}/cancel/")
    operation.refresh_from_db()
    assert operation.cancel_requested
    response = actors.client("member", api=False).post(f"/instances/{instance.pk}/migrate/", {})
    assert response.status_code in (302, 403)
    instance.refresh_from_db()
    assert Operation.objects.filter(kind="instance.migrate").count() == 1


def test_admin_action_queues_migrations(actors, two_hosts):
    instance = make_instance(actors.tenant, host=two_hosts[0])
    admin = actors.client("cloud_admin", api=False)
    response = admin.post(
        "/admin/vms/instance/", {"action": "migrate_instances", "_selected_action": [instance.pk]}, follow=True
    )
    assert response.status_code == 200
    instance.refresh_from_db()
    assert instance.task == "migrate" and instance.migration_target == two_hosts[1]


# ---------------------------------------------------------------- the destination's XML


SOURCE_XML = """<domain type='qemu'>
  <name>lctest-x</name><uuid>0b8f2a36-6f0a-4f7b-9a51-3d2f7c1b7e01</uuid>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='src-pool' volume='lctest-x-root.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/src/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source pool='src-pool' volume='lctest-x-seed.iso'/>
      <target dev='sda' bus='sata'/><readonly/>
    </disk>
    <disk type='file' device='cdrom'><target dev='sdb' bus='sata'/><readonly/></disk>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='src-net' portid='1234' bridge='virbr9'/>
      <filterref filter='src-clean'><parameter name='CTRL_IP_LEARNING' value='any'/></filterref>
    </interface>
    <graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
  </devices>
</domain>"""


def _disk(root: ET.Element, target: str) -> ET.Element:
    return next(d for d in root.findall("devices/disk") if d.find("target").get("dev") == target)


def _plan() -> MigrationPlan:
    return MigrationPlan(
        uuid="0b8f2a36-6f0a-4f7b-9a51-3d2f7c1b7e01",
        source_uri="test:///default",
        destination_uri="test:///default",
        disks=(
            DiskMove(
                target="vda", path="/dst/lctest-x-root.qcow2", pool="dst-pool", volume="lctest-x-root.qcow2", copy=True
            ),
            DiskMove(
                target="sda", path="/dst/lctest-x-seed.iso", pool="dst-pool", volume="lctest-x-seed.iso", copy=False
            ),
        ),
        live=True,
        shared_storage=False,
        networks={"src-net": "dst-net"},
        nic_filters={"dst-net": NicFilter(name="dst-clean", parameters=(("CTRL_IP_LEARNING", "dhcp"),))},
        vnc_listen="127.0.0.2",
    )


def test_live_definition_points_at_the_destination_files_network_filter_and_vnc():
    root = ET.fromstring(rewrite_domain_xml(SOURCE_XML, _plan(), persistent=False))  # noqa: S314 - our own output
    vda = _disk(root, "vda")
    assert vda.get("type") == "file" and vda.find("source").attrib == {"file": "/dst/lctest-x-root.qcow2"}
    assert vda.find("backingStore") is None  # the destination's chain is its own
    assert _disk(root, "sda").find("source").get("file") == "/dst/lctest-x-seed.iso"
    assert _disk(root, "sdb").find("source") is None  # the empty drive stays empty
    nic = root.find("devices/interface")
    assert nic.find("source").attrib == {"network": "dst-net"}
    assert nic.find("filterref").get("filter") == "dst-clean"
    assert [(p.get("name"), p.get("value")) for p in nic.findall("filterref/parameter")] == [
        ("CTRL_IP_LEARNING", "dhcp")
    ]
    assert nic.find("mac").get("address") == "52:54:00:aa:bb:cc"  # the guest keeps its MAC
    graphics = root.find("devices/graphics")
    assert graphics.get("listen") == "127.0.0.2" and graphics.find("listen").get("address") == "127.0.0.2"


def test_persistent_definition_points_at_the_destination_volumes():
    root = ET.fromstring(rewrite_domain_xml(SOURCE_XML, _plan(), persistent=True))  # noqa: S314 - our own output
    vda = _disk(root, "vda")
    assert vda.get("type") == "volume"
    assert vda.find("source").attrib == {"pool": "dst-pool", "volume": "lctest-x-root.qcow2"}
    children = [child.tag for child in vda]
    assert children.index("source") == children.index("driver") + 1


def test_post_copy_replaces_auto_converge_and_shared_storage_copies_nothing():
    """As in Nova: a job allowed to switch to post-copy is not throttled the whole pre-copy first."""
    plan = _plan()
    flags = migration_flags(plan)
    assert flags & libvirt.VIR_MIGRATE_AUTO_CONVERGE and not flags & libvirt.VIR_MIGRATE_POSTCOPY
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_INC and flags & libvirt.VIR_MIGRATE_LIVE
    flags = migration_flags(dataclasses.replace(plan, post_copy=True, shared_storage=True))
    assert flags & libvirt.VIR_MIGRATE_POSTCOPY and not flags & libvirt.VIR_MIGRATE_AUTO_CONVERGE
    assert flags & libvirt.VIR_MIGRATE_UNSAFE and not flags & libvirt.VIR_MIGRATE_NON_SHARED_INC
    cold = migration_flags(dataclasses.replace(plan, live=False, post_copy=True))
    assert cold & libvirt.VIR_MIGRATE_OFFLINE and not cold & (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_POSTCOPY)


@pytest.mark.parametrize(
    ("stats", "finishing"),
    [
        ({"memory_remaining": 512 * 1024, "memory_bps": 2 * 1024**2}, True),  # a quarter second left at 2 MiB/s
        ({"memory_remaining": 64 * 1024**2, "memory_bps": 2 * 1024**2}, False),  # half a minute left
        ({"memory_remaining": 0, "memory_bps": 0}, False),  # no rate measured yet: unknown
        ({}, False),  # the statistics could not be read
    ],
)
def test_a_switch_to_post_copy_waits_only_for_a_job_about_to_finish(stats, finishing):
    assert about_to_finish(stats, 0.5) is finishing


# ---------------------------------------------------------------- draining a host


def test_drain_access_and_refusals(actors, two_hosts):
    source, _destination = two_hosts
    url = f"/api/v1/hosts/{source.pk}/drain/"
    for role in ("member", "tenant_admin", "outsider"):
        assert actors.client(role).post(url).status_code == 404  # hosts are invisible to them
    response = actors.client("cloud_admin").post(url)
    assert response.status_code == 202, response.content
    assert response.json()["kind"] == "host.drain"
    source.refresh_from_db()
    assert not source.enabled and source.state == Host.State.DISABLED
    assert actors.client("cloud_admin").post(url).status_code == 409  # one drain at a time
    cloud = Host.objects.create(name="lctest-cloud", kind=Host.Kind.OPENSTACK, auth_url="http://127.0.0.1:1/v3")
    with pytest.raises(ConflictError, match="cannot migrate"):
        moves.drain_host(actor=actors.cloud_admin, host=cloud)
    cloud.refresh_from_db()
    assert cloud.enabled


def test_a_drain_reports_the_instances_that_stayed(actors, two_hosts):
    """Instances that cannot move now (paused, busy) stay, and the drain says which and why; nothing is queued."""
    source, _destination = two_hosts
    make_instance(actors.tenant, host=source, name="paused-1", state=Instance.State.PAUSED)
    make_instance(actors.tenant, host=source, name="busy-1", task="reboot")
    drain = moves.drain_host(actor=actors.cloud_admin, host=source)
    moves.run_drain(operation_id=drain.pk)
    drain.refresh_from_db()
    assert drain.state == Operation.State.FAILED
    assert drain.error == "Some instances stayed on the host; the details say which and why."
    assert "busy-1: Instance “busy-1” is busy" in drain.error_detail
    assert "paused-1: Cannot migrate instance “paused-1” while it is paused." in drain.error_detail
    assert not Operation.objects.filter(kind="instance.migrate").exists()


def test_draining_an_empty_host_succeeds_and_keeps_it_disabled(actors, two_hosts):
    source, _destination = two_hosts
    drain = moves.drain_host(actor=actors.cloud_admin, host=source)
    moves.run_drain(operation_id=drain.pk)
    drain.refresh_from_db()
    assert (
        drain.state == Operation.State.SUCCEEDED and drain.message == "Every instance moved; the host stays disabled."
    )
    source.refresh_from_db()
    assert not source.enabled


def test_hosts_page_and_admin_offer_drain(actors, two_hosts):
    admin = actors.client("cloud_admin", api=False)
    page = admin.get("/hosts/").content.decode()
    assert page.count("lc-host-drain") == 2
    response = admin.post(f"/hosts/{two_hosts[1].pk}/drain/")
    assert response.status_code == 302
    assert Operation.objects.filter(kind="host.drain", target_id=str(two_hosts[1].pk)).exists()
    response = admin.post(
        "/admin/vms/host/", {"action": "drain_hosts", "_selected_action": [two_hosts[0].pk]}, follow=True
    )
    assert response.status_code == 200
    assert Operation.objects.filter(kind="host.drain", target_id=str(two_hosts[0].pk)).exists()
    assert actors.client("member", api=False).post(f"/hosts/{two_hosts[0].pk}/drain/").status_code == 404


# ---------------------------------------------------------------- evacuating a dead host


def test_evacuation_needs_a_host_that_is_down_and_a_confirmation(actors, two_hosts):
    source, destination = two_hosts
    instance = make_instance(actors.tenant, host=source)
    url = f"/api/v1/hosts/{source.pk}/evacuate/"
    admin = actors.client("cloud_admin")
    response = admin.post(url, {"confirm": True}, format="json")
    assert response.status_code == 409 and "drain it instead" in response.json()["detail"]
    assert not actions.offered(instance, "evacuate") or actions.refusal(instance, "evacuate") is not None
    Host.objects.filter(pk=source.pk).update(state=Host.State.DOWN)
    instance.refresh_from_db()
    assert actions.allowed_admin_actions(instance) == ["evacuate"]  # migrate needs the host up
    response = admin.post(url, {}, format="json")
    assert response.status_code == 400, response.content
    assert "1 of them lose their disks" in response.json()["detail"]
    assert not Operation.objects.filter(kind="host.evacuate").exists()
    Host.objects.filter(pk__in=[source.pk, destination.pk]).update(storage_share="nfs1")
    response = admin.post(url, {}, format="json")
    assert "0 of them lose their disks" in response.json()["detail"]
    for role in ("member", "tenant_admin", "outsider"):
        assert actors.client(role).post(url, {"confirm": True}, format="json").status_code == 404
    response = admin.post(url, {"confirm": True}, format="json")
    assert response.status_code == 202 and response.json()["kind"] == "host.evacuate"
    source.refresh_from_db()
    assert not source.enabled
    page = actors.client("cloud_admin", api=False).get("/hosts/").content.decode()
    assert "lc-host-evacuate" in page


def test_the_watcher_leaves_moving_instances_alone(actors, two_hosts):
    from vms.compute.state import Observed, record_observed

    instance = make_instance(actors.tenant, host=two_hosts[0], task="migrate")
    assert not record_observed(instance, Observed(state="error", reason="The domain vanished from the host."))
    instance.refresh_from_db()
    assert instance.state == Instance.State.RUNNING


def test_admin_evacuation_asks_first(actors, two_hosts):
    source, _destination = two_hosts
    make_instance(actors.tenant, host=source)
    Host.objects.filter(pk=source.pk).update(state=Host.State.DOWN)
    admin = actors.client("cloud_admin", api=False)
    page = admin.post("/admin/vms/host/", {"action": "evacuate_hosts", "_selected_action": [source.pk]})
    assert page.status_code == 200 and "1 of them lose their disks" in page.content.decode()
    assert not Operation.objects.filter(kind="host.evacuate").exists()
    admin.post("/admin/vms/host/", {"action": "evacuate_hosts", "_selected_action": [source.pk], "apply": "1"})
    assert Operation.objects.filter(kind="host.evacuate", target_id=str(source.pk)).exists()


# ---------------------------------------------------------------- what the review found


def test_tenant_admins_read_migration_audit_events_without_host_names(actors, two_hosts):
    instance = make_instance(actors.tenant, host=two_hosts[0])
    moves.migrate_instance(actor=actors.cloud_admin, instance=instance)
    rows = actors.client("tenant_admin").get("/api/v1/audit-events/?action=instance.migrate").json()["results"]
    assert rows and all(not {"from_host", "to_host", "to_host_id"} & set(row["detail"]) for row in rows)
    rows = actors.client("cloud_admin").get("/api/v1/audit-events/?action=instance.migrate").json()["results"]
    assert rows[0]["detail"]["to_host"] == "lctest-dst"


def test_a_cold_migration_cannot_be_cancelled(actors, two_hosts):
    instance = make_instance(actors.tenant, host=two_hosts[0], state=Instance.State.SHUTOFF)
    operation = moves.migrate_instance(actor=actors.cloud_admin, instance=instance)
    with pytest.raises(ConflictError, match="cold migration cannot be cancelled"):
        moves.cancel_operation(actor=actors.cloud_admin, operation=operation)


def test_a_drain_whose_worker_died_does_not_block_the_next(actors, two_hosts, settings):
    from datetime import timedelta

    from django.utils import timezone

    source = two_hosts[0]
    dead = moves.drain_host(actor=actors.cloud_admin, host=source)
    old = timezone.now() - timedelta(seconds=settings.LABCLOUD_OPERATION_STALE_SECONDS + 5)
    Operation.objects.filter(pk=dead.pk).update(state=Operation.State.RUNNING, started_at=old, heartbeat_at=old)
    again = moves.drain_host(actor=actors.cloud_admin, host=source)
    dead.refresh_from_db()
    assert dead.state == Operation.State.FAILED and "stopped" in dead.error
    assert again.pk != dead.pk
    with pytest.raises(ConflictError, match="being drained already"):  # a live one still blocks
        moves.drain_host(actor=actors.cloud_admin, host=source)


def test_an_evacuation_goes_where_the_disks_are_when_the_storage_is_shared(actors):
    dead = make_host("lctest-dead", storage_share="nfs1", state=Host.State.DOWN)
    sharing = make_host("lctest-sharing", storage_share="nfs1", memory_mib=4096)
    make_host("lctest-roomy", memory_mib=65536)  # more free RAM, but not the same files
    instance = make_instance(actors.tenant, host=dead)
    operation = moves.evacuate_instance(actor=actors.cloud_admin, instance=instance)
    assert operation.params["to_host"] == sharing.name
    other = make_instance(actors.tenant, host=make_host("lctest-dead2", state=Host.State.DOWN))
    assert moves.evacuate_instance(actor=actors.cloud_admin, instance=other).params["to_host"] == "lctest-roomy"
