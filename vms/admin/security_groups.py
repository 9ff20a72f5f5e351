"""Admin of security groups: listed with their rules, created and deleted through ``vms.security_groups``.

Rules are added and removed on the group's dashboard page (linked from here) or through the API,
where they are validated and reach the hosts; the admin shows them read-only.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from portal.admin import RestrictedAdminMixin
from portal.middleware import client_ip
from portal.services import ServiceError
from vms import security_groups as services
from vms.admin.common import adopt_saved
from vms.models import SecurityGroup, SecurityGroupRule


class RuleInline(admin.TabularInline):
    model = SecurityGroupRule
    fk_name = "group"
    extra = 0
    can_delete = False
    fields = ["direction", "protocol", "port_min", "port_max", "remote_cidr", "remote_group", "description"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class SecurityGroupAdminForm(forms.ModelForm):
    class Meta:
        model = SecurityGroup
        fields = ["tenant", "name", "description"]

    def clean(self):
        data = super().clean()
        if data.get("tenant") is not None and "name" in data:
            try:
                data["name"] = services.check_new_group(tenant=data["tenant"], name=data["name"])
            except ServiceError as exc:
                self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return data

    def _post_clean(self):
        """The service saves the row (and checks again, under the quota lock)."""


@admin.register(SecurityGroup)
class SecurityGroupAdmin(RestrictedAdminMixin, admin.ModelAdmin):
    form = SecurityGroupAdminForm
    list_display = ["name", "tenant", "description", "rules_page", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["name", "description", "tenant__name"]
    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]
    inlines = [RuleInline]

    @admin.display(description=_("rules"))
    def rules_page(self, obj: SecurityGroup) -> str:
        return format_html('<a href="{}">{}</a>', reverse("security_group_detail", args=[obj.pk]), _("Manage rules"))

    def get_readonly_fields(self, request, obj=None):
        return ["tenant", "name", "description", "created_at"] if obj is not None else []

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        group = services.create_security_group(
            actor=request.user,
            tenant=form.cleaned_data["tenant"],
            name=form.cleaned_data["name"],
            description=form.cleaned_data.get("description", ""),
            ip=client_ip(request),
        )
        adopt_saved(obj, group)

    def delete_model(self, request, obj):
        try:
            services.delete_security_group(actor=request.user, group=obj, ip=client_ip(request))
        except ServiceError as exc:  # the default group, or one in use
            self.message_user(request, exc.message, messages.ERROR)

    def delete_queryset(self, request, queryset):
        for group in queryset:
            self.delete_model(request, group)
