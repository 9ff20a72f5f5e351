"""/api/v1/cloud-projects/, /cloud-flavors/ and /placement-rules/ (cloud admins): which Keystone project holds a
tenant's servers on each cloud, the portal's flavors as created there, and where new instances go."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from portal.access import CHANGE, DELETE, VIEW
from portal.api.base import ApiViewSetMixin
from portal.api.serializers import VisibleTenantField
from portal.api.strict import StrictModelSerializer, StrictSerializer
from vms import hosts
from vms.api.fields import CloudHostField, VisibleFlavorField, VisibleHostField
from vms.api.filtersets import CloudFlavorFilter, CloudProjectFilter, PlacementRuleFilter
from vms.compute.openstack.mirror import push_quota
from vms.models import CloudFlavor, CloudProject, PlacementRule


class CloudProjectSerializer(StrictModelSerializer):
    """The Keystone project a tenant's servers live in on one cloud (created by the portal, or mapped)."""

    host = CloudHostField(help_text=_("Id of the OpenStack cloud."))
    tenant = VisibleTenantField(help_text=_("Id of the tenant."))
    host_name = serializers.CharField(source="host.name", read_only=True)
    tenant_name = serializers.CharField(source="tenant.name", read_only=True)

    class Meta:
        model = CloudProject
        fields = [
            "id",
            "host",
            "host_name",
            "tenant",
            "tenant_name",
            "project_id",
            "managed",
            "quota_synced_at",
            "quota_error",
            "created_at",
        ]
        read_only_fields = ["id", "managed", "quota_synced_at", "quota_error", "created_at"]
        validators = []  # a taken tenant or project on the cloud is a 409 from the service


class CloudProjectUpdateSerializer(StrictSerializer):
    project_id = serializers.CharField(max_length=64, help_text=_("Id of the existing Keystone project."))


class PushQuotaSerializer(StrictSerializer):
    pushed = serializers.DictField(
        child=serializers.BooleanField(), help_text=_("Per cloud name: whether the quota was set.")
    )
    project = CloudProjectSerializer(read_only=True)


@extend_schema_view(
    list=extend_schema(summary=_("Tenants' projects on the OpenStack clouds (cloud admins)")),
    retrieve=extend_schema(summary=_("One tenant's project on a cloud")),
    create=extend_schema(
        summary=_("Map a tenant to an existing project on a cloud (cloud admins)"),
        responses={201: CloudProjectSerializer},
    ),
    partial_update=extend_schema(
        summary=_("Map the tenant to another existing project (cloud admins)"),
        request=CloudProjectUpdateSerializer,
        responses={200: CloudProjectSerializer},
    ),
    destroy=extend_schema(
        summary=_("Forget the mapping (the project stays in the cloud; refused while instances run there)")
    ),
)
class CloudProjectViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Which Keystone project holds a tenant's servers on each cloud: infrastructure, cloud admins only."""

    model = CloudProject
    serializer_class = CloudProjectSerializer
    filterset_class = CloudProjectFilter
    ordering_fields = ["created_at", "quota_synced_at"]

    def get_queryset(self):
        return CloudProject.objects.restrict(self.request.user, VIEW).select_related("host", "tenant")

    def _answer(self, project: CloudProject, code: int = status.HTTP_200_OK) -> Response:
        project = self.get_queryset().get(pk=project.pk)
        return Response(self.get_serializer(project).data, status=code)

    def create(self, request, *args, **kwargs):
        self.require_cloud_admin(_("Only cloud admins can map tenants to cloud projects."))
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        project = hosts.map_cloud_project(actor=request.user, ip=self.client_ip, **serializer.validated_data)
        return self._answer(project, status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        project = self.get_object_for(CHANGE)
        serializer = CloudProjectUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        project = hosts.map_cloud_project(
            actor=request.user,
            host=project.host,
            tenant=project.tenant,
            project_id=serializer.validated_data["project_id"],
            ip=self.client_ip,
        )
        return self._answer(project)

    def destroy(self, request, *args, **kwargs):
        project = self.get_object_for(DELETE)
        hosts.unmap_cloud_project(actor=request.user, project=project, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary=_("Push the tenant's quota to its projects on every cloud now"),
        request=None,
        responses={200: PushQuotaSerializer},
    )
    @action(detail=True, methods=["post"], url_path="push-quota", url_name="push-quota")
    def push_quota(self, request, *args, **kwargs):
        project = self.get_object_for(CHANGE)
        pushed = push_quota(tenant=project.tenant)
        project = self.get_queryset().get(pk=project.pk)
        return Response({"pushed": pushed, "project": self.get_serializer(project).data})


class PlacementRuleSerializer(StrictModelSerializer):
    """Admin policy: new instances of a tenant and/or a flavor go to this host or cloud (most specific wins)."""

    tenant = VisibleTenantField(required=False, allow_null=True, help_text=_("Id of the tenant; null: any tenant."))
    flavor = VisibleFlavorField(required=False, allow_null=True, help_text=_("Id of the flavor; null: any flavor."))
    host = VisibleHostField(help_text=_("Id of the host or cloud the instances go to."))
    host_name = serializers.CharField(source="host.name", read_only=True)

    class Meta:
        model = PlacementRule
        fields = ["id", "tenant", "flavor", "host", "host_name", "created_at"]
        read_only_fields = ["id", "created_at"]
        validators = []  # a duplicate rule is a 409 from the service


@extend_schema_view(
    list=extend_schema(summary=_("Placement rules (cloud admins): the most specific rule wins")),
    retrieve=extend_schema(summary=_("One placement rule")),
    create=extend_schema(summary=_("Add a placement rule (cloud admins)"), responses={201: PlacementRuleSerializer}),
    partial_update=extend_schema(summary=_("Change a placement rule (cloud admins)")),
    destroy=extend_schema(summary=_("Remove a placement rule (cloud admins)")),
)
class PlacementRuleViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Where new instances go: a rule for tenant + flavor beats one for the flavor, which beats one for the
    tenant; without a rule the scheduler picks among the libvirt hosts."""

    model = PlacementRule
    serializer_class = PlacementRuleSerializer
    filterset_class = PlacementRuleFilter
    ordering_fields = ["created_at"]

    def get_queryset(self):
        return PlacementRule.objects.restrict(self.request.user, VIEW).select_related("host")

    def create(self, request, *args, **kwargs):
        self.require_cloud_admin(_("Only cloud admins can add placement rules."))
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rule = hosts.save_placement_rule(
            actor=request.user, rule=None, values=dict(serializer.validated_data), ip=self.client_ip
        )
        return Response(self.get_serializer(rule).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        rule = self.get_object_for(CHANGE)
        serializer = self.get_serializer(rule, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        rule = hosts.save_placement_rule(
            actor=request.user, rule=rule, values=dict(serializer.validated_data), ip=self.client_ip
        )
        return Response(self.get_serializer(rule).data)

    def destroy(self, request, *args, **kwargs):
        rule = self.get_object_for(DELETE)
        hosts.delete_placement_rule(actor=request.user, rule=rule, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CloudFlavorSerializer(StrictModelSerializer):
    """A portal flavor as created in one cloud's Nova (written by the portal only)."""

    host_name = serializers.CharField(source="host.name", read_only=True)
    flavor_name = serializers.CharField(source="flavor.name", read_only=True)

    class Meta:
        model = CloudFlavor
        fields = ["id", "host", "host_name", "flavor", "flavor_name", "cloud_id", "synced_at"]
        read_only_fields = fields


@extend_schema_view(
    list=extend_schema(summary=_("Portal flavors as created on the clouds (cloud admins; read-only)")),
    retrieve=extend_schema(summary=_("One flavor's copy on a cloud")),
)
class CloudFlavorViewSet(ApiViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """The Nova flavor of each portal flavor on each cloud; the portal creates them on first launch."""

    model = CloudFlavor
    serializer_class = CloudFlavorSerializer
    filterset_class = CloudFlavorFilter
    ordering_fields = ["synced_at"]

    def get_queryset(self):
        return CloudFlavor.objects.restrict(self.request.user, VIEW).select_related("host", "flavor")
