"""What an instance is on a libvirt host: the driver of its host, the names of its domain's volumes, the domain
spec built from its row, and a domain's state as the row shows it."""

from __future__ import annotations

from pathlib import PurePosixPath

from django.conf import settings
from django.utils.translation import gettext as _

from images.models import Image
from portal.backends.base import (
    BackendError,
    DiskSpec,
    InstanceSpec,
    InstanceState,
    NicFilter,
)
from portal.backends.libvirt.driver import LibvirtDriver
from vms.compute.state import Observed
from vms.models import Host, Instance


def libvirt_uri(host: Host) -> str:
    """The host's libvirt URI; a host of another kind fails loudly (its empty URI would open the local default)."""
    if host.kind != Host.Kind.LIBVIRT:
        raise BackendError(_("%(host)s is not a libvirt host.") % {"host": host.name})
    return host.uri


def driver_for(host: Host) -> LibvirtDriver:
    return LibvirtDriver(libvirt_uri(host), nic_filter=nic_filter_name())


def nic_filter_name() -> str:
    """The portal's anti-spoofing filter on its hosts: ``labcloud-clean-traffic`` with the default prefix."""
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}clean-traffic"


def group_filter_name(group_uuid: str) -> str:
    """A security group's network filter on the hosts (portal/backends/libvirt/nwfilter.py)."""
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}sg-{group_uuid}"


def port_filter_name(instance_uuid: str) -> str:
    """The network filter an instance's NIC references: anti-spoofing and its security groups."""
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}port-{instance_uuid}"


def root_volume(instance: Instance) -> str:
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}{instance.uuid}-root.qcow2"


def seed_volume(instance: Instance) -> str:
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}{instance.uuid}-seed.iso"


def disk_volume(instance: Instance, index: int) -> str:
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}{instance.uuid}-disk{index}.qcow2"


def serial_log_path(instance: Instance) -> str:
    return str(PurePosixPath(settings.LABCLOUD_SERIAL_LOG_DIR) / f"{instance.domain_name or instance.uuid}.serial.log")


def ignored_prefixes() -> tuple[str, ...]:
    """Transient domains of the KVM boot probe (``detect_virt_type``), whatever the naming prefix."""
    return ("labcloud-probe-", f"{settings.LABCLOUD_DOMAIN_PREFIX}probe-")


def ignored_domain(name: str) -> bool:
    return name.startswith(ignored_prefixes())


def observed(domain: InstanceState) -> Observed:
    """A domain's state as the row shows it: libvirt's reason beside it, except while running."""
    reason = "" if domain.state == "running" or domain.reason == "unknown" else domain.reason
    return Observed(state=domain.state, reason=reason)


def build_spec(instance: Instance, *, network: str | None, nic_filter: NicFilter | None = None) -> InstanceSpec:
    """The domain the instance should be, from its row (root disk, seed or installer ISO, extra disks).

    Memory: ``<memory>`` and ``<currentMemory>`` are both the row's ``ram_mib``, which is what the quota
    and the scheduler count. A higher ``<memory>`` with a lower balloon target would let a guest that
    ignores the balloon use more than is counted. vCPUs: ``current`` is the row's ``vcpus``; the
    flavor's count is the maximum, as hot-plug slots the guest cannot fill by itself (QEMU starts only
    ``current`` vCPUs; more appear only when the portal hot-adds them, counted).
    """
    host = instance.host
    pool = host.storage_pool
    disks: list[DiskSpec] = []
    if instance.installing:
        disks.append(DiskSpec(device="disk", pool=pool, volume=root_volume(instance), format="qcow2", boot_order=2))
        disks.append(
            DiskSpec(
                device="cdrom",
                pool=pool,
                volume=instance.image.replicas.get(host=host).volume,
                format="raw",
                readonly=True,
                boot_order=1,
            )
        )
    else:
        disks.append(DiskSpec(device="disk", pool=pool, volume=root_volume(instance), format="qcow2", boot_order=1))
        if instance.image is not None and instance.image.kind == Image.Kind.DISK:
            disks.append(DiskSpec(device="cdrom", pool=pool, volume=seed_volume(instance), format="raw", readonly=True))
    for disk in instance.disks.filter(attached=True).order_by("pk"):
        disks.append(DiskSpec(device="disk", pool=pool, volume=disk.volume, format="qcow2"))
    os_type = instance.image.os_type if instance.image is not None else "linux"
    return InstanceSpec(
        uuid=str(instance.uuid),
        name=instance.domain_name,
        title=instance.name,
        description=_("labcloud instance of tenant %(tenant)s") % {"tenant": instance.tenant.name},
        vcpus=instance.vcpus,
        max_vcpus=max(instance.flavor.vcpus, instance.vcpus),
        memory_mib=instance.ram_mib,
        max_memory_mib=instance.ram_mib,
        virt_type=host.virt_type,
        cpu_mode=host.cpu_mode,
        cpu_model=host.cpu_model or None,
        os_type=os_type if os_type in ("linux", "windows", "other") else "linux",
        disks=tuple(disks),
        network=network,
        mac_address=instance.mac_address or None,
        nic_filter=nic_filter,
        vnc_listen=host.vnc_listen,
        serial_log=serial_log_path(instance),
        metadata={"tenant": str(instance.tenant_id), "instance": str(instance.pk)},
    )


def shared_storage(one: Host, other: Host) -> bool:
    """The two hosts' pools hold the same files (admins gave both the same ``storage_share``)."""
    return bool(one.storage_share) and one.storage_share == other.storage_share


def instance_volumes(instance: Instance) -> list[str]:
    """The names of every volume the portal makes for the instance on its host: root disk, seed, extra disks."""
    return [
        root_volume(instance),
        seed_volume(instance),
        *filter(None, instance.disks.values_list("volume", flat=True)),
    ]
