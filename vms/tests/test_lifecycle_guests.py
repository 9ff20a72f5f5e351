"""Instances end to end on the real qemu:///system under TCG, through the services and the task bodies.

Two guests boot (plus reboots of the same guests):

1. launch from the tiny disk image with a keypair: image copied into the host's pool, qcow2
   overlay grown to the flavor, NoCloud seed → the guest prints the hostname and the key it was
   given; then shut down (ACPI), snapshot, resize, vCPU change offline and hot-add live, extra
   disk attach/detach, pause/resume, reboot, power off, revert, delete: nothing left on the host
   and no quota used.
2. install from the tiny installer ISO: blank disk + CD first → the installer writes the disk and
   powers off → finish install → the installed system boots from disk.

The Celery tasks run in-process (eager) when the request's transaction commits.
"""

from __future__ import annotations

import time

import pytest

from portal.backends.libvirt.connection import connect
from portal.selectors import tenant_usage
from vms import lifecycle
from vms.compute import libvirt as libvirt_compute
from vms.models import Flavor, Instance, InstanceDisk, Keypair, Operation, Snapshot
from vms.tests.compute.test_libvirt_guests import BOOTED, INSTALL_DONE, markers, wait_for_marker
from vms.tests.conftest import QEMU_URI, active_image, fake_ssh_key, leftovers

pytestmark = [pytest.mark.libvirt_guests, pytest.mark.django_db]
GIB = 1024**3


def ok(operation: Operation) -> Operation:
    assert operation.state == Operation.State.SUCCEEDED, f"{operation.kind}: {operation.error}"
    return operation


def serial_log(portal_host, instance: Instance):
    return portal_host.lctest.work / f"{instance.domain_name}.serial.log"


def wait_state(driver, instance: Instance, state: str, timeout: float = 120) -> None:
    driver.wait_for_state(str(instance.uuid), [state], timeout=timeout)


def test_launch_from_image_and_full_lifecycle(portal_host, guest_media, make_tenant, make_user, run_tasks):
    tenant = make_tenant("guests")
    user = make_user("member-guests")
    tenant.memberships.create(user=user, role="member")
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny", virtual_size=20 * 1024**2)
    flavor = Flavor.objects.create(name="lctest.small", vcpus=2, ram_mib=160, disk_gib=1)
    bigger = Flavor.objects.create(name="lctest.bigger", vcpus=2, ram_mib=192, disk_gib=2)
    key = fake_ssh_key("lctest@labcloud")
    keypair = Keypair.objects.create(tenant=tenant, owner=user, name="k", public_key=key, fingerprint="x")
    driver = portal_host.lctest.driver
    conn = connect(QEMU_URI)

    t0 = time.monotonic()
    launch = run_tasks(
        lambda: lifecycle.launch_instances(
            actor=user, tenant=tenant, name="Web 服务器 & <db>", flavor=flavor, image=image, keypair=keypair
        )
    )
    instance = launch.instances[0]
    instance.refresh_from_db()
    ok(Operation.objects.get(pk=launch.operations[0].pk))
    assert instance.state == Instance.State.RUNNING and instance.task == ""
    assert instance.host_id == portal_host.pk
    assert instance.domain_name.startswith(portal_host.lctest.prefix)
    assert instance.mac_address == ""  # no network on this host: no NIC
    booted = wait_for_marker(serial_log(portal_host, instance), BOOTED)
    print(f"\nlaunch → booted marker: {time.monotonic() - t0:.1f} s")
    assert "hostname=web" in booted
    log_markers = "\n".join(markers(serial_log(portal_host, instance)))
    assert "lctest@labcloud" in log_markers
    usage = tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]
    assert (usage["instances"], usage["vcpus"], usage["ram_mib"], usage["disk_gib"]) == (1, 2, 160, 1)

    # Busy and state rules are checked in the request.
    with pytest.raises(lifecycle.ConflictError):
        lifecycle.request_action(actor=user, instance=instance, action="start")

    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="pause")))
    instance.refresh_from_db()
    assert instance.state == Instance.State.PAUSED
    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="resume")))

    # Extra disk, live.
    ok(run_tasks(lambda: lifecycle.attach_disk(actor=user, instance=instance, size_gib=1)))
    disk = InstanceDisk.objects.get(instance=instance)
    assert disk.attached and disk.target
    assert tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]["disk_gib"] == 2
    assert driver.find_volume(portal_host.storage_pool, disk.volume) is not None
    ok(run_tasks(lambda: lifecycle.detach_disk(actor=user, disk=disk)))
    assert not InstanceDisk.objects.filter(pk=disk.pk).exists()
    assert driver.find_volume(portal_host.storage_pool, disk.volume) is None

    # ACPI shut down (the guest runs acpid): shut off, then offline changes.
    t1 = time.monotonic()
    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="shutdown")))
    instance.refresh_from_db()
    assert instance.state == Instance.State.SHUTOFF
    print(f"ACPI shutdown: {time.monotonic() - t1:.1f} s")

    ok(run_tasks(lambda: lifecycle.create_snapshot(actor=user, instance=instance, name="before-resize")))
    snapshot = Snapshot.objects.get(instance=instance)
    assert snapshot.state == Snapshot.State.AVAILABLE
    assert [s.name for s in driver.snapshot_list(str(instance.uuid))] == ["before-resize"]
    assert tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]["snapshots"] == 1

    # Resizing a qcow2 (v3) disk that holds an internal snapshot works…
    ok(run_tasks(lambda: lifecycle.resize_instance(actor=user, instance=instance, flavor=bigger)))
    instance.refresh_from_db()
    assert (instance.flavor_id, instance.ram_mib, instance.disk_gib) == (bigger.pk, 192, 2)
    root = driver.find_volume(portal_host.storage_pool, libvirt_compute.root_volume(instance))
    assert root.capacity == 2 * GIB
    assert driver.describe(str(instance.uuid)).spec.memory_mib == 192
    # …but reverting to a snapshot of the old size is refused: quota counts the new size.
    with pytest.raises(lifecycle.ConflictError, match="resized"):
        lifecycle.revert_snapshot(actor=user, snapshot=snapshot)
    ok(run_tasks(lambda: lifecycle.delete_snapshot(actor=user, snapshot=snapshot)))
    assert driver.snapshot_list(str(instance.uuid)) == []

    ok(run_tasks(lambda: lifecycle.set_resources(actor=user, instance=instance, vcpus=1)))
    assert driver.describe(str(instance.uuid)).spec.vcpus == 1

    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="start")))
    wait_for_marker(serial_log(portal_host, instance), BOOTED)
    # Hot-add a vCPU back up to the flavor's maximum while running.
    ok(run_tasks(lambda: lifecycle.set_resources(actor=user, instance=instance, vcpus=2)))
    assert driver.state(str(instance.uuid)).vcpus == 2
    with pytest.raises(lifecycle.ServiceError):
        lifecycle.set_resources(actor=user, instance=instance, vcpus=3)  # above the flavor

    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="reboot")))
    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="stop")))
    instance.refresh_from_db()
    assert instance.state == Instance.State.SHUTOFF

    ok(run_tasks(lambda: lifecycle.create_snapshot(actor=user, instance=instance, name="resized")))
    snapshot = Snapshot.objects.get(instance=instance)
    ok(run_tasks(lambda: lifecycle.revert_snapshot(actor=user, snapshot=snapshot)))
    ok(run_tasks(lambda: lifecycle.delete_snapshot(actor=user, snapshot=snapshot)))
    assert driver.snapshot_list(str(instance.uuid)) == []

    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))
    assert not Instance.objects.filter(pk=instance.pk).exists()
    usage = tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]
    assert (usage["instances"], usage["vcpus"], usage["ram_mib"], usage["disk_gib"], usage["snapshots"]) == (
        0,
        0,
        0,
        0,
        0,
    )
    left = [name for name in leftovers(conn, portal_host.lctest.prefix) if "image" not in name]
    assert left == []


def test_install_from_iso_then_boot_from_disk(
    portal_host, guest_media, make_tenant, make_user, run_tasks, lctest_network
):
    tenant = make_tenant("installs")
    user = make_user("member-installs")
    tenant.memberships.create(user=user, role="member")
    iso = active_image(
        tenant=tenant, source=guest_media["installer.iso"], name="installer", kind="iso", disk_format="iso"
    )
    flavor = Flavor.objects.create(name="lctest.install", vcpus=1, ram_mib=160, disk_gib=1)
    driver = portal_host.lctest.driver

    t0 = time.monotonic()
    launch = run_tasks(
        lambda: lifecycle.launch_instances(
            actor=user, tenant=tenant, name="inst", flavor=flavor, image=iso, network=lctest_network
        )
    )
    instance = launch.instances[0]
    instance.refresh_from_db()
    ok(Operation.objects.get(pk=launch.operations[0].pk))
    assert instance.installing and instance.state == Instance.State.RUNNING
    facts = driver.describe(str(instance.uuid))
    # The shared isolated network was created on the host on first use; the instance has a NIC on it.
    assert facts.spec.network == lctest_network.libvirt_name and instance.mac_address
    cdrom = next(d for d in facts.spec.disks if d.device == "cdrom")
    assert cdrom.boot_order == 1
    wait_for_marker(serial_log(portal_host, instance), INSTALL_DONE)
    wait_state(driver, instance, "shutoff")
    print(f"\ninstall: {time.monotonic() - t0:.1f} s")

    with pytest.raises(lifecycle.ServiceError):  # only ISO installs can be finished
        lifecycle.request_action(actor=user, instance=instance, action="bogus")
    t1 = time.monotonic()
    serial_log(portal_host, instance).unlink()
    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="finish_install")))
    instance.refresh_from_db()
    assert not instance.installing and instance.state == Instance.State.RUNNING
    facts = driver.describe(str(instance.uuid))
    assert all(d.device == "disk" for d in facts.spec.disks)
    assert facts.spec.network == lctest_network.libvirt_name  # finish install keeps the NIC
    wait_for_marker(serial_log(portal_host, instance), BOOTED)
    print(f"finish install → booted from disk: {time.monotonic() - t1:.1f} s")
    with pytest.raises(lifecycle.ConflictError):
        lifecycle.request_action(actor=user, instance=instance, action="finish_install")

    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))
    left = [name for name in leftovers(connect(QEMU_URI), portal_host.lctest.prefix) if "image" not in name]
    assert left == []


def test_detect_virt_type_proves_kvm_by_booting(portal_host, guest_media):
    """/dev/kvm exists here but cannot boot a kernel: detection must choose qemu (TCG) and leave nothing behind."""
    from io import StringIO

    from django.core.management import call_command

    portal_host.virt_type = "kvm"
    portal_host.save(update_fields=["virt_type"])
    out = StringIO()
    call_command("detect_virt_type", host=[portal_host.name], image=guest_media["tiny.qcow2"], timeout=30, stdout=out)
    assert out.getvalue().strip() == f"{portal_host.name}: qemu"
    portal_host.refresh_from_db()
    assert portal_host.virt_type == "qemu"
    assert leftovers(connect(QEMU_URI), portal_host.lctest.prefix) == []
