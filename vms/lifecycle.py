"""Instance lifecycle services, the request half: launch, power actions, resize, disks, snapshots, capture, delete.

Each request runs in the web process inside one transaction: it checks the rules that do not depend
on who asks (the action registry ``vms.actions``: state, task, what the host can do; then quota and
sizes), locks the instance row, marks the instance busy (``task``), records an Operation and queues
``vms.tasks.run_instance_operation`` on commit. Bad input raises ServiceError and changes nothing.
The worker's half, which talks to the host through its adapter, is ``vms.execution``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from images.capture import capture_image
from images.models import Image
from images.qemu import QemuImgError
from images.selectors import visible_to_tenant
from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit, reserve_quota
from vms import actions, limits, operations, realtime
from vms.compute import Capability, compute_for, host_can
from vms.models import Flavor, Instance, InstanceDisk, Keypair, Network, Operation, SecurityGroup, Snapshot
from vms.scheduler import check_growth, check_storage, place, placement_target
from vms.security_groups import check_can_filter, check_groups_exist, clean_instance_groups
from vms.selectors import instance_shape, snapshot_fits, snapshot_reservation_mib
from vms.services import reserve_instances
from vms.tasks import run_instance_operation

NAME_RE = re.compile(r"^[^\x00-\x1f\x7f/]+$")  # any text on one line, no slash: the title is XML-escaped
SNAPSHOT_NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{limits.SNAPSHOT_NAME_MAX - 1}}}$")
GIB = 1024**3


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
    if not name or len(name) > limits.NAME_MAX or not NAME_RE.match(name):
        raise ServiceError(
            _("A name has 1 to %(max)d characters on one line, without “/”: “%(name)s”.")
            % {"max": limits.NAME_MAX, "name": name[:80]},
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
    security_groups: Sequence[SecurityGroup] | None = None,
    user_data: str = "",
    ip: str | None = None,
) -> Launch:
    """Create ``count`` instances of ``flavor`` from a disk image or an installer ISO, all or none.

    In one transaction: quota for all of them is reserved, each is placed on a host by the
    scheduler, and one launch operation per instance is queued on commit. The instances join
    ``security_groups`` (of ``tenant``), or the tenant's ``default`` group when it names none.
    """
    if not tenant.enabled:
        raise ConflictError(_("Tenant “%(name)s” is disabled.") % {"name": tenant.name}, field="tenant")
    if not isinstance(count, int) or not 1 <= count <= settings.LABCLOUD_MAX_BATCH:
        raise ServiceError(
            _("Launch between 1 and %(max)d instances at once.") % {"max": settings.LABCLOUD_MAX_BATCH}, field="count"
        )
    if count > 1 and "{n}" not in name and len(name.strip()) > limits.NAME_MAX - len(f"-{count}"):
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
    if security_groups is not None and not security_groups:
        raise ServiceError(_("An instance needs at least one security group."), field="security_groups")
    with transaction.atomic():
        groups = clean_instance_groups(tenant=tenant, groups=security_groups)
        instances = reserve_instances(actor=actor, tenant=tenant, flavor=flavor, names=names, ip=ip)
        check_groups_exist(groups)  # under the quota lock: a group deleted meanwhile is refused, not a 500
        target = placement_target(tenant=tenant, flavor=flavor)
        if target is not None:
            _check_target(target, image=image, network=network)
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
            instance.domain_name = f"{settings.LABCLOUD_DOMAIN_PREFIX}{instance.uuid}"
            instance.task = "launch"
            instance.save()
            check_can_filter(host=host, groups=groups)
            if host_can(host, Capability.SECURITY_GROUPS):
                instance.security_groups.set(groups)
            ops.append(
                operations.create_operation(
                    kind="instance.launch", target=instance, tenant=tenant, user=actor, task=run_instance_operation
                )
            )
            realtime.instance_changed(instance)
    return Launch(instances=instances, operations=ops)


def _check_target(target, *, image: Image, network: Network | None) -> None:
    """A placement rule's host must be able to take what the launch asks for (else nothing is created)."""
    where = compute_for(target).describe(target)
    if image.kind == Image.Kind.ISO and not host_can(target, Capability.INSTALL_FROM_ISO):
        raise ServiceError(
            _("Instances of this tenant and flavor go to %(host)s, which cannot install from an ISO.")
            % {"host": where},
            field="image",
        )
    if network is not None and not host_can(target, Capability.PORTAL_NETWORKS):
        raise ServiceError(
            _("Instances on %(host)s use its own network, not “%(name)s”.") % {"host": where, "name": network.name},
            field="network",
        )


# ---------------------------------------------------------------- requests


def _lock(instance: Instance) -> Instance:
    return (
        Instance.objects.select_for_update(of=("self",))
        .select_related("tenant", "flavor", "image", "host", "keypair", "network")
        .get(pk=instance.pk)
    )


def _queue(*, actor, instance: Instance, action: str, params: dict | None = None, ip: str | None = None) -> Operation:
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
    if action not in actions.POWER_CARD:
        raise ServiceError(_("Unknown action “%(action)s”.") % {"action": action[:40]}, field="action")
    with transaction.atomic():
        instance = _lock(instance)
        actions.check(instance, action)
        desired = actions.get(action).power or instance.desired_power_state
        Instance.objects.filter(pk=instance.pk).update(desired_power_state=desired)
        instance.desired_power_state = desired
        return _queue(actor=actor, instance=instance, action=action, ip=ip)


def resize_instance(*, actor, instance: Instance, flavor: Flavor, ip: str | None = None) -> Operation:
    """Offline resize to another flavor: the quota difference is reserved now; disks only grow."""
    with transaction.atomic():
        instance = _lock(instance)
        actions.check(instance, "resize")
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
    """Change vCPUs and/or RAM up to the flavor's size; vCPUs are hot-added when running.

    Quota counts what the instance has now, so growing reserves the difference. A running
    instance can gain vCPUs but not lose them (hot-unplug is unreliable in guests). RAM changes only
    while shut off: the domain's ``<memory>`` itself is set, which is what quota and placement count.
    A balloon cannot be enforced (a guest may ignore it and keep all of ``<memory>``).
    """
    with transaction.atomic():
        instance = _lock(instance)
        actions.check(instance, "set_resources")
        flavor = instance.flavor
        new_vcpus = instance.vcpus if vcpus is None else vcpus
        new_ram = instance.ram_mib if ram_mib is None else ram_mib
        if not isinstance(new_vcpus, int) or not 1 <= new_vcpus <= flavor.vcpus:
            raise ServiceError(
                _("vCPUs must be between 1 and %(max)d (flavor %(flavor)s).")
                % {"max": flavor.vcpus, "flavor": flavor.name},
                field="vcpus",
            )
        if not isinstance(new_ram, int) or not limits.RAM_MIN_MIB <= new_ram <= flavor.ram_mib:
            raise ServiceError(
                _("RAM must be between %(min)d and %(max)d MiB (flavor %(flavor)s).")
                % {"min": limits.RAM_MIN_MIB, "max": flavor.ram_mib, "flavor": flavor.name},
                field="ram_mib",
            )
        if instance.state == Instance.State.RUNNING and new_vcpus < instance.vcpus:
            raise ConflictError(_("vCPUs can only be removed while the instance is shut off."), field="vcpus")
        if instance.state == Instance.State.RUNNING and new_ram != instance.ram_mib:
            raise ConflictError(_("RAM can only be changed while the instance is shut off."), field="ram_mib")
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
        actions.check(instance, "attach_disk")
        if not isinstance(size_gib, int) or not limits.DISK_MIN_GIB <= size_gib <= limits.DISK_MAX_GIB:
            raise ServiceError(
                _("A disk has %(min)d to %(max)d GiB.") % {"min": limits.DISK_MIN_GIB, "max": limits.DISK_MAX_GIB},
                field="size_gib",
            )
        if instance.disks.count() >= limits.EXTRA_DISKS_MAX:
            raise ConflictError(_("An instance has at most %(max)d extra disks.") % {"max": limits.EXTRA_DISKS_MAX})
        reserve_quota(tenant=instance.tenant, request={"disk_gib": size_gib})
        check_growth(host=instance.host, disk_gib=size_gib)
        disk = InstanceDisk.objects.create(tenant=instance.tenant, instance=instance, size_gib=size_gib, volume="")
        return _queue(actor=actor, instance=instance, action="attach_disk", params={"disk_id": disk.pk}, ip=ip)


def detach_disk(*, actor, disk: InstanceDisk, ip: str | None = None) -> Operation:
    """Detach an extra disk and delete it (its data is gone; its quota is released when done)."""
    with transaction.atomic():
        instance = _lock(disk.instance)
        actions.check(instance, "detach_disk")
        return _queue(
            actor=actor,
            instance=instance,
            action="detach_disk",
            params={"disk_id": disk.pk, "target": disk.target},
            ip=ip,
        )


def create_snapshot(*, actor, instance: Instance, name: str, description: str = "", ip: str | None = None) -> Operation:
    """Take a snapshot: counted in the snapshot quota and in snapshot storage (reserved now, measured on the host
    once taken); refused on a host whose storage pool is nearly full."""
    name = name.strip()
    if not SNAPSHOT_NAME_RE.match(name):
        raise ServiceError(
            _(
                "Snapshot names have 1 to %(max)d letters, digits, dots, dashes or underscores "
                "and start with a letter or digit."
            )
            % {"max": limits.SNAPSHOT_NAME_MAX},
            field="name",
        )
    with transaction.atomic():
        instance = _lock(instance)
        actions.check(instance, "snapshot_create")
        if instance.snapshots.filter(name=name).exists():
            raise ConflictError(
                _("Instance “%(instance)s” already has a snapshot “%(name)s”.")
                % {"instance": instance.name, "name": name},
                field="name",
            )
        # Its size is known once the host has taken it: until then it holds what it may need at first.
        reserve = snapshot_reservation_mib(state=instance.state, ram_mib=instance.ram_mib)
        reserve_quota(tenant=instance.tenant, request={"snapshots": 1, "snapshot_mib": reserve})
        check_storage(host=instance.host)
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
        actions.check(instance, "snapshot_revert")
        if snapshot.state != Snapshot.State.AVAILABLE:
            raise ConflictError(_("Snapshot “%(name)s” is not available.") % {"name": snapshot.name})
        if not snapshot_fits(snapshot=snapshot, shape=instance_shape(instance=instance)):
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
        actions.check(instance, "snapshot_delete")
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
    actions.check(instance, "capture")  # before talking to the host; checked again under the lock
    source = compute_for(instance.host).capture_source(instance)
    with transaction.atomic():
        instance = _lock(instance)
        actions.check(instance, "capture")
        record_audit(user=actor, action="instance.capture", target=instance, tenant=instance.tenant, ip=ip)
        # Busy until the image pipeline has read the disk (it calls capture_finished then).
        Instance.objects.filter(pk=instance.pk).update(task="capture", updated_at=timezone.now())
        instance.task = "capture"
        realtime.instance_changed(instance)
        try:
            return capture_image(
                actor=actor,
                tenant=instance.tenant,
                name=name,
                source=source,
                source_image=instance.image,
                params={"instance_id": instance.pk},
                ip=ip,
            )
        except QemuImgError as exc:
            raise ConflictError(
                _("The disk of instance “%(name)s” cannot be read: %(error)s") % {"name": instance.name, "error": exc}
            ) from exc


def capture_finished(params: dict) -> None:
    """The image pipeline has read the captured disk (or failed): the instance is free again."""
    instance_id = params.get("instance_id")
    if instance_id is None:
        return
    if Instance.objects.filter(pk=instance_id, task="capture").update(task="", updated_at=timezone.now()):
        instance = Instance.objects.filter(pk=instance_id).first()
        if instance is not None:
            realtime.instance_changed(instance)


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
        problem = actions.refusal(instance, "delete")
        if problem is not None and not (isinstance(problem, actions.Busy) and _abandon_stuck_launch(instance)):
            raise problem
        Instance.objects.filter(pk=instance.pk).update(
            state=Instance.State.DELETING, desired_power_state=actions.get("delete").power
        )
        instance.state = Instance.State.DELETING
        return _queue(actor=actor, instance=instance, action="delete", ip=ip)
