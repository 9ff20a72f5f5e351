"""One access helper per object kind of the compute app, used alike by pages, the API and websocket consumers.

Each returns the object or raises: Http404 when the user may not see it (another tenant's object does
not exist), PermissionDenied (403) when they may see it but not ``action`` it (``portal.access.access_by_id``).
"""

from __future__ import annotations

from portal.access import ADMIN_ROLES, VIEW, access_by_id, is_cloud_admin, tenant_ids_for
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


def may_read_user_data(*, user, instance: Instance) -> bool:
    """Whether ``user`` may read the user-data ``instance`` was launched with (it often carries secrets).

    Its owner (who launched it), the admins of its tenant and cloud admins; not the tenant's other
    members, who may otherwise see and operate the instance (as Nova keeps user-data from plain members).
    """
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if is_cloud_admin(user) or (instance.owner_id is not None and instance.owner_id == user.pk):
        return True
    return tenant_ids_for(user, ADMIN_ROLES).filter(tenant_id=instance.tenant_id).exists()
