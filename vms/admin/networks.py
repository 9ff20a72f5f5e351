"""Admin of keypairs and networks, saved through their services (``vms.keypairs``, ``vms.networks``)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _

from portal.admin import RestrictedAdminMixin
from portal.middleware import client_ip
from portal.services import ServiceError
from vms import keypairs as keypair_services
from vms import networks as network_services
from vms.admin.common import adopt_saved
from vms.models import (
    Keypair,
    Network,
)


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
        adopt_saved(obj, keypair)

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
        adopt_saved(obj, saved)

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
