"""Security groups: a tenant's firewall rules on its instances' NICs (services and selectors).

A group holds rules (direction, protocol, ports, and a remote CIDR or a remote group); an
instance's NICs let through what one of its groups allows and drop every other IPv4 packet.
Every tenant has a ``default`` group, as in OpenStack: all egress, and ingress only from
instances in the same group. New instances get ``default`` unless the launch names groups.

Writes change rows, then queue ``sync_firewall_task`` on commit: it builds each host's
``FirewallPlan`` (``firewall_plan``) and hands it to the host's compute adapter
(``apply_firewall``), which changes the filters live. A host kind without the
``security_groups`` capability is refused in one place (``check_can_filter``).

Quotas: ``security_groups`` and ``security_group_rules`` (the default group and its rules count),
reserved under the tenant's quota lock like every other resource.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence

from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.utils.translation import gettext as _

from portal.access import VIEW
from portal.backends.base import BackendError, FirewallRule
from portal.models import Quota, Tenant
from portal.services import ConflictError, QuotaExceeded, ServiceError, record_audit, reserve_quota
from vms.compute.base import (
    Capability,
    FirewallPlan,
    MissingCapability,
    compute_for,
    host_can,
    instance_capabilities,
)
from vms.keypairs import clean_name, require_member
from vms.models import DEFAULT_GROUP, Host, Instance, SecurityGroup, SecurityGroupRule
from vms.operations import BROKER_ERRORS
from vms.tasks import sync_firewall_task

log = logging.getLogger(__name__)

NAME_MAX = 100
DESCRIPTION_MAX = 255
Rule = SecurityGroupRule


# ---------------------------------------------------------------- reads


def security_groups_for(*, user, tenant: Tenant | None = None) -> QuerySet[SecurityGroup]:
    """Groups the user may see (optionally of one tenant), with their tenant, rule and instance counts."""
    groups = SecurityGroup.objects.restrict(user, VIEW)
    if tenant is not None:
        groups = groups.filter(tenant=tenant)
    return (
        groups.select_related("tenant")
        .annotate(rule_count=Count("rules", distinct=True), instance_count=Count("instances", distinct=True))
        .order_by("name", "id")
    )


def rules_for(*, user, group: SecurityGroup | None = None) -> QuerySet[SecurityGroupRule]:
    rules = SecurityGroupRule.objects.restrict(user, VIEW)
    if group is not None:
        rules = rules.filter(group=group)
    return rules.select_related("group", "remote_group")


def _macs_by_group(tenant_id: int) -> dict[int, list[str]]:
    macs: dict[int, list[str]] = defaultdict(list)
    rows = Instance.security_groups.through.objects.filter(securitygroup__tenant_id=tenant_id).values_list(
        "securitygroup_id", "instance__mac_address"
    )
    for group_id, mac in rows:
        if mac:
            macs[group_id].append(mac.lower())
    return {group_id: sorted(set(found)) for group_id, found in macs.items()}


def firewall_rule(
    rule: SecurityGroupRule, macs_by_group: dict[int, list[str]], uuids: dict[int, str] | None = None
) -> FirewallRule:
    """A rule as the backends apply it: a remote group becomes its members' NICs (and its UUID)."""
    remote = rule.remote_group_id
    return FirewallRule(
        direction="in" if rule.direction == Rule.Direction.INGRESS else "out",
        protocol="all" if rule.protocol == Rule.Protocol.ANY else rule.protocol,
        port_min=rule.port_min,
        port_max=rule.port_max,
        remote_cidr=rule.remote_cidr or None,
        remote_group=rule.remote_group_id is not None,
        remote_macs=tuple(macs_by_group.get(remote, ())) if remote else (),
        remote_group_id=(uuids or {}).get(remote) if remote else None,
    )


def firewall_plan(
    *, tenant: Tenant, host: Host, gone: Iterable[str] = (), including: Instance | None = None
) -> FirewallPlan:
    """What ``host`` must filter for ``tenant``: the rules of every group its instances there use (and
    ``including``'s, an instance on its way there), each instance's groups, and the tenant's groups (or
    deleted ones, ``gone``) to remove there."""
    on_host = Q(host=host) | Q(pk=including.pk) if including is not None else Q(host=host)
    instances = list(
        Instance.objects.filter(on_host, tenant=tenant, adopted=False)
        .prefetch_related("security_groups")
        .order_by("pk")
    )
    ports = tuple(
        (str(i.uuid), tuple(str(g.uuid) for g in sorted(i.security_groups.all(), key=lambda g: (g.name, g.pk))))
        for i in instances
        if i.security_groups.all()
    )
    used = {group for _uuid, groups in ports for group in groups}
    groups = list(SecurityGroup.objects.filter(tenant=tenant).prefetch_related("rules"))
    macs = _macs_by_group(tenant.pk)
    uuids = {g.pk: str(g.uuid) for g in groups}
    rules = tuple(
        (str(g.uuid), tuple(firewall_rule(r, macs, uuids) for r in g.rules.all()))
        for g in sorted(groups, key=lambda g: g.pk)
        if str(g.uuid) in used
    )
    unused = tuple(sorted({str(g.uuid) for g in groups} - used | set(gone)))
    return FirewallPlan(groups=rules, ports=ports, unused_groups=unused, tenant_id=tenant.pk)


def firewall_hosts(*, tenant: Tenant, everywhere: bool = False) -> list[Host]:
    """The hosts whose filters hold something of ``tenant``: where its instances are (``everywhere``: every host,
    to remove a deleted group wherever it was), on kinds that filter, and not known to be down (a host that comes
    back is synced then: ``vms.compute.state.mark_host_answered``)."""
    hosts = Host.objects.exclude(state=Host.State.DOWN)
    if not everywhere:
        hosts = hosts.filter(instances__tenant=tenant).distinct()
    return [host for host in hosts if host_can(host, Capability.SECURITY_GROUPS)]


def sync_firewall(*, tenant: Tenant, gone: Sequence[str] = (), hosts: Sequence[Host] | None = None) -> int:
    """Make the filters of ``tenant`` on its hosts what the database says; the number of hosts done.

    Runs until the plan read after applying it is the one applied, so two syncs that race end on
    the newer rows whatever their order. A host that fails is logged and the others still follow; it
    catches up when the watcher sees it answer again (``vms.compute.state.mark_host_answered``) or an
    instance starts there (``port_for``).
    """
    done = 0
    for host in hosts if hosts is not None else firewall_hosts(tenant=tenant, everywhere=bool(gone)):
        adapter = compute_for(host)
        try:
            apply_until_current(
                tenant=tenant, host=host, gone=gone, apply=lambda plan, h=host, a=adapter: a.apply_firewall(h, plan)
            )
        except BackendError as exc:  # the other hosts still follow; this one when the task retries
            log.warning("security groups of tenant %s not applied on %s: %s", tenant.pk, host.name, exc.message)
            continue
        done += 1
    return done


def sync_host(*, host: Host) -> None:
    """Queue the sync of every tenant with instances on ``host`` (a host that answers again)."""
    for tenant in Tenant.objects.filter(instances__host=host).distinct():
        queue_sync(tenant)


def apply_until_current(
    *, tenant: Tenant, host: Host, apply, gone: Sequence[str] = (), including: Instance | None = None
) -> FirewallPlan | None:
    """``apply(plan)`` until the plan read after applying is the one applied, so that of two applies that race
    (a sync, a start) the newer rows win whatever the order: the plan applied last."""
    applied = None
    for _attempt in range(5):
        plan = firewall_plan(tenant=tenant, host=host, gone=gone, including=including)
        if plan == applied:
            break
        apply(plan)
        applied = plan
    return applied


def queue_sync(tenant: Tenant, gone: Sequence[str] = ()) -> None:
    """Queue the tenant's filter sync once the transaction commits (at once outside one). With the broker away
    the change stands and the hosts follow at the tenant's next change or launch (the log says so)."""
    tenant_id, gone = tenant.pk, list(gone)

    def send() -> None:
        try:
            sync_firewall_task.delay(tenant_id, gone)
        except BROKER_ERRORS as exc:
            log.error("firewall sync of tenant %s not queued: the broker did not take it (%s)", tenant_id, exc)

    transaction.on_commit(send)


# ---------------------------------------------------------------- writes


def _clean_group_name(name: str) -> str:
    try:
        return clean_name(name)
    except ServiceError as exc:
        raise ServiceError(
            _("A security group needs a name of at most %(max)d characters on one line.") % {"max": NAME_MAX},
            field="name",
        ) from exc


def _clean_description(description: str) -> str:
    description = (description or "").strip()
    if len(description) > DESCRIPTION_MAX:
        raise ServiceError(
            _("Keep the description to %(max)d characters.") % {"max": DESCRIPTION_MAX}, field="description"
        )
    return description


def _add_default_rules(group: SecurityGroup) -> None:
    SecurityGroupRule.objects.bulk_create(
        [
            SecurityGroupRule(group=group, direction=Rule.Direction.EGRESS, protocol=Rule.Protocol.ANY),
            SecurityGroupRule(
                group=group, direction=Rule.Direction.INGRESS, protocol=Rule.Protocol.ANY, remote_group=group
            ),
        ]
    )


def ensure_default_group(*, tenant: Tenant) -> SecurityGroup:
    """The tenant's ``default`` group, made with its two rules if missing (quota is not asked: every tenant has one)."""
    group = SecurityGroup.objects.filter(tenant=tenant, name=DEFAULT_GROUP).first()
    if group is not None:
        return group
    try:
        with transaction.atomic():
            group = SecurityGroup.objects.create(tenant=tenant, name=DEFAULT_GROUP)  # described when shown
            _add_default_rules(group)
    except IntegrityError:
        group = SecurityGroup.objects.get(tenant=tenant, name=DEFAULT_GROUP)
    return group


def check_new_group(*, tenant: Tenant, name: str) -> str:
    """The cleaned name of a new group of ``tenant``; ServiceError if it is taken or the quota is full (a check
    for forms: ``create_security_group`` checks again under the quota lock)."""
    name = _clean_group_name(name)
    if SecurityGroup.objects.filter(tenant=tenant, name=name).exists():
        raise ConflictError(
            _("This tenant already has a security group named “%(name)s”.") % {"name": name}, field="name"
        )
    limit = Quota.objects.filter(tenant=tenant).values_list("security_groups", flat=True).first()
    used = SecurityGroup.objects.filter(tenant=tenant).count()
    if limit is not None and limit >= 0 and used + 1 > limit:
        raise QuotaExceeded(resource="security_groups", requested=1, limit=limit, in_use=used)
    return name


def create_security_group(
    *, actor, tenant: Tenant, name: str, description: str = "", ip: str | None = None
) -> SecurityGroup:
    """A new group of ``tenant`` with one rule, all egress (as Neutron makes them); no ingress until rules say so."""
    name = _clean_group_name(name)
    description = _clean_description(description)
    require_member(actor=actor, tenant=tenant)
    try:
        with transaction.atomic():
            ensure_default_group(tenant=tenant)
            reserve_quota(tenant=tenant, request={"security_groups": 1, "security_group_rules": 1})
            if SecurityGroup.objects.filter(tenant=tenant, name=name).exists():
                raise ConflictError(
                    _("This tenant already has a security group named “%(name)s”.") % {"name": name}, field="name"
                )
            group = SecurityGroup.objects.create(tenant=tenant, name=name, description=description)
            SecurityGroupRule.objects.create(group=group, direction=Rule.Direction.EGRESS, protocol=Rule.Protocol.ANY)
            record_audit(user=actor, action="security_group.create", target=group, tenant=tenant, ip=ip)
    except IntegrityError as exc:
        raise ConflictError(
            _("A security group named “%(name)s” was created at the same time; pick another name.") % {"name": name},
            field="name",
        ) from exc
    return group


def update_security_group(
    *, actor, group: SecurityGroup, name: str | None = None, description: str | None = None, ip: str | None = None
) -> SecurityGroup:
    """Rename or describe a group (``default`` keeps its name)."""
    changes = {}
    if name is not None:
        name = _clean_group_name(name)
        if name != group.name:
            if group.is_default or name == DEFAULT_GROUP:
                raise ConflictError(_("The default group keeps its name."), field="name")
            if SecurityGroup.objects.filter(tenant_id=group.tenant_id, name=name).exclude(pk=group.pk).exists():
                raise ConflictError(
                    _("This tenant already has a security group named “%(name)s”.") % {"name": name}, field="name"
                )
            changes["name"] = name
    if description is not None:
        changes["description"] = _clean_description(description)
    if changes:
        try:
            with transaction.atomic():
                SecurityGroup.objects.filter(pk=group.pk).update(**changes)
                record_audit(
                    user=actor,
                    action="security_group.update",
                    target=group,
                    tenant=group.tenant,
                    ip=ip,
                    detail=changes,
                )
        except IntegrityError as exc:
            raise ConflictError(
                _("A security group named “%(name)s” was created at the same time; pick another name.")
                % {"name": changes.get("name", group.name)},
                field="name",
            ) from exc
        for field, value in changes.items():
            setattr(group, field, value)
    return group


def delete_security_group(*, actor, group: SecurityGroup, ip: str | None = None) -> None:
    """Delete a group no instance uses; rules of other groups that name it as their remote go with it."""
    if group.is_default:
        raise ConflictError(_("The default security group cannot be deleted."))
    with transaction.atomic():
        reserve_quota(tenant=group.tenant, request={})  # the quota lock: no launch takes the group meanwhile
        in_use = group.instances.count()
        if in_use:
            raise ConflictError(
                _("Security group “%(name)s” is used by %(count)d instance(s); take it off them first.")
                % {"name": group.name, "count": in_use}
            )
        gone = str(group.uuid)
        record_audit(user=actor, action="security_group.delete", target=group, tenant=group.tenant, ip=ip)
        group.delete()
        queue_sync(group.tenant, gone=[gone])


def _clean_rule(
    *,
    group: SecurityGroup,
    direction: str,
    protocol: str,
    port_min: int | None,
    port_max: int | None,
    remote_cidr: str,
    remote_group: SecurityGroup | None,
) -> dict:
    if direction not in Rule.Direction.values:
        raise ServiceError(_("The direction is “ingress” or “egress”."), field="direction")
    if protocol not in Rule.Protocol.values:
        raise ServiceError(_("The protocol is one of any, tcp, udp and icmp."), field="protocol")
    remote_cidr = (remote_cidr or "").strip()
    if remote_cidr and remote_group is not None:
        raise ServiceError(_("Give a remote CIDR or a remote group, not both."), field="remote_cidr")
    if remote_cidr:
        try:
            remote_cidr = str(ipaddress.IPv4Network(remote_cidr, strict=False))
        except ValueError as exc:
            raise ServiceError(
                _("“%(cidr)s” is not an IPv4 network such as 10.0.0.0/24.") % {"cidr": remote_cidr[:50]},
                field="remote_cidr",
            ) from exc
    if remote_group is not None:
        if remote_group.tenant_id != group.tenant_id:
            raise ServiceError(_("The remote group must belong to the same tenant."), field="remote_group")
        if direction == Rule.Direction.EGRESS:
            raise ServiceError(
                _("A remote group applies to ingress rules; for egress, give a remote CIDR."), field="remote_group"
            )
    for field, value in (("port_min", port_min), ("port_max", port_max)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ServiceError(_("Ports are whole numbers."), field=field)
    if protocol == Rule.Protocol.ANY and (port_min is not None or port_max is not None):
        raise ServiceError(_("Ports need a protocol: tcp, udp or icmp."), field="port_min")
    if protocol in (Rule.Protocol.TCP, Rule.Protocol.UDP):
        if port_min is None and port_max is not None:
            raise ServiceError(_("Give the first port of the range."), field="port_min")
        if port_min is not None:
            port_max = port_min if port_max is None else port_max
            if not 1 <= port_min <= 65535 or not 1 <= port_max <= 65535:
                raise ServiceError(_("Ports are between 1 and 65535."), field="port_min")
            if port_max < port_min:
                raise ServiceError(_("The last port comes before the first."), field="port_max")
    if protocol == Rule.Protocol.ICMP:
        if port_min is None and port_max is not None:
            raise ServiceError(_("An ICMP code needs a type."), field="port_min")
        if port_min is not None and not 0 <= port_min <= 255:
            raise ServiceError(_("An ICMP type is between 0 and 255."), field="port_min")
        if port_max is not None and not 0 <= port_max <= 255:
            raise ServiceError(_("An ICMP code is between 0 and 255."), field="port_max")
    return {
        "direction": direction,
        "protocol": protocol,
        "port_min": port_min,
        "port_max": port_max,
        "remote_cidr": remote_cidr,
        "remote_group": remote_group,
    }


def add_rule(
    *,
    actor,
    group: SecurityGroup,
    direction: str,
    protocol: str = Rule.Protocol.ANY,
    port_min: int | None = None,
    port_max: int | None = None,
    remote_cidr: str = "",
    remote_group: SecurityGroup | None = None,
    description: str = "",
    ip: str | None = None,
) -> SecurityGroupRule:
    """Add a rule to a group; every NIC using the group lets the new traffic through within a moment."""
    values = _clean_rule(
        group=group,
        direction=direction,
        protocol=protocol,
        port_min=port_min,
        port_max=port_max,
        remote_cidr=remote_cidr,
        remote_group=remote_group,
    )
    description = _clean_description(description)
    with transaction.atomic():
        reserve_quota(tenant=group.tenant, request={"security_group_rules": 1})
        if SecurityGroupRule.objects.filter(group=group, **values).exists():
            raise ConflictError(_("This group already has that rule."))
        rule = SecurityGroupRule.objects.create(group=group, description=description, **values)
        record_audit(
            user=actor,
            action="security_group_rule.create",
            target=group,
            tenant=group.tenant,
            ip=ip,
            detail={"rule": str(rule)},
        )
        queue_sync(group.tenant)
    return rule


def delete_rule(*, actor, rule: SecurityGroupRule, ip: str | None = None) -> None:
    """Remove a rule; the traffic it let through is cut on every NIC of the group within a moment."""
    group = rule.group
    with transaction.atomic():
        record_audit(
            user=actor,
            action="security_group_rule.delete",
            target=group,
            tenant=group.tenant,
            ip=ip,
            detail={"rule": str(rule)},
        )
        rule.delete()
        queue_sync(group.tenant)


def clean_instance_groups(*, tenant: Tenant, groups: Sequence[SecurityGroup] | None) -> list[SecurityGroup]:
    """The groups a launch asked for (all of ``tenant``), or the default group when it named none."""
    if groups is None:
        return [ensure_default_group(tenant=tenant)]
    chosen = list({g.pk: g for g in groups}.values())
    if any(g.tenant_id != tenant.pk for g in chosen):
        raise ServiceError(_("A security group belongs to another tenant."), field="security_groups")
    return chosen


def check_can_filter(*, host: Host | None, groups: Sequence[SecurityGroup]) -> None:
    """Refuse groups a host cannot apply; the default group alone on such a host is simply not applied there."""
    if host is None or host_can(host, Capability.SECURITY_GROUPS) or all(g.is_default for g in groups):
        return
    raise MissingCapability(
        _("Security groups other than “default” cannot be applied on %(host)s.")
        % {"host": compute_for(host).describe(host)},
        field="security_groups",
    )


def check_groups_exist(groups: Sequence[SecurityGroup]) -> None:
    """Under the tenant's quota lock (which a group's deletion takes too): ConflictError if one is gone."""
    if SecurityGroup.objects.filter(pk__in=[g.pk for g in groups]).count() != len(groups):
        raise ConflictError(_("A security group was deleted meanwhile."), field="security_groups")


def set_instance_security_groups(
    *, actor, instance: Instance, groups: Sequence[SecurityGroup], ip: str | None = None
) -> Instance:
    """Change the groups of an instance; its NICs follow live (running or not)."""
    chosen = clean_instance_groups(tenant=instance.tenant, groups=groups)
    if instance.host is None or Capability.SECURITY_GROUPS not in instance_capabilities(instance):
        raise MissingCapability(_("This instance's host does not apply the portal's security groups."))
    with transaction.atomic():
        reserve_quota(tenant=instance.tenant, request={})  # against a group deleted at the same moment
        check_groups_exist(chosen)
        instance.security_groups.set(chosen)
        record_audit(
            user=actor,
            action="instance.security_groups",
            target=instance,
            tenant=instance.tenant,
            ip=ip,
            detail={"groups": sorted(g.name for g in chosen)},
        )
        queue_sync(instance.tenant)
    return instance


def security_group_usage(tenant_ids: list[int]) -> dict[int, dict[str, int]]:
    """Quota usage: groups and rules per tenant (one query)."""
    usage: dict[int, dict[str, int]] = {tid: {"security_groups": 0, "security_group_rules": 0} for tid in tenant_ids}
    rows = (
        SecurityGroup.objects.filter(tenant_id__in=tenant_ids)
        .values("tenant_id")
        .annotate(groups=Count("id", distinct=True), rules=Count("rules"))
        .order_by()
    )
    for row in rows:
        usage[row["tenant_id"]] = {"security_groups": row["groups"], "security_group_rules": row["rules"]}
    return usage


def random_mac() -> str:
    """A locally administered MAC in QEMU's range (52:54:00), as libvirt picks them."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
