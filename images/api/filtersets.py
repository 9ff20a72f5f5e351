"""django-filter filtersets of the image API."""

from __future__ import annotations

import django_filters
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field

from images.models import Image, ImageShare
from portal.access import MEMBER_ROLES, tenant_ids_for
from portal.api.filtersets import TenantChoiceFilter


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": 2**63 - 1})
class ImageIdFilter(django_filters.NumberFilter):
    """An image id: a whole number from 1."""


class ImageFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter(help_text=_("Images owned by this tenant (one you can see)."))
    kind = django_filters.ChoiceFilter(choices=Image.Kind.choices, label=_("kind"))
    status = django_filters.ChoiceFilter(choices=Image.Status.choices, label=_("status"))
    visibility = django_filters.ChoiceFilter(choices=Image.Visibility.choices, label=_("visibility"))
    disk_format = django_filters.ChoiceFilter(choices=Image.DiskFormat.choices, label=_("disk format"))
    os_type = django_filters.ChoiceFilter(choices=Image.OsType.choices, label=_("OS type"))

    class Meta:
        model = Image
        fields = ["tenant", "kind", "status", "visibility", "disk_format", "os_type"]


class ImageShareFilter(django_filters.FilterSet):
    DIRECTIONS = [("incoming", _("Offered to your tenants")), ("outgoing", _("Of your tenants' images"))]

    direction = django_filters.ChoiceFilter(choices=DIRECTIONS, method="filter_direction", label=_("direction"))
    tenant = TenantChoiceFilter(help_text=_("Shares offered to this tenant (one you are a member of)."))
    image = ImageIdFilter(field_name="image_id", label=_("image"), min_value=1, max_value=2**63 - 1)
    status = django_filters.ChoiceFilter(choices=ImageShare.Status.choices, label=_("status"))

    class Meta:
        model = ImageShare
        fields = ["direction", "tenant", "image", "status"]

    def filter_direction(self, queryset, name, value):
        mine = tenant_ids_for(getattr(self.request, "user", None), MEMBER_ROLES)
        if value == "incoming":
            return queryset.filter(tenant__in=mine)
        return queryset.filter(Q(image__tenant__in=mine))
