from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count
from django.http import HttpResponse
from django.template import engines
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from portal import middleware
from portal import services as portal_services
from portal.admin import AuditedAdminMixin, RestrictedAdminMixin
from portal.middleware import client_ip
from portal.models import Tenant
from portal.services import ServiceError
from vms import hosts as host_services
from vms import keypairs as keypair_services
from vms import lifecycle
from vms import networks as network_services
from vms.models import Flavor, Host, Instance, InstanceDisk, Keypair, Network, Operation, Snapshot, UnmanagedDomain


@admin.register(Host)
class HostAdmin(AuditedAdminMixin, RestrictedAdminMixin, admin.ModelAdmin):
    """Hosts are configured here; their capacity and state come from the host (refresh action, watcher)."""

    audit_name = "host"
    list_display = [
        "name",
        "kind",
        "uri",
        "storage_pool",
        "enabled",
        "state",
        "cpus",
        "memory_mib",
        "instance_count",
        "last_seen",
    ]
    list_filter = ["kind", "enabled", "state"]
    search_fields = ["name", "uri"]
    readonly_fields = [
        "state",
        "state_reason",
        "cpus",
        "memory_mib",
        "free_memory_mib",
        "pool_capacity",
        "pool_available",
        "libvirt_version",
        "last_seen",
        "created_at",
    ]
    actions = ["refresh_capacity"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(instance_total=Count("instances"))

    @admin.display(description=_("instances"), ordering="instance_total")
    def instance_count(self, obj: Host) -> int:
        return obj.instance_total

    @admin.action(description=_("Refresh capacity (ask the hosts now)"))
    def refresh_capacity(self, request, queryset):
        for host in queryset:
            host = host_services.refresh_host(host=host)
            if host.state == Host.State.DOWN:
                self.message_user(
                    request,
                    _("%(host)s did not answer: %(reason)s") % {"host": host.name, "reason": host.state_reason},
                    messages.WARNING,
                )
            else:
                self.message_user(
                    request,
                    _("%(host)s: %(cpus)s CPUs, %(ram)s MiB RAM.")
                    % {"host": host.name, "cpus": host.cpus, "ram": host.memory_mib},
                    messages.SUCCESS,
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


def _run_each(model_admin, request, queryset, call, done_message) -> None:
    """Call ``call(obj)`` for each selected object; refusals become error messages, the rest one success."""
    done = 0
    for obj in queryset:
        try:
            call(obj)
        except portal_services.ServiceError as exc:
            model_admin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
        else:
            done += 1
    if done:
        model_admin.message_user(request, done_message(done), messages.SUCCESS)


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
        "host",
        "domain_name",
        "keypair",
        "network",
        "user_data",
        "installing",
        "state",
        "state_reason",
        "desired_power_state",
        "task",
        "mac_address",
        "addresses",
        "created_at",
        "updated_at",
    ]
    actions = ["start_instances", "shutdown_instances", "delete_selected"]

    def has_add_permission(self, request) -> bool:
        return False  # instances are launched through the dashboard or the API, which reserve quota

    @admin.action(description=_("Start selected instances"))
    def start_instances(self, request, queryset):
        self._power(request, queryset, "start")

    @admin.action(description=_("Shut down selected instances"))
    def shutdown_instances(self, request, queryset):
        self._power(request, queryset, "shutdown")

    def _power(self, request, queryset, action: str) -> None:
        _run_each(
            self,
            request,
            queryset,
            lambda instance: lifecycle.request_action(
                actor=request.user, instance=instance, action=action, ip=middleware.client_ip(request)
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
            lifecycle.delete_instance(actor=request.user, instance=obj, ip=middleware.client_ip(request))
        except portal_services.ServiceError as exc:
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


class ReadOnlyAdminMixin:
    """Rows written by the lifecycle services only: listed and shown, never edited here."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


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


class AdoptForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.filter(enabled=True), label=_("tenant"))
    flavor = forms.ModelChoiceField(
        queryset=Flavor.objects.filter(disabled=False),
        label=_("flavor"),
        help_text=_("Its sizes are what the tenant's quota counts for the instance."),
    )
    name = forms.CharField(
        max_length=63,
        required=False,
        label=_("name"),
        help_text=_("Only when adopting one domain; the domain's name when empty."),
    )


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
            _run_each(
                self,
                request,
                domains,
                lambda domain: host_services.adopt_domain(
                    actor=request.user,
                    unmanaged=domain,
                    tenant=data["tenant"],
                    flavor=data["flavor"],
                    name=name,
                    ip=middleware.client_ip(request),
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


# ---------------------------------------------------------------- keypairs and networks (saved through the services)


def _adopt(obj, saved) -> None:
    """Make the admin's unsaved ``obj`` the row a service saved, so the admin redirects to it."""
    for field in type(saved)._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


class KeypairAdminForm(forms.ModelForm):
    class Meta:
        model = Keypair
        fields = ["tenant", "name", "public_key"]

    def clean(self):
        data = super().clean()
        try:
            if "name" in data:
                data["name"] = keypair_services.clean_name(data["name"])
            if data.get("public_key"):
                keypair_services.parse_public_key(data["public_key"])
        except ServiceError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return data


@admin.register(Keypair)
class KeypairAdmin(RestrictedAdminMixin, admin.ModelAdmin):
    """Keypairs are imported here (generating one is for the dashboard and the API, which show the
    private key); existing ones can be looked at and deleted, not edited."""

    form = KeypairAdminForm
    list_display = ["name", "tenant", "owner", "fingerprint", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["name", "fingerprint", "tenant__name", "owner__username"]
    list_select_related = ["tenant", "owner"]
    autocomplete_fields = ["tenant"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            return ["tenant", "owner", "name", "public_key", "fingerprint", "created_at"]
        return []

    def get_fields(self, request, obj=None):
        if obj is not None:
            return ["tenant", "owner", "name", "public_key", "fingerprint", "created_at"]
        return ["tenant", "name", "public_key"]

    def save_model(self, request, obj, form, change):
        keypair = keypair_services.import_keypair(
            actor=request.user,
            tenant=form.cleaned_data["tenant"],
            name=form.cleaned_data["name"],
            public_key=form.cleaned_data["public_key"],
            ip=client_ip(request),
        )
        _adopt(obj, keypair)

    def delete_model(self, request, obj):
        keypair_services.delete_keypair(actor=request.user, keypair=obj, ip=client_ip(request))

    def delete_queryset(self, request, queryset):
        for keypair in queryset:
            self.delete_model(request, keypair)


class NetworkAdminForm(forms.ModelForm):
    class Meta:
        model = Network
        fields = ["name", "libvirt_name", "mode", "bridge", "cidr", "dhcp", "description", "is_public", "tenants"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["libvirt_name"].required = False
        self.fields["libvirt_name"].help_text = _("The network's name on every host; derived from the name if empty.")

    def clean(self):
        data = super().clean()
        values = {field: data.get(field) for field in network_services.NETWORK_FIELDS if field in data}
        try:
            if self.instance.pk:
                network_services.validate_network_update(network=self.instance, changes=values)
            else:
                network_services.validate_network(values)
        except ServiceError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return data

    def _post_clean(self):
        """The service validates and saves the row (uniqueness included, with its own messages, in clean)."""


@admin.register(Network)
class NetworkAdmin(RestrictedAdminMixin, admin.ModelAdmin):
    """Networks are defined, changed and deleted through vms.networks (validation, audit, in-use checks)."""

    form = NetworkAdminForm
    list_display = ["name", "libvirt_name", "mode", "bridge", "cidr", "dhcp", "is_public", "tenant_list"]
    list_filter = ["mode", "is_public"]
    search_fields = ["name", "libvirt_name", "description", "cidr"]
    filter_horizontal = ["tenants"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("tenants")

    @admin.display(description=_("tenants with access"))
    def tenant_list(self, obj) -> str:
        return "—" if obj.is_public else ", ".join(t.name for t in obj.tenants.all())

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        values = {field: data[field] for field in network_services.NETWORK_FIELDS if field in data}
        try:
            if change:
                saved = network_services.update_network(
                    actor=request.user,
                    network=Network.objects.get(pk=obj.pk),
                    tenants=data.get("tenants", ()),
                    ip=client_ip(request),
                    **values,
                )
            else:
                saved = network_services.create_network(
                    actor=request.user, tenants=data.get("tenants", ()), ip=client_ip(request), **values
                )
        except ServiceError as exc:  # lost a race since clean(): nothing was saved
            self.message_user(request, exc.message, messages.ERROR)
            return
        _adopt(obj, saved)

    def save_related(self, request, form, formsets, change):
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)  # the service already set the tenants

    def delete_model(self, request, obj):
        try:
            network_services.delete_network(actor=request.user, network=obj, ip=client_ip(request))
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    def delete_queryset(self, request, queryset):
        for network in queryset:
            self.delete_model(request, network)
