"""Compute models: hosts, flavors and the instance rows that own quota usage."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.access import CHANGE, MEMBER_ROLES, VIEW, RestrictedQuerySet, is_cloud_admin, tenant_ids_for
from portal.models import Tenant

LIBVIRT_SCHEMES = {"qemu", "qemu+ssh", "qemu+tls", "test"}
# URI parameters that make libvirt run a program or talk to an arbitrary local socket.
LIBVIRT_FORBIDDEN_PARAMS = {"command", "socket", "netcat", "proxy", "keyfile", "known_hosts", "sshauth"}


def validate_libvirt_uri(value: str) -> None:
    """Only QEMU over the local socket, SSH or TLS (and libvirt's test driver); no program-running options."""
    parts = urlsplit(value)
    if parts.scheme not in LIBVIRT_SCHEMES:
        raise ValidationError(
            _("Use a qemu:///system, qemu+ssh://… or qemu+tls://… URI (not “%(scheme)s”).") % {"scheme": parts.scheme}
        )
    forbidden = sorted(LIBVIRT_FORBIDDEN_PARAMS & {key.lower() for key in parse_qs(parts.query)})
    if forbidden:
        raise ValidationError(_("These URI parameters are not allowed: %(params)s.") % {"params": ", ".join(forbidden)})


class HostQuerySet(models.QuerySet):
    def restrict(self, user, action: str = VIEW) -> HostQuerySet:
        """Hosts are infrastructure: only cloud admins see or change them."""
        return self if is_cloud_admin(user) else self.none()


class Host(models.Model):
    class Kind(models.TextChoices):
        LIBVIRT = "libvirt", _("libvirt")

    class State(models.TextChoices):
        UNKNOWN = "unknown", _("Unknown")
        UP = "up", _("Up")
        DOWN = "down", _("Down")
        DISABLED = "disabled", _("Disabled")

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices, default=Kind.LIBVIRT)
    uri = models.CharField(
        _("libvirt URI"),
        max_length=255,
        validators=[validate_libvirt_uri],
        help_text=_("e.g. qemu:///system or qemu+ssh://host/system"),
    )
    storage_pool = models.CharField(
        _("storage pool"), max_length=100, default="default", help_text=_("libvirt storage pool for disks and images.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.UNKNOWN)
    last_seen = models.DateTimeField(_("last seen"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = HostQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = _("host")
        verbose_name_plural = _("hosts")

    def __str__(self) -> str:
        return self.name


class FlavorQuerySet(models.QuerySet):
    def restrict(self, user, action: str = VIEW) -> FlavorQuerySet:
        """Users see enabled public flavors and the private ones shared with their tenants; staff manage all."""
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if is_cloud_admin(user):
            return self
        if action != VIEW:
            return self.none()
        shared = models.Q(tenants__in=tenant_ids_for(user, MEMBER_ROLES))
        visible = self.filter(disabled=False).filter(models.Q(is_public=True) | shared)
        # The M2M join may repeat a flavor; select by id so the result stays a plain queryset.
        return self.filter(pk__in=visible.values("pk"))

    def usable_by(self, tenant: Tenant) -> FlavorQuerySet:
        return self.filter(disabled=False).filter(models.Q(is_public=True) | models.Q(tenants=tenant)).distinct()


class Flavor(models.Model):
    name = models.CharField(_("name"), max_length=100, unique=True)
    vcpus = models.PositiveIntegerField(_("vCPUs"), validators=[MinValueValidator(1)])
    ram_mib = models.PositiveIntegerField(_("RAM (MiB)"), validators=[MinValueValidator(16)])
    disk_gib = models.PositiveIntegerField(_("disk (GiB)"), validators=[MinValueValidator(1)])
    description = models.CharField(_("description"), max_length=255, blank=True)
    is_public = models.BooleanField(_("public"), default=True)
    tenants = models.ManyToManyField(
        Tenant,
        blank=True,
        related_name="private_flavors",
        verbose_name=_("tenants with access"),
        help_text=_("Tenants that may use this flavor when it is not public."),
    )
    disabled = models.BooleanField(_("disabled"), default=False, help_text=_("Disabled flavors cannot be launched."))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = FlavorQuerySet.as_manager()

    class Meta:
        ordering = ["vcpus", "ram_mib", "disk_gib", "name"]
        verbose_name = _("flavor")
        verbose_name_plural = _("flavors")

    def __str__(self) -> str:
        return self.name


class Instance(models.Model):
    """A virtual machine owned by a tenant. The row holds intent and owns quota usage."""

    class State(models.TextChoices):
        BUILDING = "building", _("Building")
        RUNNING = "running", _("Running")
        PAUSED = "paused", _("Paused")
        SHUTOFF = "shutoff", _("Shut off")
        CRASHED = "crashed", _("Crashed")
        ERROR = "error", _("Error")
        DELETING = "deleting", _("Deleting")

    class PowerState(models.TextChoices):
        RUNNING = "running", _("Running")
        STOPPED = "stopped", _("Stopped")

    uuid = models.UUIDField(_("UUID"), default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="instances", verbose_name=_("tenant"))
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", verbose_name=_("owner")
    )
    name = models.CharField(_("name"), max_length=63)
    flavor = models.ForeignKey(Flavor, on_delete=models.PROTECT, related_name="instances", verbose_name=_("flavor"))
    image = models.ForeignKey(
        "images.Image",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="instances",
        verbose_name=_("image or ISO"),
    )
    # Sizes are copied from the flavor at launch so usage stays right when a flavor is edited.
    vcpus = models.PositiveIntegerField(_("vCPUs"))
    ram_mib = models.PositiveIntegerField(_("RAM (MiB)"))
    disk_gib = models.PositiveIntegerField(_("disk (GiB)"))
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.PROTECT, related_name="instances", verbose_name=_("host")
    )
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.BUILDING)
    desired_power_state = models.CharField(
        _("desired power state"), max_length=16, choices=PowerState.choices, default=PowerState.RUNNING
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: MEMBER_ROLES, "delete": MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="instance_unique_name_per_tenant")]
        verbose_name = _("instance")
        verbose_name_plural = _("instances")

    def __str__(self) -> str:
        return self.name


class Operation(models.Model):
    """A long action (copy, convert, boot, snapshot…) run by a Celery task, with progress the browser shows."""

    class State(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")

    uuid = models.UUIDField(_("UUID"), default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(_("kind"), max_length=64, db_index=True)
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="operations", verbose_name=_("tenant")
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    target_type = models.CharField(_("target type"), max_length=64)
    target_id = models.CharField(_("target id"), max_length=64)
    target_repr = models.CharField(_("target"), max_length=200, blank=True)
    state = models.CharField(_("state"), max_length=12, choices=State.choices, default=State.QUEUED)
    progress = models.PositiveSmallIntegerField(_("progress (%)"), default=0)
    message = models.CharField(_("step"), max_length=200, blank=True)
    params = models.JSONField(_("parameters"), default=dict, blank=True)
    error = models.TextField(_("error"), blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="operation_target_idx")]
        verbose_name = _("operation")
        verbose_name_plural = _("operations")

    def __str__(self) -> str:
        return f"{self.kind} {self.target_repr} ({self.get_state_display()})"

    @property
    def finished(self) -> bool:
        return self.state in {self.State.SUCCEEDED, self.State.FAILED}
