"""Migrating an instance between libvirt hosts (the libvirt adapter's ``migrate``).

Live when the instance runs, cold when it is shut off; disks stay in place on shared storage (the
two hosts have the same ``Host.storage_share``) and are copied otherwise:

- live, copy: the base image is put on the destination first through the portal's own image copy
  (``ensure_image_on_host``), the root overlay, the extra disks and the seed are created there, and
  libvirt mirrors the writable disks' own blocks over NBD during the migration;
- cold, copy: for hosts without a migration network: the volumes travel through the portal over the
  libvirt connections (the overlay's header re-pointed at the destination's copy of its base), then
  the domain is defined there and undefined here.

After success the source's copies of the volumes go; after a failure or a cancel the guest is where it
was, untouched, and what was made on the destination goes. Where the domain is after a failure is
asked of both hosts, never assumed.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext_noop

from images import qemu
from images.distribution import wait_for_copy
from portal.backends.base import BackendError, NotFound
from portal.backends.libvirt import migration as libvirt_migration
from portal.backends.libvirt.driver import LibvirtDriver
from portal.backends.libvirt.migration import DiskMove, MigrationCancelled, MigrationPlan, MigrationProgress
from portal.services import ConflictError
from portal.texts import said
from vms import operations
from vms.compute.libvirt.firewall import port_for
from vms.compute.libvirt.images import ensure_image_on_host
from vms.compute.libvirt.spec import (
    driver_for,
    instance_volumes,
    libvirt_uri,
    port_filter_name,
    root_volume,
    seed_volume,
    shared_storage,
)
from vms.compute.texts import CANCELLED, MIGRATED, MIGRATING, PREPARING, TOO_LONG
from vms.models import Host, Instance, Operation
from vms.networks import ensure_on_host

log = logging.getLogger(__name__)

MIB = 1024**2


@dataclass
class _Made:
    """Volumes made on the destination (removed again when the migration does not happen)."""

    pool: str
    volumes: list[str]


def migrate(operation: Operation, instance: Instance, destination: Host, *, seed: bytes | None) -> str:
    """Move the instance's domain to ``destination``; the message of the finished operation.

    ``seed``: the instance's NoCloud seed as its launch built it (rebuilt on the destination when the
    disks are copied).
    """
    source = instance.host
    uuid = str(instance.uuid)
    src, dst = driver_for(source), driver_for(destination)
    if src.snapshot_list(uuid):
        raise ConflictError(
            said(
                gettext_noop("Instance “%(name)s” has snapshots; delete them before migrating it."), name=instance.name
            )
        )
    if libvirt_migration.domain_on(dst.uri, uuid) is not None:
        raise ConflictError(
            said(
                gettext_noop(
                    "The destination already has a domain of this instance; a cloud admin must remove it there first."
                )
            )
        )
    live = src.describe(uuid, inactive=False).active
    # The disks as the persistent definition names them (volumes): a domain that arrived live has file
    # paths in its live definition (see portal.backends.libvirt.migration), the same disks.
    facts = src.describe(uuid)
    shared = shared_storage(source, destination)
    networks, filters = _networks(instance, source, destination, dst, facts.spec.network)
    operations.progress(operation=operation, percent=5, message=PREPARING)
    made = _Made(pool=destination.storage_pool, volumes=[])
    try:
        disks = _prepare_disks(operation, instance, src, dst, destination, facts.spec.disks, shared, live, seed, made)
        plan = MigrationPlan(
            uuid=uuid,
            source_uri=libvirt_uri(source),
            destination_uri=libvirt_uri(destination),
            disks=tuple(disks),
            live=live,
            shared_storage=shared,
            address=destination.migration_address,
            networks=networks,
            nic_filters=filters,
            vnc_listen=destination.vnc_listen,
            timeout=settings.LABCLOUD_MIGRATION_TIMEOUT,
            post_copy=settings.LABCLOUD_MIGRATION_POST_COPY,
            max_downtime_ms=settings.LABCLOUD_MIGRATION_MAX_DOWNTIME_MS,
            bandwidth_mib=settings.LABCLOUD_MIGRATION_BANDWIDTH_MIB,
        )
        if _cancel_requested(operation):  # asked while the destination was being prepared
            raise ConflictError(CANCELLED)
        operations.progress(operation=operation, percent=30, message=MIGRATING)
        try:
            result = libvirt_migration.migrate(
                plan, on_progress=lambda p: _report(operation, p), should_cancel=lambda: _cancel_requested(operation)
            )
        except MigrationCancelled as exc:
            raise ConflictError(TOO_LONG if exc.reason == "deadline" else CANCELLED) from exc
    except Exception:
        if not _moved(src, dst, uuid):
            _undo(instance, src, dst, made)
            raise
        # libvirt finished the move although the call failed (a lost answer): the guest runs there now.
        log.warning("instance %s: the migration call failed, but the domain is on the destination", uuid)
        result = None
    remove_source_copies(instance, source, destination)
    if result is None:
        return MIGRATED
    log.info(
        "instance %s migrated %s -> %s in %.2f s (downtime %s ms)",
        uuid,
        source.name,
        destination.name,
        result.seconds,
        result.downtime_ms,
    )
    # The figures for admins and benchmarks; the message stays one the readers' language can show.
    result_params = {
        "seconds": round(result.seconds, 3),
        "downtime_ms": result.downtime_ms,
        "post_copy": result.post_copy,
    }
    Operation.objects.filter(pk=operation.pk).update(params={**operation.params, "result": result_params})
    operation.params = {**operation.params, "result": result_params}
    return MIGRATED


def _report(operation: Operation, progress: MigrationProgress) -> None:
    operations.progress(operation=operation, percent=30 + progress.percent * 65 // 100, message=MIGRATING)


def _networks(instance: Instance, source: Host, destination: Host, dst: LibvirtDriver, network: str | None):
    """The destination's name of the NIC's network (and its anti-spoofing filter there)."""
    if not network:
        return {}, {}
    if instance.network_id is not None:
        there = ensure_on_host(network=instance.network, host=destination)
    elif network == source.default_network and destination.default_network:
        there = destination.default_network
    else:
        there = network  # a network the admins made with the same name on every host
    return {network: there}, {there: dst.nic_filter(there, port=port_for(dst, instance, host=destination))}


def _prepare_disks(operation, instance, src, dst, destination, disks, shared, live, seed, made) -> list[DiskMove]:
    pool = destination.storage_pool
    if shared:
        dst.refresh_pool(pool)  # the files are there already; libvirt has to look
    moves = []
    for disk in disks:
        if disk.volume is None or not disk.target:
            continue  # an empty CD-ROM drive
        writable = disk.device == "disk" and not disk.readonly
        name, where = disk.volume, pool
        if instance.image_id and disk.device == "cdrom" and disk.volume != seed_volume(instance):
            replica = wait_for_copy(
                lambda: ensure_image_on_host(image=instance.image, host=destination, operation=operation),
                operation=operation,
            )
            name, where = replica.volume, replica.pool
        elif not shared:
            _copy_volume(operation, instance, src, dst, destination, disk, live=live, seed=seed, made=made)
        found = dst.find_volume(where, name)
        if found is None:
            raise BackendError(f"volume {name!r} is not in pool {where!r} of the destination")
        moves.append(
            DiskMove(target=disk.target, path=found.path, pool=where, volume=name, copy=writable and not shared)
        )
    return moves


def _copy_volume(
    operation, instance, src, dst, destination, disk, *, live: bool, seed: bytes | None, made: _Made
) -> None:
    """Make the destination's copy of one volume (its contents too, unless a live migration mirrors them)."""
    name, pool = disk.volume, destination.storage_pool
    if dst.find_volume(pool, name) is not None:
        if name not in operation.params.get("made", []):
            # Not ours: the two pools may be one storage nobody declared shared (the file is the guest's disk).
            raise ConflictError(
                said(
                    gettext_noop(
                        "The destination already has a disk named as this instance's. If the two hosts share their "
                        "storage, give both the same shared-storage name."
                    )
                )
            )
        dst.delete_volume(pool, name)  # made by an earlier attempt of this migration whose worker died
    made.volumes.append(name)
    if name not in operation.params.get("made", []):
        operation.params = {**operation.params, "made": [*operation.params.get("made", []), name]}
        Operation.objects.filter(pk=operation.pk).update(params=operation.params)
    if name == seed_volume(instance):
        if seed is None:
            raise ConflictError(said(gettext_noop("The seed of this instance cannot be rebuilt.")))
        dst.upload_bytes(pool, name, seed)
        return
    here = src.find_volume(disk.pool, name)
    if here is None:
        raise NotFound(f"volume {name!r} is not in pool {disk.pool!r} of the source")
    base = None
    if name == root_volume(instance) and not instance.installing and instance.image_id:
        base = wait_for_copy(
            lambda: ensure_image_on_host(image=instance.image, host=destination, operation=operation),
            operation=operation,
        )
    if live:  # libvirt mirrors the blocks into it
        if base is not None:
            dst.create_overlay(
                pool,
                name,
                base.volume,
                here.capacity,
                backing_pool=base.pool if base.pool != pool else None,
                backing_format=instance.image.stored_format or "qcow2",
            )
        else:
            dst.create_volume(pool, name, here.capacity)
        return
    with tempfile.TemporaryDirectory(prefix="migrate-", dir=settings.LABCLOUD_IMAGE_STORE) as scratch:
        local = Path(scratch) / "volume"
        src.download_file(disk.pool, name, local)
        if base is not None:
            base_path = dst.find_volume(base.pool, base.volume)
            if base_path is None:
                raise NotFound(f"image volume {base.volume!r} is not on the destination")
            fmt = instance.image.stored_format or "qcow2"
            qemu.set_backing(local, backing=base_path.path, backing_fmt=fmt)
        dst.upload_file(pool, name, local)


def _undo(instance: Instance, src: LibvirtDriver, dst: LibvirtDriver, made: _Made) -> None:
    """The migration did not happen: what it made on the destination goes (only if the guest is still here)."""
    uuid = str(instance.uuid)
    try:
        if libvirt_migration.domain_on(src.uri, uuid) is None:
            log.error("instance %s: not on its source after a failed migration; leaving the destination alone", uuid)
            return
        there = libvirt_migration.domain_on(dst.uri, uuid)
        if there == "active":
            log.error("instance %s: runs on its source and its destination; the destination is left alone", uuid)
            return
        if there == "defined":
            dst.undefine(uuid)
        dst.remove_filter(port_filter_name(uuid))  # the instance's port filter, defined there for it
        for name in made.volumes:
            dst.delete_volume(made.pool, name)
    except BackendError:
        log.warning("instance %s: could not clean up the destination of a failed migration", uuid, exc_info=True)


def remove_source_copies(instance: Instance, source: Host, destination: Host) -> None:
    """After the move: the instance's port filter and volumes on its old host go (unless the two hosts share the
    files)."""
    src = driver_for(source)
    try:
        src.remove_filter(port_filter_name(str(instance.uuid)))
    except BackendError:
        log.warning("instance %s: network filter left on %s", instance.uuid, source.name)
    if shared_storage(source, destination):
        return
    for volume in instance_volumes(instance):
        try:
            src.delete_volume(source.storage_pool, volume)
        except BackendError:
            log.warning("instance %s: volume %s left on %s", instance.uuid, volume, source.name)


def _cancel_requested(operation: Operation) -> bool:
    return Operation.objects.filter(pk=operation.pk, cancel_requested=True).exists()


def _moved(src: LibvirtDriver, dst: LibvirtDriver, uuid: str) -> bool:
    """The domain is on the destination and gone from the source (asked of both; False when either cannot say)."""
    try:
        return (
            libvirt_migration.domain_on(src.uri, uuid) is None
            and libvirt_migration.domain_on(dst.uri, uuid) is not None
        )
    except BackendError:
        return False


def landed(instance: Instance) -> bool:
    """Whether the instance's domain runs or is defined on its migration's destination and no longer on its
    source (a worker that died after libvirt finished)."""
    target = instance.migration_target
    return target is not None and _moved(driver_for(instance.host), driver_for(target), str(instance.uuid))
