"""django-filter filtersets of the compute API."""

from __future__ import annotations

import django_filters
from django.utils.translation import gettext_lazy as _

from portal.api.filtersets import TenantChoiceFilter
from vms.models import Flavor, Operation


class FlavorFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter(
        method="filter_tenant",
        help_text=_("Only the flavors this tenant may launch (one of your tenants)."),
    )
    is_public = django_filters.BooleanFilter(label=_("public"))
    disabled = django_filters.BooleanFilter(label=_("disabled"))

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
