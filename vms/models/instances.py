"""Instances and what belongs to them: extra disks, snapshots, console sessions, metrics history."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.access import CHANGE, MEMBER_ROLES, VIEW, RestrictedQuerySet
from portal.models import Tenant
from portal.texts import translated
from vms.models.flavors import Flavor
from vms.models.hosts import Host


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
    domain_name = models.CharField(
        _("name on the host"),
        max_length=255,
        blank=True,
        help_text=_("The libvirt domain's name, or the Nova server's name, on its host."),
    )
    cloud_id = models.CharField(
        _("cloud server id"), max_length=64, blank=True, help_text=_("The Nova server id (OpenStack clouds).")
    )
    keypair = models.ForeignKey(
        "vms.Keypair", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", verbose_name=_("keypair")
    )
    network = models.ForeignKey(
        "vms.Network",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="instances",
        verbose_name=_("network"),
    )
    security_groups = models.ManyToManyField(
        "vms.SecurityGroup", blank=True, related_name="instances", verbose_name=_("security groups")
    )
    user_data = models.TextField(_("user-data"), blank=True)
    adopted = models.BooleanField(
        _("adopted"),
        default=False,
        help_text=_("Made outside the portal and adopted: its disks are the host's, not the portal's."),
    )
    installing = models.BooleanField(
        _("installing from ISO"),
        default=False,
        help_text=_("The ISO is attached and boots first until finish install."),
    )
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.BUILDING)
    state_reason = models.CharField(_("state reason"), max_length=255, blank=True)
    state_reason_args = models.JSONField(
        _("state reason parameters"),
        default=dict,
        blank=True,
        help_text=_("The parameters of a state reason the portal wrote (stored untranslated, read in any language)."),
    )
    desired_power_state = models.CharField(
        _("desired power state"), max_length=16, choices=PowerState.choices, default=PowerState.RUNNING
    )
    task = models.CharField(_("task"), max_length=32, blank=True, help_text=_("The operation in progress, if any."))
    migration_target = models.ForeignKey(
        "vms.Host",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="incoming_migrations",
        verbose_name=_("migrating to"),
        help_text=_("While a migration runs: the host it goes to (its capacity is held there)."),
    )
    evacuated_from = models.ForeignKey(
        "vms.Host",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="evacuated_instances",
        verbose_name=_("evacuated from"),
        help_text=_("A host that was down when the instance was rebuilt elsewhere: its old copy goes when it answers."),
    )
    mac_address = models.CharField(_("MAC address"), max_length=17, blank=True)
    addresses = models.JSONField(_("addresses"), default=list, blank=True)
    snapshot_bytes = models.PositiveBigIntegerField(
        _("snapshot storage (bytes)"),
        default=0,
        help_text=_(
            "What the instance's snapshots hold on its host (old disk blocks, saved memory), as last measured there."
        ),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: MEMBER_ROLES, "delete": MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="instance_unique_name_per_tenant")]
        indexes = [models.Index(fields=["host", "state"], name="instance_host_state_idx")]
        verbose_name = _("instance")
        verbose_name_plural = _("instances")

    def __str__(self) -> str:
        return self.name

    @property
    def reason(self) -> str:
        """The state reason in the reader's language: the portal's own (a msgid with its parameters) translated,
        a backend's words as they are."""
        return translated(self.state_reason, self.state_reason_args)


class InstanceDisk(models.Model):
    """An extra blank disk attached to an instance (counted in the tenant's disk quota)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+", verbose_name=_("tenant"))
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="disks", verbose_name=_("instance"))
    size_gib = models.PositiveIntegerField(_("size (GiB)"), validators=[MinValueValidator(1)])
    target = models.CharField(_("device"), max_length=8, blank=True)
    volume = models.CharField(_("volume"), max_length=200)
    attached = models.BooleanField(_("attached"), default=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: MEMBER_ROLES, "delete": MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["instance", "created_at", "id"]
        verbose_name = _("instance disk")
        verbose_name_plural = _("instance disks")

    def __str__(self) -> str:
        return f"{self.instance} {self.target or self.volume}"


class Snapshot(models.Model):
    """A libvirt internal snapshot of an instance (counted in the tenant's snapshot quota)."""

    class State(models.TextChoices):
        CREATING = "creating", _("Creating")
        AVAILABLE = "available", _("Available")
        REVERTING = "reverting", _("Reverting")
        DELETING = "deleting", _("Deleting")
        ERROR = "error", _("Error")

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+", verbose_name=_("tenant"))
    instance = models.ForeignKey(
        Instance, on_delete=models.CASCADE, related_name="snapshots", verbose_name=_("instance")
    )
    name = models.CharField(_("name"), max_length=63)
    description = models.CharField(_("description"), max_length=255, blank=True)
    state = models.CharField(_("state"), max_length=12, choices=State.choices, default=State.CREATING)
    vm_state = models.CharField(_("instance state"), max_length=16, blank=True)
    # What the instance had when the snapshot was taken: a revert brings the domain back to it.
    vcpus = models.PositiveIntegerField(_("vCPUs"), default=0)
    ram_mib = models.PositiveIntegerField(_("RAM (MiB)"), default=0)
    disk_gib = models.PositiveIntegerField(_("disk (GiB)"), default=0)
    disk_ids = models.JSONField(_("extra disks"), default=list, blank=True)
    cloud_id = models.CharField(
        _("cloud image id"), max_length=64, blank=True, help_text=_("Glance image (OpenStack).")
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: MEMBER_ROLES, "delete": MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["instance", "name"], name="snapshot_unique_name_per_instance")]
        verbose_name = _("snapshot")
        verbose_name_plural = _("snapshots")

    def __str__(self) -> str:
        return f"{self.instance}@{self.name}"


class ConsoleSession(models.Model):
    """One console token and, once claimed by the console proxy, the session it opened.

    Only the SHA-256 of the token is stored. A token is valid for one connection until
    ``expires_at``; ``used_at`` is set when the proxy claims it, ``ended_at`` when the session ends.
    """

    class Kind(models.TextChoices):
        VNC = "vnc", _("VNC")

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+", verbose_name=_("tenant"))
    instance = models.ForeignKey(
        Instance, on_delete=models.CASCADE, related_name="console_sessions", verbose_name=_("instance")
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", verbose_name=_("user")
    )
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices, default=Kind.VNC)
    token_hash = models.CharField(_("token hash"), max_length=64, unique=True)
    target_host = models.CharField(_("target host"), max_length=255)
    target_port = models.PositiveIntegerField(_("target port"))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"))
    used_at = models.DateTimeField(_("connected"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended"), null=True, blank=True)
    end_reason = models.CharField(_("end reason"), max_length=64, blank=True)
    client_ip = models.GenericIPAddressField(_("client IP"), null=True, blank=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("console session")
        verbose_name_plural = _("console sessions")

    def __str__(self) -> str:
        return f"{self.kind} {self.instance} ({self.user})"


class InstanceMetricSample(models.Model):
    """One point of an instance's metrics history, written by the watcher (``vms.watcher.metrics``).

    Rates are per second over the interval since the previous sample of the same domain, computed
    by the watcher from the raw libvirt counters it keeps in memory. Only the newest
    ``METRICS_HISTORY`` points per instance are kept.
    """

    instance = models.ForeignKey(
        Instance, on_delete=models.CASCADE, related_name="metric_samples", verbose_name=_("instance")
    )
    at = models.DateTimeField(_("time"))
    interval = models.FloatField(_("interval (s)"), help_text=_("Seconds since the previous sample."))
    cpu_percent = models.FloatField(_("CPU (%)"), help_text=_("Share of the instance's vCPUs in use, 0–100."))
    vcpus = models.PositiveIntegerField(_("vCPUs"), default=0)
    memory_used_mib = models.FloatField(_("memory used (MiB)"), null=True, blank=True)
    memory_available_mib = models.FloatField(_("memory available (MiB)"), null=True, blank=True)
    disk_read_bps = models.FloatField(_("disk read (bytes/s)"), null=True, blank=True)
    disk_write_bps = models.FloatField(_("disk write (bytes/s)"), null=True, blank=True)
    net_rx_bps = models.FloatField(_("network received (bytes/s)"), null=True, blank=True)
    net_tx_bps = models.FloatField(_("network sent (bytes/s)"), null=True, blank=True)

    access_tenant_field = "instance__tenant"
    access_policy = {VIEW: MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["instance", "at", "id"]
        indexes = [models.Index(fields=["instance", "at"], name="vms_metric_instance_at")]
        verbose_name = _("instance metric sample")
        verbose_name_plural = _("instance metric samples")

    def __str__(self) -> str:
        return f"{self.instance_id} @ {self.at:%Y-%m-%d %H:%M:%S}"
