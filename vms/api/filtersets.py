"""django-filter filtersets of the compute API."""

from __future__ import annotations

import django_filters
from django.utils.translation import gettext_lazy as _

from portal.api.filtersets import TenantChoiceFilter
from vms.models import Flavor


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
