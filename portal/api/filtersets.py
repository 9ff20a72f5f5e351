"""django-filter filtersets of the tenancy API.

Filters that name a tenant only accept tenants the requester can see: any other id is
"not a valid choice", exactly like an id that does not exist.
"""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from portal.access import VIEW
from portal.models import ApiToken, AuditEvent, Membership, Quota, Tenant


class UtcIsoDateTimeRangeField(django_filters.fields.IsoDateTimeRangeField):
    """ISO 8601 bounds, normalised to UTC: PostgreSQL refuses the offsets beyond ±15:59 that ISO text can carry."""

    def compress(self, data_list):
        try:
            data_list = [value.astimezone(UTC) if value is not None else None for value in data_list or []]
        except OverflowError as exc:
            raise forms.ValidationError(_("The date is out of range."), code="invalid") from exc
        return super().compress(data_list)


class UtcIsoDateTimeFromToRangeFilter(django_filters.IsoDateTimeFromToRangeFilter):
    field_class = UtcIsoDateTimeRangeField


class StrictBooleanField(forms.Field):
    """``true`` or ``false`` (any case), as OpenAPI writes a boolean in a query; anything else is refused."""

    default_error_messages = {"invalid": _("Use true or false.")}

    def to_python(self, value):
        if value is None:
            return None
        text = str(value).lower()
        if text not in {"true", "false"}:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return text == "true"


@extend_schema_field(OpenApiTypes.BOOL)
class StrictBooleanFilter(django_filters.BooleanFilter):
    """django-filter's BooleanFilter reads a value it does not know (``2``, ``abc``) as no filter at all;
    this one answers 400, so a query parameter the schema calls a boolean is one."""

    field_class = StrictBooleanField


def visible_tenants(request):
    """Queryset of the tenant filters: the tenants ``request.user`` may see (none without a request)."""
    user = getattr(request, "user", None)
    return Tenant.objects.restrict(user, VIEW)


@extend_schema_field(OpenApiTypes.INT)
class TenantChoiceFilter(django_filters.ModelChoiceFilter):
    """A tenant id among the tenants the requester can see."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("queryset", visible_tenants)
        kwargs.setdefault("label", _("tenant"))
        super().__init__(*args, **kwargs)


class TenantFilter(django_filters.FilterSet):
    enabled = StrictBooleanFilter(label=_("enabled"))

    class Meta:
        model = Tenant
        fields = ["enabled"]


class MembershipFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter()
    role = django_filters.ChoiceFilter(choices=Membership.Role.choices, label=_("role"))
    username = django_filters.CharFilter(field_name="user__username", label=_("username"))

    class Meta:
        model = Membership
        fields = ["tenant", "role", "username"]


class QuotaFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter()

    class Meta:
        model = Quota
        fields = ["tenant"]


class ApiTokenFilter(django_filters.FilterSet):
    scope = django_filters.ChoiceFilter(choices=ApiToken.Scope.choices, label=_("scope"))
    active = StrictBooleanFilter(method="filter_active", label=_("active (not revoked, not expired)"))

    class Meta:
        model = ApiToken
        fields = ["scope", "active"]

    def filter_active(self, queryset, name, value):
        if value is None:
            return queryset
        active = Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        return queryset.filter(active) if value else queryset.exclude(active)


class AuditEventFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter()
    action = django_filters.CharFilter(label=_("action"), help_text=_("Exact action, e.g. tenant.update."))
    action_prefix = django_filters.CharFilter(
        field_name="action", lookup_expr="startswith", label=_("action prefix"), help_text=_("e.g. membership.")
    )
    outcome = django_filters.ChoiceFilter(choices=AuditEvent.Outcome.choices, label=_("outcome"))
    username = django_filters.CharFilter(label=_("username"))
    target_type = django_filters.CharFilter(label=_("target type"))
    created_at = UtcIsoDateTimeFromToRangeFilter(
        label=_("time"), help_text=_("Use created_at_after and/or created_at_before (ISO 8601).")
    )

    class Meta:
        model = AuditEvent
        fields = ["tenant", "action", "action_prefix", "outcome", "username", "target_type", "created_at"]
