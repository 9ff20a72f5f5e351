"""Hosts and clouds, and what the portal keeps per cloud: tenants' projects, flavor copies, placement rules,
domains found on hosts that no instance owns."""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs, urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.access import VIEW, is_cloud_admin
from portal.models import Tenant
from vms.models.flavors import Flavor

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


def validate_vnc_listen(value: str) -> None:
    """VNC servers listen on loopback or the host's management address, never on every address."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return  # not an address at all: the field's own validator says so
    if address.is_unspecified or address.is_multicast:
        raise ValidationError(_("VNC must not listen on every address; use 127.0.0.1 or the management address."))


validate_vnc_listen.refuses_unspecified_and_multicast = True  # the API schema says so (portal.api.base)


class InfrastructureQuerySet(models.QuerySet):
    def restrict(self, user, action: str = VIEW) -> InfrastructureQuerySet:
        """Hosts, clouds and what the portal keeps about them are infrastructure: only cloud admins see them."""
        return self if is_cloud_admin(user) else self.none()


class HostQuerySet(InfrastructureQuerySet):
    def libvirt(self) -> HostQuerySet:
        return self.filter(kind=Host.Kind.LIBVIRT)

    def clouds(self) -> HostQuerySet:
        return self.filter(kind=Host.Kind.OPENSTACK)


class Host(models.Model):
    """A libvirt host (``uri``) or an OpenStack cloud region (``auth_url`` or ``cloud_name``, credentials)."""

    class Kind(models.TextChoices):
        LIBVIRT = "libvirt", _("libvirt")
        OPENSTACK = "openstack", _("OpenStack cloud")

    class ProjectMode(models.TextChoices):
        MANAGED = "managed", _("The portal creates one project per tenant")
        EXISTING = "existing", _("Tenants map to existing projects")

    class VirtType(models.TextChoices):
        KVM = "kvm", _("KVM (hardware)")
        QEMU = "qemu", _("QEMU (TCG software emulation)")

    class CpuMode(models.TextChoices):
        DEFAULT = "default", _("QEMU default model")
        HOST_MODEL = "host-model", _("host-model")
        HOST_PASSTHROUGH = "host-passthrough", _("host-passthrough")
        CUSTOM = "custom", _("custom model")

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
        blank=True,
        validators=[validate_libvirt_uri],
        help_text=_("e.g. qemu:///system or qemu+ssh://host/system (libvirt hosts)"),
    )
    # OpenStack clouds: where and how the portal logs in (credentials are encrypted, see vms.compute.openstack.login).
    cloud_name = models.CharField(
        _("cloud name"),
        max_length=100,
        blank=True,
        help_text=_("A cloud in clouds.yaml (OS_CLIENT_CONFIG_FILE or the standard places); or give the URL below."),
    )
    auth_url = models.URLField(
        _("Keystone URL"), max_length=255, blank=True, help_text=_("e.g. https://keystone:5000/v3")
    )
    region = models.CharField(_("region"), max_length=100, blank=True)
    credentials = models.TextField(_("credentials (encrypted)"), blank=True, editable=False)
    project_mode = models.CharField(
        _("tenant projects"), max_length=10, choices=ProjectMode.choices, default=ProjectMode.MANAGED
    )
    project_domain = models.CharField(
        _("project domain"), max_length=100, default="Default", help_text=_("Keystone domain of managed projects.")
    )
    os_network = models.CharField(
        _("network"),
        max_length=100,
        blank=True,
        help_text=_("Neutron network id for new servers; empty = servers without a network."),
    )
    verify_tls = models.BooleanField(_("verify TLS certificates"), default=True)
    storage_pool = models.CharField(
        _("storage pool"), max_length=100, default="default", help_text=_("libvirt storage pool for disks and images.")
    )
    storage_share = models.CharField(
        _("shared storage"),
        max_length=64,
        blank=True,
        help_text=_(
            "Hosts with the same name here see the same files in their storage pools (NFS, Ceph…): instances "
            "migrate between them without copying their disks. Empty: the pool is this host's own."
        ),
    )
    migration_address = models.CharField(
        _("migration address"),
        max_length=255,
        blank=True,
        help_text=_(
            "Address other hosts send a live migration's data to (libvirt's migration ports of this host); "
            "empty: the host's own name."
        ),
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9][A-Za-z0-9.:-]*$", _("A host name or an IP address, without a scheme or a port.")
            )
        ],
    )
    default_network = models.CharField(
        _("default network"),
        max_length=100,
        blank=True,
        help_text=_("libvirt network used when a launch names none; empty = no network interface."),
    )
    vnc_listen = models.GenericIPAddressField(
        _("VNC listen address"),
        default="127.0.0.1",
        validators=[validate_vnc_listen],
        help_text=_("Loopback or the host's management address; never a public one."),
    )
    virt_type = models.CharField(
        _("virtualization type"),
        max_length=8,
        choices=VirtType.choices,
        default=VirtType.QEMU,
        help_text=_("kvm only after the probe proved a guest boots under KVM on this host."),
    )
    cpu_mode = models.CharField(_("CPU mode"), max_length=20, choices=CpuMode.choices, default=CpuMode.DEFAULT)
    cpu_model = models.CharField(_("CPU model"), max_length=64, blank=True, help_text=_("For CPU mode “custom”."))
    cpu_allocation_ratio = models.FloatField(
        _("vCPU overcommit ratio"), default=4.0, validators=[MinValueValidator(0.1)]
    )
    ram_allocation_ratio = models.FloatField(
        _("RAM overcommit ratio"), default=1.0, validators=[MinValueValidator(0.1)]
    )
    disk_allocation_ratio = models.FloatField(
        _("disk overcommit ratio"), default=1.0, validators=[MinValueValidator(0.1)]
    )
    reserved_ram_mib = models.PositiveIntegerField(
        _("reserved RAM (MiB)"), default=512, help_text=_("Kept free for the host itself.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.UNKNOWN)
    state_reason = models.CharField(_("state reason"), max_length=255, blank=True)
    # Capacity as last reported by the host (the watcher refreshes it).
    cpus = models.PositiveIntegerField(_("CPUs"), null=True, blank=True)
    memory_mib = models.PositiveIntegerField(_("RAM (MiB)"), null=True, blank=True)
    free_memory_mib = models.PositiveIntegerField(_("free RAM (MiB)"), null=True, blank=True)
    pool_capacity = models.BigIntegerField(_("pool capacity (bytes)"), null=True, blank=True)
    pool_available = models.BigIntegerField(_("pool free space (bytes)"), null=True, blank=True)
    backend_version = models.CharField(
        _("version"), max_length=32, blank=True, help_text=_("libvirt's version, or a cloud's Nova API microversion.")
    )
    last_seen = models.DateTimeField(_("last seen"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = HostQuerySet.as_manager()

    # What the host or cloud reports (the watcher and a refresh write them; forms and the API only show them).
    REPORTED_FIELDS = (
        "state",
        "state_reason",
        "cpus",
        "memory_mib",
        "free_memory_mib",
        "pool_capacity",
        "pool_available",
        "backend_version",
        "last_seen",
    )

    class Meta:
        ordering = ["name"]
        verbose_name = _("host")
        verbose_name_plural = _("hosts")

    def __str__(self) -> str:
        return self.name

    @classmethod
    def settings_fields(cls) -> list[str]:
        """Every kind's settings, in the model's order; a host's adapter says which apply to its kind."""
        fixed = {"id", "name", "kind", "enabled", *cls.REPORTED_FIELDS}
        return [f.name for f in cls._meta.concrete_fields if f.editable and f.name not in fixed]


class CloudProject(models.Model):
    """The Keystone project a tenant's servers live in on one OpenStack cloud (managed or mapped)."""

    host = models.ForeignKey(
        Host,
        on_delete=models.CASCADE,
        related_name="cloud_projects",
        verbose_name=_("cloud"),
        limit_choices_to={"kind": "openstack"},
    )
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="cloud_projects", verbose_name=_("tenant")
    )
    project_id = models.CharField(_("project id"), max_length=64)
    managed = models.BooleanField(
        _("managed"), default=False, help_text=_("Created by the portal (else an existing project mapped by an admin).")
    )
    quota_synced_at = models.DateTimeField(_("quota pushed"), null=True, blank=True)
    quota_error = models.CharField(_("quota push error"), max_length=255, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = InfrastructureQuerySet.as_manager()

    class Meta:
        ordering = ["host", "tenant"]
        constraints = [
            models.UniqueConstraint(fields=["host", "tenant"], name="cloudproject_unique_tenant_per_cloud"),
            models.UniqueConstraint(fields=["host", "project_id"], name="cloudproject_unique_project_per_cloud"),
        ]
        verbose_name = _("cloud project")
        verbose_name_plural = _("cloud projects")

    def __str__(self) -> str:
        return f"{self.tenant} → {self.project_id} ({self.host})"


class CloudFlavor(models.Model):
    """A portal flavor as created in one cloud's Nova, with what it was created from (``signature``)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="cloud_flavors", verbose_name=_("cloud"))
    flavor = models.ForeignKey(Flavor, on_delete=models.CASCADE, related_name="cloud_flavors", verbose_name=_("flavor"))
    cloud_id = models.CharField(_("Nova flavor id"), max_length=64)
    signature = models.CharField(_("synced from"), max_length=255)
    synced_at = models.DateTimeField(_("synced"), auto_now=True)

    objects = InfrastructureQuerySet.as_manager()

    class Meta:
        ordering = ["host", "flavor"]
        constraints = [models.UniqueConstraint(fields=["host", "flavor"], name="cloudflavor_unique_per_cloud")]
        verbose_name = _("cloud flavor")
        verbose_name_plural = _("cloud flavors")

    def __str__(self) -> str:
        return f"{self.flavor} @ {self.host}"


class PlacementRule(models.Model):
    """Admin policy: a tenant's (or a flavor's) new instances go to this host or cloud.

    The most specific rule wins: tenant and flavor, then flavor, then tenant. Without a rule the
    scheduler picks among the libvirt hosts.
    """

    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="placement_rules",
        verbose_name=_("tenant"),
    )
    flavor = models.ForeignKey(
        Flavor,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="placement_rules",
        verbose_name=_("flavor"),
    )
    host = models.ForeignKey(
        Host, on_delete=models.CASCADE, related_name="placement_rules", verbose_name=_("host or cloud")
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = InfrastructureQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "flavor", "id"]
        constraints = [
            # one rule per (tenant, flavor), per tenant alone, per flavor alone (partial indexes: SQLite has no
            # NULLS NOT DISTINCT)
            models.UniqueConstraint(
                fields=["tenant", "flavor"],
                condition=models.Q(tenant__isnull=False, flavor__isnull=False),
                name="placement_unique_tenant_flavor",
            ),
            models.UniqueConstraint(
                fields=["tenant"], condition=models.Q(flavor__isnull=True), name="placement_unique_tenant"
            ),
            models.UniqueConstraint(
                fields=["flavor"], condition=models.Q(tenant__isnull=True), name="placement_unique_flavor"
            ),
            models.CheckConstraint(
                condition=models.Q(tenant__isnull=False) | models.Q(flavor__isnull=False),
                name="placement_rule_names_tenant_or_flavor",
            ),
        ]
        verbose_name = _("placement rule")
        verbose_name_plural = _("placement rules")

    def __str__(self) -> str:
        who = " + ".join(str(x) for x in (self.tenant, self.flavor) if x is not None)
        return f"{who} → {self.host}"

    def clean(self) -> None:
        super().clean()
        if self.tenant_id is None and self.flavor_id is None:
            raise ValidationError(_("A placement rule names a tenant, a flavor or both."))


class UnmanagedDomain(models.Model):
    """A domain found on a host that no instance row owns; a cloud admin may adopt it into a tenant."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="unmanaged_domains", verbose_name=_("host"))
    uuid = models.UUIDField(_("UUID"))
    name = models.CharField(_("name"), max_length=255)
    state = models.CharField(_("state"), max_length=16)
    vcpus = models.PositiveIntegerField(_("vCPUs"), default=0)
    memory_mib = models.PositiveIntegerField(_("RAM (MiB)"), default=0)
    first_seen = models.DateTimeField(_("first seen"), auto_now_add=True)
    last_seen = models.DateTimeField(_("last seen"), auto_now=True)

    objects = InfrastructureQuerySet.as_manager()

    class Meta:
        ordering = ["host", "name"]
        constraints = [models.UniqueConstraint(fields=["host", "uuid"], name="unmanaged_unique_per_host")]
        verbose_name = _("unmanaged domain")
        verbose_name_plural = _("unmanaged domains")

    def __str__(self) -> str:
        return f"{self.name} ({self.host})"
