"""django-filter filtersets of the compute API."""

from __future__ import annotations

import django_filters
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from portal.access import VIEW
from portal.api.filtersets import StrictBooleanFilter, TenantChoiceFilter
from vms.models import CloudFlavor, CloudProject, Flavor, Host, Instance, Operation, PlacementRule, UnmanagedDomain


class FlavorFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter(
        method="filter_tenant",
        help_text=_("Only the flavors this tenant may launch (one of your tenants)."),
    )
    is_public = StrictBooleanFilter(label=_("public"))
    disabled = StrictBooleanFilter(label=_("disabled"))

    class Meta:
        model = Flavor
        fields = ["tenant", "is_public", "disabled"]

    def filter_tenant(self, queryset, name, value):
        if value is None:
            return queryset
        return queryset.filter(pk__in=Flavor.objects.usable_by(value).values("pk"))


class OperationFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter()
    kind = django_filters.CharFilter(label=_("kind"), help_text=_("e.g. image.process."))
    state = django_filters.ChoiceFilter(choices=Operation.State.choices, label=_("state"))
    target_type = django_filters.CharFilter(label=_("target type"), help_text=_("e.g. images.image."))
    target_id = django_filters.CharFilter(label=_("target id"))

    class Meta:
        model = Operation
        fields = ["tenant", "kind", "state", "target_type", "target_id"]


def visible_hosts(request):
    """Queryset of the host filters: every host for cloud admins, none for anyone else."""
    return Host.objects.restrict(getattr(request, "user", None), VIEW)


@extend_schema_field(OpenApiTypes.INT)
class HostChoiceFilter(django_filters.ModelChoiceFilter):
    """A host id (cloud admins only: for anyone else no host is a valid choice)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("queryset", visible_hosts)
        kwargs.setdefault("label", _("host"))
        super().__init__(*args, **kwargs)


def visible_flavors(request):
    return Flavor.objects.restrict(getattr(request, "user", None), VIEW)


@extend_schema_field(OpenApiTypes.INT)
class FlavorChoiceFilter(django_filters.ModelChoiceFilter):
    """A flavor id among the flavors the user may see (no hint about others)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("queryset", visible_flavors)
        kwargs.setdefault("label", _("flavor"))
        super().__init__(*args, **kwargs)


class InstanceFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter()
    state = django_filters.ChoiceFilter(choices=Instance.State.choices, label=_("state"))
    host = HostChoiceFilter(help_text=_("Instances placed on this host (cloud admins only)."))
    name = django_filters.CharFilter(lookup_expr="icontains", label=_("name contains"))

    class Meta:
        model = Instance
        fields = ["tenant", "state", "host", "name"]


class HostFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=Host.Kind.choices, label=_("kind"))
    state = django_filters.ChoiceFilter(choices=Host.State.choices, label=_("state"))
    enabled = StrictBooleanFilter(label=_("enabled"))
    name = django_filters.CharFilter(lookup_expr="icontains", label=_("name contains"))

    class Meta:
        model = Host
        fields = ["kind", "state", "enabled", "name"]


class CloudProjectFilter(django_filters.FilterSet):
    host = HostChoiceFilter(label=_("cloud"))
    tenant = TenantChoiceFilter()
    managed = StrictBooleanFilter(label=_("managed"))

    class Meta:
        model = CloudProject
        fields = ["host", "tenant", "managed"]


class CloudFlavorFilter(django_filters.FilterSet):
    host = HostChoiceFilter(label=_("cloud"))
    flavor = FlavorChoiceFilter()

    class Meta:
        model = CloudFlavor
        fields = ["host", "flavor"]


class PlacementRuleFilter(django_filters.FilterSet):
    host = HostChoiceFilter()
    tenant = TenantChoiceFilter()
    flavor = FlavorChoiceFilter()

    class Meta:
        model = PlacementRule
        fields = ["host", "tenant", "flavor"]


class UnmanagedDomainFilter(django_filters.FilterSet):
    host = HostChoiceFilter()
    name = django_filters.CharFilter(lookup_expr="icontains", label=_("name contains"))

    class Meta:
        model = UnmanagedDomain
        fields = ["host", "name"]
