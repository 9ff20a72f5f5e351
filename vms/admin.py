from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from portal.admin import AuditedAdminMixin, RestrictedAdminMixin
from vms.models import Flavor, Host, Instance, Operation


@admin.register(Host)
class HostAdmin(AuditedAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    audit_name = "host"
    list_display = ["name", "kind", "uri", "storage_pool", "enabled", "state", "last_seen"]
    list_filter = ["kind", "enabled", "state"]
    search_fields = ["name", "uri"]
    readonly_fields = ["state", "last_seen", "created_at"]


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


@admin.register(Instance)
class InstanceAdmin(RestrictedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "tenant", "owner", "flavor", "host", "state", "created_at"]
    list_filter = ["state", "tenant", "host"]
    search_fields = ["name", "uuid", "tenant__name"]
    list_select_related = ["tenant", "owner", "flavor", "host"]
    readonly_fields = ["uuid", "vcpus", "ram_mib", "disk_gib", "created_at", "updated_at"]

    def has_add_permission(self, request) -> bool:
        return False  # instances are launched through the dashboard or the API, which reserve quota


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
