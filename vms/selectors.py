"""Read-side queries of the compute app."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet, Sum

from portal.access import VIEW
from portal.models import Tenant
from vms.models import Flavor, Host, Instance, InstanceDisk, Snapshot


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


def instance_payload(instance: Instance) -> dict[str, Any]:
    """What live updates carry about an instance (no secrets: no user-data)."""
    return {
        "id": instance.pk,
        "uuid": str(instance.uuid),
        "name": instance.name,
        "tenant_id": instance.tenant_id,
        "state": instance.state,
        "state_display": str(instance.get_state_display()),
        "state_reason": instance.state_reason,
        "task": instance.task,
        "desired_power_state": instance.desired_power_state,
        "installing": instance.installing,
        "vcpus": instance.vcpus,
        "ram_mib": instance.ram_mib,
        "disk_gib": instance.disk_gib,
        "host_id": instance.host_id,
        "addresses": instance.addresses,
        "updated_at": instance.updated_at.isoformat() if instance.updated_at else None,
    }


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
    from vms.models import Operation

    return Operation.objects.restrict(user, VIEW).filter(target_type=target._meta.label_lower, target_id=str(target.pk))
