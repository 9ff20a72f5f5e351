"""/api/v1/flavors/: instance sizes (members see what they may use; cloud admins change them). Thin: vms.services."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.filters import SearchFilter
from rest_framework.response import Response

from portal.access import CHANGE, DELETE, VIEW, is_cloud_admin
from portal.api.base import ApiViewSetMixin
from portal.api.ordering import StrictOrderingFilter
from vms import services
from vms.api.filtersets import FlavorFilter
from vms.api.serializers import FlavorSerializer
from vms.models import Flavor


@extend_schema_view(
    list=extend_schema(summary=_("Flavors you may use (cloud admins: all)")),
    retrieve=extend_schema(summary=_("One flavor")),
    create=extend_schema(summary=_("Create a flavor (cloud admins)"), responses={201: FlavorSerializer}),
    partial_update=extend_schema(summary=_("Change a flavor (cloud admins)")),
    destroy=extend_schema(summary=_("Delete a flavor no instance uses (cloud admins)")),
)
class FlavorViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Instance sizes. Users see enabled public flavors and private ones shared with their tenants."""

    model = Flavor
    serializer_class = FlavorSerializer
    filterset_class = FlavorFilter
    filter_backends = [DjangoFilterBackend, SearchFilter, StrictOrderingFilter]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "vcpus", "ram_mib", "disk_gib", "created_at"]

    def get_queryset(self):
        flavors = Flavor.objects.restrict(self.request.user, VIEW)
        if is_cloud_admin(self.request.user):
            flavors = flavors.prefetch_related("tenants")  # only cloud admins see them
        return flavors

    def create(self, request, *args, **kwargs):
        self.require_cloud_admin(_("Only cloud admins can create flavors."))
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        flavor = services.create_flavor(actor=request.user, ip=self.client_ip, **serializer.validated_data)
        return Response(self.get_serializer(flavor).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        flavor = self.get_object_for(CHANGE)
        serializer = self.get_serializer(flavor, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changes = dict(serializer.validated_data)
        tenants = changes.pop("tenants", None)
        flavor = services.update_flavor(
            actor=request.user, flavor=flavor, tenants=tenants, ip=self.client_ip, **changes
        )
        return Response(self.get_serializer(flavor).data)

    def destroy(self, request, *args, **kwargs):
        flavor = self.get_object_for(DELETE)
        services.delete_flavor(actor=request.user, flavor=flavor, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)
