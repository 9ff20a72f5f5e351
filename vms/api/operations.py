"""/api/v1/operations/: long actions and their progress (members see their tenants'); cloud admins cancel migrations."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from portal.access import VIEW
from portal.api.base import ApiViewSetMixin
from vms import moves
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

    @extend_schema(
        summary=_("Cancel a running migration: the guest stays on its host (cloud admins)"),
        request=None,
        responses={200: OperationSerializer},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, *args, **kwargs):
        operation = self.get_object()
        self.require_cloud_admin(_("Only cloud admins cancel migrations."))
        operation = moves.cancel_operation(actor=request.user, operation=operation, ip=self.client_ip)
        return Response(OperationSerializer(operation, context=self.get_serializer_context()).data)
