"""Write-side business logic of the tenancy core (services: keyword-only, typed).

Every state-changing service writes an AuditEvent. Permission checks stay in the
callers' access gate (``restrict``); services enforce invariants (unique names,
quota limits, the last tenant admin) and raise ``ServiceError`` subclasses whose
message is shown to the user as it is.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext as _

from portal.access import ROLE_ADMIN, is_cloud_admin
from portal.models import QUOTA_RESOURCES, ApiToken, AuditEvent, LoginFailure, Membership, Quota, Tenant
from portal.selectors import Lockout, login_address_key, login_lockouts, login_username_key, tenant_usage
from portal.texts import Said, translated

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service refuses; ``message`` is user-facing and translated.

    Made from a ``Said`` (a msgid and its parameters), ``message`` is that text in the active language and
    ``said`` keeps it untranslated: what the worker stores when the refusal ends an operation.
    """

    status = 400
    code = "invalid"

    def __init__(self, message: str | Said, *, field: str | None = None) -> None:
        self.said = message if isinstance(message, Said) else None
        if isinstance(message, Said):
            message = translated(message.text, message.args)
        super().__init__(message)
        self.message = message
        self.field = field


class ConflictError(ServiceError):
    status = 409
    code = "conflict"


class NotAllowed(ServiceError):
    """The actor may not do this at all (403)."""

    status = 403
    code = "permission_denied"


def require_cloud_admin(actor, message: str) -> None:
    """Every admin-only service starts with this: NotAllowed (403, ``message``) unless ``actor`` is a cloud admin."""
    if not is_cloud_admin(actor):
        raise NotAllowed(message)


class QuotaExceeded(ServiceError):
    status = 403
    code = "quota_exceeded"

    def __init__(self, *, resource: str, requested: int, limit: int, in_use: int) -> None:
        label = QUOTA_RESOURCES.get(resource, resource)
        super().__init__(
            _("Quota exceeded for %(resource)s: requested %(requested)d, limit %(limit)d, currently in use %(in_use)d.")
            % {"resource": label, "requested": requested, "limit": limit, "in_use": in_use}
        )
        self.resource = resource
        self.requested = requested
        self.limit = limit
        self.in_use = in_use


# ---------------------------------------------------------------- audit


def record_audit(
    *,
    user=None,
    action: str,
    target: models.Model | None = None,
    tenant: Tenant | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    ip: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEvent:
    authenticated = user is not None and getattr(user, "is_authenticated", False)
    return AuditEvent.objects.create(
        user=user if authenticated else None,
        username=user.get_username() if authenticated else "",
        tenant=tenant,
        action=action,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        outcome=outcome,
        ip=ip or None,
        detail=dict(detail or {}),
    )


# ---------------------------------------------------------------- sign-in throttling


def record_login_failure(*, username: str, ip: str | None, via: str) -> Lockout | None:
    """Count a failed sign-in as ``username`` from ``ip``; the lock it starts, if any (audited as ``auth.lockout``).

    Call it only for a sign-in that was not locked already: attempts while locked are not
    counted, so a lock ends one window after the failures that caused it, however long the
    attacker keeps trying. Failures older than the window are purged here.
    """
    now = timezone.now()
    address = login_address_key(ip)
    LoginFailure.objects.filter(created_at__lte=now - timedelta(minutes=settings.LOGIN_FAILURE_WINDOW_MINUTES)).delete()
    LoginFailure.objects.create(username=login_username_key(username), address=address, created_at=now)
    limits = {"account": settings.LOGIN_FAILURES_PER_ACCOUNT, "address": settings.LOGIN_FAILURES_PER_ADDRESS}
    locks = login_lockouts(username=username, address=address, now=now)
    for lock in locks:
        if lock.failures != limits[lock.scope]:
            continue  # already locked before this failure (concurrent attempts): audited then
        log.warning(
            "sign-in locked: %s %r from %s after %d failures (%s)", lock.scope, username, ip, lock.failures, via
        )
        record_audit(
            action="auth.lockout",
            outcome=AuditEvent.Outcome.DENIED,
            ip=ip,
            detail={
                "username": username,
                "scope": lock.scope,
                "failures": lock.failures,
                "window_minutes": settings.LOGIN_FAILURE_WINDOW_MINUTES,
                "until": lock.until.isoformat(),
                "via": via,
            },
        )
    return max(locks, key=lambda lock: lock.until) if locks else None


def reset_login_failures(*, username: str) -> None:
    """A successful sign-in: the account's failures no longer count (the address's still do)."""
    LoginFailure.objects.filter(username=login_username_key(username)).delete()


def unlock_logins(*, actor, failures: models.QuerySet[LoginFailure], ip: str | None) -> int:
    """A cloud admin forgets failed sign-ins (admin site), which lifts the locks they caused; audited."""
    usernames = sorted(set(failures.values_list("username", flat=True)))
    addresses = sorted(set(failures.values_list("address", flat=True)) - {""})
    deleted, _by_model = failures.delete()
    record_audit(
        user=actor,
        action="auth.unlock",
        ip=ip,
        detail={"usernames": usernames, "addresses": addresses, "failures": deleted, "via": "admin"},
    )
    return deleted


# ---------------------------------------------------------------- tenants


def _unique_slug(name: str) -> str:
    base = slugify(name, allow_unicode=False) or "tenant"
    slug, n = base, 2
    while Tenant.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


@transaction.atomic
def create_tenant(
    *,
    actor,
    name: str,
    slug: str = "",
    description: str = "",
    enabled: bool = True,
    limits: Mapping[str, int] | None = None,
    ip: str | None = None,
) -> Tenant:
    name = name.strip()
    if not name:
        raise ServiceError(_("A tenant needs a name."), field="name")
    if Tenant.objects.filter(name=name).exists():
        raise ConflictError(_("A tenant named “%(name)s” already exists.") % {"name": name}, field="name")
    if slug and Tenant.objects.filter(slug=slug).exists():
        raise ConflictError(_("The slug “%(slug)s” is taken.") % {"slug": slug}, field="slug")
    tenant = Tenant.objects.create(name=name, slug=slug or _unique_slug(name), description=description, enabled=enabled)
    ensure_quota(tenant=tenant, limits=limits)
    record_audit(user=actor, action="tenant.create", target=tenant, tenant=tenant, ip=ip)
    return tenant


def ensure_quota(*, tenant: Tenant, limits: Mapping[str, int] | None = None) -> Quota:
    values = {**settings.LABCLOUD_DEFAULT_QUOTA, **(limits or {})}
    _validate_limits(values)
    quota, _created = Quota.objects.get_or_create(tenant=tenant, defaults=values)
    return quota


def _validate_limits(limits: Mapping[str, int]) -> None:
    for resource, value in limits.items():
        if resource not in QUOTA_RESOURCES:
            raise ServiceError(_("Unknown quota resource “%(resource)s”.") % {"resource": resource}, field=resource)
        if not isinstance(value, int) or value < -1:
            raise ServiceError(
                _("The limit for %(resource)s must be a whole number, -1 for unlimited.")
                % {"resource": QUOTA_RESOURCES[resource]},
                field=resource,
            )


@transaction.atomic
def update_tenant(*, actor, tenant: Tenant, ip: str | None = None, **changes: Any) -> Tenant:
    allowed = {"name", "description", "enabled"}
    unknown = set(changes) - allowed
    if unknown:
        raise ServiceError(_("These fields cannot be changed: %(fields)s.") % {"fields": ", ".join(sorted(unknown))})
    if "enabled" in changes and not is_cloud_admin(actor):
        raise ServiceError(_("Only cloud admins can enable or disable a tenant."), field="enabled")
    if "name" in changes:
        name = str(changes["name"]).strip()
        if not name:
            raise ServiceError(_("A tenant needs a name."), field="name")
        if Tenant.objects.filter(name=name).exclude(pk=tenant.pk).exists():
            raise ConflictError(_("A tenant named “%(name)s” already exists.") % {"name": name}, field="name")
        changes["name"] = name
    for field, value in changes.items():
        setattr(tenant, field, value)
    tenant.save()
    record_audit(user=actor, action="tenant.update", target=tenant, tenant=tenant, ip=ip, detail=_jsonable(changes))
    return tenant


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in values.items()}


# ---------------------------------------------------------------- memberships


def _lock_tenant(tenant: Tenant) -> None:
    """Serialise membership changes of one tenant (the last-admin rule needs it)."""
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()


@transaction.atomic
def add_member(*, actor, tenant: Tenant, user, role: str = Membership.Role.MEMBER, ip: str | None = None) -> Membership:
    if role not in Membership.Role.values:
        raise ServiceError(_("Unknown role “%(role)s”.") % {"role": role}, field="role")
    if not user.is_active:
        raise ServiceError(_("User %(user)s is disabled.") % {"user": user.get_username()}, field="user")
    _lock_tenant(tenant)
    if Membership.objects.filter(tenant=tenant, user=user).exists():
        raise ConflictError(
            _("%(user)s is already a member of %(tenant)s.") % {"user": user.get_username(), "tenant": tenant.name},
            field="user",
        )
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    record_audit(user=actor, action="membership.create", target=membership, tenant=tenant, ip=ip, detail={"role": role})
    return membership


def _would_orphan(membership: Membership, actor) -> bool:
    """True when a non-staff actor would leave the tenant without any tenant admin."""
    if is_cloud_admin(actor) or membership.role != ROLE_ADMIN:
        return False
    admins = Membership.objects.filter(tenant_id=membership.tenant_id, role=ROLE_ADMIN).exclude(pk=membership.pk)
    return not admins.exists()


@transaction.atomic
def change_role(*, actor, membership: Membership, role: str, ip: str | None = None) -> Membership:
    if role not in Membership.Role.values:
        raise ServiceError(_("Unknown role “%(role)s”.") % {"role": role}, field="role")
    _lock_tenant(membership.tenant)
    if role != ROLE_ADMIN and _would_orphan(membership, actor):
        raise ConflictError(_("A tenant must keep at least one tenant admin."), field="role")
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    record_audit(
        user=actor,
        action="membership.update",
        target=membership,
        tenant=membership.tenant,
        ip=ip,
        detail={"from": old, "to": role},
    )
    return membership


@transaction.atomic
def remove_member(*, actor, membership: Membership, ip: str | None = None) -> None:
    _lock_tenant(membership.tenant)
    if _would_orphan(membership, actor):
        raise ConflictError(_("A tenant must keep at least one tenant admin."))
    tenant = membership.tenant
    record_audit(user=actor, action="membership.delete", target=membership, tenant=tenant, ip=ip)
    membership.delete()


def find_user(*, username: str):
    User = get_user_model()
    user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
    if user is None:
        raise ServiceError(_("No user named “%(username)s”.") % {"username": username}, field="user")
    return user


# ---------------------------------------------------------------- quotas


@transaction.atomic
def set_quota(*, actor, tenant: Tenant, limits: Mapping[str, int], ip: str | None = None) -> Quota:
    _validate_limits(limits)
    quota = Quota.objects.select_for_update().get(tenant=tenant)
    before = quota.limits()
    for resource, value in limits.items():
        setattr(quota, resource, value)
    quota.save()
    changed = {k: [before[k], v] for k, v in limits.items() if before[k] != v}
    record_audit(user=actor, action="quota.update", target=quota, tenant=tenant, ip=ip, detail=changed)
    return quota


def reserve_quota(*, tenant: Tenant, request: Mapping[str, int]) -> Quota:
    """Check that ``request`` fits the tenant's quota and hold the quota row locked.

    Call it inside the caller's ``transaction.atomic()`` block, then create the
    owning rows (instances, snapshots, images) in the same transaction: the lock
    on the quota row serialises concurrent reservations of the tenant, and since
    usage is derived from those rows, committing them *is* the reservation.
    Deleting the rows (again under ``lock_quota``) releases it.
    Raises ``QuotaExceeded`` naming the first resource that does not fit.
    """
    quota = lock_quota(tenant=tenant)
    usage = tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]
    for resource, amount in request.items():
        if resource not in QUOTA_RESOURCES:
            raise ServiceError(_("Unknown quota resource “%(resource)s”.") % {"resource": resource})
        limit = getattr(quota, resource)
        if amount > 0 and limit >= 0 and usage[resource] + amount > limit:
            raise QuotaExceeded(resource=resource, requested=amount, limit=limit, in_use=usage[resource])
    return quota


def lock_quota(*, tenant: Tenant) -> Quota:
    """Lock the tenant's quota row until the surrounding transaction ends."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("quota reservations must run inside transaction.atomic()")
    quota = Quota.objects.select_for_update().filter(tenant=tenant).first()
    return quota if quota is not None else ensure_quota(tenant=tenant)


# ---------------------------------------------------------------- API tokens


TOKEN_PREFIX = "lc_"  # noqa: S105 - a public marker, not a secret


@transaction.atomic
def create_api_token(
    *,
    user,
    name: str,
    scope: str = ApiToken.Scope.READ,
    expires_at: datetime | None = None,
    parent: ApiToken | None = None,
    ip: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a personal token; the raw secret is returned once and never stored.

    A token created with another token (``parent``) never outlives it, so a leaked
    short-lived token cannot mint itself a permanent successor.
    """
    if parent is not None and parent.expires_at is not None:
        expires_at = min(expires_at or parent.expires_at, parent.expires_at)
    name = name.strip()
    if not name:
        raise ServiceError(_("A token needs a name."), field="name")
    if scope not in ApiToken.Scope.values:
        raise ServiceError(_("Unknown scope “%(scope)s”.") % {"scope": scope}, field="scope")
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError(_("The expiry date must be in the future."), field="expires_at")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, scope=scope, expires_at=expires_at, prefix=raw[:10], digest=ApiToken.hash(raw)
    )
    record_audit(user=user, action="token.create", target=token, ip=ip, detail={"scope": scope})
    return token, raw


@transaction.atomic
def revoke_api_token(*, actor, token: ApiToken, ip: str | None = None) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        record_audit(user=actor, action="token.revoke", target=token, ip=ip)
    return token


def authenticate_api_token(*, raw: str) -> ApiToken | None:
    """The active token matching ``raw``, with its last-used time refreshed (at most once a minute)."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 100:
        return None
    token = ApiToken.objects.active().select_related("user").filter(digest=ApiToken.hash(raw)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def delete_tenant(*, actor, tenant: Tenant, ip: str | None = None) -> None:
    """Delete a tenant with its memberships and quota; refused while it still owns instances or other rows."""
    try:
        with transaction.atomic():
            record_audit(user=actor, action="tenant.delete", target=tenant, ip=ip, detail={"slug": tenant.slug})
            tenant.delete()
    except (models.ProtectedError, models.RestrictedError) as exc:
        raise ConflictError(
            _("Tenant “%(name)s” still owns instances or other resources; delete them first.") % {"name": tenant.name}
        ) from exc
