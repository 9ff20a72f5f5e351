"""Serializers of the compute API. They shape and validate data only: writes go through vms.services."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.access import is_cloud_admin
from portal.api.serializers import MAX_INT32
from portal.api.strict import StrictModelSerializer
from portal.models import Tenant
from vms.models import Flavor, Operation


class FlavorSerializer(StrictModelSerializer):
    """A flavor. `tenants` (who may use a private flavor) is shown to and set by cloud admins only."""

    tenants = serializers.PrimaryKeyRelatedField(
        many=True,
        queryset=Tenant.objects.all(),
        required=False,
        help_text=_("Ids of the tenants that may use this flavor when it is not public (cloud admins only)."),
    )

    class Meta:
        model = Flavor
        fields = [
            "id",
            "name",
            "vcpus",
            "ram_mib",
            "disk_gib",
            "description",
            "is_public",
            "disabled",
            "created_at",
            "tenants",
        ]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {
            # Uniqueness is the service's call (409 Conflict), not a serializer 400.
            "name": {"validators": []},
            "vcpus": {"max_value": MAX_INT32},
            "ram_mib": {"max_value": MAX_INT32},
            "disk_gib": {"max_value": MAX_INT32},
        }

    def get_fields(self):
        fields = super().get_fields()
        view = self.context.get("view")
        request = self.context.get("request")
        if getattr(view, "swagger_fake_view", False):
            return fields  # the schema documents every field
        if not is_cloud_admin(getattr(request, "user", None)):
            fields.pop("tenants")  # users do not learn who else a private flavor is shared with
        return fields


class OperationSerializer(StrictModelSerializer):
    """A long action run by the workers (image processing, copies to hosts, boots…) and its progress."""

    user = serializers.CharField(
        source="user.username", read_only=True, allow_null=True, help_text=_("Username of who started it.")
    )
    message = serializers.CharField(source="message_text", read_only=True, help_text=_("The current step."))
    error = serializers.CharField(
        source="error_text", read_only=True, help_text=_("Why it failed, in words for members (no backend details).")
    )
    error_detail = serializers.SerializerMethodField(
        help_text=_("What the backend said when it failed; for cloud admins only (null for everyone else).")
    )
    result = serializers.SerializerMethodField(
        help_text=_("Figures of a finished operation (a migration: seconds, downtime_ms, post_copy); null if none.")
    )

    class Meta:
        model = Operation
        fields = [
            "id",
            "uuid",
            "kind",
            "tenant",
            "user",
            "target_type",
            "target_id",
            "target_repr",
            "state",
            "progress",
            "message",
            "error",
            "error_detail",
            "cancel_requested",
            "result",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_result(self, operation: Operation) -> dict | None:
        return (operation.params or {}).get("result")

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_error_detail(self, operation: Operation) -> str | None:
        request = self.context.get("request")
        if not is_cloud_admin(getattr(request, "user", None)):
            return None  # hosts, URIs, backend messages: for cloud admins only
        return operation.error_detail
