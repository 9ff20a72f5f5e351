"""Read-side queries of the tenancy core (selectors: keyword-only, no writes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db.models import QuerySet

from portal.access import VIEW
from portal.models import QUOTA_RESOURCES, Membership, Quota, Tenant

# A usage provider maps tenant ids to {resource: amount in use}. Apps that own
# quota-counted rows (instances, snapshots, images) register one in AppConfig.ready(),
# so usage is always derived from the owning rows with one query per provider.
UsageProvider = Callable[[list[int]], dict[int, dict[str, int]]]
_usage_providers: list[UsageProvider] = []


def register_usage_provider(provider: UsageProvider) -> None:
    if provider not in _usage_providers:
        _usage_providers.append(provider)


def tenant_usage(*, tenant_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    ids = list(tenant_ids)
    usage = {tid: dict.fromkeys(QUOTA_RESOURCES, 0) for tid in ids}
    if not ids:
        return usage
    for provider in _usage_providers:
        for tid, amounts in provider(ids).items():
            for resource, amount in amounts.items():
                usage[tid][resource] += int(amount or 0)
    return usage


@dataclass(frozen=True)
class QuotaLine:
    resource: str
    label: str
    limit: int
    used: int

    @property
    def unlimited(self) -> bool:
        return self.limit < 0

    @property
    def percent(self) -> int:
        if self.unlimited:
            return 0
        if self.limit == 0:
            return 100 if self.used else 0
        return min(100, round(100 * self.used / self.limit))

    @property
    def available(self) -> int | None:
        return None if self.unlimited else max(0, self.limit - self.used)


def quota_lines(*, quota: Quota, usage: dict[str, int]) -> list[QuotaLine]:
    return [
        QuotaLine(resource=name, label=str(label), limit=getattr(quota, name), used=usage.get(name, 0))
        for name, label in QUOTA_RESOURCES.items()
    ]


def quota_overview(*, tenant: Tenant) -> list[QuotaLine]:
    quota = Quota.objects.get(tenant=tenant)
    return quota_lines(quota=quota, usage=tenant_usage(tenant_ids=[tenant.pk])[tenant.pk])


def tenants_for_user(*, user) -> QuerySet[Tenant]:
    return Tenant.objects.restrict(user, VIEW)


def memberships_of(*, user) -> QuerySet[Membership]:
    """The user's own memberships in enabled tenants (for the tenant switcher)."""
    return Membership.objects.filter(user=user, tenant__enabled=True).select_related("tenant").order_by("tenant__name")


def role_in(*, user, tenant: Tenant) -> str | None:
    membership = Membership.objects.filter(user=user, tenant=tenant).only("role").first()
    return membership.role if membership else None


def active_tenant(*, user, tenant_id: int | None) -> Tenant | None:
    """The tenant the user works in: the one chosen in the session if still allowed, else their first."""
    if user is None or not user.is_authenticated:
        return None
    tenants = tenants_for_user(user=user).filter(enabled=True)
    if tenant_id is not None:
        chosen = tenants.filter(pk=tenant_id).first()
        if chosen is not None:
            return chosen
    return tenants.order_by("name").first()


def quota_figures() -> list[tuple[Tenant, list[QuotaLine]]]:
    """Every tenant's quota lines (used and limit per resource): a constant number of queries for any tenants."""
    quotas = list(Quota.objects.select_related("tenant").order_by("tenant__slug"))
    usage = tenant_usage(tenant_ids=[quota.tenant_id for quota in quotas])
    return [(quota.tenant, quota_lines(quota=quota, usage=usage[quota.tenant_id])) for quota in quotas]
