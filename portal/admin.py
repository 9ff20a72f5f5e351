"""Admin site for cloud admins: tenants (members, quota, usage), quotas, API tokens, audit trail."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from portal.access import VIEW
from portal.forms import AdminLoginForm
from portal.middleware import client_ip
from portal.models import QUOTA_RESOURCES, ApiToken, AuditEvent, LoginFailure, Membership, Quota, Tenant
from portal.selectors import quota_lines_below_usage, tenant_usage
from portal.services import ensure_quota, record_audit, revoke_api_token, unlock_logins

admin.site.site_header = _("labcloud administration")
admin.site.site_title = _("labcloud admin")
admin.site.index_title = _("Cloud administration")
admin.site.login_form = AdminLoginForm  # sign-in throttling, shared with the dashboard's login


class RestrictedAdminMixin:
    """Admin lists go through the same access gate as every other face of the portal."""

    def get_queryset(self, request):
        return super().get_queryset(request).restrict(request.user, VIEW)

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_add_permission(self, request, *args) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff


class ReadOnlyAdminMixin:
    """Rows written by the services only (audit events, image copies, snapshots…): listed and shown, never
    added, edited or deleted here. Put it before ``RestrictedAdminMixin``."""

    def has_add_permission(self, request, *args) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class AuditedAdminMixin:
    """Every change made in the admin lands in the audit trail, like changes made anywhere else."""

    audit_name = ""

    def _audit_tenant(self, obj):
        return getattr(obj, "tenant", None) if not isinstance(obj, Tenant) else obj

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        action = f"{self.audit_name}.{'update' if change else 'create'}"
        changed = list(form.changed_data) if form is not None else []
        record_audit(
            user=request.user,
            action=action,
            target=obj,
            tenant=self._audit_tenant(obj),
            ip=client_ip(request),
            detail={"fields": changed, "via": "admin"},
        )

    def delete_model(self, request, obj):
        record_audit(
            user=request.user,
            action=f"{self.audit_name}.delete",
            target=obj,
            tenant=self._audit_tenant(obj),
            ip=client_ip(request),
            detail={"via": "admin"},
        )
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


class UsageChangeList(ChangeList):
    """Computes the usage of every tenant on the page with one call (no query per row)."""

    def get_results(self, request):
        super().get_results(request)
        tenant_ids = [self.model_admin.tenant_id_of(obj) for obj in self.result_list]
        usage = tenant_usage(tenant_ids=tenant_ids)
        for obj in self.result_list:
            obj._usage = usage.get(self.model_admin.tenant_id_of(obj), {})


def usage_cell(quota: Quota | None, usage: dict[str, int], resource: str) -> str:
    if quota is None:
        return "-"
    limit = getattr(quota, resource)
    used = usage.get(resource, 0)
    if limit < 0:
        return format_html("{} / ∞", used)
    colour = "#b91c1c" if used >= limit else ("#b45309" if limit and used / limit >= 0.8 else "inherit")
    return format_html('<span style="color:{}">{} / {}</span>', colour, used, limit)


def with_usage_columns(*resources: str):
    """Class decorator: adds a ``usage_<resource>`` "used / limit" column per resource."""

    def make_column(resource: str):
        @admin.display(description=QUOTA_RESOURCES[resource])
        def column(self, obj):
            quota = obj if isinstance(obj, Quota) else getattr(obj, "quota", None)
            return usage_cell(quota, getattr(obj, "_usage", {}), resource)

        return column

    def decorate(cls):
        for resource in resources:
            setattr(cls, f"usage_{resource}", make_column(resource))
        return cls

    return decorate


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]


class QuotaForm(forms.ModelForm):
    """A tenant's limits, each with what the tenant uses now beside it (-1: unlimited)."""

    class Meta:
        model = Quota
        fields = ["tenant", *QUOTA_RESOURCES]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        tenant_id = self.instance.tenant_id if self.instance.pk else None
        if tenant_id is None:
            return
        usage = tenant_usage(tenant_ids=[tenant_id])[tenant_id]
        for resource in QUOTA_RESOURCES:
            if resource in self.fields:
                field = self.fields[resource]  # its own help ("-1 means unlimited."), then the usage
                field.help_text = f"{field.help_text} " + _("In use now: %(used)d") % {"used": usage.get(resource, 0)}


def warn_quota_below_usage(request, quota: Quota) -> None:
    """Say which limits the admin just set under the tenant's usage (allowed, as in Nova)."""
    for line in quota_lines_below_usage(quota=quota):
        messages.warning(
            request,
            _(
                "The %(resource)s limit of tenant “%(tenant)s” (%(limit)d) is below what it uses now (%(used)d): "
                "new requests for it are refused until usage drops."
            )
            % {"resource": line.label, "tenant": quota.tenant.name, "limit": line.limit, "used": line.used},
        )


class QuotaInline(admin.StackedInline):
    model = Quota
    form = QuotaForm
    can_delete = False
    extra = 1
    max_num = 1
    fields = [tuple(QUOTA_RESOURCES)]


TENANT_USAGE_COLUMNS = ("instances", "vcpus", "ram_mib", "disk_gib", "snapshots", "snapshot_mib", "images")


@admin.register(Tenant)
@with_usage_columns(*TENANT_USAGE_COLUMNS)
class TenantAdmin(AuditedAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    audit_name = "tenant"
    list_display = [
        "name",
        "slug",
        "enabled",
        "member_count",
        *[f"usage_{r}" for r in TENANT_USAGE_COLUMNS],
    ]
    list_filter = ["enabled"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ("name",)}
    inlines = [QuotaInline, MembershipInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("quota").annotate(_member_count=Count("memberships"))

    @admin.display(description=_("members"), ordering="_member_count")
    def member_count(self, obj) -> int:
        return obj._member_count

    def get_changelist(self, request, **kwargs):
        return UsageChangeList

    @staticmethod
    def tenant_id_of(obj) -> int:
        return obj.pk

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        quota = ensure_quota(
            tenant=form.instance
        )  # a tenant always has a quota row, with the defaults if none was given
        warn_quota_below_usage(request, quota)


@admin.register(Quota)
@with_usage_columns(*QUOTA_RESOURCES)
class QuotaAdmin(AuditedAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    audit_name = "quota"
    form = QuotaForm
    list_display = ["tenant", *[f"usage_{r}" for r in QUOTA_RESOURCES]]
    search_fields = ["tenant__name"]
    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]

    def get_changelist(self, request, **kwargs):
        return UsageChangeList

    @staticmethod
    def tenant_id_of(obj) -> int:
        return obj.tenant_id

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        warn_quota_below_usage(request, obj)


@admin.register(Membership)
class MembershipAdmin(AuditedAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    audit_name = "membership"
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "tenant__name"]
    list_select_related = ["user", "tenant"]
    autocomplete_fields = ["user", "tenant"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Cloud admins can see and revoke tokens; the secrets themselves are never stored."""

    list_display = ["name", "user", "prefix", "scope", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["scope"]
    search_fields = ["name", "user__username", "prefix"]
    list_select_related = ["user"]
    readonly_fields = ["user", "name", "prefix", "scope", "expires_at", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description=_("Revoke selected tokens"))
    def revoke(self, request, queryset):
        for token in queryset:
            revoke_api_token(actor=request.user, token=token, ip=client_ip(request))
        self.message_user(request, _("Tokens revoked."), messages.SUCCESS)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "username", "tenant", "action", "target_repr", "outcome", "ip"]
    list_filter = ["outcome", "action", "tenant"]
    search_fields = ["username", "action", "target_repr", "ip"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]


@admin.register(LoginFailure)
class LoginFailureAdmin(admin.ModelAdmin):
    """The sign-in throttle's counters: who failed from where. Deleting an account's rows lifts its lock."""

    list_display = ["created_at", "username", "address"]
    search_fields = ["username", "address"]
    date_hierarchy = "created_at"
    readonly_fields = ["created_at", "username", "address"]

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def delete_queryset(self, request, queryset):
        unlock_logins(actor=request.user, failures=queryset, ip=client_ip(request))

    def delete_model(self, request, obj):
        unlock_logins(actor=request.user, failures=LoginFailure.objects.filter(pk=obj.pk), ip=client_ip(request))
