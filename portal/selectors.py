"""Read-side queries of the tenancy core (selectors: keyword-only, no writes)."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.text import capfirst

from portal.access import VIEW
from portal.models import QUOTA_RESOURCES, LoginFailure, Membership, Quota, Tenant

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


def heading(label: str) -> str:
    """A quota label starting a line: "instances" → "Instances", but an abbreviation stays ("vCPUs", not "VCPUs",
    in Chinese too)."""
    return label if label[1:2].isupper() else capfirst(label)


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


def quota_lines_below_usage(*, quota: Quota) -> list[QuotaLine]:
    """The limits of ``quota`` under what its tenant uses now (allowed, as in Nova: new requests are refused
    until usage drops; said to whoever sets them)."""
    usage = tenant_usage(tenant_ids=[quota.tenant_id])[quota.tenant_id]
    return [line for line in quota_lines(quota=quota, usage=usage) if not line.unlimited and line.used > line.limit]


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


# ---------------------------------------------------------------- sign-in throttling


@dataclass(frozen=True)
class Lockout:
    """A sign-in lock: of an account (every address) or of a client address (every account)."""

    scope: str  # "account" or "address"
    until: datetime
    failures: int  # failed sign-ins within the window (the limit: attempts while locked are not counted)

    def minutes_left(self, *, now: datetime | None = None) -> int:
        seconds = (self.until - (now or timezone.now())).total_seconds()
        return max(1, math.ceil(seconds / 60))


def login_username_key(username: str) -> str:
    """The account a sign-in counts against: the typed name, case-folded (it need not exist)."""
    return username.strip().casefold()[:150]


def login_address_key(ip: str | None) -> str:
    """The client address a sign-in counts against; for IPv6 its /64 network (one client has them all)."""
    if not ip:
        return ""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def login_lockouts(*, username: str, address: str, now: datetime | None = None) -> list[Lockout]:
    """The locks in force for a sign-in as ``username`` from ``address`` (a login_address_key)."""
    now = now or timezone.now()
    window = timedelta(minutes=settings.LOGIN_FAILURE_WINDOW_MINUTES)
    checks = [("account", settings.LOGIN_FAILURES_PER_ACCOUNT, {"username": login_username_key(username)})]
    if address:  # no address (a Unix socket): only the account counts
        checks.append(("address", settings.LOGIN_FAILURES_PER_ADDRESS, {"address": address}))
    locks = []
    for scope, limit, match in checks:
        if limit <= 0:
            continue
        newest = list(
            LoginFailure.objects.filter(**match, created_at__gt=now - window)
            .order_by("-created_at")
            .values_list("created_at", flat=True)[:limit]
        )
        if len(newest) >= limit:
            # Locked until fewer than `limit` failures are left in the window: the limit-th newest leaves it.
            locks.append(Lockout(scope=scope, until=newest[limit - 1] + window, failures=len(newest)))
    return locks


def login_lockout(*, username: str, address: str, now: datetime | None = None) -> Lockout | None:
    """The lock that lasts longest for a sign-in as ``username`` from ``address``, or None."""
    locks = login_lockouts(username=username, address=address, now=now)
    return max(locks, key=lambda lock: lock.until) if locks else None
