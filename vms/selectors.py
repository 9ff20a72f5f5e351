"""Read-side queries of the compute app."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet, Sum

from portal.access import VIEW
from portal.models import Tenant
from vms.models import (
    Flavor,
    Host,
    Instance,
    InstanceDisk,
    InstanceMetricSample,
    Operation,
    PlacementRule,
    Snapshot,
)
from vms.scheduler import host_loads


def instance_usage(tenant_ids: list[int]) -> dict[int, dict[str, int]]:
    """Quota usage derived from instance, extra-disk and snapshot rows: three queries for any number of tenants."""
    rows = (
        Instance.objects.filter(tenant_id__in=tenant_ids)
        .values("tenant_id")
        .annotate(instances=Count("id"), vcpus=Sum("vcpus"), ram_mib=Sum("ram_mib"), disk_gib=Sum("disk_gib"))
        .order_by()
    )
    usage = {
        row["tenant_id"]: {
            "instances": row["instances"],
            "vcpus": row["vcpus"] or 0,
            "ram_mib": row["ram_mib"] or 0,
            "disk_gib": row["disk_gib"] or 0,
        }
        for row in rows
    }
    disks = InstanceDisk.objects.filter(tenant_id__in=tenant_ids).values("tenant_id").annotate(gib=Sum("size_gib"))
    for row in disks.order_by():
        entry = usage.setdefault(row["tenant_id"], {})
        entry["disk_gib"] = entry.get("disk_gib", 0) + (row["gib"] or 0)
    snapshots = Snapshot.objects.filter(tenant_id__in=tenant_ids).values("tenant_id").annotate(n=Count("id"))
    for row in snapshots.order_by():
        usage.setdefault(row["tenant_id"], {})["snapshots"] = row["n"]
    return usage


def instances_for(*, user, tenant: Tenant | None = None) -> QuerySet[Instance]:
    """Instances the user may see (optionally of one tenant), with what lists and pages show joined in."""
    instances = Instance.objects.restrict(user, VIEW)
    if tenant is not None:
        instances = instances.filter(tenant=tenant)
    return instances.select_related("tenant", "flavor", "image", "host", "owner", "network", "keypair")


def flavors_for(*, user, tenant: Tenant | None = None) -> QuerySet[Flavor]:
    """Flavors the user may see; with ``tenant``, only those that tenant may launch."""
    flavors = Flavor.objects.restrict(user, VIEW)
    if tenant is not None:
        flavors = flavors.filter(pk__in=Flavor.objects.usable_by(tenant).values("pk"))
    return flavors.prefetch_related("tenants")


def hosts_for(*, user) -> QuerySet[Host]:
    return Host.objects.restrict(user, VIEW)


def operations_for_target(*, user, target) -> QuerySet:
    """Operations on one object, newest first, through the access gate."""
    return Operation.objects.restrict(user, VIEW).filter(target_type=target._meta.label_lower, target_id=str(target.pk))


# ---------------------------------------------------------------- metrics


def metric_point(sample) -> dict[str, Any]:
    """One metrics point as the API, the instance page and live updates carry it."""
    return {
        "at": sample.at.isoformat(),
        "interval": sample.interval,
        "cpu_percent": sample.cpu_percent,
        "vcpus": sample.vcpus,
        "memory_used_mib": sample.memory_used_mib,
        "memory_available_mib": sample.memory_available_mib,
        "disk_read_bps": sample.disk_read_bps,
        "disk_write_bps": sample.disk_write_bps,
        "net_rx_bps": sample.net_rx_bps,
        "net_tx_bps": sample.net_tx_bps,
    }


def metric_samples_for(*, user, instance: Instance) -> QuerySet:
    """The instance's metrics history, oldest first, through the access gate (one query)."""
    return InstanceMetricSample.objects.restrict(user, VIEW).filter(instance=instance).order_by("at", "id")


def metric_points_for(*, user, instance: Instance) -> list[dict[str, Any]]:
    return [metric_point(sample) for sample in metric_samples_for(user=user, instance=instance)]


def host_figures() -> list[tuple[Host, Any]]:
    """Every host with its allocated load (``vms.scheduler.HostLoad``): three queries for any number of hosts."""
    hosts = list(Host.objects.order_by("name"))
    loads = host_loads(hosts)
    return [(host, loads[host.pk]) for host in hosts]


def instance_state_counts() -> list[dict[str, Any]]:
    """Instances per tenant (slug) and state: one query."""
    return list(
        Instance.objects.values("tenant__slug", "state").annotate(n=Count("id")).order_by("tenant__slug", "state")
    )


def operation_state_counts() -> list[dict[str, Any]]:
    """Operations per kind and state: one query."""
    return list(Operation.objects.values("kind", "state").annotate(n=Count("id")).order_by("kind", "state"))


def tenant_placement(*, tenant) -> Host | None:
    """The host or cloud a tenant-wide placement rule sends the tenant's new instances to, if any."""
    rule = PlacementRule.objects.filter(tenant=tenant, flavor__isnull=True).select_related("host").first()
    return rule.host if rule is not None else None
