"""Read-side queries of the compute app."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Case, Count, F, Q, QuerySet, Sum, Value, When
from django.utils import timezone
from django.utils.translation import gettext as _

from portal.access import VIEW
from portal.models import Tenant
from portal.services import ServiceError
from vms.compute import compute_for
from vms.metric_ranges import DEFAULT_RANGE, HOST_AVERAGES, INSTANCE_AVERAGES, RANGES, MetricRange
from vms.models import (
    Flavor,
    Host,
    HostMetricRollup,
    HostMetricSample,
    Instance,
    InstanceDisk,
    InstanceMetricRollup,
    InstanceMetricSample,
    Operation,
    PlacementRule,
    Snapshot,
)
from vms.scheduler import host_loads

MIB = 1024**2
# A snapshot of a running (or paused) instance saves its memory: up to its RAM.
MEMORY_STATES = (Instance.State.RUNNING, Instance.State.PAUSED)
SNAPSHOT_RESERVE_MIB = 1  # a snapshot of a shut-off instance: its tables (measured: well under 1 MiB)


def snapshot_reservation_mib(*, state: str, ram_mib: int) -> int:
    """Snapshot storage a new snapshot holds until the host has measured it: the instance's RAM when it runs
    (its memory is saved), else 1 MiB. Its disk blocks cost nothing at first; they are measured later."""
    return ram_mib if state in MEMORY_STATES else SNAPSHOT_RESERVE_MIB


def _reserved_by_snapshots_being_taken() -> Sum:
    """``snapshot_reservation_mib`` in SQL, summed over the snapshots still being taken."""
    mib = Case(When(vm_state__in=MEMORY_STATES, then=F("ram_mib")), default=Value(SNAPSHOT_RESERVE_MIB))
    return Sum(mib, filter=Q(state=Snapshot.State.CREATING))


def instance_usage(tenant_ids: list[int]) -> dict[int, dict[str, int]]:
    """Quota usage derived from instance, extra-disk and snapshot rows: three queries for any number of tenants.

    Snapshot storage: what the host measured (``Instance.snapshot_bytes``, rounded up to MiB per
    tenant) plus the reservation of each snapshot still being taken.
    """
    rows = (
        Instance.objects.filter(tenant_id__in=tenant_ids)
        .values("tenant_id")
        .annotate(
            instances=Count("id"),
            vcpus=Sum("vcpus"),
            ram_mib=Sum("ram_mib"),
            disk_gib=Sum("disk_gib"),
            snapshot_bytes=Sum("snapshot_bytes"),
        )
        .order_by()
    )
    usage = {
        row["tenant_id"]: {
            "instances": row["instances"],
            "vcpus": row["vcpus"] or 0,
            "ram_mib": row["ram_mib"] or 0,
            "disk_gib": row["disk_gib"] or 0,
            "snapshot_mib": math.ceil((row["snapshot_bytes"] or 0) / MIB),
        }
        for row in rows
    }
    disks = InstanceDisk.objects.filter(tenant_id__in=tenant_ids).values("tenant_id").annotate(gib=Sum("size_gib"))
    for row in disks.order_by():
        entry = usage.setdefault(row["tenant_id"], {})
        entry["disk_gib"] = entry.get("disk_gib", 0) + (row["gib"] or 0)
    snapshots = (
        Snapshot.objects.filter(tenant_id__in=tenant_ids)
        .values("tenant_id")
        .annotate(n=Count("id"), reserved=_reserved_by_snapshots_being_taken())
    )
    for row in snapshots.order_by():
        entry = usage.setdefault(row["tenant_id"], {})
        entry["snapshots"] = row["n"]
        entry["snapshot_mib"] = entry.get("snapshot_mib", 0) + (row["reserved"] or 0)
    return usage


def instances_for(*, user, tenant: Tenant | None = None) -> QuerySet[Instance]:
    """Instances the user may see (optionally of one tenant), with what lists and pages show joined in."""
    instances = Instance.objects.restrict(user, VIEW)
    if tenant is not None:
        instances = instances.filter(tenant=tenant)
    return instances.select_related("tenant", "flavor", "image", "host", "owner", "network", "keypair")


def instance_rows_for(*, user) -> QuerySet[Instance]:
    """Instances the user may see, joined with only what the API's list shows: the owner's, the flavor's and the
    host's names, and the host's kind (what the instance can do). The other relations are shown by id."""
    return (
        Instance.objects.restrict(user, VIEW)
        .select_related("flavor", "host", "owner")
        .defer("user_data")
        .defer(*(f"host__{name}" for name in HOST_FIELDS_NOT_LISTED))
        .defer(
            *(f"owner__{f.name}" for f in get_user_model()._meta.concrete_fields if f.name not in ("id", "username"))
        )
        .defer(*(f"flavor__{f.name}" for f in Flavor._meta.concrete_fields if f.name not in ("id", "name")))
    )


# What an instance row never reads of its host: its connection, placement and capacity settings (a 500-row
# page builds 500 hosts; the adapters decide an instance's actions from the host's kind, state and network).
HOST_FIELDS_NOT_LISTED = tuple(
    f.name for f in Host._meta.concrete_fields if f.name not in ("id", "name", "kind", "state", "enabled", "os_network")
)


def flavors_for(*, user, tenant: Tenant | None = None) -> QuerySet[Flavor]:
    """Flavors the user may see; with ``tenant``, only those that tenant may launch."""
    flavors = Flavor.objects.restrict(user, VIEW)
    if tenant is not None:
        flavors = flavors.filter(pk__in=Flavor.objects.usable_by(tenant).values("pk"))
    return flavors.prefetch_related("tenants")


def resize_flavors_for(*, user, instance: Instance) -> QuerySet[Flavor]:
    """The flavors the instance may be resized to: the tenant's others whose disk is not smaller (disks only grow)."""
    return (
        flavors_for(user=user, tenant=instance.tenant)
        .exclude(pk=instance.flavor_id)
        .filter(disk_gib__gte=instance.disk_gib)
    )


def instance_shape(*, instance: Instance) -> tuple:
    """What a snapshot must have been taken with to be reverted to: the sizes and the attached disks now."""
    return (instance.vcpus, instance.ram_mib, instance.disk_gib, sorted(instance.disks.values_list("pk", flat=True)))


def snapshot_fits(*, snapshot: Snapshot, shape: tuple) -> bool:
    """A revert brings back the domain of that moment: its sizes and disks must be what the quota counts now."""
    return shape == (snapshot.vcpus, snapshot.ram_mib, snapshot.disk_gib, snapshot.disk_ids)


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


def metric_range(key: str | None) -> MetricRange:
    """The graphs' time range named ``key`` (``1h``, ``1d``, ``1w``, ``1mo``; None: 1 hour); ServiceError otherwise."""
    if key is None:
        return RANGES[DEFAULT_RANGE]
    found = RANGES.get(key)
    if found is None:
        raise ServiceError(
            _("Unknown range %(range)s: use one of %(ranges)s.") % {"range": key[:20], "ranges": ", ".join(RANGES)},
            field="range",
        )
    return found


def _rollup_point(row, fields: tuple[str, ...]) -> dict[str, Any]:
    """One roll-up bucket as a point: averages under the raw points' names, plus the CPU peak and the count."""
    point = {"at": row.bucket.isoformat(), "interval": float(row.tier)}
    point.update({field: getattr(row, field) for field in fields})
    point["cpu_max_percent"] = row.cpu_max_percent
    point["samples"] = row.samples
    return point


INSTANCE_ROLLUP_FIELDS = (*INSTANCE_AVERAGES, "vcpus")  # the bucket's highest vCPU count, under its name
HOST_POINT_FIELDS = HOST_AVERAGES


def metric_points_for(
    *, user, instance: Instance, metric_range: MetricRange | None = None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The instance's history over ``metric_range`` (default 1 hour), oldest first: one query.

    One hour: the raw points. Longer: one point per roll-up bucket of the range's tier (averages, with
    ``cpu_max_percent`` and ``samples`` added), from ``now`` minus the range on.
    """
    metric_range = metric_range or RANGES[DEFAULT_RANGE]
    if metric_range.tier is None:
        return [metric_point(sample) for sample in metric_samples_for(user=user, instance=instance)]
    start = (now or timezone.now()) - timedelta(seconds=metric_range.seconds)
    rows = (
        InstanceMetricRollup.objects.restrict(user, VIEW)
        .filter(instance=instance, tier=metric_range.tier, bucket__gte=start)
        .order_by("bucket")
    )
    return [_rollup_point(row, INSTANCE_ROLLUP_FIELDS) for row in rows]


def host_metric_point(sample) -> dict[str, Any]:
    """One point of a host's own history as the API and the host page carry it."""
    point = {"at": sample.at.isoformat(), "interval": sample.interval}
    point.update({field: getattr(sample, field) for field in HOST_POINT_FIELDS})
    return point


def host_metric_points_for(
    *, user, host: Host, metric_range: MetricRange | None = None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The host's own history (CPU, memory, running instances) over ``metric_range``, oldest first: one query."""
    metric_range = metric_range or RANGES[DEFAULT_RANGE]
    if metric_range.tier is None:
        samples = HostMetricSample.objects.restrict(user, VIEW).filter(host=host).order_by("at", "id")
        return [host_metric_point(sample) for sample in samples]
    start = (now or timezone.now()) - timedelta(seconds=metric_range.seconds)
    rows = (
        HostMetricRollup.objects.restrict(user, VIEW)
        .filter(host=host, tier=metric_range.tier, bucket__gte=start)
        .order_by("bucket")
    )
    return [_rollup_point(row, HOST_POINT_FIELDS) for row in rows]


def host_instances_for(*, user, host: Host) -> QuerySet:
    """The instances placed on a host with their tenant, by name (one query), through the access gate."""
    return Instance.objects.restrict(user, VIEW).filter(host=host).select_related("tenant").order_by("name", "pk")


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


def evacuation_loss(*, host: Host) -> tuple[int, int]:
    """(instances on the host, those whose disks an evacuation loses): none when another host of its kind sees
    the same disk files (an evacuation then goes only to such hosts), else all of them."""
    instances = Instance.objects.filter(host=host).exclude(state=Instance.State.DELETING).count()
    adapter = compute_for(host)
    others = Host.objects.filter(kind=host.kind).exclude(pk=host.pk)
    return instances, 0 if any(adapter.shares_storage(host, other) for other in others) else instances
