"""Tenancy core: tenants, memberships, quotas, API tokens and audit events."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from portal.access import (
    ADMIN_ROLES,
    CHANGE,
    DELETE,
    MEMBER_ROLES,
    ROLE_ADMIN,
    ROLE_MEMBER,
    VIEW,
    RestrictedQuerySet,
    is_cloud_admin,
)


class Tenant(models.Model):
    name = models.CharField(_("name"), max_length=100, unique=True)
    slug = models.SlugField(_("slug"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    access_tenant_field = "pk"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: ADMIN_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = _("tenant")
        verbose_name_plural = _("tenants")

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        MEMBER = ROLE_MEMBER, _("Member")
        ADMIN = ROLE_ADMIN, _("Tenant admin")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("user")
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("tenant"))
    role = models.CharField(_("role"), max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: ADMIN_ROLES, DELETE: ADMIN_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "user__username"]
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="membership_unique_user_tenant")]
        verbose_name = _("membership")
        verbose_name_plural = _("memberships")

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.get_role_display()})"


QUOTA_RESOURCES: dict[str, str] = {
    "instances": _("instances"),
    "vcpus": _("vCPUs"),
    "ram_mib": _("RAM (MiB)"),
    "disk_gib": _("disk (GiB)"),
    "snapshots": _("snapshots"),
    "snapshot_mib": _("snapshot storage (MiB)"),
    "images": _("images"),
    "image_storage_gib": _("image storage (GiB)"),
    "security_groups": _("security groups"),
    "security_group_rules": _("security group rules"),
}


def _quota_field(verbose: str, **options) -> models.IntegerField:
    return models.IntegerField(
        verbose, validators=[MinValueValidator(-1)], help_text=_("-1 means unlimited."), **options
    )


class Quota(models.Model):
    """Limits of one tenant. Usage is never stored here: it is derived from the owning rows."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="quota", verbose_name=_("tenant"))
    instances = _quota_field(_("instances"))
    vcpus = _quota_field(_("vCPUs"))
    ram_mib = _quota_field(_("RAM (MiB)"))
    disk_gib = _quota_field(_("disk (GiB)"))
    snapshots = _quota_field(_("snapshots"))
    snapshot_mib = _quota_field(_("snapshot storage (MiB)"))
    images = _quota_field(_("images"))
    image_storage_gib = _quota_field(_("image storage (GiB)"))
    security_groups = _quota_field(_("security groups"), default=10)
    security_group_rules = _quota_field(_("security group rules"), default=100)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES}  # changing limits is for cloud admins only
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name"]
        verbose_name = _("quota")
        verbose_name_plural = _("quotas")

    def __str__(self) -> str:
        return str(_("Quota of %(tenant)s") % {"tenant": self.tenant})

    def limits(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in QUOTA_RESOURCES}


class ApiTokenQuerySet(models.QuerySet):
    def restrict(self, user, action: str = VIEW) -> ApiTokenQuerySet:
        """Personal tokens: everyone, cloud admins included, sees only their own through the gate."""
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        return self.filter(user=user)

    def active(self) -> ApiTokenQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiToken(models.Model):
    class Scope(models.TextChoices):
        READ = "read", _("Read only")
        WRITE = "write", _("Read and write")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens", verbose_name=_("user")
    )
    name = models.CharField(_("name"), max_length=100)
    prefix = models.CharField(_("prefix"), max_length=12, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    scope = models.CharField(_("scope"), max_length=8, choices=Scope.choices, default=Scope.READ)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(raw: str) -> str:
        # Tokens are 256-bit random strings, so a fast hash is enough: nothing to brute-force.
        return hashlib.sha256(raw.encode()).hexdigest()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())


class AuditEventQuerySet(RestrictedQuerySet):
    def restrict(self, user, action: str = VIEW) -> AuditEventQuerySet:
        if action != VIEW and not is_cloud_admin(user):
            return self.none()  # the audit trail is append-only for everyone
        return super().restrict(user, action)


class AuditEvent(models.Model):
    class Outcome(models.TextChoices):
        SUCCESS = "success", _("Success")
        FAILURE = "failure", _("Failure")
        DENIED = "denied", _("Denied")

    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("user"),
    )
    username = models.CharField(_("username"), max_length=150, blank=True)
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events", verbose_name=_("tenant")
    )
    action = models.CharField(_("action"), max_length=64, db_index=True)
    target_type = models.CharField(_("target type"), max_length=64, blank=True)
    target_id = models.CharField(_("target id"), max_length=64, blank=True)
    target_repr = models.CharField(_("target"), max_length=200, blank=True)
    outcome = models.CharField(_("outcome"), max_length=8, choices=Outcome.choices, default=Outcome.SUCCESS)
    ip = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    detail = models.JSONField(_("detail"), default=dict, blank=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: ADMIN_ROLES}
    objects = AuditEventQuerySet.as_manager()

    # Keys of ``detail`` that name the infrastructure (hosts, clouds, their projects): kept for cloud
    # admins, left out of what tenant admins read (infrastructure is for cloud admins, docs/security.md).
    INFRASTRUCTURE_DETAIL = frozenset(
        {"host", "cloud", "project_id", "old_project_id", "from_host", "to_host", "to_host_id", "disks_lost"}
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.username} {self.action} {self.target_repr} {self.outcome}"

    def detail_for(self, user) -> dict:
        """``detail`` as ``user`` may read it: whole for cloud admins, without the infrastructure's names else."""
        if is_cloud_admin(user) or not isinstance(self.detail, dict):
            return self.detail
        return {key: value for key, value in self.detail.items() if key not in self.INFRASTRUCTURE_DETAIL}


class LoginFailure(models.Model):
    """One failed sign-in (dashboard or admin site): the counters of the sign-in throttle (docs/access-control.md).

    ``username`` is what was typed, case-folded (it need not exist); ``address`` is the client's
    address, or its /64 network for IPv6. Rows older than LOGIN_FAILURE_WINDOW_MINUTES no longer
    count and are purged; a successful sign-in deletes its account's rows.
    """

    username = models.CharField(_("username"), max_length=150)
    address = models.CharField(_("client address"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["username", "created_at"], name="portal_loginfail_user_idx"),
            models.Index(fields=["address", "created_at"], name="portal_loginfail_addr_idx"),
        ]
        verbose_name = _("failed sign-in")
        verbose_name_plural = _("failed sign-ins")

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.username} {self.address}"
