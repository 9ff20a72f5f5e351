"""libvirt hosts: the adapter (``adapter``), the domain spec and names (``spec``), the watcher's side
(``watch``) and the KVM probe (``probe``)."""

from vms.compute.libvirt.adapter import LibvirtAdapter
from vms.compute.libvirt.probe import detect_virt_type
from vms.compute.libvirt.spec import build_spec, driver_for, observed, root_volume, seed_volume, serial_log_path
from vms.compute.libvirt.watch import domain_state, mark_vanished, reconcile_host

__all__ = [
    "LibvirtAdapter",
    "build_spec",
    "detect_virt_type",
    "domain_state",
    "driver_for",
    "mark_vanished",
    "observed",
    "reconcile_host",
    "root_volume",
    "seed_volume",
    "serial_log_path",
]
