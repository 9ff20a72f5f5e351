"""Instance lifecycle services: launch, power actions, resize, disks, snapshots, capture, delete.

Every action has two halves:

* a **request** (``launch_instances``, ``request_action``, ``resize_instance`` …), run in the web
  process inside one transaction: it checks the access-independent rules (state, quota, sizes),
  locks the instance row, marks the instance busy (``task``), records an Operation and queues
  ``vms.tasks.run_instance_operation`` on commit. Bad input raises ServiceError and changes
  nothing.
* an **execution** (``execute(operation_id=…)``), run by the Celery worker: it talks to the host
  through the driver, step by step, each step idempotent (a volume that exists is reused, a
  domain defined again with the same UUID is the same domain, a started domain stays started),
  so a task redelivered after a worker died finishes the job. ``recover_stale_operations``
  re-queues operations whose worker stopped sending heartbeats.

Instances are addressed on their host by UUID (``Instance.uuid`` is the libvirt domain UUID).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from images.models import Image
from images.selectors import visible_to_tenant
from portal.backends.base import BackendError, DiskSpec, HostUnreachable, InstanceSpec, InstanceState, NotFound
from portal.backends.cloudinit import build_nocloud_seed, hostname_from
from portal.backends.libvirt.driver import LibvirtDriver
from portal.backends.openstack.driver import AuthFailed, QuotaExceeded
from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit, reserve_quota
from vms import cloud, operations, realtime
from vms.hosts import driver_for
from vms.models import CloudProject, Flavor, Host, Instance, InstanceDisk, Keypair, Network, Operation, Snapshot
from vms.scheduler import check_growth, place, placement_target
from vms.services import reserve_instances

log = logging.getLogger(__name__)

GIB = 1024**3
NAME_RE = re.compile(r"^[^\x00-\x1f\x7f/]+$")  # any text on one line, no slash: the title is XML-escaped
SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")

# Power actions: what they need, what they do.
POWER_ACTIONS = ("start", "shutdown", "stop", "reboot", "reset", "pause", "resume")
ACTION_STATES: dict[str, set[str]] = {
    "start": {Instance.State.SHUTOFF, Instance.State.CRASHED},
    "shutdown": {Instance.State.RUNNING, Instance.State.PAUSED},
    "stop": {Instance.State.RUNNING, Instance.State.PAUSED, Instance.State.CRASHED},
    "reboot": {Instance.State.RUNNING},
    "reset": {Instance.State.RUNNING, Instance.State.PAUSED},
    "pause": {Instance.State.RUNNING},
    "resume": {Instance.State.PAUSED},
    "finish_install": {Instance.State.RUNNING, Instance.State.SHUTOFF, Instance.State.PAUSED, Instance.State.CRASHED},
    "resize": {Instance.State.SHUTOFF},
    "set_resources": {Instance.State.RUNNING, Instance.State.SHUTOFF},
    "attach_disk": {Instance.State.RUNNING, Instance.State.SHUTOFF},
    "detach_disk": {Instance.State.RUNNING, Instance.State.SHUTOFF},
    "snapshot_create": {Instance.State.RUNNING, Instance.State.SHUTOFF},
    "snapshot_revert": {Instance.State.RUNNING, Instance.State.SHUTOFF, Instance.State.PAUSED},
    "snapshot_delete": {Instance.State.RUNNING, Instance.State.SHUTOFF, Instance.State.PAUSED},
    "capture": {Instance.State.SHUTOFF},
}
ACTION_LABELS = {
    "launch": gettext_lazy("launch"),
    "start": gettext_lazy("start"),
    "shutdown": gettext_lazy("shut down"),
    "stop": gettext_lazy("power off"),
    "reboot": gettext_lazy("reboot"),
    "reset": gettext_lazy("hard reset"),
    "pause": gettext_lazy("pause"),
    "resume": gettext_lazy("resume"),
    "finish_install": gettext_lazy("finish install"),
    "resize": gettext_lazy("resize"),
    "set_resources": gettext_lazy("change vCPUs/RAM"),
    "attach_disk": gettext_lazy("attach a disk"),
    "detach_disk": gettext_lazy("detach a disk"),
    "snapshot_create": gettext_lazy("take a snapshot"),
    "snapshot_revert": gettext_lazy("revert to a snapshot"),
    "snapshot_delete": gettext_lazy("delete a snapshot"),
    "capture": gettext_lazy("capture to image"),
    "delete": gettext_lazy("delete"),
}
# Actions that rebuild the domain from the portal's own volumes: not for adopted domains.
DETACH_TIMEOUT = 30  # seconds a guest gets to release a hot-unplugged disk
ADOPTED_REFUSED = {"resize", "set_resources", "finish_install", "attach_disk", "detach_disk", "capture"}
# What an instance on an OpenStack cloud cannot do (yet): the cloud has no volumes service for the portal
# and Nova reverts to a snapshot only by a rebuild that loses the instance's own disk.
CLOUD_REFUSED = {"set_resources", "finish_install", "attach_disk", "detach_disk", "capture", "snapshot_revert"}
OBSERVED = {
    "running": Instance.State.RUNNING,
    "paused": Instance.State.PAUSED,
    "shutoff": Instance.State.SHUTOFF,
    "crashed": Instance.State.CRASHED,
}


# ---------------------------------------------------------------- naming and specs


def _prefix() -> str:
    return settings.LABCLOUD_DOMAIN_PREFIX


def root_volume(instance: Instance) -> str:
    return f"{_prefix()}{instance.uuid}-root.qcow2"


def seed_volume(instance: Instance) -> str:
    return f"{_prefix()}{instance.uuid}-seed.iso"


def disk_volume(instance: Instance, index: int) -> str:
    return f"{_prefix()}{instance.uuid}-disk{index}.qcow2"


def serial_log_path(instance: Instance) -> str:
    return str(PurePosixPath(settings.LABCLOUD_SERIAL_LOG_DIR) / f"{instance.domain_name or instance.uuid}.serial.log")


def _network_name(instance: Instance) -> str | None:
    if instance.network_id is not None:
        from vms.networks import ensure_on_host

        return ensure_on_host(network=instance.network, host=instance.host)
    return instance.host.default_network or None


def build_spec(instance: Instance, *, network: str | None) -> InstanceSpec:
    """The domain the instance should be, from its row (root disk, seed or installer ISO, extra disks)."""
    host = instance.host
    pool = host.storage_pool
    disks: list[DiskSpec] = []
    if instance.installing:
        disks.append(DiskSpec(device="disk", pool=pool, volume=root_volume(instance), format="qcow2", boot_order=2))
        disks.append(
            DiskSpec(
                device="cdrom",
                pool=pool,
                volume=instance.image.replicas.get(host=host).volume,
                format="raw",
                readonly=True,
                boot_order=1,
            )
        )
    else:
        disks.append(DiskSpec(device="disk", pool=pool, volume=root_volume(instance), format="qcow2", boot_order=1))
        if instance.image is not None and instance.image.kind == Image.Kind.DISK:
            disks.append(DiskSpec(device="cdrom", pool=pool, volume=seed_volume(instance), format="raw", readonly=True))
    for disk in instance.disks.filter(attached=True).order_by("pk"):
        disks.append(DiskSpec(device="disk", pool=pool, volume=disk.volume, format="qcow2"))
    os_type = instance.image.os_type if instance.image is not None else "linux"
    return InstanceSpec(
        uuid=str(instance.uuid),
        name=instance.domain_name,
        title=instance.name,
        description=_("labcloud instance of tenant %(tenant)s") % {"tenant": instance.tenant.name},
        vcpus=instance.vcpus,
        max_vcpus=max(instance.flavor.vcpus, instance.vcpus),
        memory_mib=instance.ram_mib,
        max_memory_mib=max(instance.flavor.ram_mib, instance.ram_mib),
        virt_type=host.virt_type,
        cpu_mode=host.cpu_mode,
        cpu_model=host.cpu_model or None,
        os_type=os_type if os_type in ("linux", "windows", "other") else "linux",
        disks=tuple(disks),
        network=network,
        mac_address=instance.mac_address or None,
        vnc_listen=host.vnc_listen,
        serial_log=serial_log_path(instance),
        metadata={"tenant": str(instance.tenant_id), "instance": str(instance.pk)},
    )


# ---------------------------------------------------------------- launch


@dataclass
class Launch:
    instances: list[Instance]
    operations: list[Operation]


def batch_names(name: str, count: int) -> list[str]:
    """``count`` names from a pattern: ``{n}`` is replaced by 1…count; without it, ``-1``… is appended."""
    if count == 1:
        return [name.replace("{n}", "1")]
    if "{n}" in name:
        return [name.replace("{n}", str(i)) for i in range(1, count + 1)]
    return [f"{name}-{i}" for i in range(1, count + 1)]


def check_name(name: str, *, field: str = "name") -> str:
    """The instance name, stripped; ServiceError when it is empty, too long, multi-line or has a slash."""
    name = name.strip()
    if not name or len(name) > 63 or not NAME_RE.match(name):
        raise ServiceError(
            _("A name has 1 to 63 characters on one line, without “/”: “%(name)s”.") % {"name": name[:80]},
            field=field,
        )
    return name


def launch_instances(
    *,
    actor,
    tenant: Tenant,
    name: str,
    flavor: Flavor,
    image: Image,
    count: int = 1,
    keypair: Keypair | None = None,
    network: Network | None = None,
    user_data: str = "",
    ip: str | None = None,
) -> Launch:
    """Create ``count`` instances of ``flavor`` from a disk image or an installer ISO, all or none.

    In one transaction: quota for all of them is reserved, each is placed on a host by the
    scheduler, and one launch operation per instance is queued on commit.
    """
    if not tenant.enabled:
        raise ConflictError(_("Tenant “%(name)s” is disabled.") % {"name": tenant.name}, field="tenant")
    if not isinstance(count, int) or not 1 <= count <= settings.LABCLOUD_MAX_BATCH:
        raise ServiceError(
            _("Launch between 1 and %(max)d instances at once.") % {"max": settings.LABCLOUD_MAX_BATCH}, field="count"
        )
    if count > 1 and "{n}" not in name and len(name.strip()) > 63 - len(f"-{count}"):
        raise ServiceError(_("The name is too long for numbering."), field="name")
    names = [check_name(n) for n in batch_names(name.strip(), count)]
    if not Image.objects.filter(visible_to_tenant(tenant_id=tenant.pk), pk=image.pk).exists():
        raise ServiceError(_("Image “%(name)s” is not available to this tenant.") % {"name": image.name}, field="image")
    if image.status != Image.Status.ACTIVE:
        raise ServiceError(
            _("Image “%(name)s” is %(status)s, not active.")
            % {"name": image.name, "status": image.get_status_display()},
            field="image",
        )
    if image.kind == Image.Kind.DISK and image.min_disk_gib > flavor.disk_gib:
        raise ServiceError(
            _("Image “%(image)s” needs a disk of at least %(min)d GiB; flavor %(flavor)s has %(disk)d GiB.")
            % {"image": image.name, "min": image.min_disk_gib, "flavor": flavor.name, "disk": flavor.disk_gib},
            field="flavor",
        )
    if image.kind == Image.Kind.DISK and image.virtual_size and image.virtual_size > flavor.disk_gib * GIB:
        raise ServiceError(
            _("Image “%(image)s” is larger (%(size).1f GiB) than the disk of flavor %(flavor)s (%(disk)d GiB).")
            % {"image": image.name, "size": image.virtual_size / GIB, "flavor": flavor.name, "disk": flavor.disk_gib},
            field="flavor",
        )
    if image.min_ram_mib > flavor.ram_mib:
        raise ServiceError(
            _("Image “%(image)s” needs at least %(min)d MiB of RAM; flavor %(flavor)s has %(ram)d MiB.")
            % {"image": image.name, "min": image.min_ram_mib, "flavor": flavor.name, "ram": flavor.ram_mib},
            field="flavor",
        )
    if keypair is not None and keypair.tenant_id != tenant.pk:
        raise ServiceError(_("That keypair belongs to another tenant."), field="keypair")
    if network is not None and not Network.objects.usable_by(tenant).filter(pk=network.pk).exists():
        raise ServiceError(
            _("Network “%(name)s” is not shared with this tenant.") % {"name": network.name}, field="network"
        )
    if len(user_data.encode()) > settings.LABCLOUD_USER_DATA_MAX_BYTES:
        raise ServiceError(
            _("User-data is limited to %(kib)d KiB.") % {"kib": settings.LABCLOUD_USER_DATA_MAX_BYTES // 1024},
            field="user_data",
        )
    if "\x00" in user_data:
        raise ServiceError(_("User-data must be text."), field="user_data")
    from vms.tasks import run_instance_operation

    with transaction.atomic():
        instances = reserve_instances(actor=actor, tenant=tenant, flavor=flavor, names=names, ip=ip)
        target = placement_target(tenant=tenant, flavor=flavor)
        if target is not None and target.is_cloud:
            if image.kind == Image.Kind.ISO:
                raise ServiceError(
                    _(
                        "Instances of this tenant and flavor go to OpenStack cloud %(host)s, "
                        "which cannot install from an ISO."
                    )
                    % {"host": target.name},
                    field="image",
                )
            if network is not None:
                raise ServiceError(
                    _("Instances on OpenStack cloud %(host)s use the cloud's network, not “%(name)s”.")
                    % {"host": target.name, "name": network.name},
                    field="network",
                )
        hosts = place(
            count=count,
            vcpus=flavor.vcpus,
            ram_mib=flavor.ram_mib,
            disk_gib=flavor.disk_gib,
            hosts=None if target is None else [target],
        )
        ops = []
        for instance, host in zip(instances, hosts, strict=True):
            instance.host = host
            instance.image = image
            instance.keypair = keypair
            instance.network = network
            instance.user_data = user_data
            instance.installing = image.kind == Image.Kind.ISO
            instance.domain_name = f"{_prefix()}{instance.uuid}"
            instance.task = "launch"
            instance.save()
            ops.append(
                operations.create_operation(
                    kind="instance.launch", target=instance, tenant=tenant, user=actor, task=run_instance_operation
                )
            )
            realtime.instance_changed(instance)
    return Launch(instances=instances, operations=ops)


def _launch(operation: Operation, instance: Instance) -> str:
    host = instance.host
    if host.is_cloud:
        return _cloud_launch(operation, instance)
    driver = driver_for(host)
    image = instance.image
    if image is None or image.status != Image.Status.ACTIVE:
        raise ServiceError(_("The image of this instance is gone or no longer active."))
    if not image.replicas.filter(host=host, state="ready").exists():
        operations.progress(
            operation=operation, percent=5, message=_("Copying image to %(host)s") % {"host": host.name}
        )

    def copy_progress(percent: int) -> None:
        operations.progress(operation=operation, percent=5 + percent * 55 // 100)

    replica = _ensure_replica(image=image, host=host, operation=operation, report=copy_progress)
    pool = host.storage_pool
    size = instance.disk_gib * GIB
    operations.progress(operation=operation, percent=65, message=_("Creating the disk and the seed"))
    if driver.find_volume(pool, root_volume(instance)) is None:
        if instance.installing:
            driver.create_volume(pool, root_volume(instance), size)
        else:
            size = max(size, image.virtual_size or 0)
            driver.create_overlay(
                pool,
                root_volume(instance),
                replica.volume,
                size,
                backing_pool=replica.pool if replica.pool != pool else None,
                backing_format=image.stored_format or "qcow2",
            )
    if not instance.installing:  # always written: a crash may have left a partial seed behind
        keys = [instance.keypair.public_key] if instance.keypair is not None else []
        seed = build_nocloud_seed(
            instance_id=str(instance.uuid),
            hostname=hostname_from(instance.name),
            ssh_keys=keys,
            user_data=instance.user_data or None,
        )
        driver.upload_bytes(pool, seed_volume(instance), seed)
    network = _network_name(instance)
    try:
        facts = driver.describe(str(instance.uuid))
    except NotFound:
        driver.define(build_spec(instance, network=network))
        facts = driver.describe(str(instance.uuid))
    mac = facts.spec.mac_address or instance.mac_address  # libvirt picks the MAC when the domain is defined
    operations.progress(operation=operation, percent=90, message=_("Starting"))
    state = driver.start(str(instance.uuid))
    Instance.objects.filter(pk=instance.pk).update(mac_address=mac or "")
    instance.mac_address = mac or ""
    _apply(instance, state)
    return _("Instance is running.")


def _cloud_launch(operation: Operation, instance: Instance) -> str:
    """Project, flavor and image in the cloud (each made once and remembered), then the server, until ACTIVE."""
    host, image = instance.host, instance.image
    if image is None or image.status != Image.Status.ACTIVE:
        raise ServiceError(_("The image of this instance is gone or no longer active."))
    driver = cloud.cloud_driver(host)
    operations.progress(
        operation=operation, percent=5, message=_("Preparing the project on %(host)s") % {"host": host.name}
    )
    project_id = cloud.project_for(host=host, tenant=instance.tenant)
    flavor_id = cloud.cloud_flavor(host=host, flavor=instance.flavor)

    def upload_progress(percent: int) -> None:
        operations.progress(
            operation=operation,
            percent=10 + percent * 40 // 100,
            message=_("Uploading the image to %(host)s") % {"host": host.name},
        )

    deadline = time.monotonic() + 3600
    while True:
        try:
            image_id = cloud.cloud_image(host=host, image=image, project_id=project_id, report=upload_progress)
            break
        except ConflictError:  # another launch uploads it right now: wait for it (with heartbeats)
            if time.monotonic() > deadline:
                raise
            operations.heartbeat(operation=operation)
            time.sleep(0.5)
    server_id = instance.cloud_id
    if not server_id and operation.params.get("server_requested"):
        # this launch asked Nova before (a redelivered task, or a worker that died before storing the id)
        server_id = _find_cloud_server(instance, project_id)
    if not server_id:
        operations.progress(operation=operation, percent=55, message=_("Creating the server"))
        operation.params = {**operation.params, "server_requested": True}
        Operation.objects.filter(pk=operation.pk).update(params=operation.params)

        def create(image_id: str) -> str:
            return driver.create(
                project_id=project_id,
                name=instance.domain_name,
                flavor_id=flavor_id,
                image_id=image_id,
                network_id=host.os_network or None,
                public_key=instance.keypair.public_key if instance.keypair is not None else None,
                user_data=instance.user_data or None,
                metadata={"labcloud_instance": str(instance.uuid), "labcloud_tenant": instance.tenant.slug},
            )

        try:
            server_id = create(image_id)
        except BackendError as exc:
            if isinstance(exc, HostUnreachable | AuthFailed | QuotaExceeded):
                raise
            # Refused: maybe Nova does not see the recorded Glance copy (deleted there, or the project changed)
            fresh = cloud.cloud_image(host=host, image=image, project_id=project_id, recheck=True)
            if fresh == image_id:
                raise
            server_id = create(fresh)
    Instance.objects.filter(pk=instance.pk).update(cloud_id=server_id)
    instance.cloud_id = server_id
    operations.progress(operation=operation, percent=70, message=_("Booting"))
    state = driver.wait_for(server_id, states=("running",), timeout=settings.LABCLOUD_CLOUD_BUILD_TIMEOUT)
    _apply_cloud(instance, state)
    return _("Instance is running.")


def _find_cloud_server(instance: Instance, project_id: str | None = None) -> str:
    """The id of the server this instance made in the cloud (by its unique name), or "" when there is none."""
    if project_id is None:
        found = CloudProject.objects.filter(host=instance.host, tenant_id=instance.tenant_id).first()
        if found is None:
            return ""
        project_id = found.project_id
    servers = cloud.cloud_driver(instance.host).list_servers(project_id=project_id)
    return next((s.id for s in servers if s.name == instance.domain_name and s.state != "deleted"), "")


def _server_was_requested(instance: Instance) -> bool:
    return Operation.objects.filter(
        kind="instance.launch", target_type="vms.instance", target_id=str(instance.pk), params__server_requested=True
    ).exists()


def _apply_cloud(instance: Instance, server) -> None:
    """Store what Nova just reported (the same mapping as the watcher's) and tell the browsers."""
    fields = {"state": cloud.NOVA_TO_INSTANCE.get(server.state, instance.state), "state_reason": ""}
    if server.state == "error":
        fields["state_reason"] = (server.fault or "")[:255]
    Instance.objects.filter(pk=instance.pk).update(
        **fields, addresses=list(server.addresses), updated_at=timezone.now()
    )
    for key, value in fields.items():
        setattr(instance, key, value)
    instance.addresses = list(server.addresses)
    instance.updated_at = timezone.now()
    realtime.instance_changed(instance)


def _ensure_replica(*, image: Image, host: Host, operation: Operation, report: Callable[[int], None]):
    """The image on the host; waits (with heartbeats) while another launch copies it."""
    from images.services import ensure_image_on_host

    deadline = time.monotonic() + 3600
    while True:
        try:
            return ensure_image_on_host(image=image, host=host, operation=operation, progress=report)
        except ConflictError:
            if time.monotonic() > deadline:
                raise
            operations.heartbeat(operation=operation)
            time.sleep(0.5)


# ---------------------------------------------------------------- state


def _apply(instance: Instance, state: InstanceState, **extra) -> None:
    """Store what the driver just reported (fact) and tell the browsers."""
    new_state = OBSERVED.get(state.state, instance.state)
    fields = {"state": new_state, "state_reason": "", **extra}
    Instance.objects.filter(pk=instance.pk).update(**fields, updated_at=timezone.now())
    for key, value in fields.items():
        setattr(instance, key, value)
    instance.updated_at = timezone.now()
    realtime.instance_changed(instance)


# ---------------------------------------------------------------- requests


def _lock(instance: Instance) -> Instance:
    locked = (
        Instance.objects.select_for_update(of=("self",))
        .select_related("tenant", "flavor", "image", "host", "keypair", "network")
        .get(pk=instance.pk)
    )
    return locked


def _check_ready(instance: Instance, action: str) -> None:
    label = ACTION_LABELS.get(action, action)
    if instance.state == Instance.State.DELETING:
        raise ConflictError(_("Instance “%(name)s” is being deleted.") % {"name": instance.name})
    if instance.task:
        raise ConflictError(
            _("Instance “%(name)s” is busy (%(task)s); try again when it has finished.")
            % {"name": instance.name, "task": ACTION_LABELS.get(instance.task, instance.task)}
        )
    allowed = ACTION_STATES.get(action)
    if allowed is not None and instance.state not in allowed:
        raise ConflictError(
            _("Cannot %(action)s instance “%(name)s” while it is %(state)s.")
            % {"action": label, "name": instance.name, "state": instance.get_state_display().lower()}
        )
    if instance.host_id is None:
        raise ConflictError(_("Instance “%(name)s” has no host.") % {"name": instance.name})
    if instance.host.is_cloud and action in CLOUD_REFUSED:
        raise ConflictError(
            _("Instance “%(name)s” runs on OpenStack cloud %(host)s, where the portal cannot %(action)s.")
            % {"name": instance.name, "host": instance.host.name, "action": label}
        )
    if instance.adopted and action in ADOPTED_REFUSED:
        raise ConflictError(
            _("Instance “%(name)s” was adopted: its disks and devices are managed on the host, not here.")
            % {"name": instance.name}
        )


def _queue(*, actor, instance: Instance, action: str, params: dict | None = None, ip: str | None = None) -> Operation:
    from vms.tasks import run_instance_operation

    Instance.objects.filter(pk=instance.pk).update(task=action, updated_at=timezone.now())
    instance.task = action
    record_audit(
        user=actor, action=f"instance.{action}", target=instance, tenant=instance.tenant, ip=ip, detail=params or {}
    )
    operation = operations.create_operation(
        kind=f"instance.{action}",
        target=instance,
        tenant=instance.tenant,
        user=actor,
        task=run_instance_operation,
        params=params or {},
    )
    realtime.instance_changed(instance)
    return operation


def request_action(*, actor, instance: Instance, action: str, ip: str | None = None) -> Operation:
    """Queue a power action (start, shutdown, stop, reboot, reset, pause, resume) or finish_install."""
    if action not in (*POWER_ACTIONS, "finish_install"):
        raise ServiceError(_("Unknown action “%(action)s”.") % {"action": action[:40]}, field="action")
    with transaction.atomic():
        instance = _lock(instance)
        _check_ready(instance, action)
        if action == "finish_install" and not instance.installing:
            raise ConflictError(_("Instance “%(name)s” is not installing from an ISO.") % {"name": instance.name})
        if action in ("start", "resume", "finish_install", "reboot", "reset"):
            desired = Instance.PowerState.RUNNING
        elif action in ("shutdown", "stop"):
            desired = Instance.PowerState.STOPPED
        else:
            desired = instance.desired_power_state
        Instance.objects.filter(pk=instance.pk).update(desired_power_state=desired)
        instance.desired_power_state = desired
        return _queue(actor=actor, instance=instance, action=action, ip=ip)


def resize_instance(*, actor, instance: Instance, flavor: Flavor, ip: str | None = None) -> Operation:
    """Offline resize to another flavor: the quota difference is reserved now; disks only grow."""
    with transaction.atomic():
        instance = _lock(instance)
        _check_ready(instance, "resize")
        if not Flavor.objects.usable_by(instance.tenant).filter(pk=flavor.pk).exists():
            raise ServiceError(
                _("Flavor “%(name)s” is not available to this tenant.") % {"name": flavor.name}, field="flavor"
            )
        if flavor.pk == instance.flavor_id:
            raise ServiceError(_("The instance already has flavor “%(name)s”.") % {"name": flavor.name}, field="flavor")
        if flavor.disk_gib < instance.disk_gib:
            raise ServiceError(
                _("Disks cannot shrink: flavor %(flavor)s has %(new)d GiB, the instance has %(old)d GiB.")
                % {"flavor": flavor.name, "new": flavor.disk_gib, "old": instance.disk_gib},
                field="flavor",
            )
        delta = {
            "vcpus": max(0, flavor.vcpus - instance.vcpus),
            "ram_mib": max(0, flavor.ram_mib - instance.ram_mib),
            "disk_gib": max(0, flavor.disk_gib - instance.disk_gib),
        }
        reserve_quota(tenant=instance.tenant, request={k: v for k, v in delta.items() if v})
        check_growth(host=instance.host, **delta)
        params = {
            "from": instance.flavor.name,
            "to": flavor.name,
            "from_flavor_id": instance.flavor_id,
            "from_sizes": [instance.vcpus, instance.ram_mib, instance.disk_gib],
        }
        Instance.objects.filter(pk=instance.pk).update(
            flavor=flavor, vcpus=flavor.vcpus, ram_mib=flavor.ram_mib, disk_gib=flavor.disk_gib
        )
        instance.flavor, instance.vcpus, instance.ram_mib, instance.disk_gib = (
            flavor,
            flavor.vcpus,
            flavor.ram_mib,
            flavor.disk_gib,
        )
        return _queue(actor=actor, instance=instance, action="resize", params=params, ip=ip)


def set_resources(
    *, actor, instance: Instance, vcpus: int | None = None, ram_mib: int | None = None, ip: str | None = None
) -> Operation:
    """Change vCPUs and/or RAM up to the flavor's size; live (hot-add, balloon) when running.

    Quota counts what the instance has now, so growing reserves the difference. A running
    instance can gain vCPUs but not lose them (hot-unplug is unreliable in guests).
    """
    with transaction.atomic():
        instance = _lock(instance)
        _check_ready(instance, "set_resources")
        flavor = instance.flavor
        new_vcpus = instance.vcpus if vcpus is None else vcpus
        new_ram = instance.ram_mib if ram_mib is None else ram_mib
        if not isinstance(new_vcpus, int) or not 1 <= new_vcpus <= flavor.vcpus:
            raise ServiceError(
                _("vCPUs must be between 1 and %(max)d (flavor %(flavor)s).")
                % {"max": flavor.vcpus, "flavor": flavor.name},
                field="vcpus",
            )
        if not isinstance(new_ram, int) or not 64 <= new_ram <= flavor.ram_mib:
            raise ServiceError(
                _("RAM must be between 64 and %(max)d MiB (flavor %(flavor)s).")
                % {"max": flavor.ram_mib, "flavor": flavor.name},
                field="ram_mib",
            )
        if instance.state == Instance.State.RUNNING and new_vcpus < instance.vcpus:
            raise ConflictError(_("vCPUs can only be removed while the instance is shut off."), field="vcpus")
        if new_vcpus == instance.vcpus and new_ram == instance.ram_mib:
            raise ServiceError(_("Nothing to change."))
        delta = {"vcpus": max(0, new_vcpus - instance.vcpus), "ram_mib": max(0, new_ram - instance.ram_mib)}
        reserve_quota(tenant=instance.tenant, request={k: v for k, v in delta.items() if v})
        check_growth(host=instance.host, **delta)
        params = {
            "vcpus": new_vcpus,
            "ram_mib": new_ram,
            "from_vcpus": instance.vcpus,
            "from_ram_mib": instance.ram_mib,
        }
        Instance.objects.filter(pk=instance.pk).update(vcpus=new_vcpus, ram_mib=new_ram)
        instance.vcpus, instance.ram_mib = new_vcpus, new_ram
        return _queue(actor=actor, instance=instance, action="set_resources", params=params, ip=ip)


def attach_disk(*, actor, instance: Instance, size_gib: int, ip: str | None = None) -> Operation:
    """A new blank disk of ``size_gib``, counted in the disk quota, attached (live when running)."""
    with transaction.atomic():
        instance = _lock(instance)
        _check_ready(instance, "attach_disk")
        if not isinstance(size_gib, int) or not 1 <= size_gib <= 4096:
            raise ServiceError(_("A disk has 1 to 4096 GiB."), field="size_gib")
        if instance.disks.count() >= 8:
            raise ConflictError(_("An instance has at most 8 extra disks."))
        reserve_quota(tenant=instance.tenant, request={"disk_gib": size_gib})
        check_growth(host=instance.host, disk_gib=size_gib)
        disk = InstanceDisk.objects.create(tenant=instance.tenant, instance=instance, size_gib=size_gib, volume="")
        InstanceDisk.objects.filter(pk=disk.pk).update(volume=disk_volume(instance, disk.pk))
        return _queue(actor=actor, instance=instance, action="attach_disk", params={"disk_id": disk.pk}, ip=ip)


def detach_disk(*, actor, disk: InstanceDisk, ip: str | None = None) -> Operation:
    """Detach an extra disk and delete it (its data is gone; its quota is released when done)."""
    with transaction.atomic():
        instance = _lock(disk.instance)
        _check_ready(instance, "detach_disk")
        return _queue(
            actor=actor,
            instance=instance,
            action="detach_disk",
            params={"disk_id": disk.pk, "target": disk.target},
            ip=ip,
        )


def create_snapshot(*, actor, instance: Instance, name: str, description: str = "", ip: str | None = None) -> Operation:
    name = name.strip()
    if not SNAPSHOT_NAME_RE.match(name):
        raise ServiceError(
            _(
                "Snapshot names have 1 to 63 letters, digits, dots, dashes or underscores "
                "and start with a letter or digit."
            ),
            field="name",
        )
    with transaction.atomic():
        instance = _lock(instance)
        _check_ready(instance, "snapshot_create")
        if instance.snapshots.filter(name=name).exists():
            raise ConflictError(
                _("Instance “%(instance)s” already has a snapshot “%(name)s”.")
                % {"instance": instance.name, "name": name},
                field="name",
            )
        reserve_quota(tenant=instance.tenant, request={"snapshots": 1})
        snapshot = Snapshot.objects.create(
            tenant=instance.tenant,
            instance=instance,
            name=name,
            description=description[:255],
            vm_state=instance.state,
            vcpus=instance.vcpus,
            ram_mib=instance.ram_mib,
            disk_gib=instance.disk_gib,
            disk_ids=sorted(instance.disks.values_list("pk", flat=True)),
        )
        return _queue(
            actor=actor,
            instance=instance,
            action="snapshot_create",
            params={"snapshot_id": snapshot.pk, "name": name},
            ip=ip,
        )


def revert_snapshot(*, actor, snapshot: Snapshot, ip: str | None = None) -> Operation:
    with transaction.atomic():
        instance = _lock(snapshot.instance)
        _check_ready(instance, "snapshot_revert")
        if snapshot.state != Snapshot.State.AVAILABLE:
            raise ConflictError(_("Snapshot “%(name)s” is not available.") % {"name": snapshot.name})
        now = (instance.vcpus, instance.ram_mib, instance.disk_gib, sorted(instance.disks.values_list("pk", flat=True)))
        if now != (snapshot.vcpus, snapshot.ram_mib, snapshot.disk_gib, snapshot.disk_ids):
            # A revert brings back the domain of that moment: its sizes and disks must be what quota counts now.
            raise ConflictError(
                _(
                    "Instance “%(name)s” was resized or its disks changed since snapshot “%(snapshot)s”; "
                    "change it back before reverting."
                )
                % {"name": instance.name, "snapshot": snapshot.name}
            )
        Snapshot.objects.filter(pk=snapshot.pk).update(state=Snapshot.State.REVERTING)
        return _queue(
            actor=actor,
            instance=instance,
            action="snapshot_revert",
            params={"snapshot_id": snapshot.pk, "name": snapshot.name},
            ip=ip,
        )


def delete_snapshot(*, actor, snapshot: Snapshot, ip: str | None = None) -> Operation:
    with transaction.atomic():
        instance = _lock(snapshot.instance)
        _check_ready(instance, "snapshot_delete")
        Snapshot.objects.filter(pk=snapshot.pk).update(state=Snapshot.State.DELETING)
        return _queue(
            actor=actor,
            instance=instance,
            action="snapshot_delete",
            params={"snapshot_id": snapshot.pk, "name": snapshot.name},
            ip=ip,
        )


def capture_instance(*, actor, instance: Instance, name: str, ip: str | None = None) -> Image:
    """Capture the shut-off instance's disk as a new image of its tenant (the image pipeline does the work)."""
    from images.qemu import QemuImgError
    from images.services import capture_image

    _check_ready(instance, "capture")  # before talking to the host; checked again under the lock
    try:
        volume = driver_for(instance.host).find_volume(instance.host.storage_pool, root_volume(instance))
    except BackendError as exc:
        raise ConflictError(
            _("The host of instance “%(name)s” did not answer: %(error)s")
            % {"name": instance.name, "error": exc.message}
        ) from exc
    if volume is None or not Path(volume.path).exists():
        raise ConflictError(
            _("The disk of instance “%(name)s” is not on this machine; capture works for local hosts only.")
            % {"name": instance.name}
        )
    with transaction.atomic():
        instance = _lock(instance)
        _check_ready(instance, "capture")
        record_audit(user=actor, action="instance.capture", target=instance, tenant=instance.tenant, ip=ip)
        # Busy until the image pipeline has read the disk (images.services.flatten_capture clears it).
        Instance.objects.filter(pk=instance.pk).update(task="capture", updated_at=timezone.now())
        instance.task = "capture"
        realtime.instance_changed(instance)
        try:
            return capture_image(
                actor=actor,
                tenant=instance.tenant,
                name=name,
                source=Path(volume.path),
                instance_id=instance.pk,
                ip=ip,
            )
        except QemuImgError as exc:
            raise ConflictError(
                _("The disk of instance “%(name)s” cannot be read: %(error)s") % {"name": instance.name, "error": exc}
            ) from exc


def _abandon_stuck_launch(instance: Instance) -> bool:
    """A launch no worker is running (still queued, or its worker died) may be given up for a delete."""
    if instance.task != "launch":
        return False
    launch = (
        Operation.objects.select_for_update()
        .filter(kind="instance.launch", target_type="vms.instance", target_id=str(instance.pk))
        .exclude(state__in=[Operation.State.SUCCEEDED, Operation.State.FAILED])
        .first()
    )
    if launch is not None and launch.state == Operation.State.RUNNING:
        heartbeat = launch.heartbeat_at or launch.started_at
        if heartbeat is not None and heartbeat > timezone.now() - timedelta(
            seconds=settings.LABCLOUD_OPERATION_STALE_SECONDS
        ):
            return False  # a live worker is at it: let it finish, then delete
    if launch is not None:
        operations.fail(operation=launch, error=_("Cancelled: the instance was deleted."))
    return True


def delete_instance(*, actor, instance: Instance, ip: str | None = None) -> Operation:
    """Delete the instance: domain, disks, seed, snapshots and, at the end, its row (which frees the quota)."""
    with transaction.atomic():
        instance = _lock(instance)
        if instance.state == Instance.State.DELETING and instance.task == "delete":
            raise ConflictError(_("Instance “%(name)s” is being deleted already.") % {"name": instance.name})
        if instance.task and instance.state != Instance.State.ERROR and not _abandon_stuck_launch(instance):
            raise ConflictError(
                _("Instance “%(name)s” is busy (%(task)s); try again when it has finished.")
                % {"name": instance.name, "task": ACTION_LABELS.get(instance.task, instance.task)}
            )
        Instance.objects.filter(pk=instance.pk).update(
            state=Instance.State.DELETING, desired_power_state=Instance.PowerState.STOPPED
        )
        instance.state = Instance.State.DELETING
        return _queue(actor=actor, instance=instance, action="delete", ip=ip)


# ---------------------------------------------------------------- execution (the worker)


def _shutdown(driver: LibvirtDriver, operation: Operation, uuid: str) -> InstanceState:
    state = driver.shutdown(uuid)
    deadline = time.monotonic() + settings.LABCLOUD_SHUTDOWN_TIMEOUT
    while state.state not in ("shutoff", "crashed"):
        if time.monotonic() > deadline:
            operations.progress(operation=operation, percent=80, message=_("No reaction to ACPI; powering off"))
            return driver.power_off(uuid)
        operations.heartbeat(operation=operation)
        time.sleep(0.5)
        state = driver.state(uuid)
    return state


def _cloud_power(instance: Instance, action: str) -> str:
    driver, server_id = cloud.cloud_driver(instance.host), instance.cloud_id
    handlers = {
        "start": lambda: driver.start(server_id),
        "stop": lambda: driver.stop(server_id),
        "shutdown": lambda: driver.stop(server_id),  # Nova's stop asks the guest first, then powers off
        "reboot": lambda: driver.reboot(server_id, kind="soft"),
        "reset": lambda: driver.reboot(server_id, kind="hard"),
        "pause": lambda: driver.pause(server_id),
        "resume": lambda: driver.resume(server_id),
    }
    _apply_cloud(instance, handlers[action]())
    return ""


def _power(operation: Operation, instance: Instance, action: str) -> str:
    if instance.host.is_cloud:
        return _cloud_power(instance, action)
    driver = driver_for(instance.host)
    uuid = str(instance.uuid)
    handlers = {
        "start": lambda: driver.start(uuid),
        "stop": lambda: driver.power_off(uuid),
        "reboot": lambda: driver.reboot(uuid),
        "reset": lambda: driver.reset(uuid),
        "pause": lambda: driver.pause(uuid),
        "resume": lambda: driver.resume(uuid),
        "shutdown": lambda: _shutdown(driver, operation, uuid),
    }
    _apply(instance, handlers[action]())
    return ""


def _finish_install(operation: Operation, instance: Instance) -> str:
    driver = driver_for(instance.host)
    uuid = str(instance.uuid)
    driver.power_off(uuid)
    Instance.objects.filter(pk=instance.pk).update(installing=False)
    instance.installing = False
    _redefine(driver, instance)  # the same domain without the installer, disk first
    _apply(instance, driver.start(uuid))
    return _("Installed system booted from disk.")


def _redefine(driver: LibvirtDriver, instance: Instance) -> None:
    facts = driver.describe(str(instance.uuid))
    driver.define(build_spec(instance, network=facts.spec.network))


def _resize(operation: Operation, instance: Instance) -> str:
    if instance.host.is_cloud:
        operations.progress(operation=operation, percent=20, message=_("Syncing the flavor"))
        flavor_id = cloud.cloud_flavor(host=instance.host, flavor=instance.flavor)
        operations.progress(operation=operation, percent=40, message=_("Resizing in the cloud"))
        _apply_cloud(instance, cloud.cloud_driver(instance.host).resize(instance.cloud_id, flavor_id=flavor_id))
        return ""
    driver = driver_for(instance.host)
    operations.progress(operation=operation, percent=30, message=_("Growing the disk"))
    driver.resize_volume(instance.host.storage_pool, root_volume(instance), instance.disk_gib * GIB)
    operations.progress(operation=operation, percent=70, message=_("Redefining"))
    _redefine(driver, instance)
    _apply(instance, driver.state(str(instance.uuid)))
    return ""


def _set_resources(operation: Operation, instance: Instance) -> str:
    driver = driver_for(instance.host)
    uuid = str(instance.uuid)
    if instance.state == Instance.State.RUNNING:
        state = driver.set_vcpus(uuid, instance.vcpus)
        state = driver.set_memory(uuid, instance.ram_mib)
    else:
        _redefine(driver, instance)
        state = driver.state(uuid)
    _apply(instance, state)
    return ""


def _attach_disk(operation: Operation, instance: Instance) -> str:
    disk = InstanceDisk.objects.get(pk=operation.params["disk_id"])
    driver = driver_for(instance.host)
    pool = instance.host.storage_pool
    if driver.find_volume(pool, disk.volume) is None:
        driver.create_volume(pool, disk.volume, disk.size_gib * GIB)
    already = next((d for d in driver.describe(str(instance.uuid)).spec.disks if d.volume == disk.volume), None)
    if already is not None and not disk.attached:  # attached before a crash: just record it
        InstanceDisk.objects.filter(pk=disk.pk).update(attached=True, target=already.target or "")
    elif not disk.attached:
        attached = driver.attach_disk(
            str(instance.uuid), DiskSpec(device="disk", pool=pool, volume=disk.volume, format="qcow2")
        )
        InstanceDisk.objects.filter(pk=disk.pk).update(attached=True, target=attached.target or "")
    return ""


def _detach_disk(operation: Operation, instance: Instance) -> str:
    disk = InstanceDisk.objects.filter(pk=operation.params["disk_id"]).first()
    if disk is None:
        return ""
    driver = driver_for(instance.host)
    uuid = str(instance.uuid)
    if disk.attached and disk.target:
        driver.detach_disk(uuid, disk.target)
        # A live unplug needs the guest's cooperation: delete the volume only once QEMU let go of it.
        deadline = time.monotonic() + DETACH_TIMEOUT
        while disk.target in _live_targets(driver, uuid):
            if time.monotonic() > deadline:
                raise BackendError(
                    _("The guest did not release disk %(target)s; it is removed at the next shut down.")
                    % {"target": disk.target}
                )
            time.sleep(0.5)
    driver.delete_volume(instance.host.storage_pool, disk.volume)
    disk.delete()
    return ""


def _live_targets(driver: LibvirtDriver, uuid: str) -> set[str]:
    facts = driver.describe(uuid, inactive=False)
    return {d.target for d in facts.spec.disks if d.target} if facts.active else set()


def _cloud_snapshot(operation: Operation, instance: Instance, action: str) -> str:
    driver = cloud.cloud_driver(instance.host)
    snapshot = Snapshot.objects.filter(pk=operation.params["snapshot_id"]).first()
    if action == "snapshot_create":
        if snapshot is None:
            return ""
        if not snapshot.cloud_id:  # stored at once: a retry or a failure knows which Glance image it is
            name = f"{settings.LABCLOUD_DOMAIN_PREFIX}{instance.name}-{operation.params['name']}"[:255]
            image_id = driver.start_snapshot(
                instance.cloud_id, name=name, metadata={"labcloud_instance": str(instance.uuid)}
            )
            Snapshot.objects.filter(pk=snapshot.pk).update(cloud_id=image_id)
        driver.wait_idle(instance.cloud_id, timeout=settings.LABCLOUD_CLOUD_BUILD_TIMEOUT)
        Snapshot.objects.filter(pk=snapshot.pk).update(state=Snapshot.State.AVAILABLE)
    else:  # snapshot_delete (revert is refused for clouds)
        if snapshot is not None and snapshot.cloud_id:
            driver.delete_image(image_id=snapshot.cloud_id)
        Snapshot.objects.filter(pk=operation.params["snapshot_id"]).delete()
    return ""


def _snapshot(operation: Operation, instance: Instance, action: str) -> str:
    if instance.host.is_cloud:
        return _cloud_snapshot(operation, instance, action)
    driver = driver_for(instance.host)
    uuid = str(instance.uuid)
    snapshot = Snapshot.objects.filter(pk=operation.params["snapshot_id"]).first()
    name = operation.params["name"]
    if action == "snapshot_create":
        if name not in {s.name for s in driver.snapshot_list(uuid)}:
            driver.snapshot_create(uuid, name, snapshot.description if snapshot else "")
        Snapshot.objects.filter(pk=operation.params["snapshot_id"]).update(state=Snapshot.State.AVAILABLE)
    elif action == "snapshot_revert":
        state = driver.snapshot_revert(uuid, name)
        Snapshot.objects.filter(pk=operation.params["snapshot_id"]).update(state=Snapshot.State.AVAILABLE)
        _apply(instance, state)
    else:
        driver.snapshot_delete(uuid, name)
        Snapshot.objects.filter(pk=operation.params["snapshot_id"]).delete()
    return ""


def _remove_from_host(instance: Instance, operation: Operation | None = None) -> None:
    """Domain, root disk, seed and extra disks off the host; what is already gone is fine."""
    if instance.host_id is None:
        return
    if instance.host.is_cloud:
        _remove_from_cloud(instance, operation)
        return
    driver = driver_for(instance.host)
    pool = instance.host.storage_pool
    if operation is not None:
        operations.progress(operation=operation, percent=20, message=_("Removing the domain"))
    try:
        driver.undefine(str(instance.uuid))
        if operation is not None:
            operations.progress(operation=operation, percent=60, message=_("Deleting the disks"))
        for volume in [root_volume(instance), seed_volume(instance), *instance.disks.values_list("volume", flat=True)]:
            if volume:
                driver.delete_volume(pool, volume)
    except BackendError:
        if operation is not None:
            raise
        log.warning("could not clean up instance %s after a failed launch", instance.uuid, exc_info=True)


def _remove_from_cloud(instance: Instance, operation: Operation | None = None) -> None:
    """The server (polled until Nova no longer has it) and the Glance images of its snapshots."""
    try:
        driver = cloud.cloud_driver(instance.host)
        if operation is not None:
            operations.progress(operation=operation, percent=20, message=_("Deleting the server"))
        server_id = instance.cloud_id
        if not server_id and _server_was_requested(instance):  # asked for, but its id was never stored
            server_id = _find_cloud_server(instance)
        if server_id:
            driver.delete(server_id)
            if instance.cloud_id:
                Instance.objects.filter(pk=instance.pk).update(cloud_id="")
                instance.cloud_id = ""  # gone: the watcher must not report it "deleted in the cloud"
        for image_id in (
            Snapshot.objects.filter(instance=instance).exclude(cloud_id="").values_list("cloud_id", flat=True)
        ):
            driver.delete_image(image_id=image_id)
    except BackendError:
        if operation is not None:
            raise
        log.warning("could not clean up instance %s after a failed launch", instance.uuid, exc_info=True)


def _delete(operation: Operation, instance: Instance) -> str:
    _remove_from_host(instance, operation)
    tenant_id, pk = instance.tenant_id, instance.pk
    with transaction.atomic():
        Snapshot.objects.filter(instance_id=pk).delete()
        InstanceDisk.objects.filter(instance_id=pk).delete()
        Instance.objects.filter(pk=pk).delete()
        realtime.instance_deleted(tenant_id=tenant_id, instance_id=pk)
    return _("Instance deleted.")


def _fail(operation: Operation, instance: Instance | None, message: str) -> None:
    operations.fail(operation=operation, error=message)
    if instance is None:
        return
    action = operation.kind.removeprefix("instance.")
    fields: dict = {"task": ""}
    if action == "launch":
        fields.update(state=Instance.State.ERROR, state_reason=message[:255])
        _remove_from_host(instance)
    elif action == "delete":
        fields.update(state=Instance.State.ERROR, state_reason=message[:255])
    elif action.startswith("snapshot_"):
        snapshot_id = operation.params.get("snapshot_id")
        if action == "snapshot_create":
            _drop_cloud_snapshot_image(instance, snapshot_id)
            Snapshot.objects.filter(pk=snapshot_id).delete()  # nothing was created: give the quota back
        else:
            Snapshot.objects.filter(pk=snapshot_id).update(state=Snapshot.State.AVAILABLE)
    elif action == "attach_disk":
        disk = InstanceDisk.objects.filter(pk=operation.params.get("disk_id")).first()
        if disk is not None and not disk.attached:
            try:
                driver_for(instance.host).delete_volume(instance.host.storage_pool, disk.volume)
            except BackendError:
                log.warning("could not delete the volume of a failed disk attach", exc_info=True)
            disk.delete()
    elif action == "resize":  # back to the old flavor: the quota reserved for the new one is released
        vcpus, ram_mib, disk_gib = operation.params["from_sizes"]
        fields.update(flavor_id=operation.params["from_flavor_id"], vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib)
    elif action == "set_resources":
        fields.update(vcpus=operation.params["from_vcpus"], ram_mib=operation.params["from_ram_mib"])
    Instance.objects.filter(pk=instance.pk).update(**fields, updated_at=timezone.now())
    for key, value in fields.items():
        setattr(instance, key, value)
    realtime.instance_changed(instance)


def _drop_cloud_snapshot_image(instance: Instance, snapshot_id) -> None:
    """A failed cloud snapshot: the Glance image Nova may have made goes too."""
    if instance.host_id is None or not instance.host.is_cloud:
        return
    image_id = Snapshot.objects.filter(pk=snapshot_id).values_list("cloud_id", flat=True).first()
    if image_id:
        try:
            cloud.cloud_driver(instance.host).delete_image(image_id=image_id)
        except BackendError:
            log.warning("could not delete the image of a failed snapshot", exc_info=True)


def execute(*, operation_id: int) -> None:
    """Run one instance operation (the Celery task's body); safe to run again after a crash."""
    operation = operations.begin(operation_id=operation_id)
    if operation is None:
        return
    instance = (
        Instance.objects.select_related("tenant", "flavor", "image", "host", "keypair", "network")
        .filter(pk=operation.target_id)
        .first()
    )
    if instance is None:
        operations.succeed(operation=operation, message=_("The instance no longer exists."))
        return
    action = operation.kind.removeprefix("instance.")
    if instance.state == Instance.State.DELETING and action != "delete":
        operations.fail(operation=operation, error=_("The instance is being deleted."))
        return
    with operations.heartbeats(operation=operation):
        _dispatch(operation, instance, action)


def _dispatch(operation: Operation, instance: Instance, action: str) -> None:
    try:
        if action == "launch":
            message = _launch(operation, instance)
        elif action in POWER_ACTIONS:
            message = _power(operation, instance, action)
        elif action == "finish_install":
            message = _finish_install(operation, instance)
        elif action == "resize":
            message = _resize(operation, instance)
        elif action == "set_resources":
            message = _set_resources(operation, instance)
        elif action == "attach_disk":
            message = _attach_disk(operation, instance)
        elif action == "detach_disk":
            message = _detach_disk(operation, instance)
        elif action.startswith("snapshot_"):
            message = _snapshot(operation, instance, action)
        elif action == "delete":
            message = _delete(operation, instance)
            operations.succeed(operation=operation, message=message)
            return
        else:
            raise ServiceError(_("Unknown operation %(kind)s.") % {"kind": operation.kind})
    except (BackendError, ServiceError) as exc:
        log.warning("operation %s (%s) failed: %s", operation.pk, operation.kind, exc.message)
        _fail(operation, instance, exc.message)
        return
    except Exception:
        # The details (paths, SQL…) go to the log for the operator, not to the tenant.
        log.exception("operation %s (%s) crashed", operation.pk, operation.kind)
        _fail(operation, instance, _("Internal error; the administrators can find the details in the worker's log."))
        return
    Instance.objects.filter(pk=instance.pk).update(task="", updated_at=timezone.now())
    instance.task = ""
    realtime.instance_changed(instance)
    operations.succeed(operation=operation, message=message)


def recover_stale_operations(*, stale_after: timedelta | None = None, max_attempts: int = 3) -> list[int]:
    """Re-queue instance operations whose worker died; fail those that died ``max_attempts`` times.

    Runs from Celery beat and at worker start. A *running* operation whose heartbeat (sent every
    quarter of ``stale_after`` while its task runs) stopped for ``stale_after`` lost its worker: it
    is queued again and the attempt counted. A *queued* operation is only waiting for a free
    worker; if it has waited ten times as long, its message may be lost, so it is sent once more
    (not counted: waiting is not failing). Host clean-up of a failed launch happens after the
    sweep's transaction, never while rows are locked.
    """
    from vms.tasks import run_instance_operation

    stale_after = stale_after or timedelta(seconds=settings.LABCLOUD_OPERATION_STALE_SECONDS)
    now = timezone.now()
    running_cutoff, queued_cutoff = now - stale_after, now - 10 * stale_after
    requeued, to_fail = [], []
    candidates = Operation.objects.filter(kind__startswith="instance.").filter(
        Q(state=Operation.State.RUNNING, heartbeat_at__lt=running_cutoff)
        | Q(state=Operation.State.RUNNING, heartbeat_at__isnull=True, started_at__lt=running_cutoff)
        | Q(state=Operation.State.QUEUED, heartbeat_at__lt=queued_cutoff)
        | Q(state=Operation.State.QUEUED, heartbeat_at__isnull=True, created_at__lt=queued_cutoff)
    )
    for pk in candidates.values_list("pk", flat=True):
        with transaction.atomic():
            fresh = Operation.objects.select_for_update().filter(pk=pk).first()
            if fresh is None or fresh.finished:
                continue
            last_sign = fresh.heartbeat_at or fresh.started_at or fresh.created_at
            if fresh.state == Operation.State.RUNNING:
                if last_sign > running_cutoff:
                    continue
                attempts = int(fresh.params.get("attempts", 0)) + 1
                if attempts > max_attempts:
                    to_fail.append(fresh)
                    continue
                fresh.params = {**fresh.params, "attempts": attempts}
            elif last_sign > queued_cutoff:
                continue
            fresh.state = Operation.State.QUEUED
            fresh.heartbeat_at = now  # the next re-send waits a full period again
            fresh.save(update_fields=["params", "state", "heartbeat_at"])
            transaction.on_commit(lambda pk=fresh.pk: run_instance_operation.delay(pk))
        requeued.append(pk)
    for operation in to_fail:
        instance = Instance.objects.select_related("host", "tenant").filter(pk=operation.target_id).first()
        _fail(operation, instance, _("The worker running this operation stopped %(n)d times.") % {"n": max_attempts})
    if requeued:
        log.info("re-queued stale instance operations: %s", requeued)
    return requeued
