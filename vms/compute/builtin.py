"""The adapters labcloud ships, one per host kind; the compute app registers them when it is ready."""

from __future__ import annotations

from vms.compute.base import register
from vms.compute.libvirt import LibvirtAdapter
from vms.compute.openstack import OpenStackAdapter
from vms.models import Host


def register_builtin_adapters() -> None:
    register(Host.Kind.LIBVIRT, LibvirtAdapter)
    register(Host.Kind.OPENSTACK, OpenStackAdapter)
