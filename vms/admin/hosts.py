"""Admin of hosts and clouds, the domains found on hosts, tenants' cloud projects, cloud flavors, placement rules.

Hosts are saved through ``vms.hosts`` (audited there); what differs between kinds (which settings
apply, the login, how a host is asked) comes from the host's adapter (``vms.compute``).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import models
from django.db.models import Count
from django.http import HttpResponse
from django.template import engines
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from portal.admin import ReadOnlyAdminMixin, RestrictedAdminMixin
from portal.middleware import client_ip
from portal.models import Tenant
from portal.services import ServiceError
from vms import hosts as host_services
from vms import limits, moves
from vms.admin.common import adopt_saved, run_each
from vms.compute import Capability, compute_for, kinds_with
from vms.compute.openstack.login import CREDENTIAL_FIELDS, SECRET_FIELDS, credentials_summary
from vms.compute.openstack.mirror import push_quota
from vms.models import (
    CloudFlavor,
    CloudProject,
    Flavor,
    Host,
    PlacementRule,
    UnmanagedDomain,
)
from vms.selectors import evacuation_loss

CREDENTIAL_PREFIX = "os_"


HOST_LOGIN_FIELDS = [
    "credentials_stored",
    "credentials_names",
    f"{CREDENTIAL_PREFIX}username",
    f"{CREDENTIAL_PREFIX}password",
    f"{CREDENTIAL_PREFIX}project_name",
    f"{CREDENTIAL_PREFIX}user_domain_name",
    f"{CREDENTIAL_PREFIX}project_domain_name",
    f"{CREDENTIAL_PREFIX}application_credential_id",
    f"{CREDENTIAL_PREFIX}application_credential_secret",
    "clear_credentials",
]


HOST_STATE_FIELDS = [*Host.REPORTED_FIELDS, "created_at"]


def _fields_with_defaults() -> set[str]:
    """Host fields that cannot be blank but have a default: optional in the form (blank = the default)."""
    return {
        f.name
        for f in Host._meta.concrete_fields
        if f.editable and not f.blank and f.has_default() and not isinstance(f, models.BooleanField)
    }


def _secret_input():
    # Never rendered with a value: a stored secret does not go back to the browser.
    return forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})


class HostAdminForm(forms.ModelForm):
    """Host fields plus a cloud's login. Secrets are write-only: never rendered; blank keeps the stored one.

    Validation and saving go through vms.hosts (``prepare_host`` here, ``save_host`` in the admin).
    """

    auth_url = forms.URLField(
        label=Host._meta.get_field("auth_url").verbose_name,
        required=False,
        max_length=255,
        assume_scheme="https",
        help_text=Host._meta.get_field("auth_url").help_text,
    )
    os_username = forms.CharField(label=_("username"), required=False, max_length=255)
    os_password = forms.CharField(
        label=_("password"),
        required=False,
        max_length=255,
        strip=False,
        widget=_secret_input(),
        help_text=_("Write-only: blank keeps the stored password."),
    )
    os_project_name = forms.CharField(label=_("project name"), required=False, max_length=255)
    os_user_domain_name = forms.CharField(label=_("user domain"), required=False, max_length=255)
    os_project_domain_name = forms.CharField(label=_("project domain of the login"), required=False, max_length=255)
    os_application_credential_id = forms.CharField(label=_("application credential id"), required=False, max_length=255)
    os_application_credential_secret = forms.CharField(
        label=_("application credential secret"),
        required=False,
        max_length=255,
        strip=False,
        widget=_secret_input(),
        help_text=_("Write-only: blank keeps the stored secret."),
    )
    clear_credentials = forms.BooleanField(
        label=_("forget the stored login"),
        required=False,
        help_text=_("Forget the stored login; only what is entered above is then stored."),
    )

    class Meta:
        model = Host
        fields = ["name", "kind", "enabled", *Host.settings_fields()]  # the adapter picks the kind's

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in _fields_with_defaults():
            if name in self.fields:
                self.fields[name].required = False  # blank: the model's default (a cloud skips libvirt settings)
        if self.instance.pk and self.instance.credentials:
            for key, value in credentials_summary(self.instance).items():
                name = CREDENTIAL_PREFIX + key
                if name in self.fields and key not in SECRET_FIELDS:
                    self.fields[name].initial = value

    def credentials(self) -> dict[str, str]:
        """The login as entered (keys of CREDENTIAL_FIELDS); blank values keep the stored ones."""
        data = self.cleaned_data
        return {
            key: data.get(CREDENTIAL_PREFIX + key) or ""
            for key in CREDENTIAL_FIELDS
            if CREDENTIAL_PREFIX + key in self.fields
        }

    def host_values(self) -> dict:
        names = {f.name for f in Host._meta.concrete_fields if f.editable}
        defaults = _fields_with_defaults()
        return {
            name: value
            for name, value in self.cleaned_data.items()
            if name in names and not (name in defaults and value in (None, ""))
        }

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            host_services.prepare_host(
                host=Host.objects.get(pk=self.instance.pk) if self.instance.pk else None,
                values=self.host_values(),
                credentials=self.credentials(),
                clear_credentials=bool(data.get("clear_credentials")),
            )
        except ServiceError as exc:
            field = CREDENTIAL_PREFIX + "username" if exc.field == "credentials" else exc.field
            self.add_error(field if field in self.fields else None, exc.message)
        return data

    def _post_clean(self):
        """vms.hosts validated the input in clean() and saves the row (the admin's save_model)."""


@admin.register(Host)
class HostAdmin(RestrictedAdminMixin, admin.ModelAdmin):
    """Libvirt hosts and OpenStack clouds are configured here, through vms.hosts.save_host (audited there);
    their capacity and state come from the host or cloud (verify/refresh action, watcher)."""

    form = HostAdminForm
    list_display = [
        "name",
        "kind",
        "location",
        "enabled",
        "state",
        "cpus",
        "memory_mib",
        "instance_count",
        "last_seen",
    ]
    list_filter = ["kind", "enabled", "state"]
    search_fields = ["name", "uri", "auth_url", "cloud_name"]
    actions = ["refresh_capacity", "drain_hosts", "evacuate_hosts"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(instance_total=Count("instances"))

    def get_readonly_fields(self, request, obj=None):
        fixed = ["kind"] if obj is not None else []
        return [*fixed, *HOST_STATE_FIELDS, "credentials_stored", "credentials_names"]

    def get_fieldsets(self, request, obj=None):
        general = (None, {"fields": ["name", "kind", "enabled"]})
        login = (
            _("Cloud login"),
            {
                "fields": HOST_LOGIN_FIELDS,
                "description": _(
                    "A password login (username, password, project name) or an application credential (id and "
                    "secret). Stored encrypted; secrets are never shown again, blank fields keep the stored values."
                ),
            },
        )
        state = (_("State (reported by the host or cloud)"), {"fields": HOST_STATE_FIELDS})
        # A new host shows every kind's settings (the kind is chosen in the form); a saved one its own kind's.
        kinds = Host.Kind.values if obj is None else [obj.kind]
        fieldsets, with_login = [general], False
        for kind in kinds:
            fields = compute_for(Host(kind=kind)).settings_fields()
            fieldsets.append((Host.Kind(kind).label, {"fields": [f for f in fields if f != "credentials"]}))
            with_login = with_login or "credentials" in fields
        if with_login:
            fieldsets.append(login)
        return fieldsets if obj is None else [*fieldsets, state]

    @admin.display(description=_("instances"), ordering="instance_total")
    def instance_count(self, obj: Host) -> int:
        return obj.instance_total

    @admin.display(description=_("where"))
    def location(self, obj: Host) -> str:
        return compute_for(obj).location(obj)

    @admin.display(description=_("credentials stored"), boolean=True)
    def credentials_stored(self, obj: Host | None) -> bool:
        return bool(obj is not None and obj.credentials)

    @admin.display(description=_("stored login"))
    def credentials_names(self, obj: Host | None) -> str:
        if obj is None or not obj.credentials:
            return "—"
        summary = credentials_summary(obj)
        return ", ".join(f"{key}: {value}" for key, value in sorted(summary.items())) or "—"

    def save_model(self, request, obj, form, change):
        try:
            saved = host_services.save_host(
                actor=request.user,
                host=Host.objects.get(pk=obj.pk) if change else None,
                values=form.host_values(),
                credentials=form.credentials(),
                clear_credentials=bool(form.cleaned_data.get("clear_credentials")),
                ip=client_ip(request),
                via="admin",
            )
        except ServiceError as exc:  # lost a race since clean(): nothing was saved
            self.message_user(request, exc.message, messages.ERROR)
            return
        adopt_saved(obj, saved)

    def delete_model(self, request, obj):
        try:
            host_services.delete_host(actor=request.user, host=obj, ip=client_ip(request))
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    def delete_queryset(self, request, queryset):
        for host in queryset:
            self.delete_model(request, host)

    @admin.action(description=_("Drain (no new instances; migrate every instance to another host)"))
    def drain_hosts(self, request, queryset):
        run_each(
            self,
            request,
            queryset,
            lambda host: moves.drain_host(actor=request.user, host=host, ip=client_ip(request)),
            lambda n: (
                ngettext("%(count)d host is being drained.", "%(count)d hosts are being drained.", n) % {"count": n}
            ),
        )

    @admin.action(description=_("Evacuate (hosts that are down: rebuild their instances elsewhere)…"))
    def evacuate_hosts(self, request, queryset):
        hosts = list(queryset)
        if "apply" in request.POST:
            run_each(
                self,
                request,
                hosts,
                lambda host: moves.evacuate_host(actor=request.user, host=host, confirm=True, ip=client_ip(request)),
                lambda n: (
                    ngettext("%(count)d host is being evacuated.", "%(count)d hosts are being evacuated.", n)
                    % {"count": n}
                ),
            )
            return None
        rows = []
        for host in hosts:
            count, lost = evacuation_loss(host=host)
            rows.append(
                _("%(name)s (%(state)s): %(count)d instance(s), %(lost)d of them lose their disks")
                % {"name": host.name, "state": host.get_state_display(), "count": count, "lost": lost}
            )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Evacuate hosts"),
            "intro": _(
                "The instances of these hosts are rebuilt on other hosts from their images. Disks that are not on "
                "shared storage are lost. Only evacuate a host that is down and really off:"
            ),
            "rows": rows,
            "hosts": hosts,
            "submit": _("Evacuate"),
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return HttpResponse(engines["django"].from_string(EVACUATE_TEMPLATE).render(context, request))

    @admin.action(description=_("Verify / refresh (ask the hosts and clouds now)"))
    def refresh_capacity(self, request, queryset):
        for host in queryset:
            host = host_services.check_host(host=host)
            if host.state == Host.State.DOWN:
                self.message_user(
                    request,
                    _("%(host)s did not answer: %(reason)s") % {"host": host.name, "reason": host.state_reason},
                    messages.WARNING,
                )
            else:
                self.message_user(request, compute_for(host).check_summary(host), messages.SUCCESS)


class AdoptForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.filter(enabled=True), label=_("tenant"))
    flavor = forms.ModelChoiceField(
        queryset=Flavor.objects.filter(disabled=False),
        label=_("flavor"),
        help_text=_("Its sizes are what the tenant's quota counts for the instance."),
    )
    name = forms.CharField(
        max_length=limits.NAME_MAX,
        required=False,
        label=_("name"),
        help_text=_("Only when adopting one domain; the domain's name when empty."),
    )


EVACUATE_TEMPLATE = """{% extends "admin/base_site.html" %}
{% block content %}
<form method="post">{% csrf_token %}
<p>{{ intro }}</p>
<ul>{% for row in rows %}<li>{{ row }}</li>{% endfor %}</ul>
{% for host in hosts %}<input type="hidden" name="{{ action_checkbox_name }}" value="{{ host.pk }}">{% endfor %}
<input type="hidden" name="action" value="evacuate_hosts">
<div class="submit-row"><input type="submit" name="apply" value="{{ submit }}" class="default"></div>
</form>
{% endblock %}
"""

ADOPT_TEMPLATE = """{% extends "admin/base_site.html" %}
{% block content %}
<form method="post">{% csrf_token %}
<p>{{ intro }}</p>
<ul>{% for domain in domains %}
<li>{{ domain.name }} ({{ domain.host.name }}, {{ domain.uuid }})
<input type="hidden" name="{{ action_checkbox_name }}" value="{{ domain.pk }}"></li>{% endfor %}
</ul>
<table>{{ form.as_table }}</table>
<input type="hidden" name="action" value="adopt">
<div class="submit-row"><input type="submit" name="apply" value="{{ submit }}" class="default"></div>
</form>
{% endblock %}
"""


@admin.register(UnmanagedDomain)
class UnmanagedDomainAdmin(ReadOnlyAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    """Domains found on hosts without an instance row (the watcher lists them); adopt them into a tenant."""

    list_display = ["name", "host", "uuid", "state", "vcpus", "memory_mib", "first_seen", "last_seen"]
    list_filter = ["host", "state"]
    search_fields = ["name", "uuid", "host__name"]
    list_select_related = ["host"]
    actions = ["adopt"]

    @admin.action(description=_("Adopt into a tenant…"))
    def adopt(self, request, queryset):
        domains = list(queryset.select_related("host"))
        form = AdoptForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            data = form.cleaned_data
            name = (data["name"] or None) if len(domains) == 1 else None
            run_each(
                self,
                request,
                domains,
                lambda domain: host_services.adopt_domain(
                    actor=request.user,
                    unmanaged=domain,
                    tenant=data["tenant"],
                    flavor=data["flavor"],
                    name=name,
                    ip=client_ip(request),
                ),
                lambda n: ngettext("%(count)d domain adopted.", "%(count)d domains adopted.", n) % {"count": n},
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Adopt unmanaged domains"),
            "intro": ngettext(
                "Adopt this domain as an instance of a tenant (its quota is reserved):",
                "Adopt these %(count)d domains as instances of a tenant (their quota is reserved):",
                len(domains),
            )
            % {"count": len(domains)},
            "submit": _("Adopt"),
            "domains": domains,
            "form": form,
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return HttpResponse(engines["django"].from_string(ADOPT_TEMPLATE).render(context, request))


class CloudProjectAdminForm(forms.ModelForm):
    class Meta:
        model = CloudProject
        fields = ["host", "tenant", "project_id"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "host" in self.fields:
            self.fields["host"].queryset = Host.objects.filter(kind__in=kinds_with(Capability.TENANT_PROJECTS))
        if "project_id" in self.fields:
            self.fields["project_id"].help_text = _("Id of an existing project in the cloud (Keystone).")

    def _post_clean(self):
        """vms.hosts.map_cloud_project checks and saves the mapping (save_model)."""


@admin.register(CloudProject)
class CloudProjectAdmin(RestrictedAdminMixin, admin.ModelAdmin):
    """Which Keystone project holds a tenant's servers on a cloud: created by the portal (managed) or mapped
    here to an existing project. Saved through vms.hosts (audited there)."""

    form = CloudProjectAdminForm
    list_display = ["tenant", "host", "project_id", "managed", "quota_synced_at", "quota_error", "created_at"]
    list_filter = ["host", "managed"]
    search_fields = ["tenant__name", "project_id", "host__name"]
    list_select_related = ["tenant", "host"]
    autocomplete_fields = ["tenant"]
    actions = ["push_quota_now"]

    def get_readonly_fields(self, request, obj=None):
        fixed = ["host", "tenant"] if obj is not None else []
        return [*fixed, "managed", "quota_synced_at", "quota_error", "created_at"]

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        try:
            saved = host_services.map_cloud_project(
                actor=request.user,
                host=obj.host if change else data["host"],
                tenant=obj.tenant if change else data["tenant"],
                project_id=data["project_id"],
                ip=client_ip(request),
            )
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        adopt_saved(obj, saved)

    def delete_model(self, request, obj):
        try:
            host_services.unmap_cloud_project(actor=request.user, project=obj, ip=client_ip(request))
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    def delete_queryset(self, request, queryset):
        for project in queryset:
            self.delete_model(request, project)

    @admin.action(description=_("Push quota now"))
    def push_quota_now(self, request, queryset):
        tenants = {project.tenant_id: project.tenant for project in queryset.select_related("tenant")}
        for tenant in tenants.values():
            for cloud_name, pushed in push_quota(tenant=tenant).items():
                if pushed:
                    self.message_user(
                        request,
                        _("%(tenant)s: quota pushed to %(cloud)s.") % {"tenant": tenant.name, "cloud": cloud_name},
                        messages.SUCCESS,
                    )
                else:
                    error = (
                        CloudProject.objects.filter(tenant=tenant, host__name=cloud_name)
                        .values_list("quota_error", flat=True)
                        .first()
                    )
                    self.message_user(
                        request,
                        _("%(tenant)s: quota not pushed to %(cloud)s: %(error)s")
                        % {"tenant": tenant.name, "cloud": cloud_name, "error": error or "—"},
                        messages.WARNING,
                    )


@admin.register(CloudFlavor)
class CloudFlavorAdmin(ReadOnlyAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    """Portal flavors as created in each cloud's Nova (the portal writes them on first use)."""

    list_display = ["flavor", "host", "cloud_id", "synced_at"]
    list_filter = ["host"]
    search_fields = ["flavor__name", "cloud_id", "host__name"]
    list_select_related = ["flavor", "host"]


class PlacementRuleAdminForm(forms.ModelForm):
    class Meta:
        model = PlacementRule
        fields = ["tenant", "flavor", "host"]
        help_texts = {
            "tenant": _("Empty: a rule for the flavor, whatever the tenant."),
            "flavor": _("Empty: a rule for the tenant, whatever the flavor."),
            "host": _("New instances that match go to this libvirt host or OpenStack cloud."),
        }

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        values = {field: data.get(field) for field in ("tenant", "flavor", "host")}
        duplicate = PlacementRule.objects.filter(tenant=values["tenant"], flavor=values["flavor"])
        if self.instance.pk:
            duplicate = duplicate.exclude(pk=self.instance.pk)
        if duplicate.exists():
            self.add_error(None, _("There is already a rule for this tenant and flavor; change that one."))
        elif values["tenant"] is None and values["flavor"] is None:
            self.add_error(None, _("A placement rule names a tenant, a flavor or both."))
        return data

    def _post_clean(self):
        """vms.hosts.save_placement_rule checks and saves the rule (save_model)."""


@admin.register(PlacementRule)
class PlacementRuleAdmin(RestrictedAdminMixin, admin.ModelAdmin):
    """Where new instances go. The most specific rule wins: tenant and flavor, then flavor, then tenant.
    Without a matching rule the scheduler picks among the libvirt hosts."""

    form = PlacementRuleAdminForm
    list_display = ["tenant", "flavor", "host", "created_at"]
    list_filter = ["host"]
    search_fields = ["tenant__name", "flavor__name", "host__name"]
    list_select_related = ["tenant", "flavor", "host"]
    autocomplete_fields = ["tenant"]

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "subtitle": _(
                "The most specific rule wins: tenant and flavor, then flavor, then tenant. "
                "No rule: the scheduler picks among the libvirt hosts."
            ),
        }
        return super().changelist_view(request, extra_context)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        try:
            saved = host_services.save_placement_rule(
                actor=request.user,
                rule=PlacementRule.objects.get(pk=obj.pk) if change else None,
                values={field: data.get(field) for field in ("tenant", "flavor", "host")},
                ip=client_ip(request),
                via="admin",
            )
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        adopt_saved(obj, saved)

    def delete_model(self, request, obj):
        host_services.delete_placement_rule(actor=request.user, rule=obj, ip=client_ip(request), via="admin")

    def delete_queryset(self, request, queryset):
        for rule in queryset:
            self.delete_model(request, rule)
