"""Admin of flavors, instances (renamed here; driven through ``vms.lifecycle``), their snapshots and disks, and
operations."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from portal.admin import AuditedAdminMixin, ReadOnlyAdminMixin, RestrictedAdminMixin
from portal.middleware import client_ip
from portal.services import ServiceError
from vms import lifecycle, moves
from vms.admin.common import run_each
from vms.models import (
    Flavor,
    Instance,
    InstanceDisk,
    Operation,
    Snapshot,
)


@admin.register(Flavor)
class FlavorAdmin(AuditedAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    audit_name = "flavor"
    list_display = ["name", "vcpus", "ram_mib", "disk_gib", "is_public", "tenant_list", "disabled"]
    list_filter = ["is_public", "disabled"]
    search_fields = ["name", "description"]
    filter_horizontal = ["tenants"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("tenants")

    @admin.display(description=_("tenants with access"))
    def tenant_list(self, obj) -> str:
        return "—" if obj.is_public else ", ".join(t.name for t in obj.tenants.all())


_INSTANCES_DELETED = "_lc_instances_deleted"


class InstanceAdminForm(forms.ModelForm):
    class Meta:
        model = Instance
        fields = ["name"]

    def clean_name(self) -> str:
        try:
            return lifecycle.check_name(self.cleaned_data["name"])
        except ServiceError as exc:
            raise forms.ValidationError(exc.message) from exc


@admin.register(Instance)
class InstanceAdmin(AuditedAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    """Instances are launched through the dashboard or the API (which reserve quota and place them);
    here only the name changes. Power actions and deletion go through vms.lifecycle, as operations."""

    audit_name = "instance"
    form = InstanceAdminForm
    list_display = ["name", "tenant", "owner", "flavor", "host", "state", "task", "created_at"]
    list_filter = ["state", "tenant", "host"]
    search_fields = ["name", "uuid", "tenant__name"]
    list_select_related = ["tenant", "owner", "flavor", "host"]
    readonly_fields = [
        "uuid",
        "tenant",
        "owner",
        "flavor",
        "image",
        "vcpus",
        "ram_mib",
        "disk_gib",
        "snapshot_bytes",
        "host",
        "migration_target",
        "domain_name",
        "keypair",
        "network",
        "user_data",
        "installing",
        "state",
        "state_reason_text",
        "desired_power_state",
        "task",
        "mac_address",
        "addresses",
        "created_at",
        "updated_at",
    ]
    actions = ["start_instances", "shutdown_instances", "migrate_instances", "delete_selected"]

    @admin.display(description=_("state reason"))
    def state_reason_text(self, obj: Instance) -> str:
        return obj.reason

    def has_add_permission(self, request) -> bool:
        return False  # instances are launched through the dashboard or the API, which reserve quota

    @admin.action(description=_("Start selected instances"))
    def start_instances(self, request, queryset):
        self._power(request, queryset, "start")

    @admin.action(description=_("Shut down selected instances"))
    def shutdown_instances(self, request, queryset):
        self._power(request, queryset, "shutdown")

    @admin.action(description=_("Migrate selected instances (live if running; the scheduler picks the hosts)"))
    def migrate_instances(self, request, queryset):
        run_each(
            self,
            request,
            queryset,
            lambda instance: moves.migrate_instance(actor=request.user, instance=instance, ip=client_ip(request)),
            lambda n: ngettext("%(count)d migration queued.", "%(count)d migrations queued.", n) % {"count": n},
        )

    def _power(self, request, queryset, action: str) -> None:
        run_each(
            self,
            request,
            queryset,
            lambda instance: lifecycle.request_action(
                actor=request.user, instance=instance, action=action, ip=client_ip(request)
            ),
            lambda n: ngettext("%(count)d instance queued.", "%(count)d instances queued.", n) % {"count": n},
        )

    # ---------------------------------------------------------------- deletion through the lifecycle service

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # The delete operation removes the snapshots and extra disks itself (read-only in the admin).
        perms_needed.discard(str(Snapshot._meta.verbose_name))
        perms_needed.discard(str(InstanceDisk._meta.verbose_name))
        return deleted, counts, perms_needed, protected

    def _delete(self, request, obj: Instance) -> bool:
        try:
            lifecycle.delete_instance(actor=request.user, instance=obj, ip=client_ip(request))
        except ServiceError as exc:
            self.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
            return False
        return True

    def delete_model(self, request, obj):
        setattr(request, _INSTANCES_DELETED, int(self._delete(request, obj)))

    def delete_queryset(self, request, queryset):
        setattr(request, _INSTANCES_DELETED, sum(self._delete(request, obj) for obj in queryset))

    def message_user(self, request, message, level=messages.INFO, *args, **kwargs):
        """Django's "deleted successfully", corrected: the deletion is queued (the row goes when it is done)."""
        queued = getattr(request, _INSTANCES_DELETED, None)
        if queued is not None and level == messages.SUCCESS:
            if not queued:
                return
            message = ngettext(
                "Deletion of %(count)d instance queued.", "Deletion of %(count)d instances queued.", queued
            ) % {"count": queued}
        super().message_user(request, message, level, *args, **kwargs)


@admin.register(Snapshot)
class SnapshotAdmin(ReadOnlyAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "instance", "tenant", "state", "vm_state", "created_at"]
    list_filter = ["state", "tenant"]
    search_fields = ["name", "instance__name", "tenant__name"]
    list_select_related = ["instance", "tenant"]


@admin.register(InstanceDisk)
class InstanceDiskAdmin(ReadOnlyAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    list_display = ["volume", "instance", "tenant", "size_gib", "target", "attached", "created_at"]
    list_filter = ["attached", "tenant"]
    search_fields = ["volume", "instance__name", "tenant__name"]
    list_select_related = ["instance", "tenant"]


@admin.register(Operation)
class OperationAdmin(RestrictedAdminMixin, admin.ModelAdmin):
    """Long actions and their outcome; written by the services and tasks only."""

    list_display = ["created_at", "kind", "target_repr", "tenant", "user", "state", "progress", "finished_at"]
    list_filter = ["state", "kind", "tenant"]
    search_fields = ["target_repr", "target_id", "kind", "error"]
    list_select_related = ["tenant", "user"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Operation._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
