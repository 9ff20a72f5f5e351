"""/api/v1/operations/: long actions and their progress, read-only (members see their tenants')."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets

from portal.access import VIEW
from portal.api.base import ApiViewSetMixin
from vms.api.filtersets import OperationFilter
from vms.api.serializers import OperationSerializer
from vms.models import Operation


@extend_schema_view(
    list=extend_schema(summary=_("Operations of your tenants, newest first (cloud admins: all)")),
    retrieve=extend_schema(summary=_("One operation: poll it for progress")),
)
class OperationViewSet(ApiViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """Long actions run by the workers, with their progress. Members see their tenants' operations;
    operations without a tenant (infrastructure) are for cloud admins."""

    model = Operation
    serializer_class = OperationSerializer
    filterset_class = OperationFilter
    ordering_fields = ["created_at", "finished_at", "kind", "state"]

    def get_queryset(self):
        return Operation.objects.restrict(self.request.user, VIEW).select_related("user")
