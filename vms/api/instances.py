"""/api/v1/instances/, /hosts/, /unmanaged-domains/, /cloud-projects/, /cloud-flavors/ and /placement-rules/.

Thin: instances_for() and restrict() for reads, vms.lifecycle and vms.hosts for writes.

Long actions answer 202 with the Operation that carries them out (poll it at /api/v1/operations/{id}/);
another tenant's instance, disk or snapshot is a 404 for every method.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from images.api.serializers import ImageSerializer
from images.models import Image
from images.selectors import images_for
from portal.access import CHANGE, DELETE, VIEW, is_cloud_admin
from portal.api.base import MAX_ID, ApiViewSetMixin
from portal.api.serializers import MAX_INT32, VisibleTenantField
from vms import consoles, hosts, lifecycle
from vms.api.filtersets import (
    CloudFlavorFilter,
    CloudProjectFilter,
    HostFilter,
    InstanceFilter,
    PlacementRuleFilter,
    UnmanagedDomainFilter,
)
from vms.api.serializers import OperationSerializer
from vms.models import (
    CloudFlavor,
    CloudProject,
    Flavor,
    Host,
    Instance,
    InstanceDisk,
    Keypair,
    Network,
    Operation,
    PlacementRule,
    Snapshot,
    UnmanagedDomain,
)
from vms.selectors import instances_for, metric_points_for

# ---------------------------------------------------------------- fields: ids of what the requester may see


class _GatedPrimaryKeyField(serializers.PrimaryKeyRelatedField):
    """An id among the objects the requester may see; any other id "does not exist"."""

    model = None

    def _user(self):
        return getattr(self.context.get("request"), "user", None)

    def get_queryset(self):
        return self.model.objects.restrict(self._user(), VIEW)


@extend_schema_field(OpenApiTypes.INT)
class VisibleFlavorField(_GatedPrimaryKeyField):
    model = Flavor


@extend_schema_field(OpenApiTypes.INT)
class VisibleImageField(_GatedPrimaryKeyField):
    def get_queryset(self):
        return images_for(user=self._user())


@extend_schema_field(OpenApiTypes.INT)
class VisibleKeypairField(_GatedPrimaryKeyField):
    model = Keypair


@extend_schema_field(OpenApiTypes.INT)
class VisibleNetworkField(_GatedPrimaryKeyField):
    model = Network


# ---------------------------------------------------------------- instances


class InstanceSerializer(serializers.ModelSerializer):
    """An instance as lists show it (never its user-data)."""

    owner = serializers.CharField(
        source="owner.username", read_only=True, allow_null=True, help_text=_("Username of who launched it.")
    )
    flavor_name = serializers.CharField(source="flavor.name", read_only=True)
    host = serializers.CharField(
        source="host.name",
        read_only=True,
        allow_null=True,
        help_text=_("Name of the host it runs on (cloud admins only; null for others)."),
    )

    class Meta:
        model = Instance
        fields = [
            "id",
            "uuid",
            "name",
            "tenant",
            "owner",
            "flavor",
            "flavor_name",
            "image",
            "host",
            "state",
            "state_reason",
            "task",
            "desired_power_state",
            "installing",
            "vcpus",
            "ram_mib",
            "disk_gib",
            "keypair",
            "network",
            "addresses",
            "mac_address",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "task": {"help_text": _("The operation in progress (launch, start, resize…); empty when idle.")},
            "addresses": {"help_text": _("IP addresses reported for the instance.")},
        }

    def to_representation(self, instance):
        data = super().to_representation(instance)
        request = self.context.get("request")
        if request is None or not is_cloud_admin(request.user):
            data["host"] = None  # hosts are infrastructure: only cloud admins see where instances run
        return data


class InstanceDetailSerializer(InstanceSerializer):
    """One instance, with the user-data it was launched with (members of its tenant only see it)."""

    class Meta(InstanceSerializer.Meta):
        fields = [*InstanceSerializer.Meta.fields, "user_data"]
        read_only_fields = fields


class InstanceDetailSchema(OpenApiSerializerExtension):
    """InstanceDetail is Instance plus user_data (one Instance component, so its enums keep plain names)."""

    target_class = InstanceDetailSerializer

    def map_serializer(self, auto_schema, direction):
        base = auto_schema.resolve_serializer(InstanceSerializer, direction)
        extra = {
            "type": "object",
            "properties": {"user_data": {"type": "string", "description": str(_("cloud-init user-data."))}},
            "required": ["user_data"],
        }
        return {"allOf": [base.ref, extra]}


class InstanceCreateSerializer(serializers.Serializer):
    tenant = VisibleTenantField(help_text=_("Id of the tenant the instances belong to (one of yours)."))
    name = serializers.CharField(
        max_length=63,
        help_text=_(
            "Instance name. With a count above 1, “{n}” in the name is replaced by 1…count; without it, "
            "“-1”, “-2”… is appended."
        ),
    )
    flavor = VisibleFlavorField(help_text=_("Id of a flavor the tenant may use."))
    image = VisibleImageField(help_text=_("Id of an active disk image (or an installer ISO) the tenant may use."))
    count = serializers.IntegerField(
        min_value=1, max_value=settings.LABCLOUD_MAX_BATCH, default=1, help_text=_("How many instances to launch.")
    )
    keypair = VisibleKeypairField(
        required=False, allow_null=True, default=None, help_text=_("Id of a keypair of the tenant.")
    )
    network = VisibleNetworkField(
        required=False,
        allow_null=True,
        default=None,
        help_text=_("Id of a network shared with the tenant; omitted: the host's default network."),
    )
    user_data = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        trim_whitespace=False,
        help_text=_("cloud-init user-data (text, at most 64 KiB by default)."),
    )


class LaunchSerializer(serializers.Serializer):
    instances = InstanceSerializer(many=True, read_only=True)
    operations = OperationSerializer(many=True, read_only=True, help_text=_("One launch operation per instance."))


class ResizeSerializer(serializers.Serializer):
    flavor = VisibleFlavorField(help_text=_("Id of the new flavor (disks only grow)."))


class ResourcesSerializer(serializers.Serializer):
    vcpus = serializers.IntegerField(
        min_value=1, max_value=MAX_INT32, required=False, help_text=_("New vCPU count, up to the flavor's.")
    )
    ram_mib = serializers.IntegerField(
        min_value=1, max_value=MAX_INT32, required=False, help_text=_("New RAM in MiB, up to the flavor's.")
    )

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError(_("Give vcpus, ram_mib or both."))
        return attrs


class CaptureSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, help_text=_("Name of the new image of the instance's tenant."))


class CaptureResultSerializer(serializers.Serializer):
    image = ImageSerializer(read_only=True)
    operation = OperationSerializer(read_only=True, allow_null=True, help_text=_("The capture operation."))


class MetricPointSerializer(serializers.Serializer):
    """One point of an instance's metrics history (rates per second over ``interval`` seconds)."""

    at = serializers.DateTimeField()
    interval = serializers.FloatField(help_text=_("Seconds since the previous point."))
    cpu_percent = serializers.FloatField(help_text=_("Share of the instance's vCPUs in use, 0–100."))
    vcpus = serializers.IntegerField()
    memory_used_mib = serializers.FloatField(allow_null=True)
    memory_available_mib = serializers.FloatField(allow_null=True)
    disk_read_bps = serializers.FloatField(allow_null=True, help_text=_("Bytes per second."))
    disk_write_bps = serializers.FloatField(allow_null=True, help_text=_("Bytes per second."))
    net_rx_bps = serializers.FloatField(allow_null=True, help_text=_("Bytes per second."))
    net_tx_bps = serializers.FloatField(allow_null=True, help_text=_("Bytes per second."))


class InstanceDiskSerializer(serializers.ModelSerializer):
    """An extra blank disk of an instance (counted in the tenant's disk quota)."""

    class Meta:
        model = InstanceDisk
        fields = ["id", "instance", "size_gib", "target", "attached", "created_at"]
        read_only_fields = fields
        extra_kwargs = {"target": {"help_text": _("Device name in the guest (vdb…) once attached.")}}


class DiskCreateSerializer(serializers.Serializer):
    size_gib = serializers.IntegerField(min_value=1, max_value=4096, help_text=_("Size of the new blank disk."))


class SnapshotSerializer(serializers.ModelSerializer):
    """A snapshot of an instance (counted in the tenant's snapshot quota)."""

    class Meta:
        model = Snapshot
        fields = ["id", "instance", "name", "description", "state", "vm_state", "created_at"]
        read_only_fields = fields
        extra_kwargs = {"vm_state": {"help_text": _("The instance's state when the snapshot was taken.")}}


class SnapshotCreateSerializer(serializers.Serializer):
    name = serializers.CharField(
        max_length=63, help_text=_("Letters, digits, dots, dashes and underscores; starts with a letter or digit.")
    )
    description = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


class ConsoleTicketSerializer(serializers.Serializer):
    url = serializers.CharField(help_text=_("WebSocket URL of the console proxy, with the one-time token."))
    token = serializers.CharField(help_text=_("The console token (valid for one connection, shortly)."))
    password = serializers.CharField(help_text=_("One-time VNC password for this connection."))
    expires_at = serializers.DateTimeField(help_text=_("The token and the password expire at this time."))


def accepted(operation: Operation) -> Response:
    return Response(OperationSerializer(operation).data, status=status.HTTP_202_ACCEPTED)


ACCEPTED = OpenApiResponse(OperationSerializer, description=_("Queued: poll the operation for progress."))
NESTED_ID = r"[0-9]+"


def power_action(name: str, summary):
    """A POST sub-resource queuing one power action (or finish install) through vms.lifecycle."""

    def view(self, request, *args, **kwargs):
        instance = self.get_object_for(CHANGE)
        return accepted(lifecycle.request_action(actor=request.user, instance=instance, action=name, ip=self.client_ip))

    view.__name__ = name
    path = name.replace("_", "-")
    view = action(detail=True, methods=["post"], url_path=path, url_name=path)(view)
    return extend_schema(summary=summary, request=None, responses={202: ACCEPTED})(view)


@extend_schema_view(
    list=extend_schema(summary=_("Instances of your tenants, newest first (cloud admins: all)")),
    retrieve=extend_schema(summary=_("One instance, with its user-data")),
    create=extend_schema(
        summary=_("Launch instances from an image or ISO (quota for all of them is reserved at once)"),
        request=InstanceCreateSerializer,
        responses={202: OpenApiResponse(LaunchSerializer, description=_("The instances and their launches."))},
    ),
    destroy=extend_schema(
        summary=_("Delete an instance: domain, disks and snapshots; the quota is freed when done"),
        responses={202: ACCEPTED},
    ),
)
class InstanceViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Virtual machines. Members of a tenant see, launch, drive and delete its instances."""

    model = Instance
    serializer_class = InstanceSerializer
    filterset_class = InstanceFilter
    ordering_fields = ["name", "created_at", "updated_at", "state", "vcpus", "ram_mib", "disk_gib"]

    def get_queryset(self):
        return instances_for(user=self.request.user)

    def get_serializer_class(self):
        return InstanceDetailSerializer if self.action == "retrieve" else InstanceSerializer

    def _input(self, serializer_class):
        serializer = serializer_class(data=self.request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def create(self, request, *args, **kwargs):
        data = self._input(InstanceCreateSerializer)
        launch = lifecycle.launch_instances(actor=request.user, ip=self.client_ip, **data)
        instances = self.get_queryset().filter(pk__in=[i.pk for i in launch.instances]).order_by("pk")
        body = {
            "instances": InstanceSerializer(instances, many=True, context=self.get_serializer_context()).data,
            "operations": OperationSerializer(launch.operations, many=True).data,
        }
        return Response(body, status=status.HTTP_202_ACCEPTED)

    def destroy(self, request, *args, **kwargs):
        instance = self.get_object_for(DELETE)
        return accepted(lifecycle.delete_instance(actor=request.user, instance=instance, ip=self.client_ip))

    # ------------------------------------------------------------ power

    start = power_action("start", _("Start a shut-off instance"))
    shutdown = power_action("shutdown", _("Shut down gracefully (ACPI; powered off after a timeout)"))
    stop = power_action("stop", _("Power off at once"))
    reboot = power_action("reboot", _("Reboot gracefully"))
    reset = power_action("reset", _("Hard reset"))
    pause = power_action("pause", _("Pause (freeze) a running instance"))
    resume = power_action("resume", _("Resume a paused instance"))
    finish_install = power_action("finish_install", _("Finish an ISO install: eject the ISO, boot from disk"))

    # ------------------------------------------------------------ console

    @extend_schema(
        summary=_("Open the console of a running instance: a one-time proxy URL and VNC password"),
        request=None,
        responses={201: ConsoleTicketSerializer},
    )
    @action(detail=True, methods=["post"])
    def console(self, request, *args, **kwargs):
        instance = self.get_object_for(CHANGE)
        ticket = consoles.open_console(user=request.user, instance=instance, ip=self.client_ip)
        return Response(ConsoleTicketSerializer(ticket).data, status=status.HTTP_201_CREATED)

    # ------------------------------------------------------------ size

    @extend_schema(
        summary=_("Resize a shut-off instance to another flavor (the quota difference is reserved)"),
        request=ResizeSerializer,
        responses={202: ACCEPTED},
    )
    @action(detail=True, methods=["post"])
    def resize(self, request, *args, **kwargs):
        instance = self.get_object_for(CHANGE)
        flavor = self._input(ResizeSerializer)["flavor"]
        return accepted(
            lifecycle.resize_instance(actor=request.user, instance=instance, flavor=flavor, ip=self.client_ip)
        )

    @extend_schema(
        summary=_("Change vCPUs and/or RAM within the flavor (live when running: add only)"),
        request=ResourcesSerializer,
        responses={202: ACCEPTED},
    )
    @action(detail=True, methods=["post"])
    def resources(self, request, *args, **kwargs):
        instance = self.get_object_for(CHANGE)
        data = self._input(ResourcesSerializer)
        return accepted(lifecycle.set_resources(actor=request.user, instance=instance, ip=self.client_ip, **data))

    @extend_schema(
        summary=_("Capture the shut-off instance's disk as a new image of its tenant"),
        request=CaptureSerializer,
        responses={202: OpenApiResponse(CaptureResultSerializer, description=_("The new image, being made."))},
    )
    @action(detail=True, methods=["post"])
    def capture(self, request, *args, **kwargs):
        instance = self.get_object_for(CHANGE)
        name = self._input(CaptureSerializer)["name"]
        image = lifecycle.capture_instance(actor=request.user, instance=instance, name=name, ip=self.client_ip)
        image = images_for(user=request.user).get(pk=image.pk)
        operation = (
            Operation.objects.filter(target_type=Image._meta.label_lower, target_id=str(image.pk))
            .select_related("user")
            .order_by("-pk")
            .first()
        )
        body = {
            "image": ImageSerializer(image, context=self.get_serializer_context()).data,
            "operation": OperationSerializer(operation).data if operation is not None else None,
        }
        return Response(body, status=status.HTTP_202_ACCEPTED)

    # ------------------------------------------------------------ metrics

    @extend_schema(
        summary=_("Metrics history of an instance (CPU, memory, disk and network), oldest first"),
        responses={200: MetricPointSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def metrics(self, request, *args, **kwargs):
        instance = self.get_object()
        return Response(metric_points_for(user=request.user, instance=instance))

    # ------------------------------------------------------------ extra disks

    def _child(self, queryset, action: str, pk: str):
        """A disk or snapshot of the URL's instance, through the access gate."""
        if not pk.isdigit() or int(pk) > MAX_ID:
            raise NotFound()
        instance = self.get_object_for(action)
        child = queryset.model.objects.restrict(self.request.user, action).filter(instance=instance, pk=pk).first()
        if child is None:
            raise NotFound()
        child.instance = instance
        return child

    @extend_schema(
        summary=_("Extra disks of an instance"),
        responses={200: InstanceDiskSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def disks(self, request, *args, **kwargs):
        instance = self.get_object()
        disks = InstanceDisk.objects.restrict(request.user, VIEW).filter(instance=instance)
        return Response(InstanceDiskSerializer(disks, many=True).data)

    @extend_schema(
        summary=_("Attach a new blank disk (counted in the disk quota)"),
        request=DiskCreateSerializer,
        responses={202: ACCEPTED},
    )
    @disks.mapping.post
    def attach_disk(self, request, *args, **kwargs):
        instance = self.get_object_for(CHANGE)
        size_gib = self._input(DiskCreateSerializer)["size_gib"]
        return accepted(
            lifecycle.attach_disk(actor=request.user, instance=instance, size_gib=size_gib, ip=self.client_ip)
        )

    @extend_schema(
        summary=_("Detach an extra disk and delete it (its data is gone; its quota is freed when done)"),
        request=None,
        responses={202: ACCEPTED},
    )
    @action(
        detail=True,
        methods=["delete"],
        url_path=rf"disks/(?P<disk_id>{NESTED_ID})",
        url_name="disk-detail",
        filter_backends=[],
    )
    def detach_disk(self, request, *args, disk_id: str = "", **kwargs):
        disk = self._child(InstanceDisk.objects, DELETE, disk_id)
        return accepted(lifecycle.detach_disk(actor=request.user, disk=disk, ip=self.client_ip))

    # ------------------------------------------------------------ snapshots

    @extend_schema(
        summary=_("Snapshots of an instance, newest first"),
        responses={200: SnapshotSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def snapshots(self, request, *args, **kwargs):
        instance = self.get_object()
        snapshots = Snapshot.objects.restrict(request.user, VIEW).filter(instance=instance)
        return Response(SnapshotSerializer(snapshots, many=True).data)

    @extend_schema(
        summary=_("Take a snapshot (counted in the snapshot quota)"),
        request=SnapshotCreateSerializer,
        responses={202: ACCEPTED},
    )
    @snapshots.mapping.post
    def create_snapshot(self, request, *args, **kwargs):
        instance = self.get_object_for(CHANGE)
        data = self._input(SnapshotCreateSerializer)
        return accepted(lifecycle.create_snapshot(actor=request.user, instance=instance, ip=self.client_ip, **data))

    @extend_schema(summary=_("One snapshot"), responses={200: SnapshotSerializer})
    @action(
        detail=True,
        methods=["get"],
        url_path=rf"snapshots/(?P<snapshot_id>{NESTED_ID})",
        url_name="snapshot-detail",
        filter_backends=[],
    )
    def snapshot(self, request, *args, snapshot_id: str = "", **kwargs):
        return Response(SnapshotSerializer(self._child(Snapshot.objects, VIEW, snapshot_id)).data)

    @extend_schema(summary=_("Delete a snapshot"), request=None, responses={202: ACCEPTED})
    @snapshot.mapping.delete
    def delete_snapshot(self, request, *args, snapshot_id: str = "", **kwargs):
        snapshot = self._child(Snapshot.objects, DELETE, snapshot_id)
        return accepted(lifecycle.delete_snapshot(actor=request.user, snapshot=snapshot, ip=self.client_ip))

    @extend_schema(summary=_("Revert the instance to a snapshot"), request=None, responses={202: ACCEPTED})
    @action(
        detail=True,
        methods=["post"],
        url_path=rf"snapshots/(?P<snapshot_id>{NESTED_ID})/revert",
        url_name="snapshot-revert",
        filter_backends=[],
    )
    def revert_snapshot(self, request, *args, snapshot_id: str = "", **kwargs):
        snapshot = self._child(Snapshot.objects, CHANGE, snapshot_id)
        return accepted(lifecycle.revert_snapshot(actor=request.user, snapshot=snapshot, ip=self.client_ip))


# ---------------------------------------------------------------- hosts (cloud admins)


class CloudCredentialsSerializer(serializers.Serializer):
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


HOST_CLOUD_FIELDS = ["cloud_name", "auth_url", "region", "project_mode", "project_domain", "os_network", "verify_tls"]


class HostSerializer(serializers.ModelSerializer):
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

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "kind",
            "uri",
            *HOST_CLOUD_FIELDS,
            "credentials",
            "clear_credentials",
            "credentials_set",
            "credentials_summary",
            "storage_pool",
            "default_network",
            "vnc_listen",
            "virt_type",
            "cpu_mode",
            "cpu_model",
            "cpu_allocation_ratio",
            "ram_allocation_ratio",
            "disk_allocation_ratio",
            "reserved_ram_mib",
            "enabled",
            "state",
            "state_reason",
            "cpus",
            "memory_mib",
            "free_memory_mib",
            "pool_capacity",
            "pool_available",
            "libvirt_version",
            "last_seen",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "state",
            "state_reason",
            "cpus",
            "memory_mib",
            "free_memory_mib",
            "pool_capacity",
            "pool_available",
            "libvirt_version",
            "last_seen",
            "created_at",
        ]
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
        from vms.cloud import credentials_summary

        return credentials_summary(host) if host.credentials else {}

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError(_("A host needs a name."))
        return value

    def validate_kind(self, value: str) -> str:
        if self.instance is not None and value != self.instance.kind:
            raise serializers.ValidationError(_("The kind of a host cannot change; add a new host instead."))
        return value

    def validate_vnc_listen(self, value: str) -> str:
        address = ipaddress.ip_address(value)
        if address.is_unspecified or address.is_multicast:
            raise serializers.ValidationError(
                _("Give the loopback or the host's management address, not one that listens everywhere.")
            )
        return value

    def validate(self, attrs):
        mode = attrs.get("cpu_mode", getattr(self.instance, "cpu_mode", Host.CpuMode.DEFAULT))
        model = attrs.get("cpu_model", getattr(self.instance, "cpu_model", ""))
        if mode == Host.CpuMode.CUSTOM and not model:
            raise serializers.ValidationError({"cpu_model": [_("CPU mode “custom” needs a CPU model.")]})
        return attrs


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


# ---------------------------------------------------------------- cloud projects and placement rules (cloud admins)


@extend_schema_field(OpenApiTypes.INT)
class CloudHostField(_GatedPrimaryKeyField):
    """The id of an OpenStack cloud (a host of kind openstack)."""

    model = Host

    def get_queryset(self):
        return super().get_queryset().filter(kind=Host.Kind.OPENSTACK)


@extend_schema_field(OpenApiTypes.INT)
class VisibleHostField(_GatedPrimaryKeyField):
    model = Host


class CloudProjectSerializer(serializers.ModelSerializer):
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


class CloudProjectUpdateSerializer(serializers.Serializer):
    project_id = serializers.CharField(max_length=64, help_text=_("Id of the existing Keystone project."))


class PushQuotaSerializer(serializers.Serializer):
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
        from vms import cloud

        project = self.get_object_for(CHANGE)
        pushed = cloud.push_quota(tenant=project.tenant)
        project = self.get_queryset().get(pk=project.pk)
        return Response({"pushed": pushed, "project": self.get_serializer(project).data})


class PlacementRuleSerializer(serializers.ModelSerializer):
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


class CloudFlavorSerializer(serializers.ModelSerializer):
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


# ---------------------------------------------------------------- unmanaged domains (cloud admins)


class UnmanagedDomainSerializer(serializers.ModelSerializer):
    """A domain found on a host that no instance owns."""

    host_name = serializers.CharField(source="host.name", read_only=True)

    class Meta:
        model = UnmanagedDomain
        fields = ["id", "host", "host_name", "uuid", "name", "state", "vcpus", "memory_mib", "first_seen", "last_seen"]
        read_only_fields = fields


class AdoptSerializer(serializers.Serializer):
    tenant = VisibleTenantField(help_text=_("Id of the tenant that will own the instance."))
    flavor = VisibleFlavorField(help_text=_("Id of the flavor whose sizes the tenant's quota counts."))
    name = serializers.CharField(
        max_length=63, required=False, help_text=_("Instance name; the domain's name when omitted.")
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
