"""Security groups on an OpenStack cloud: a tenant's plan (``vms.security_groups.firewall_plan``) as Neutron
security groups and rules in the tenant's project, and the groups of each server (through Nova).

Each portal group is the project's Neutron group ``<prefix>sg-<group uuid>`` (made without Neutron's
default egress rules; its rules are exactly the portal's, IPv4, with the remote group as Neutron's
``remote_group_id``). A group another rule names as its remote is made too, even if no server here
uses it. Groups of the plan's ``unused_groups`` are deleted from the project unless a rule names them.
"""

from __future__ import annotations

from django.conf import settings

from portal.backends.base import FirewallRule, NotFound
from portal.backends.openstack.driver import NeutronRule, OpenStackDriver
from vms.compute.base import FirewallPlan
from vms.models import CloudProject, Host, Instance


def cloud_group_name(group_uuid: str) -> str:
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}sg-{group_uuid}"


def neutron_rule(rule: FirewallRule, ids: dict[str, str]) -> NeutronRule:
    return NeutronRule(
        direction="ingress" if rule.direction == "in" else "egress",
        protocol=None if rule.protocol == "all" else rule.protocol,
        port_range_min=rule.port_min,
        port_range_max=rule.port_max if rule.port_max is not None or rule.protocol == "icmp" else rule.port_min,
        remote_ip_prefix=rule.remote_cidr,
        remote_group_id=ids.get(rule.remote_group_id) if rule.remote_group_id else None,
    )


def group_ids(driver: OpenStackDriver, project_id: str, plan: FirewallPlan) -> dict[str, str]:
    """Portal group UUID → Neutron group id, for every group of the plan and every remote group its rules name."""
    used = [uuid for uuid, _rules in plan.groups]
    remote = sorted({r.remote_group_id for _uuid, rules in plan.groups for r in rules if r.remote_group_id})
    return {
        uuid: driver.ensure_security_group(
            project_id=project_id, name=cloud_group_name(uuid), description="labcloud security group"
        )
        for uuid in dict.fromkeys([*used, *remote])
    }


def apply_plan(driver: OpenStackDriver, host: Host, plan: FirewallPlan) -> dict[str, str]:
    """The plan in the tenant's project (nothing while the tenant has no project there); the group ids."""
    project_id = (
        CloudProject.objects.filter(host=host, tenant_id=plan.tenant_id).values_list("project_id", flat=True).first()
    )
    if not project_id:
        return {}
    ids = group_ids(driver, project_id, plan)
    for uuid, rules in plan.groups:
        # A remote group always has its id here (group_ids made it); should one lack it, the rule is left
        # out rather than opened to everyone.
        kept = [r for r in rules if not r.remote_group or ids.get(r.remote_group_id or "")]
        driver.set_security_group_rules(
            project_id=project_id, group_id=ids[uuid], rules=[neutron_rule(r, ids) for r in kept]
        )
    rows = Instance.objects.filter(uuid__in=[uuid for uuid, _groups in plan.ports]).exclude(cloud_id="")
    servers = {str(uuid): cloud_id for uuid, cloud_id in rows.values_list("uuid", "cloud_id")}
    for uuid, groups in plan.ports:
        server_id = servers.get(uuid)
        if not server_id:
            continue  # not created yet: its launch names its groups
        try:
            driver.set_server_security_groups(server_id, project_id=project_id, group_ids=[ids[g] for g in groups])
        except NotFound:
            continue  # deleted meanwhile
    named = {r.remote_group_id for _uuid, rules in plan.groups for r in rules}
    for uuid in plan.unused_groups:
        if uuid not in named:
            driver.delete_security_group(project_id=project_id, name=cloud_group_name(uuid))
    return ids
