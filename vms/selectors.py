"""Read-side queries of the compute app."""

from __future__ import annotations

from django.db.models import Count, QuerySet, Sum

from portal.access import VIEW
from portal.models import Tenant
from vms.models import Flavor, Host, Instance


def instance_usage(tenant_ids: list[int]) -> dict[int, dict[str, int]]:
    """Quota usage derived from instance rows: one query for any number of tenants."""
    rows = (
        Instance.objects.filter(tenant_id__in=tenant_ids)
        .values("tenant_id")
        .annotate(instances=Count("id"), vcpus=Sum("vcpus"), ram_mib=Sum("ram_mib"), disk_gib=Sum("disk_gib"))
        .order_by()
    )
    return {
        row["tenant_id"]: {
            "instances": row["instances"],
            "vcpus": row["vcpus"] or 0,
            "ram_mib": row["ram_mib"] or 0,
            "disk_gib": row["disk_gib"] or 0,
        }
        for row in rows
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
