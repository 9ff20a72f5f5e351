"""Serializers of the tenancy API. They shape and validate data only: writes go through portal.services."""

from __future__ import annotations

from collections.abc import Mapping

from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.access import VIEW
from portal.api.strict import StrictModelSerializer, StrictSerializer
from portal.models import QUOTA_RESOURCES, ApiToken, AuditEvent, Membership, Quota, Tenant
from portal.selectors import tenant_usage

# Quota limits and model integers are stored in 32-bit columns on every backend.
MAX_INT32 = 2**31 - 1


# ---------------------------------------------------------------- errors (schema only)


class ProblemSerializer(StrictSerializer):
    """RFC 7807 problem document: the body of every error answer."""

    type = serializers.CharField(help_text=_("URI identifying the kind of problem."))
    title = serializers.CharField(help_text=_("Short summary of the kind of problem."))
    status = serializers.IntegerField(help_text=_("HTTP status code."))
    detail = serializers.CharField(help_text=_("What went wrong with this request."))
    code = serializers.CharField(help_text=_("Machine-readable problem code."))
    errors = serializers.DictField(
        required=False, help_text=_("Validation errors by field name (only for invalid requests).")
    )
    resource = serializers.CharField(required=False, help_text=_("Exceeded quota resource (quota_exceeded only)."))
    requested = serializers.IntegerField(required=False)
    limit = serializers.IntegerField(required=False)
    in_use = serializers.IntegerField(required=False)


# ---------------------------------------------------------------- quotas


def _amounts_serializer(name: str, *, read_only: bool) -> type[serializers.Serializer]:
    """A serializer with one integer field per quota resource (so new resources show up by themselves)."""
    fields = {}
    for resource, label in QUOTA_RESOURCES.items():
        if read_only:
            fields[resource] = serializers.IntegerField(read_only=True, label=label)
        else:
            fields[resource] = serializers.IntegerField(
                required=False, min_value=-1, max_value=MAX_INT32, label=label, help_text=_("-1 means unlimited.")
            )
    return type(name, (StrictSerializer,), fields)


QuotaAmountsSerializer = _amounts_serializer("QuotaAmountsSerializer", read_only=True)


class QuotaLimitsInputSerializer(_amounts_serializer("_QuotaLimitsInputBase", read_only=False)):
    """Some quota limits; unknown resource names are refused rather than silently ignored."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(str(key) for key in data if key not in self.fields)
            if unknown:
                raise serializers.ValidationError({key: [_("Unknown quota resource.")] for key in unknown})
        return super().to_internal_value(data)


class QuotaLimitsInputExtension(OpenApiSerializerExtension):
    """Tell the schema that only the known resources are accepted."""

    target_class = QuotaLimitsInputSerializer

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_basic_serializer(self.target, direction)
        schema["additionalProperties"] = False
        return schema


class QuotaSerializer(StrictModelSerializer):
    """Quota limits of one tenant and its current usage; -1 means unlimited."""

    tenant_name = serializers.CharField(source="tenant.name", read_only=True)
    limits = serializers.SerializerMethodField()
    usage = serializers.SerializerMethodField()

    class Meta:
        model = Quota
        fields = ["tenant", "tenant_name", "limits", "usage", "updated_at"]
        read_only_fields = fields

    @extend_schema_field(QuotaAmountsSerializer)
    def get_limits(self, quota: Quota) -> dict[str, int]:
        return quota.limits()

    @extend_schema_field(QuotaAmountsSerializer)
    def get_usage(self, quota: Quota) -> dict[str, int]:
        # A list passes the usage of its whole page in context["usage"] (one query); else ask for this tenant.
        usage = self.context.get("usage") or {}
        if quota.tenant_id not in usage:
            usage = tenant_usage(tenant_ids=[quota.tenant_id])
        return usage[quota.tenant_id]


class QuotaUpdateSerializer(StrictSerializer):
    limits = QuotaLimitsInputSerializer(required=False, help_text=_("The limits to change; others stay as they are."))


# ---------------------------------------------------------------- tenants


class TenantSerializer(StrictModelSerializer):
    role = serializers.ChoiceField(
        choices=Membership.Role.choices,
        allow_null=True,
        read_only=True,
        help_text=_("Your role in this tenant; null when you see it as a cloud admin without membership."),
    )

    class Meta:
        model = Tenant
        fields = ["id", "name", "slug", "description", "enabled", "created_at", "role"]
        read_only_fields = ["id", "slug", "enabled", "created_at", "role"]


class TenantCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    slug = serializers.SlugField(max_length=100, required=False, help_text=_("Derived from the name when omitted."))
    description = serializers.CharField(required=False, allow_blank=True, default="")
    enabled = serializers.BooleanField(required=False, default=True)
    limits = QuotaLimitsInputSerializer(required=False, help_text=_("Initial quota; defaults fill the rest."))


class TenantUpdateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    enabled = serializers.BooleanField(required=False, help_text=_("Cloud admins only."))


# ---------------------------------------------------------------- memberships


@extend_schema_field(OpenApiTypes.INT)
class VisibleTenantField(serializers.PrimaryKeyRelatedField):
    """A tenant id; tenants the requester cannot see do not exist for this field."""

    def get_queryset(self):
        request = self.context.get("request")
        return Tenant.objects.restrict(getattr(request, "user", None), VIEW)


class MembershipSerializer(StrictModelSerializer):
    user = serializers.CharField(source="user.username", read_only=True, help_text=_("Username of the member."))

    class Meta:
        model = Membership
        fields = ["id", "tenant", "user", "role", "created_at"]
        read_only_fields = fields


class MembershipCreateSerializer(StrictSerializer):
    tenant = VisibleTenantField()
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.MEMBER)


class MembershipUpdateSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices)


# ---------------------------------------------------------------- API tokens


class ApiTokenSerializer(StrictModelSerializer):
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "scope",
            "expires_at",
            "created_at",
            "last_used_at",
            "revoked_at",
            "is_active",
        ]
        read_only_fields = fields


class ApiTokenCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    scope = serializers.ChoiceField(choices=ApiToken.Scope.choices, default=ApiToken.Scope.READ)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text=_("The secret token. It is shown only this once."))

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


# ---------------------------------------------------------------- audit


class AuditEventSerializer(StrictModelSerializer):
    ip = serializers.CharField(read_only=True, allow_null=True)
    detail = serializers.SerializerMethodField(
        help_text=_("What else was recorded; hosts and clouds are named to cloud admins only.")
    )

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "user",
            "username",
            "tenant",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "outcome",
            "ip",
            "detail",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_detail(self, event: AuditEvent) -> dict:
        request = self.context.get("request")
        return event.detail_for(getattr(request, "user", None))
