"""Snapshot storage measured on the real qemu:///system (nothing boots): a volume that cannot be measured
never lowers what is counted (a member would otherwise take snapshots past the quota)."""

from __future__ import annotations

import pytest

from portal.backends.base import DiskSpec, InstanceSpec
from portal.factories import make_instance
from vms.compute import compute_for
from vms.compute import libvirt as libvirt_compute
from vms.models import Instance

pytestmark = pytest.mark.django_db
MIB = 1024**2


def test_a_volume_that_cannot_be_measured_never_lowers_the_count(portal_host, make_tenant):
    tenant = make_tenant("measure")
    instance = make_instance(tenant, host=portal_host, state=Instance.State.SHUTOFF)
    instance.domain_name = portal_host.lctest.name(f"vm-{instance.pk}")
    instance.save(update_fields=["domain_name"])
    driver = portal_host.lctest.driver
    uuid = portal_host.lctest.track(str(instance.uuid))
    volume = driver.create_volume(portal_host.storage_pool, libvirt_compute.root_volume(instance), 16 * MIB)
    driver.define(
        InstanceSpec(
            uuid=uuid,
            name=instance.domain_name,
            memory_mib=64,
            virt_type="qemu",
            disks=(DiskSpec(pool=portal_host.storage_pool, volume=volume.name, boot_order=1),),
        )
    )
    driver.snapshot_create(uuid, "kept")
    adapter = compute_for(portal_host)
    assert adapter.measure_snapshots(instance) >= 0  # measurable: qemu-img reads the volume

    # The volume's header is gone: qemu-img cannot read it any more, libvirt still lists the snapshot.
    with open(volume.path, "r+b") as file:
        file.write(b"\0" * 4096)
    Instance.objects.filter(pk=instance.pk).update(snapshot_bytes=7 * MIB)
    assert adapter.measure_snapshots(instance) >= 7 * MIB
    assert Instance.objects.get(pk=instance.pk).snapshot_bytes >= 7 * MIB

    assert driver.undefine(uuid) is True
