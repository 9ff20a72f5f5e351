"""Serializers of the image API. They shape and validate data only: writes go through images.services."""

from __future__ import annotations

from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from images.models import Image, ImageShare
from portal.access import MEMBER_ROLES, is_cloud_admin, tenant_ids_for
from portal.api.serializers import MAX_INT32, VisibleTenantField
from portal.api.strict import StrictModelSerializer, StrictSerializer
from vms.compute import Capability, kinds_with
from vms.models import Host

# Sizes are stored in 64-bit columns.
MAX_BYTES = 2**63 - 1


def requester_tenant_ids(context: dict) -> set[int]:
    """The requester's tenants, looked up once per response (the context is shared by a list's rows)."""
    key = "_requester_tenant_ids"
    if key not in context:
        request = context.get("request")
        user = getattr(request, "user", None)
        ids: set[int] = set()
        if user is not None and user.is_authenticated:
            ids = set(tenant_ids_for(user, MEMBER_ROLES).values_list("tenant_id", flat=True))
        context[key] = ids
    return context[key]


class ImageSerializer(StrictModelSerializer):
    """An image or installer ISO of the catalogue."""

    owner = serializers.CharField(
        source="owner.username", read_only=True, allow_null=True, help_text=_("Username of who created the image.")
    )
    shared_with = serializers.SerializerMethodField(
        help_text=_(
            "Ids of the tenants that accepted the image when shared (pending shares are in /image-shares/); "
            "null unless you are a member of the owner tenant (or a cloud admin)."
        )
    )
    stored_format = serializers.CharField(
        read_only=True, help_text=_("Format of the stored file: qcow2, or iso for an ISO; empty until processed.")
    )
    source_url = serializers.SerializerMethodField(
        help_text=_("The URL an import came from (it may hold credentials, so only the owner tenant sees it).")
    )
    upload_url = serializers.SerializerMethodField(
        help_text=_("Where to PUT the file (resumable, `Content-Range`) and to GET it back once active.")
    )

    class Meta:
        model = Image
        fields = [
            "id",
            "uuid",
            "name",
            "description",
            "tenant",
            "owner",
            "visibility",
            "shared_with",
            "kind",
            "disk_format",
            "stored_format",
            "size",
            "virtual_size",
            "sha256",
            "min_disk_gib",
            "min_ram_mib",
            "os_type",
            "cloud_init",
            "protected",
            "downloadable",
            "status",
            "failure_reason",
            "received_bytes",
            "source_url",
            "created_at",
            "updated_at",
            "upload_url",
        ]
        read_only_fields = fields
        extra_kwargs = {"tenant": {"help_text": _("Id of the owner tenant; null for images provided by the cloud.")}}

    def _member_tenant_ids(self) -> set[int]:
        return requester_tenant_ids(self.context)

    def _sees_sharing(self, image: Image) -> bool:
        request = self.context.get("request")
        if is_cloud_admin(getattr(request, "user", None)):
            return True
        return image.tenant_id is not None and image.tenant_id in self._member_tenant_ids()

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField(), allow_null=True))
    def get_shared_with(self, image: Image) -> list[int] | None:
        if not self._sees_sharing(image):
            return None
        shares = getattr(image, "accepted_shares", None)  # prefetched by the image views
        if shares is None:  # an image serialized elsewhere (a capture's answer)
            shares = image.shares.filter(status=ImageShare.Status.ACCEPTED).only("tenant_id")
        return sorted(share.tenant_id for share in shares)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_source_url(self, image: Image) -> str | None:
        return image.source_url if self._sees_sharing(image) else None

    @extend_schema_field(OpenApiTypes.STR)
    def get_upload_url(self, image: Image) -> str:
        return reverse("image-file", args=[image.pk])


class ImageMetadataSerializer(StrictSerializer):
    """Descriptive fields shared by creation and import."""

    description = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    visibility = serializers.ChoiceField(
        choices=Image.Visibility.choices,
        default=Image.Visibility.PRIVATE,
        help_text=_("“public” is for cloud admins; share with chosen tenants through /share/."),
    )
    kind = serializers.ChoiceField(
        choices=Image.Kind.choices, required=False, help_text=_("Derived from the disk format when omitted.")
    )
    min_disk_gib = serializers.IntegerField(min_value=0, max_value=MAX_INT32, default=0)
    min_ram_mib = serializers.IntegerField(min_value=0, max_value=MAX_INT32, default=0)
    os_type = serializers.ChoiceField(choices=Image.OsType.choices, default=Image.OsType.LINUX)
    cloud_init = serializers.BooleanField(default=False)
    protected = serializers.BooleanField(default=False)


class ImageCreateSerializer(ImageMetadataSerializer):
    tenant = VisibleTenantField(
        required=False,
        allow_null=True,
        help_text=_("Owner tenant (one of yours). Only cloud admins may omit it, for an image of the cloud."),
    )
    name = serializers.CharField(max_length=100)
    disk_format = serializers.ChoiceField(choices=Image.DiskFormat.choices)
    size = serializers.IntegerField(
        min_value=1, max_value=MAX_BYTES, help_text=_("Size of the file you will upload, in bytes.")
    )


class ImageImportSerializer(ImageMetadataSerializer):
    tenant = VisibleTenantField(
        required=False,
        allow_null=True,
        help_text=_("Owner tenant (one of yours). Only cloud admins may omit it, for an image of the cloud."),
    )
    name = serializers.CharField(max_length=100)
    url = serializers.URLField(max_length=1000, help_text=_("An http:// or https:// URL the worker downloads."))
    disk_format = serializers.ChoiceField(choices=Image.DiskFormat.choices)


class ImageUpdateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100, required=False)
    description = serializers.CharField(max_length=255, required=False, allow_blank=True)
    visibility = serializers.ChoiceField(choices=Image.Visibility.choices, required=False)
    min_disk_gib = serializers.IntegerField(min_value=0, max_value=MAX_INT32, required=False)
    min_ram_mib = serializers.IntegerField(min_value=0, max_value=MAX_INT32, required=False)
    os_type = serializers.ChoiceField(choices=Image.OsType.choices, required=False)
    cloud_init = serializers.BooleanField(required=False)
    protected = serializers.BooleanField(required=False)


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "maxLength": 100}]})
class TenantReferenceField(serializers.CharField):
    """A tenant named by its id or its slug (JSON number or string)."""

    checks_json_type = True  # an integer from 1 or a string, as its schema says

    def to_internal_value(self, data):
        if isinstance(data, int) and not isinstance(data, bool):
            if data < 1:
                self.fail("invalid")
            return str(data)
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class ImageShareRequestSerializer(StrictSerializer):
    tenant = TenantReferenceField(
        max_length=100,
        help_text=_(
            "Id or slug of the tenant. Whether it exists or not, the answer is the same pending share: it shows "
            "the image to that tenant once one of its admins accepts it."
        ),
    )


class ImageShareSerializer(StrictModelSerializer):
    """An image offered to a tenant: pending until an admin of the receiving tenant accepts (or rejects) it."""

    image_name = serializers.CharField(source="image.name", read_only=True)
    image_kind = serializers.CharField(source="image.kind", read_only=True)
    owner_tenant = serializers.IntegerField(
        source="image.tenant_id", read_only=True, allow_null=True, help_text=_("Id of the tenant offering the image.")
    )
    owner_tenant_name = serializers.SerializerMethodField(help_text=_("Name of the tenant offering the image."))
    tenant = serializers.SerializerMethodField(
        help_text=_(
            "Id of the receiving tenant: shown to its members, and to the owner once the share is accepted "
            "(until then the owner sees only the reference it gave)."
        )
    )
    tenant_name = serializers.SerializerMethodField(help_text=_("Name of the receiving tenant (as for `tenant`)."))
    requested_by = serializers.CharField(
        source="requested_by.username", read_only=True, allow_null=True, help_text=_("Who shared the image.")
    )
    decided_by = serializers.SerializerMethodField(help_text=_("Who accepted or rejected it (as for `tenant`)."))

    class Meta:
        model = ImageShare
        fields = [
            "id",
            "image",
            "image_name",
            "image_kind",
            "owner_tenant",
            "owner_tenant_name",
            "reference",
            "tenant",
            "tenant_name",
            "status",
            "requested_by",
            "created_at",
            "decided_by",
            "decided_at",
        ]
        read_only_fields = fields
        extra_kwargs = {"reference": {"help_text": _("The id or slug the owner named the tenant by.")}}

    def _member_tenant_ids(self) -> set[int]:
        return requester_tenant_ids(self.context)

    def _sees_receiver(self, share: ImageShare) -> bool:
        """The receiving tenant is no secret to its members, to cloud admins, nor to the owner once it accepted.

        The requester's tenants are looked up whatever the share, so a pending share's answer takes the same
        queries whether its reference names a tenant or not.
        """
        mine = self._member_tenant_ids()
        if share.tenant_id is None:
            return False
        request = self.context.get("request")
        if is_cloud_admin(getattr(request, "user", None)) or share.status == ImageShare.Status.ACCEPTED:
            return True
        return share.tenant_id in mine

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_owner_tenant_name(self, share: ImageShare) -> str | None:
        return share.image.tenant.name if share.image.tenant_id else None

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_tenant(self, share: ImageShare) -> int | None:
        return share.tenant_id if self._sees_receiver(share) else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_tenant_name(self, share: ImageShare) -> str | None:
        return share.tenant.name if self._sees_receiver(share) else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_decided_by(self, share: ImageShare) -> str | None:
        if share.decided_by_id is None or not self._sees_receiver(share):
            return None
        return share.decided_by.username


@extend_schema_field({"type": "integer", "minimum": 1})
class CopyHostField(serializers.PrimaryKeyRelatedField):
    """The id of a host images are copied to ahead of launches (a libvirt host; clouds get them at launch)."""

    def get_queryset(self):
        return Host.objects.filter(kind__in=kinds_with(Capability.IMAGE_COPIES))


class ImageDistributeSerializer(StrictSerializer):
    host = CopyHostField(help_text=_("Id of the libvirt host."))


class UploadProgressSerializer(StrictSerializer):
    received_bytes = serializers.IntegerField(help_text=_("Bytes stored so far: where the next chunk starts."))
    status = serializers.ChoiceField(choices=Image.Status.choices)
