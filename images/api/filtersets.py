"""django-filter filtersets of the image API."""

from __future__ import annotations

import django_filters
from django.utils.translation import gettext_lazy as _

from images.models import Image
from portal.api.filtersets import TenantChoiceFilter


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
