"""Placement: which host runs a new instance.

Filters (a host must pass all): enabled and up, with known capacity; enough vCPUs within
``cpus × cpu_allocation_ratio``; enough RAM within ``(memory − reserved) × ram_allocation_ratio``;
enough pool space within ``pool capacity × disk_allocation_ratio``; and a pool that is not nearly
full in fact: new disks (and snapshots, ``check_storage``) need at least
``LABCLOUD_POOL_MIN_FREE_PERCENT`` of the pool free, as libvirt last reported it (the capacity
refresh), whatever the nominal sizes say (thin disks fill up, snapshots keep old blocks, other
files share the pool's file system).
Weigher: the most RAM left unallocated wins; ties go to the host with the lower name, so
placement is deterministic. A batch is placed one instance at a time, each taking its share
from the host it lands on.

Allocation is derived from the instance rows on each host, like quota usage, and the hosts'
rows are locked (``select_for_update``) by the launch transaction, so two concurrent launches
never overfill a host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.db.models import Count, Q, Sum
from django.utils.translation import gettext as _

from portal.models import Tenant
from portal.services import ConflictError
from vms.compute import Capability, compute_for, host_can, kinds_with
from vms.models import Flavor, Host, Instance, InstanceDisk, PlacementRule

GIB = 1024**3


class NoValidHost(ConflictError):
    """No host can take the instance(s) now (409): the request is fine, the cloud is full."""


def pool_nearly_full(host: Host) -> bool:
    """Less than ``LABCLOUD_POOL_MIN_FREE_PERCENT`` of the host's storage pool is free (libvirt's last report)."""
    if not host.pool_capacity or host.pool_available is None:
        return False
    return host.pool_available < host.pool_capacity * settings.LABCLOUD_POOL_MIN_FREE_PERCENT / 100


@dataclass
class HostLoad:
    host: Host
    vcpus: int = 0
    ram_mib: int = 0
    disk_gib: int = 0
    instances: int = 0

    @property
    def vcpu_limit(self) -> float:
        return (self.host.cpus or 0) * self.host.cpu_allocation_ratio

    @property
    def ram_limit(self) -> float:
        return max(0, (self.host.memory_mib or 0) - self.host.reserved_ram_mib) * self.host.ram_allocation_ratio

    @property
    def disk_limit(self) -> float:
        return (self.host.pool_capacity or 0) * self.host.disk_allocation_ratio / GIB

    @property
    def free_ram(self) -> float:
        return self.ram_limit - self.ram_mib

    def refusal(self, *, vcpus: int, ram_mib: int, disk_gib: int, new_disk: bool | None = None) -> str | None:
        """Why this host cannot take the instance, or None when it can.

        ``new_disk`` (a new instance, more disk): the pool must not be nearly full; by default
        when ``disk_gib`` is more than 0.
        """
        host = self.host
        if not host.enabled:
            return _("disabled")
        if not host_can(host, Capability.CAPACITY):
            # The backend places and counts (a cloud's Nova); the portal only knows whether it answers.
            return _("cloud down") if host.state == Host.State.DOWN else None  # the reason is for admins
        if host.state != Host.State.UP:
            return _("not up")
        if not host.cpus or not host.memory_mib or host.pool_capacity is None:
            return _("capacity unknown")
        if self.vcpus + vcpus > self.vcpu_limit:
            return _("not enough vCPUs")
        if self.ram_mib + ram_mib > self.ram_limit:
            return _("not enough RAM")
        if self.disk_gib + disk_gib > self.disk_limit or not host.pool_available:
            return _("not enough disk space")
        if (disk_gib > 0 if new_disk is None else new_disk) and pool_nearly_full(host):
            return _("storage pool nearly full")
        return None

    def take(self, *, vcpus: int, ram_mib: int, disk_gib: int) -> None:
        self.vcpus += vcpus
        self.ram_mib += ram_mib
        self.disk_gib += disk_gib
        self.instances += 1


def host_loads(hosts: list[Host]) -> dict[int, HostLoad]:
    """Resources allocated on each host, from the instance rows placed there (two queries).

    Disk: the disks' sizes, plus what the instances' snapshots hold there as last measured (whole GiB,
    rounded up): a disk can fill up to its size while its snapshots keep the old blocks. An instance
    migrating to a host counts there too until it has arrived or given up (``migration_target``).
    """
    loads = {host.pk: HostLoad(host=host) for host in hosts}
    ids = list(loads)
    rows = (
        Instance.objects.filter(Q(host_id__in=ids) | Q(migration_target_id__in=ids))
        .values("host_id", "migration_target_id")
        .annotate(
            n=Count("id"),
            vcpus=Sum("vcpus"),
            ram=Sum("ram_mib"),
            disk=Sum("disk_gib"),
            snapshots=Sum("snapshot_bytes"),
        )
        .order_by()
    )
    for row in rows:
        for host_id in {row["host_id"], row["migration_target_id"]} & set(ids):
            load = loads[host_id]
            load.instances += row["n"]
            load.vcpus += row["vcpus"] or 0
            load.ram_mib += row["ram"] or 0
            load.disk_gib += (row["disk"] or 0) + math.ceil((row["snapshots"] or 0) / GIB)
    extra = (
        InstanceDisk.objects.filter(Q(instance__host_id__in=ids) | Q(instance__migration_target_id__in=ids))
        .values("instance__host_id", "instance__migration_target_id")
        .annotate(gib=Sum("size_gib"))
        .order_by()
    )
    for row in extra:
        for host_id in {row["instance__host_id"], row["instance__migration_target_id"]} & set(ids):
            loads[host_id].disk_gib += row["gib"] or 0
    return loads


def check_growth(*, host: Host, vcpus: int = 0, ram_mib: int = 0, disk_gib: int = 0) -> None:
    """Refuse (NoValidHost) when an instance on ``host`` cannot grow by this much; locks the host row.

    Call inside the transaction that records the growth (resize, vCPU/RAM change, extra disk).
    """
    locked = Host.objects.select_for_update().get(pk=host.pk)
    if not (vcpus > 0 or ram_mib > 0 or disk_gib > 0):
        return
    load = host_loads([locked])[locked.pk]
    reason = load.refusal(vcpus=max(0, vcpus), ram_mib=max(0, ram_mib), disk_gib=max(0, disk_gib))
    if reason is not None:
        raise NoValidHost(_("The instance's host cannot take that much more (%(reason)s).") % {"reason": reason})


def check_storage(*, host: Host) -> None:
    """Refuse (NoValidHost) what adds to the pool of a host that is nearly full (a snapshot).

    Snapshots keep old blocks in the pool (and a running instance's memory): on a nearly full pool
    they would fill it, and QEMU pauses every guest whose disk cannot grow.
    """
    if host_can(host, Capability.CAPACITY) and pool_nearly_full(host):
        reason = _("storage pool nearly full")
        raise NoValidHost(_("The instance's host cannot take that much more (%(reason)s).") % {"reason": reason})


def placement_target(*, tenant: Tenant, flavor: Flavor) -> Host | None:
    """The host or cloud an admin placement rule sends this tenant's instances of this flavor to, if any.

    The most specific rule wins: tenant and flavor, then flavor alone, then tenant alone.
    """
    rules = {
        (rule.tenant_id, rule.flavor_id): rule
        for rule in PlacementRule.objects.filter(
            models.Q(tenant=tenant, flavor=flavor)
            | models.Q(tenant__isnull=True, flavor=flavor)
            | models.Q(tenant=tenant, flavor__isnull=True)
        ).select_related("host")
    }
    for key in ((tenant.pk, flavor.pk), (None, flavor.pk), (tenant.pk, None)):
        if key in rules:
            return rules[key].host
    return None


def place(*, count: int, vcpus: int, ram_mib: int, disk_gib: int, hosts: list[Host] | None = None) -> list[Host]:
    """A host for each of ``count`` instances, or NoValidHost naming why each host was refused.

    Call inside the launch transaction: the candidate hosts are locked until it ends.
    """
    if hosts is None:
        # Without a placement rule: the hosts where the portal places (and counts) itself.
        hosts = list(Host.objects.select_for_update().filter(kind__in=kinds_with(Capability.CAPACITY)).order_by("name"))
    else:
        hosts = list(Host.objects.select_for_update().filter(pk__in=[h.pk for h in hosts]).order_by("name"))
    loads = host_loads(hosts)
    chosen: list[Host] = []
    for _i in range(count):
        refusals: dict[str, str] = {}
        candidates = []
        for load in loads.values():
            reason = load.refusal(vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib, new_disk=True)
            if reason is None:
                candidates.append(load)
            else:
                refusals[load.host.name] = reason
        if not candidates:
            if not loads:
                raise NoValidHost(_("No host is configured to run instances."))
            # The reasons, not the hosts' names: members are told why, cloud admins see the hosts' pages.
            detail = "; ".join(sorted(set(refusals.values())))
            raise NoValidHost(
                _("No host can run %(count)d more instance(s) of this size (%(detail)s).")
                % {"count": count - len(chosen), "detail": detail}
            )
        best = min(candidates, key=lambda load: (-load.free_ram, load.host.name))
        best.take(vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib)
        chosen.append(best.host)
    return chosen


def place_migration(*, instance: Instance, host: Host | None = None, keep_storage: bool = False) -> Host:
    """The host an instance moves to: ``host`` if it can take it, else the best of the other hosts of its kind
    (a launch's filters and weigher; placement rules are not applied: moving off a host is the admins' decision).

    ``keep_storage`` (an evacuation): when some of them see the same disk files as its host, only those.
    Call inside the move's transaction: the candidate hosts are locked until it ends.
    """
    source = instance.host
    others = Host.objects.filter(kind=source.kind).exclude(pk=source.pk).order_by("name")
    if host is not None:
        if host.pk == source.pk:
            raise ConflictError(_("Instance “%(name)s” is on that host already.") % {"name": instance.name})
        others = others.filter(pk=host.pk)
        if not others.exists() or not host_can(host, Capability.MIGRATE):
            raise ConflictError(_("Instances cannot migrate from their host to that one."))
    candidates = list(others)
    if keep_storage:
        adapter = compute_for(source)
        sharing = [other for other in candidates if adapter.shares_storage(source, other)]
        candidates = sharing or candidates
    if not candidates:
        raise NoValidHost(_("No other host can take instance “%(name)s”.") % {"name": instance.name})
    extra_gib = sum(instance.disks.values_list("size_gib", flat=True))
    return place(
        count=1,
        vcpus=instance.vcpus,
        ram_mib=instance.ram_mib,
        disk_gib=instance.disk_gib + extra_gib,
        hosts=candidates,
    )[0]
