"""The image catalogue: bootable disk images and installer ISOs, and their copies on hosts."""

from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.access import ADMIN_ROLES, CHANGE, DELETE, MEMBER_ROLES, VIEW, RestrictedQuerySet, tenant_ids_for
from portal.models import Tenant


class ImageQuerySet(RestrictedQuerySet):
    def _restrict_for_member(self, user, action: str) -> ImageQuerySet:
        """Who sees an image: everyone (public), its owner tenant, and the tenants that accepted it when shared.

        A share still pending (or rejected) shows the image to nobody in the receiving tenant. Changing and
        deleting are for the owner tenant's members (as in Horizon's projects);
        images provided by the cloud (no owner tenant) are changed by cloud admins only.
        """
        if action == VIEW:
            mine = tenant_ids_for(user, MEMBER_ROLES)
            visible = (
                models.Q(visibility=Image.Visibility.PUBLIC)
                | models.Q(tenant__in=mine)
                | models.Q(
                    visibility=Image.Visibility.SHARED,
                    shares__status=ImageShare.Status.ACCEPTED,
                    shares__tenant__in=mine,
                )
            )
            return self.filter(pk__in=Image.objects.filter(visible).values("pk"))
        return super()._restrict_for_member(user, action)


class Image(models.Model):
    class Kind(models.TextChoices):
        DISK = "disk", _("Disk image")
        ISO = "iso", _("Installer ISO")

    class Visibility(models.TextChoices):
        PRIVATE = "private", _("Private")
        SHARED = "shared", _("Shared with chosen tenants")
        PUBLIC = "public", _("Public")

    class DiskFormat(models.TextChoices):
        QCOW2 = "qcow2", "qcow2"
        RAW = "raw", "raw"
        ISO = "iso", "ISO 9660"
        VMDK = "vmdk", "VMDK"
        VHD = "vhd", "VHD (vpc)"
        VDI = "vdi", "VDI"

    class OsType(models.TextChoices):
        LINUX = "linux", _("Linux")
        WINDOWS = "windows", _("Windows")
        OTHER = "other", _("Other")

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        UPLOADING = "uploading", _("Uploading")
        INSPECTING = "inspecting", _("Inspecting")
        CONVERTING = "converting", _("Converting")
        ACTIVE = "active", _("Active")
        FAILED = "failed", _("Failed")
        DELETING = "deleting", _("Deleting")

    uuid = models.UUIDField(_("UUID"), default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(_("name"), max_length=100)
    description = models.CharField(_("description"), max_length=255, blank=True)
    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="images",
        verbose_name=_("owner tenant"),
        help_text=_("Empty for images provided by the cloud admins."),
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    visibility = models.CharField(_("visibility"), max_length=8, choices=Visibility.choices, default=Visibility.PRIVATE)
    shared_with = models.ManyToManyField(
        Tenant,
        blank=True,
        through="ImageShare",
        related_name="shared_images",
        verbose_name=_("shared with"),
        help_text=_("Tenants the image is offered to, whatever their answer: see each share's status."),
    )
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices, default=Kind.DISK)
    disk_format = models.CharField(_("disk format"), max_length=8, choices=DiskFormat.choices)
    stored_format = models.CharField(_("stored format"), max_length=8, choices=DiskFormat.choices, blank=True)
    size = models.BigIntegerField(_("size (bytes)"), default=0, help_text=_("Stored (or announced) file size."))
    virtual_size = models.BigIntegerField(_("virtual size (bytes)"), null=True, blank=True)
    sha256 = models.CharField(_("SHA-256"), max_length=64, blank=True)
    min_disk_gib = models.PositiveIntegerField(_("minimum disk (GiB)"), default=0)
    min_ram_mib = models.PositiveIntegerField(_("minimum RAM (MiB)"), default=0, validators=[MinValueValidator(0)])
    os_type = models.CharField(_("OS type"), max_length=8, choices=OsType.choices, default=OsType.LINUX)
    cloud_init = models.BooleanField(_("cloud-init capable"), default=False)
    protected = models.BooleanField(_("protected"), default=False, help_text=_("Protected images cannot be deleted."))
    downloadable = models.BooleanField(
        _("downloadable"),
        default=True,
        help_text=_(
            "Members of the owner tenant may download the file. Off for images captured from an instance of an "
            "image they could not download (shared with them, or public)."
        ),
    )
    status = models.CharField(_("status"), max_length=12, choices=Status.choices, default=Status.QUEUED)
    failure_reason = models.TextField(_("failure reason"), blank=True)
    source_url = models.URLField(_("source URL"), max_length=1000, blank=True)
    received_bytes = models.BigIntegerField(_("received bytes"), default=0)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: MEMBER_ROLES, DELETE: MEMBER_ROLES}
    objects = ImageQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        verbose_name = _("image")
        verbose_name_plural = _("images")

    def __str__(self) -> str:
        return self.name

    @property
    def path(self) -> Path:
        """The stored file (only meaningful once the image is active)."""
        extension = {"qcow2": "qcow2", "iso": "iso"}.get(self.stored_format or self.disk_format, "img")
        return Path(settings.LABCLOUD_IMAGE_STORE) / f"{self.uuid}.{extension}"

    @property
    def partial_path(self) -> Path:
        """Where an upload or download lands before inspection."""
        return Path(settings.LABCLOUD_IMAGE_STORE) / "incoming" / f"{self.uuid}.part"


class ImageShareQuerySet(RestrictedQuerySet):
    def _restrict_for_member(self, user, action: str) -> ImageShareQuerySet:
        """Who sees a share: the receiving tenant's members and the owner tenant's members.

        Accepting and rejecting (``CHANGE``) are for the receiving tenant's admins; withdrawing (``DELETE``)
        is for the owner tenant's members (shares of cloud images: cloud admins only).
        """
        if action == VIEW:
            mine = tenant_ids_for(user, MEMBER_ROLES)
            return self.filter(models.Q(tenant__in=mine) | models.Q(image__tenant__in=mine))
        if action == CHANGE:
            return self.filter(tenant__in=tenant_ids_for(user, ADMIN_ROLES))
        if action == DELETE:
            return self.filter(image__tenant__in=tenant_ids_for(user, MEMBER_ROLES))
        return self.none()


class ImageShare(models.Model):
    """An image offered to another tenant, as a Glance image member is: pending until an admin of that tenant
    accepts it; only an accepted share lets the tenant see and launch the image.

    ``reference`` is how the owner named the tenant (its id or slug). A reference that names no tenant (or one
    the image is already offered to under another reference) is kept too, with no tenant, and stays pending:
    the owner cannot tell it from a tenant that has not answered yet.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        ACCEPTED = "accepted", _("Accepted")
        REJECTED = "rejected", _("Rejected")

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="shares", verbose_name=_("image"))
    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="image_shares",
        verbose_name=_("receiving tenant"),
    )
    reference = models.CharField(
        _("tenant as named"), max_length=100, help_text=_("The id or slug the owner named the tenant by.")
    )
    status = models.CharField(_("status"), max_length=8, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(_("shared"), auto_now_add=True)
    decided_at = models.DateTimeField(_("answered"), null=True, blank=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: ADMIN_ROLES, DELETE: MEMBER_ROLES}
    objects = ImageShareQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["image", "reference"], name="imageshare_unique_reference"),
            models.UniqueConstraint(fields=["image", "tenant"], name="imageshare_unique_tenant"),
        ]
        verbose_name = _("image share")
        verbose_name_plural = _("image shares")

    def __str__(self) -> str:
        return f"{self.image} → {self.reference}"


class ImageReplica(models.Model):
    """A copy of an image where instances run, shared by every instance there: a storage volume in a libvirt
    host's pool (``pool``, ``volume``), or an image in an OpenStack cloud's Glance (``cloud_image_id``)."""

    class State(models.TextChoices):
        COPYING = "copying", _("Copying")
        READY = "ready", _("Ready")
        FAILED = "failed", _("Failed")

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="replicas", verbose_name=_("image"))
    host = models.ForeignKey("vms.Host", on_delete=models.CASCADE, related_name="image_replicas")
    pool = models.CharField(_("storage pool"), max_length=100, blank=True)
    volume = models.CharField(_("volume"), max_length=200, blank=True)
    cloud_image_id = models.CharField(_("cloud image id"), max_length=64, blank=True, help_text=_("Glance image id."))
    state = models.CharField(_("state"), max_length=8, choices=State.choices, default=State.COPYING)
    error = models.TextField(_("error"), blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "host"], name="replica_unique_image_host")]
        verbose_name = _("image replica")
        verbose_name_plural = _("image replicas")

    def __str__(self) -> str:
        return f"{self.image} on {self.host}"

    @property
    def location(self) -> str:
        """Where the copy is: the Glance image id in a cloud, pool/volume on a libvirt host."""
        return self.cloud_image_id or f"{self.pool}/{self.volume}"
