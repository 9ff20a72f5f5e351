"""Security groups on a libvirt host: a tenant's plan (``vms.security_groups.firewall_plan``) as network filters.

Each group is a filter ``<prefix>sg-<group uuid>``; each NIC references its instance's port filter
``<prefix>port-<instance uuid>`` (anti-spoofing, DHCP, the groups, drop the rest); see
portal/backends/libvirt/nwfilter.py for the rules and how a change reaches running NICs.
"""

from __future__ import annotations

from portal.backends.libvirt.driver import LibvirtDriver
from vms.compute.base import FirewallPlan
from vms.compute.libvirt.spec import group_filter_name, port_filter_name
from vms.models import Host, Instance
from vms.security_groups import apply_until_current, random_mac


def apply_plan(driver: LibvirtDriver, plan: FirewallPlan) -> None:
    """A tenant's filters on one host: the groups' filters, then the NICs' port filters over them, then the
    filters of groups nothing there uses any more."""
    for group, rules in plan.groups:
        driver.define_group_filter(group_filter_name(group), rules)
    for instance, groups in plan.ports:
        driver.define_port_filter(port_filter_name(instance), [group_filter_name(g) for g in groups])
    for group in plan.unused_groups:
        driver.remove_filter(group_filter_name(group))


def port_for(driver: LibvirtDriver, instance: Instance, *, host: Host | None = None) -> str | None:
    """The port filter of the instance's NIC on ``host`` (its own by default), that host's filters of the tenant
    made current first; None for an instance in no security group (adopted, or made before groups existed),
    whose NIC has anti-spoofing only. Gives the instance its MAC first: remote-group rules name NICs by MAC."""
    if instance.adopted or not instance.security_groups.exists():
        return None
    if not instance.mac_address:
        instance.mac_address = random_mac()
        Instance.objects.filter(pk=instance.pk).update(mac_address=instance.mac_address)
    apply_until_current(
        tenant=instance.tenant,
        host=host or instance.host,
        including=instance,
        apply=lambda plan: apply_plan(driver, plan),
    )
    return port_filter_name(str(instance.uuid))
