"""One access helper per object kind of the compute app, used alike by pages, the API and websocket consumers.

Each returns the object or raises: Http404 when the user may not see it (another tenant's object does
not exist), PermissionDenied (403) when they may see it but not ``action`` it (``portal.access.access_by_id``).
"""

from __future__ import annotations

from portal.access import VIEW, access_by_id
from vms.models import Host, Instance, InstanceDisk, Keypair, Snapshot
from vms.selectors import hosts_for, instances_for


def access_instance_by_id(*, user, instance_id, action: str = VIEW) -> Instance:
    return access_by_id(instances_for(user=user), user=user, pk=instance_id, action=action)


def access_disk_by_id(*, user, instance: Instance, disk_id, action: str = VIEW) -> InstanceDisk:
    """An extra disk of ``instance`` (already accessed); it carries that instance."""
    disks = InstanceDisk.objects.restrict(user, VIEW).filter(instance=instance)
    disk = access_by_id(disks, user=user, pk=disk_id, action=action)
    disk.instance = instance
    return disk


def access_snapshot_by_id(*, user, instance: Instance, snapshot_id, action: str = VIEW) -> Snapshot:
    """A snapshot of ``instance`` (already accessed); it carries that instance."""
    snapshots = Snapshot.objects.restrict(user, VIEW).filter(instance=instance)
    snapshot = access_by_id(snapshots, user=user, pk=snapshot_id, action=action)
    snapshot.instance = instance
    return snapshot


def access_keypair_by_id(*, user, keypair_id, action: str = VIEW) -> Keypair:
    return access_by_id(Keypair.objects.restrict(user, VIEW), user=user, pk=keypair_id, action=action)


def access_host_by_id(*, user, host_id, action: str = VIEW) -> Host:
    return access_by_id(hosts_for(user=user), user=user, pk=host_id, action=action)
