"""/api/v1/hosts/ and /api/v1/unmanaged-domains/: libvirt hosts and OpenStack clouds, and the domains found on
hosts that no instance owns (cloud admins; others see empty lists). Thin: vms.hosts for writes."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from portal.access import CHANGE, DELETE, VIEW
from portal.api.base import ApiViewSetMixin
from portal.api.serializers import MAX_INT32, VisibleTenantField
from portal.api.strict import StrictModelSerializer, StrictSerializer
from vms import hosts, limits, moves
from vms.api.fields import VisibleFlavorField
from vms.api.filtersets import HostFilter, UnmanagedDomainFilter
from vms.api.instances import InstanceDetailSerializer, metrics_range_parameter
from vms.api.serializers import OperationSerializer
from vms.compute.openstack.login import credentials_summary
from vms.models import Host, UnmanagedDomain
from vms.selectors import host_metric_points_for, instances_for, metric_range


class CloudCredentialsSerializer(StrictSerializer):
    """How the portal logs in to an OpenStack cloud. Write-only: never returned by any request.

    Blank or omitted fields keep what is stored; a new username or application credential id drops the
    stored secret of the old login.
    """

    username = serializers.CharField(required=False, allow_blank=True, max_length=255)
    password = serializers.CharField(
        required=False, allow_blank=True, max_length=255, trim_whitespace=False, style={"input_type": "password"}
    )
    project_name = serializers.CharField(required=False, allow_blank=True, max_length=255)
    user_domain_name = serializers.CharField(required=False, allow_blank=True, max_length=255)
    project_domain_name = serializers.CharField(required=False, allow_blank=True, max_length=255)
    application_credential_id = serializers.CharField(required=False, allow_blank=True, max_length=255)
    application_credential_secret = serializers.CharField(
        required=False, allow_blank=True, max_length=255, trim_whitespace=False, style={"input_type": "password"}
    )


# The API names the version field as it always has.
REPORTED = [name if name != "backend_version" else "libvirt_version" for name in Host.REPORTED_FIELDS]


class HostSerializer(StrictModelSerializer):
    """A libvirt host or an OpenStack cloud. Capacity and state are reported by the host (refresh/verify,
    watcher), never written here; a cloud's credentials are write-only."""

    kind = serializers.ChoiceField(
        choices=Host.Kind.choices,
        required=False,
        help_text=_("Driver of the host: libvirt (needs uri) or openstack (needs auth_url or cloud_name); fixed."),
    )
    credentials = CloudCredentialsSerializer(
        write_only=True,
        required=False,
        help_text=_(
            "OpenStack login (write-only): username, password and project_name, or application_credential_id "
            "and application_credential_secret. Blank or omitted fields keep the stored ones."
        ),
    )
    clear_credentials = serializers.BooleanField(
        write_only=True,
        required=False,
        default=False,
        help_text=_("Forget the stored login first (then only what credentials gives is stored)."),
    )
    credentials_set = serializers.SerializerMethodField(help_text=_("Whether a cloud login is stored."))
    credentials_summary = serializers.SerializerMethodField(
        help_text=_("The stored login's names (username, project, domains, application credential id), no secret.")
    )
    libvirt_version = serializers.CharField(
        source="backend_version",
        read_only=True,
        help_text=_("libvirt's version, or a cloud's Nova API microversion (the name is kept for compatibility)."),
    )

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "kind",
            *Host.settings_fields(),
            "credentials",
            "clear_credentials",
            "credentials_set",
            "credentials_summary",
            "enabled",
            *REPORTED,
            "created_at",
        ]
        read_only_fields = ["id", *REPORTED, "created_at"]
        extra_kwargs = {
            # Uniqueness is a 409 Conflict, not a serializer 400.
            "name": {"validators": []},
            "cpu_allocation_ratio": {"max_value": 1000.0},
            "ram_allocation_ratio": {"max_value": 1000.0},
            "disk_allocation_ratio": {"max_value": 1000.0},
            "reserved_ram_mib": {"max_value": MAX_INT32},
        }

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_credentials_set(self, host: Host) -> bool:
        return bool(host.credentials)

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
    def get_credentials_summary(self, host: Host) -> dict[str, str]:
        return credentials_summary(host) if host.credentials else {}


def save_host_from(view, serializer: HostSerializer, host: Host | None) -> Host:
    """Hand validated host input to vms.hosts.save_host (credentials apart from the model fields)."""
    values = dict(serializer.validated_data)
    credentials = values.pop("credentials", None)
    clear = values.pop("clear_credentials", False)
    return hosts.save_host(
        actor=view.request.user,
        host=host,
        values=values,
        credentials=credentials,
        clear_credentials=clear,
        ip=view.client_ip,
    )


class HostMetricPointSerializer(serializers.Serializer):
    """One point of a host's own history (the watcher's sample, or a bucket's averages beyond an hour)."""

    at = serializers.DateTimeField()
    interval = serializers.FloatField(help_text=_("Seconds since the previous point, or the bucket's length."))
    cpu_percent = serializers.FloatField(allow_null=True, help_text=_("Share of the host's CPUs busy, 0–100."))
    memory_used_mib = serializers.FloatField(allow_null=True)
    memory_total_mib = serializers.FloatField(allow_null=True)
    instances = serializers.FloatField(help_text=_("Running instances (averaged over a bucket)."))
    cpu_max_percent = serializers.FloatField(required=False, allow_null=True)
    samples = serializers.IntegerField(required=False)


class EvacuateSerializer(StrictSerializer):
    confirm = serializers.BooleanField(
        default=False,
        help_text=_(
            "true: go on although instances without shared storage lose their disks; false: only say what would be "
            "lost (400 with the numbers)."
        ),
    )


@extend_schema_view(
    list=extend_schema(summary=_("Hosts and clouds (cloud admins; others get an empty list)")),
    retrieve=extend_schema(summary=_("One host or cloud with its last reported capacity and state")),
    create=extend_schema(
        summary=_("Add a libvirt host or an OpenStack cloud (cloud admins)"), responses={201: HostSerializer}
    ),
    partial_update=extend_schema(summary=_("Change a host's or cloud's settings or login (cloud admins)")),
    destroy=extend_schema(summary=_("Remove a host or cloud that runs no instance (cloud admins)")),
)
class HostViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The libvirt hosts and OpenStack clouds instances are placed on: infrastructure, cloud admins only."""

    model = Host
    serializer_class = HostSerializer
    filterset_class = HostFilter
    ordering_fields = ["name", "state", "created_at", "last_seen"]

    def get_queryset(self):
        return Host.objects.restrict(self.request.user, VIEW)

    def create(self, request, *args, **kwargs):
        self.require_cloud_admin(_("Only cloud admins can add hosts."))
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        host = save_host_from(self, serializer, None)
        return Response(self.get_serializer(host).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        host = self.get_object_for(CHANGE)
        serializer = self.get_serializer(host, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        host = save_host_from(self, serializer, host)
        return Response(self.get_serializer(host).data)

    def destroy(self, request, *args, **kwargs):
        host = self.get_object_for(DELETE)
        hosts.delete_host(actor=request.user, host=host, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary=_("The host's own metrics history (CPU, memory, running instances), oldest first"),
        parameters=[metrics_range_parameter()],
        responses={200: HostMetricPointSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def metrics(self, request, *args, **kwargs):
        host = self.get_object()
        chosen = metric_range(request.query_params.get("range"))
        return Response(host_metric_points_for(user=request.user, host=host, metric_range=chosen))

    @extend_schema(
        summary=_("Ask the host for its capacity now (an unreachable host is marked down)"),
        request=None,
        responses={200: HostSerializer},
    )
    @action(detail=True, methods=["post"])
    def refresh(self, request, *args, **kwargs):
        host = self.get_object_for(CHANGE)
        host = hosts.check_host(host=host)
        return Response(self.get_serializer(host).data)

    @extend_schema(
        summary=_("Log in to the cloud (or ask the libvirt host) now: up, or down with the reason"),
        request=None,
        responses={200: HostSerializer},
    )
    @action(detail=True, methods=["post"])
    def verify(self, request, *args, **kwargs):
        host = self.get_object_for(CHANGE)
        host = hosts.check_host(host=host)
        return Response(self.get_serializer(host).data)

    @extend_schema(
        summary=_("Drain: no new instances; every instance migrates to another host, one at a time"),
        request=None,
        responses={202: OperationSerializer},
    )
    @action(detail=True, methods=["post"])
    def drain(self, request, *args, **kwargs):
        host = self.get_object_for(CHANGE)
        operation = moves.drain_host(actor=request.user, host=host, ip=self.client_ip)
        return Response(OperationSerializer(operation).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary=_("Evacuate a host that is down: its instances are rebuilt on other hosts (disks lost unless shared)"),
        request=EvacuateSerializer,
        responses={202: OperationSerializer},
    )
    @action(detail=True, methods=["post"])
    def evacuate(self, request, *args, **kwargs):
        host = self.get_object_for(CHANGE)
        serializer = EvacuateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        operation = moves.evacuate_host(
            actor=request.user, host=host, confirm=serializer.validated_data["confirm"], ip=self.client_ip
        )
        return Response(OperationSerializer(operation).data, status=status.HTTP_202_ACCEPTED)


class UnmanagedDomainSerializer(StrictModelSerializer):
    """A domain found on a host that no instance owns."""

    host_name = serializers.CharField(source="host.name", read_only=True)

    class Meta:
        model = UnmanagedDomain
        fields = ["id", "host", "host_name", "uuid", "name", "state", "vcpus", "memory_mib", "first_seen", "last_seen"]
        read_only_fields = fields


class AdoptSerializer(StrictSerializer):
    tenant = VisibleTenantField(help_text=_("Id of the tenant that will own the instance."))
    flavor = VisibleFlavorField(help_text=_("Id of the flavor whose sizes the tenant's quota counts."))
    name = serializers.CharField(
        max_length=limits.NAME_MAX, required=False, help_text=_("Instance name; the domain's name when omitted.")
    )


@extend_schema_view(
    list=extend_schema(summary=_("Domains on the hosts that no instance owns (cloud admins)")),
    retrieve=extend_schema(summary=_("One unmanaged domain")),
)
class UnmanagedDomainViewSet(ApiViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """Domains the watcher found on hosts without an instance row; a cloud admin may adopt them into a tenant."""

    model = UnmanagedDomain
    serializer_class = UnmanagedDomainSerializer
    filterset_class = UnmanagedDomainFilter
    ordering_fields = ["name", "first_seen", "last_seen"]

    def get_queryset(self):
        return UnmanagedDomain.objects.restrict(self.request.user, VIEW).select_related("host")

    @extend_schema(
        summary=_("Adopt the domain as an instance of a tenant (reserves its quota)"),
        request=AdoptSerializer,
        responses={201: InstanceDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def adopt(self, request, *args, **kwargs):
        unmanaged = self.get_object_for(CHANGE)
        serializer = AdoptSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        instance = hosts.adopt_domain(
            actor=request.user, unmanaged=unmanaged, ip=self.client_ip, **serializer.validated_data
        )
        instance = instances_for(user=request.user).get(pk=instance.pk)
        return Response(
            InstanceDetailSerializer(instance, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )
