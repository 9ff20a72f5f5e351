"""/api/v1/networks/: the networks tenants may attach instances to. Thin: networks_for() for reads,
vms.networks for writes (cloud admins only)."""

from __future__ import annotations

import django_filters
from django.utils.translation import gettext_lazy as _
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.filters import SearchFilter
from rest_framework.response import Response

from portal.access import CHANGE, DELETE, is_cloud_admin
from portal.api.base import ApiViewSetMixin
from portal.api.filtersets import StrictBooleanFilter, TenantChoiceFilter
from portal.api.ordering import StrictOrderingFilter
from portal.api.strict import StrictModelSerializer
from portal.models import Tenant
from vms import networks as services
from vms.models import Network


class NetworkSerializer(StrictModelSerializer):
    """A network. `tenants` (who may use a network that is not shared with all) is for cloud admins only."""

    tenants = serializers.PrimaryKeyRelatedField(
        many=True,
        queryset=Tenant.objects.all(),
        required=False,
        help_text=_("Ids of the tenants that may use this network when it is not shared with all (cloud admins)."),
    )
    libvirt_name = serializers.CharField(
        max_length=50,
        required=False,
        help_text=_("The network's name on every host; derived from the name when omitted."),
    )

    class Meta:
        model = Network
        fields = [
            "id",
            "name",
            "libvirt_name",
            "mode",
            "bridge",
            "cidr",
            "dhcp",
            "description",
            "is_public",
            "created_at",
            "tenants",
        ]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {
            # Uniqueness and consistency are the service's call (409/400 with the field named).
            "name": {"validators": []},
            "mode": {"required": True},
            "bridge": {"help_text": _("Existing host bridge (mode “bridge” only), e.g. br0.")},
            "cidr": {"help_text": _("IPv4 subnet, /16 to /29, e.g. 192.168.150.0/24 (needed for NAT).")},
        }

    def get_fields(self):
        fields = super().get_fields()
        view = self.context.get("view")
        request = self.context.get("request")
        if getattr(view, "swagger_fake_view", False):
            return fields
        if not is_cloud_admin(getattr(request, "user", None)):
            fields.pop("tenants")  # users do not learn who else may use a network
        return fields


class NetworkFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter(
        method="filter_tenant", help_text=_("Only the networks this tenant may use (one of your tenants).")
    )
    mode = django_filters.ChoiceFilter(choices=Network.Mode.choices, label=_("mode"))
    is_public = StrictBooleanFilter(label=_("shared with all tenants"))

    class Meta:
        model = Network
        fields = ["tenant", "mode", "is_public"]

    def filter_tenant(self, queryset, name, value):
        if value is None:
            return queryset
        return queryset.filter(pk__in=Network.objects.usable_by(value).values("pk"))


@extend_schema_view(
    list=extend_schema(summary=_("Networks your tenants may use (cloud admins: all)")),
    retrieve=extend_schema(summary=_("One network")),
    create=extend_schema(summary=_("Define a network (cloud admins)"), responses={201: NetworkSerializer}),
    partial_update=extend_schema(summary=_("Change a network (cloud admins)")),
    destroy=extend_schema(summary=_("Delete a network no instance uses (cloud admins)")),
)
class NetworkViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """libvirt networks defined by the cloud admins: NAT, isolated, or an existing host bridge."""

    model = Network
    serializer_class = NetworkSerializer
    filterset_class = NetworkFilter
    filter_backends = [DjangoFilterBackend, SearchFilter, StrictOrderingFilter]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "mode", "created_at"]

    def get_queryset(self):
        networks = services.networks_for(user=self.request.user)
        if not is_cloud_admin(self.request.user):
            networks = networks.prefetch_related(None)  # the tenants are not shown to them
        return networks

    def create(self, request, *args, **kwargs):
        self.require_cloud_admin(_("Only cloud admins can define networks."))
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        network = services.create_network(actor=request.user, ip=self.client_ip, **serializer.validated_data)
        return Response(self.get_serializer(network).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        network = self.get_object_for(CHANGE)
        serializer = self.get_serializer(network, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changes = dict(serializer.validated_data)
        tenants = changes.pop("tenants", None)
        network = services.update_network(
            actor=request.user, network=network, tenants=tenants, ip=self.client_ip, **changes
        )
        return Response(self.get_serializer(network).data)

    def destroy(self, request, *args, **kwargs):
        network = self.get_object_for(DELETE)
        services.delete_network(actor=request.user, network=network, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)
