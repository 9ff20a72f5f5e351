"""/api/v1/instances/: instances, their power actions, sizes, console, metrics, extra disks and snapshots.

Thin: instances_for() and restrict() for reads, vms.lifecycle for writes; what an instance accepts now is
its ``allowed_actions`` (the action registry, ``vms.actions``).

Long actions answer 202 with the Operation that carries them out (poll it at /api/v1/operations/{id}/);
another tenant's instance, disk or snapshot is a 404 for every method.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.validators import RegexValidator
from django.http import Http404
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from images.api.serializers import ImageSerializer
from images.models import Image
from images.selectors import images_for
from portal.access import CHANGE, DELETE, VIEW, is_cloud_admin
from portal.api.base import ApiViewSetMixin
from portal.api.serializers import MAX_INT32, VisibleTenantField
from portal.api.strict import StrictModelSerializer, StrictSerializer
from portal.services import ConflictError
from vms import actions, lifecycle, limits, moves
from vms import security_groups as group_services
from vms.access import access_disk_by_id, access_snapshot_by_id, may_read_user_data
from vms.api.fields import (
    VisibleFlavorField,
    VisibleImageField,
    VisibleKeypairField,
    VisibleNetworkField,
    VisibleSecurityGroupField,
)
from vms.api.filtersets import InstanceFilter
from vms.api.serializers import OperationSerializer
from vms.consoles import tokens
from vms.metric_ranges import DEFAULT_RANGE, RANGES
from vms.models import Host, Instance, InstanceDisk, Operation, Snapshot
from vms.selectors import instance_rows_for, instances_for, metric_points_for
from vms.selectors import metric_range as metric_range_named


class InstanceSerializer(StrictModelSerializer):
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
    state_reason = serializers.CharField(
        source="reason",
        read_only=True,
        help_text=_("Why the instance is in its state (an error's cause), in the reader's language; empty if none."),
    )
    allowed_actions = serializers.SerializerMethodField(
        help_text=_(
            "The actions the instance accepts now (its state, its task and what its host can do); "
            "the others are refused with 409."
        )
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
            "snapshot_bytes",
            "keypair",
            "network",
            "addresses",
            "mac_address",
            "allowed_actions",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "task": {"help_text": _("The operation in progress (launch, start, resize…); empty when idle.")},
            "addresses": {"help_text": _("IP addresses reported for the instance.")},
        }

    @extend_schema_field({"type": "array", "items": {"type": "string", "enum": list(actions.REQUESTABLE)}})
    def get_allowed_actions(self, instance: Instance) -> list[str]:
        return actions.allowed_actions(instance, memo=self.__dict__.setdefault("_allowed_memo", {}))

    def to_representation(self, instance):
        """Built directly rather than field by field: DRF's per-field work was most of a 500-row page's time
        (``bench/api_lists.py``). ``test_rows_are_what_the_declared_fields_give`` holds the two equal."""
        if "_staff" not in self.__dict__:
            request = self.context.get("request")
            self._staff = request is not None and is_cloud_admin(request.user)
            self._datetime = self.fields["created_at"]
        stamp = self._datetime.to_representation
        return {
            "id": instance.pk,
            "uuid": str(instance.uuid),
            "name": instance.name,
            "tenant": instance.tenant_id,
            "owner": instance.owner.username if instance.owner_id is not None else None,
            "flavor": instance.flavor_id,
            "flavor_name": instance.flavor.name,
            "image": instance.image_id,
            # hosts are infrastructure: only cloud admins see where instances run
            "host": instance.host.name if self._staff and instance.host_id is not None else None,
            "state": instance.state,
            # The portal's own reasons (a failed launch's) are stored untranslated: in the reader's language here.
            "state_reason": instance.reason,
            "task": instance.task,
            "desired_power_state": instance.desired_power_state,
            "installing": instance.installing,
            "vcpus": instance.vcpus,
            "ram_mib": instance.ram_mib,
            "disk_gib": instance.disk_gib,
            "snapshot_bytes": instance.snapshot_bytes,
            "keypair": instance.keypair_id,
            "network": instance.network_id,
            "addresses": instance.addresses,
            "mac_address": instance.mac_address,
            "allowed_actions": self.get_allowed_actions(instance),
            "created_at": stamp(instance.created_at),
            "updated_at": stamp(instance.updated_at),
        }


class InstanceDetailSerializer(InstanceSerializer):
    """One instance, with the user-data it was launched with: for its owner, the tenant's admins and cloud
    admins (``vms.access.may_read_user_data``); null for the tenant's other members."""

    class Meta(InstanceSerializer.Meta):
        fields = [*InstanceSerializer.Meta.fields, "user_data"]
        read_only_fields = fields

    def to_representation(self, instance):
        data = super().to_representation(instance)
        request = self.context.get("request")
        readable = request is not None and may_read_user_data(user=request.user, instance=instance)
        data["user_data"] = instance.user_data if readable else None
        return data


class InstanceDetailSchema(OpenApiSerializerExtension):
    """InstanceDetail is Instance plus user_data (one Instance component, so its enums keep plain names)."""

    target_class = InstanceDetailSerializer

    def map_serializer(self, auto_schema, direction):
        base = auto_schema.resolve_serializer(InstanceSerializer, direction)
        extra = {
            "type": "object",
            "properties": {
                "user_data": {
                    "type": "string",
                    "nullable": True,
                    "description": str(
                        _(
                            "cloud-init user-data: for the instance's owner, the tenant's admins and cloud admins "
                            "(null for the tenant's other members)."
                        )
                    ),
                }
            },
            "required": ["user_data"],
        }
        return {"allOf": [base.ref, extra]}


class InstanceCreateSerializer(StrictSerializer):
    tenant = VisibleTenantField(help_text=_("Id of the tenant the instances belong to (one of yours)."))
    name = serializers.CharField(
        max_length=limits.NAME_MAX,
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
    security_groups = VisibleSecurityGroupField(
        many=True,
        required=False,
        allow_empty=False,
        help_text=_("Ids of security groups of the tenant; omitted: the tenant's “default” group."),
    )
    user_data = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        trim_whitespace=False,
        help_text=_("cloud-init user-data (text, at most 64 KiB by default)."),
    )


class InstanceSecurityGroupsSerializer(StrictSerializer):
    security_groups = VisibleSecurityGroupField(
        many=True, allow_empty=False, help_text=_("Ids of the instance's security groups (of its tenant).")
    )


class LaunchSerializer(StrictSerializer):
    instances = InstanceSerializer(many=True, read_only=True)
    operations = OperationSerializer(many=True, read_only=True, help_text=_("One launch operation per instance."))


class ResizeSerializer(StrictSerializer):
    flavor = VisibleFlavorField(help_text=_("Id of the new flavor (disks only grow)."))


class ResourcesSerializer(StrictSerializer):
    vcpus = serializers.IntegerField(
        min_value=1, max_value=MAX_INT32, required=False, help_text=_("New vCPU count, up to the flavor's.")
    )
    ram_mib = serializers.IntegerField(
        min_value=limits.RAM_MIN_MIB,
        max_value=MAX_INT32,
        required=False,
        help_text=_("New RAM in MiB, up to the flavor's; only while the instance is shut off."),
    )

    schema_min_properties = 1  # vcpus, ram_mib or both

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError(_("Give vcpus, ram_mib or both."))
        return attrs


class CaptureSerializer(StrictSerializer):
    name = serializers.CharField(
        max_length=limits.IMAGE_NAME_MAX, help_text=_("Name of the new image of the instance's tenant.")
    )


class CaptureResultSerializer(StrictSerializer):
    image = ImageSerializer(read_only=True)
    operation = OperationSerializer(read_only=True, allow_null=True, help_text=_("The capture operation."))


class MigrateSerializer(StrictSerializer):
    host = serializers.PrimaryKeyRelatedField(
        queryset=Host.objects.all(),
        required=False,
        allow_null=True,
        help_text=_("Id of the destination host; omitted: the scheduler picks one."),
    )
    live = serializers.BooleanField(
        required=False,
        allow_null=True,
        help_text=_("true: only if it runs (live migration); false: only if it is shut off (cold). Omitted: as it is."),
    )


class MetricPointSerializer(StrictSerializer):
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
    cpu_max_percent = serializers.FloatField(
        required=False, allow_null=True, help_text=_("Ranges longer than an hour: the highest CPU point of the bucket.")
    )
    samples = serializers.IntegerField(
        required=False, help_text=_("Ranges longer than an hour: the raw points averaged into this bucket.")
    )


def metrics_range_parameter() -> OpenApiParameter:
    """The ``range`` query parameter of the metrics endpoints (``vms.metric_ranges``)."""
    return OpenApiParameter(
        "range",
        str,
        enum=list(RANGES),
        default=DEFAULT_RANGE,
        description=_(
            "Time range: 1h gives the raw points (one per sampling interval); 1d, 1w and 1mo give averages "
            "per 5 min, 30 min and 2 h."
        ),
    )


class InstanceDiskSerializer(StrictModelSerializer):
    """An extra blank disk of an instance (counted in the tenant's disk quota)."""

    class Meta:
        model = InstanceDisk
        fields = ["id", "instance", "size_gib", "target", "attached", "created_at"]
        read_only_fields = fields
        extra_kwargs = {"target": {"help_text": _("Device name in the guest (vdb…) once attached.")}}


class DiskCreateSerializer(StrictSerializer):
    size_gib = serializers.IntegerField(
        min_value=limits.DISK_MIN_GIB, max_value=limits.DISK_MAX_GIB, help_text=_("Size of the new blank disk.")
    )


class SnapshotSerializer(StrictModelSerializer):
    """A snapshot of an instance (counted in the tenant's snapshot quota)."""

    class Meta:
        model = Snapshot
        fields = ["id", "instance", "name", "description", "state", "vm_state", "created_at"]
        read_only_fields = fields
        extra_kwargs = {"vm_state": {"help_text": _("The instance's state when the snapshot was taken.")}}


class SnapshotCreateSerializer(StrictSerializer):
    name = serializers.CharField(
        max_length=limits.SNAPSHOT_NAME_MAX,
        validators=[RegexValidator(lifecycle.SNAPSHOT_NAME_RE)],
        help_text=_("Letters, digits, dots, dashes and underscores; starts with a letter or digit."),
    )
    description = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


class ConsoleTicketSerializer(StrictSerializer):
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
        if self.action == "list":
            return instance_rows_for(user=self.request.user)
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
        ticket = tokens.open_console(user=request.user, instance=instance, ip=self.client_ip)
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

    # ------------------------------------------------------------ hosts (cloud admins)

    @extend_schema(
        summary=_("Migrate to another host: live when it runs, cold when shut off (cloud admins)"),
        request=MigrateSerializer,
        responses={202: ACCEPTED},
    )
    @action(detail=True, methods=["post"])
    def migrate(self, request, *args, **kwargs):
        instance = self.get_object()
        self.require_cloud_admin(_("Only cloud admins migrate instances."))
        data = self._input(MigrateSerializer)
        running = instance.state == Instance.State.RUNNING
        if data.get("live") is not None and data["live"] != running:
            text = (
                gettext("Instance “%(name)s” runs: it migrates live.")
                if running
                else gettext("Instance “%(name)s” does not run: it can only migrate cold.")
            )
            raise ConflictError(text % {"name": instance.name}, field="live")
        operation = moves.migrate_instance(
            actor=request.user, instance=instance, host=data.get("host"), ip=self.client_ip
        )
        return accepted(operation)

    # ------------------------------------------------------------ security groups

    @extend_schema(
        methods=["GET"],
        summary=_("The instance's security groups"),
        responses={200: InstanceSecurityGroupsSerializer},
    )
    @extend_schema(
        methods=["PUT"],
        summary=_("Set the instance's security groups (its NICs follow live)"),
        request=InstanceSecurityGroupsSerializer,
        responses={200: InstanceSecurityGroupsSerializer},
    )
    @action(
        detail=True,
        methods=["get", "put"],
        url_path="security-groups",
        filter_backends=[],
        pagination_class=None,
    )
    def security_groups(self, request, *args, **kwargs):
        if request.method == "PUT":
            instance = self.get_object_for(CHANGE)
            groups = self._input(InstanceSecurityGroupsSerializer)["security_groups"]
            group_services.set_instance_security_groups(
                actor=request.user, instance=instance, groups=groups, ip=self.client_ip
            )
        else:
            instance = self.get_object_for(VIEW)
        ids = sorted(instance.security_groups.values_list("pk", flat=True))
        return Response({"security_groups": ids})

    # ------------------------------------------------------------ metrics

    @extend_schema(
        summary=_("Metrics history of an instance (CPU, memory, disk and network), oldest first"),
        parameters=[metrics_range_parameter()],
        responses={200: MetricPointSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def metrics(self, request, *args, **kwargs):
        instance = self.get_object()
        metric_range = metric_range_named(request.query_params.get("range"))
        return Response(metric_points_for(user=request.user, instance=instance, metric_range=metric_range))

    # ------------------------------------------------------------ extra disks

    def _disk(self, action: str, pk: str) -> InstanceDisk:
        """A disk of the URL's instance, through the access gate (404 invisible, 403 only visible)."""
        instance = self.get_object_for(VIEW)
        return self._nested(access_disk_by_id, instance=instance, disk_id=pk, action=action)

    def _snapshot(self, action: str, pk: str) -> Snapshot:
        instance = self.get_object_for(VIEW)
        return self._nested(access_snapshot_by_id, instance=instance, snapshot_id=pk, action=action)

    def _nested(self, access, **kwargs):
        try:
            return access(user=self.request.user, **kwargs)
        except Http404:
            raise NotFound() from None
        except DjangoPermissionDenied:
            self.permission_denied(self.request, message=_("You are not allowed to do this."))

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
        disk = self._disk(DELETE, disk_id)
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
        return Response(SnapshotSerializer(self._snapshot(VIEW, snapshot_id)).data)

    @extend_schema(summary=_("Delete a snapshot"), request=None, responses={202: ACCEPTED})
    @snapshot.mapping.delete
    def delete_snapshot(self, request, *args, snapshot_id: str = "", **kwargs):
        snapshot = self._snapshot(DELETE, snapshot_id)
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
        snapshot = self._snapshot(CHANGE, snapshot_id)
        return accepted(lifecycle.revert_snapshot(actor=request.user, snapshot=snapshot, ip=self.client_ip))
