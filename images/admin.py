"""Admin site of the image catalogue: images (deleted through images.services), their shares and copies on hosts."""

from __future__ import annotations

import copy

from django.contrib import admin, messages
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from images import services
from images.models import Image, ImageReplica, ImageShare
from portal.access import VIEW
from portal.admin import AuditedAdminMixin, ReadOnlyAdminMixin, RestrictedAdminMixin
from portal.middleware import client_ip
from portal.services import ServiceError

_DELETED = "_lc_images_deleted"


class ImageShareInline(ReadOnlyAdminMixin, admin.TabularInline):
    """The image's shares, for looking only: owners share and withdraw, the receiving tenants' admins answer
    (dashboard or API), so every change is audited and reaches the clouds' Glance members."""

    model = ImageShare
    fields = ["reference", "tenant", "status", "requested_by", "created_at", "decided_by", "decided_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant", "requested_by", "decided_by")


@admin.register(Image)
class ImageAdmin(AuditedAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    """Images come from uploads, imports and captures (which reserve quota), so the admin edits metadata only.

    Deleting goes through ``services.delete_image``: the file and the copies on hosts go too,
    and protected or used images are refused with a message instead of being deleted.
    """

    audit_name = "image"
    list_display = [
        "name",
        "tenant",
        "kind",
        "disk_format",
        "stored_format",
        "size_display",
        "status",
        "visibility",
        "protected",
        "created_at",
    ]
    list_filter = ["status", "kind", "visibility", "disk_format", "os_type", "protected", "tenant"]
    search_fields = ["name", "description", "uuid", "sha256", "tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    inlines = [ImageShareInline]
    readonly_fields = [
        "uuid",
        "tenant",
        "owner",
        "kind",
        "disk_format",
        "stored_format",
        "size",
        "virtual_size",
        "sha256",
        "status",
        "failure_reason",
        "source_url",
        "received_bytes",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "description", "tenant", "owner", "visibility"]}),
        (_("Use"), {"fields": ["os_type", "min_disk_gib", "min_ram_mib", "cloud_init", "protected", "downloadable"]}),
        (
            _("File"),
            {
                "fields": [
                    "status",
                    "failure_reason",
                    "kind",
                    "disk_format",
                    "stored_format",
                    "size",
                    "virtual_size",
                    "sha256",
                    "received_bytes",
                    "source_url",
                    "uuid",
                    "created_at",
                    "updated_at",
                ]
            },
        ),
    ]

    @admin.display(description=_("size"), ordering="size")
    def size_display(self, obj: Image) -> str:
        return filesizeformat(obj.size) if obj.size else "—"

    def has_add_permission(self, request) -> bool:
        return False  # images are uploaded or imported through the dashboard or the API, which reserve quota

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if obj.visibility == Image.Visibility.SHARED and not obj.shares.exclude(status=ImageShare.Status.REJECTED):
            messages.warning(
                request,
                _(
                    "Image “%(name)s” is shared with chosen tenants, but with none yet: only its own tenant sees it "
                    "until its owners share it from the image's page or the API."
                )
                % {"name": obj.name},
            )

    # ---------------------------------------------------------------- deletion through the service

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # The service removes the copies on hosts itself (they are read-only in the admin).
        perms_needed.discard(str(ImageReplica._meta.verbose_name))
        return deleted, counts, perms_needed, protected

    def log_deletions(self, request, queryset):
        """Logged in delete_model, once the service really deleted the image."""

    def _delete(self, request, obj: Image) -> bool:
        logged = copy.copy(obj)  # the service clears the primary key
        try:
            services.delete_image(actor=request.user, image=obj, ip=client_ip(request))
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return False
        super().log_deletions(request, [logged])
        return True

    def delete_model(self, request, obj):
        setattr(request, _DELETED, int(self._delete(request, obj)))

    def delete_queryset(self, request, queryset):
        setattr(request, _DELETED, sum(self._delete(request, obj) for obj in queryset))

    def message_user(self, request, message, level=messages.INFO, *args, **kwargs):
        """Django's "deleted successfully" message, corrected to what the service really deleted."""
        deleted = getattr(request, _DELETED, None)
        if deleted is not None and level == messages.SUCCESS:
            if not deleted:
                return
            message = ngettext("%(count)d image deleted.", "%(count)d images deleted.", deleted) % {"count": deleted}
        super().message_user(request, message, level, *args, **kwargs)

    def response_delete(self, request, obj_display, obj_id):
        if getattr(request, _DELETED, 1) == 0:
            # Refused: back to the image, which still exists, with the service's message.
            return redirect("admin:images_image_change", obj_id)
        return super().response_delete(request, obj_display, obj_id)


@admin.register(ImageReplica)
class ImageReplicaAdmin(ReadOnlyAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    """Copies of images on hosts, for looking only: they are made by launches and "Copy to host"."""

    list_display = ["image", "host", "state", "pool", "volume", "created_at"]
    list_filter = ["state", "host"]
    search_fields = ["image__name", "host__name", "volume"]
    list_select_related = ["image", "host"]
    readonly_fields = ["image", "host", "pool", "volume", "state", "error", "created_at"]

    def get_queryset(self, request):
        # Replicas have no tenant of their own: the gate is their image's.
        images = Image.objects.restrict(request.user, VIEW).values("pk")
        return admin.ModelAdmin.get_queryset(self, request).filter(image__in=images)
