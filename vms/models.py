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


def validate_vnc_listen(value: str) -> None:
    """VNC servers listen on loopback or the host's management address, never on every address."""
    import ipaddress

    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return  # not an address at all: the field's own validator says so
    if address.is_unspecified:
        raise ValidationError(_("VNC must not listen on every address; use 127.0.0.1 or the management address."))


class HostQuerySet(models.QuerySet):
    def restrict(self, user, action: str = VIEW) -> HostQuerySet:
        """Hosts are infrastructure: only cloud admins see or change them."""
        return self if is_cloud_admin(user) else self.none()


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
    # OpenStack clouds: where and how the portal logs in (credentials are encrypted, see vms.cloud).
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
    libvirt_version = models.CharField(_("libvirt version"), max_length=32, blank=True)
    last_seen = models.DateTimeField(_("last seen"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = HostQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = _("host")
        verbose_name_plural = _("hosts")

    def __str__(self) -> str:
        return self.name

    @property
    def is_cloud(self) -> bool:
        return self.kind == self.Kind.OPENSTACK

    def clean(self) -> None:
        super().clean()
        if self.kind == self.Kind.LIBVIRT and not self.uri:
            raise ValidationError({"uri": _("A libvirt host needs its URI.")})
        if self.kind == self.Kind.OPENSTACK:
            if not self.auth_url and not self.cloud_name:
                raise ValidationError({"auth_url": _("Give the Keystone URL or a cloud name from clouds.yaml.")})
            if self.uri:
                raise ValidationError({"uri": _("An OpenStack cloud has no libvirt URI.")})


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

    objects = HostQuerySet.as_manager()

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


class SharedWithTenantsQuerySet(models.QuerySet):
    """Objects cloud admins define and share: public ones, or private ones with a ``tenants`` list.

    Users see the usable ones (``available`` filter: e.g. not disabled) that are public or shared
    with a tenant they belong to; only cloud admins change them.
    """

    available = models.Q()

    def restrict(self, user, action: str = VIEW):
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if is_cloud_admin(user):
            return self
        if action != VIEW:
            return self.none()
        shared = models.Q(tenants__in=tenant_ids_for(user, MEMBER_ROLES))
        visible = self.filter(self.available).filter(models.Q(is_public=True) | shared)
        # The M2M join may repeat a row; select by id so the result stays a plain queryset.
        return self.filter(pk__in=visible.values("pk"))

    def usable_by(self, tenant: Tenant):
        usable = self.filter(self.available).filter(models.Q(is_public=True) | models.Q(tenants=tenant))
        return self.filter(pk__in=usable.values("pk"))


class FlavorQuerySet(SharedWithTenantsQuerySet):
    available = models.Q(disabled=False)


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


class CloudFlavor(models.Model):
    """A portal flavor as created in one cloud's Nova, with what it was created from (``signature``)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="cloud_flavors", verbose_name=_("cloud"))
    flavor = models.ForeignKey(Flavor, on_delete=models.CASCADE, related_name="cloud_flavors", verbose_name=_("flavor"))
    cloud_id = models.CharField(_("Nova flavor id"), max_length=64)
    signature = models.CharField(_("synced from"), max_length=255)
    synced_at = models.DateTimeField(_("synced"), auto_now=True)

    objects = HostQuerySet.as_manager()

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

    objects = HostQuerySet.as_manager()

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
        _("domain name"), max_length=255, blank=True, help_text=_("The libvirt domain's name on its host.")
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
    desired_power_state = models.CharField(
        _("desired power state"), max_length=16, choices=PowerState.choices, default=PowerState.RUNNING
    )
    task = models.CharField(_("task"), max_length=32, blank=True, help_text=_("The operation in progress, if any."))
    mac_address = models.CharField(_("MAC address"), max_length=17, blank=True)
    addresses = models.JSONField(_("addresses"), default=list, blank=True)
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


class Keypair(models.Model):
    """An SSH public key of a tenant, injected into guests through the cloud-init seed."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="keypairs", verbose_name=_("tenant"))
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", verbose_name=_("owner")
    )
    name = models.CharField(_("name"), max_length=100)
    public_key = models.TextField(_("public key"))
    fingerprint = models.CharField(_("fingerprint"), max_length=100)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: MEMBER_ROLES, "delete": MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="keypair_unique_name_per_tenant")]
        verbose_name = _("keypair")
        verbose_name_plural = _("keypairs")

    def __str__(self) -> str:
        return self.name


class NetworkQuerySet(SharedWithTenantsQuerySet):
    """Admins define networks; members see the public ones and those shared with their tenants."""


class Network(models.Model):
    """An admin-defined libvirt network, created on each host on first use."""

    class Mode(models.TextChoices):
        NAT = "nat", _("NAT")
        ISOLATED = "isolated", _("Isolated")
        BRIDGE = "bridge", _("Existing bridge")

    name = models.CharField(_("name"), max_length=100, unique=True)
    libvirt_name = models.CharField(
        _("libvirt network name"), max_length=100, unique=True, help_text=_("The network's name on every host.")
    )
    mode = models.CharField(_("mode"), max_length=12, choices=Mode.choices, default=Mode.ISOLATED)
    bridge = models.CharField(_("bridge"), max_length=15, blank=True, help_text=_("Host bridge for mode “bridge”."))
    cidr = models.CharField(_("subnet (CIDR)"), max_length=43, blank=True, help_text=_("e.g. 192.168.150.0/24"))
    dhcp = models.BooleanField(_("DHCP"), default=True)
    description = models.CharField(_("description"), max_length=255, blank=True)
    is_public = models.BooleanField(_("shared with all tenants"), default=False)
    tenants = models.ManyToManyField(Tenant, blank=True, related_name="networks", verbose_name=_("tenants with access"))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = NetworkQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = _("network")
        verbose_name_plural = _("networks")

    def __str__(self) -> str:
        return self.name


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

    objects = HostQuerySet.as_manager()

    class Meta:
        ordering = ["host", "name"]
        constraints = [models.UniqueConstraint(fields=["host", "uuid"], name="unmanaged_unique_per_host")]
        verbose_name = _("unmanaged domain")
        verbose_name_plural = _("unmanaged domains")

    def __str__(self) -> str:
        return f"{self.name} ({self.host})"


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
    heartbeat_at = models.DateTimeField(
        _("last heartbeat"), null=True, blank=True, help_text=_("Last sign of life of the worker running it.")
    )

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
    """One point of an instance's metrics history, written by the watcher (``vms.metrics``).

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
