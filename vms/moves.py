"""Moving instances between hosts (cloud admins): migrate one, cancel a migration.

A migration is an instance operation (``instance.migrate``) run by the worker through the host's
adapter (``compute_for(host).migrate``): live when the instance runs, cold when it is shut off. The
request picks the destination (the named host if it can take the instance, else the scheduler's
choice among the other hosts of the same kind) and holds the instance's size there
(``Instance.migration_target``, counted by the scheduler) until the migration ends; the tenant's
quota does not change. Hosts of a kind without the ``migrate`` capability (OpenStack clouds: Nova
places there) are refused by the action registry.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from images.services import time_limit_exceeded
from portal.services import ConflictError, ServiceError, record_audit, require_cloud_admin
from vms import actions, operations, realtime
from vms.compute import Capability, host_can
from vms.compute.texts import (
    ALL_EVACUATED,
    ALL_MOVED,
    EVACUATING,
    HOST_GONE,
    MOVING_INSTANCES,
    SOME_STAYED,
    WORKER_STOPPED,
)
from vms.execution import execute
from vms.models import Host, Instance, Operation
from vms.scheduler import place_migration
from vms.selectors import evacuation_loss
from vms.tasks import drain_host_task, evacuate_host_task, run_instance_operation

log = logging.getLogger(__name__)


def migrate_instance(
    *, actor, instance: Instance, host: Host | None = None, ip: str | None = None, queue: bool = True
) -> Operation:
    """Queue the migration of ``instance`` to ``host`` (None: the scheduler picks one).

    ``queue=False``: recorded but not sent to the workers (a host's drain runs it itself, one at a time).
    """
    require_cloud_admin(actor, _("Only cloud admins migrate instances."))
    return _move(actor=actor, instance=instance, host=host, action="migrate", ip=ip, queue=queue)


def evacuate_instance(
    *, actor, instance: Instance, host: Host | None = None, ip: str | None = None, queue: bool = True
) -> Operation:
    """Rebuild ``instance``, whose host is down, on ``host`` (None: the scheduler picks one) from its image.

    Its disks are reused on shared storage and made anew (empty, from the image) otherwise; its copy on the
    dead host is destroyed when that host answers again (``Instance.evacuated_from``).
    """
    require_cloud_admin(actor, _("Only cloud admins evacuate instances."))
    return _move(actor=actor, instance=instance, host=host, action="evacuate", ip=ip, queue=queue)


def _move(*, actor, instance: Instance, host: Host | None, action: str, ip: str | None, queue: bool) -> Operation:
    with transaction.atomic():
        instance = (
            Instance.objects.select_for_update(of=("self",))
            .select_related("tenant", "flavor", "image", "host", "keypair", "network")
            .get(pk=instance.pk)
        )
        actions.check(instance, action)
        if action == "migrate" and instance.snapshots.exists():
            raise ConflictError(
                _("Instance “%(name)s” has snapshots; delete them before migrating it.") % {"name": instance.name}
            )
        destination = place_migration(instance=instance, host=host, keep_storage=action == "evacuate")
        params = {
            "from_host": instance.host.name,
            "to_host": destination.name,
            "to_host_id": destination.pk,
            "live": action == "migrate" and instance.state == Instance.State.RUNNING,
        }
        Instance.objects.filter(pk=instance.pk).update(task=action, migration_target=destination)
        instance.task, instance.migration_target = action, destination
        record_audit(
            user=actor, action=f"instance.{action}", target=instance, tenant=instance.tenant, ip=ip, detail=params
        )
        operation = operations.create_operation(
            kind=f"instance.{action}",
            target=instance,
            tenant=instance.tenant,
            user=actor,
            task=run_instance_operation if queue else None,
            params=params,
        )
        realtime.instance_changed(instance)
    return operation


def cancel_operation(*, actor, operation: Operation, ip: str | None = None) -> Operation:
    """Ask a running migration to stop: the worker aborts the job and the guest stays where it was."""
    require_cloud_admin(actor, _("Only cloud admins cancel migrations."))
    with transaction.atomic():
        operation = Operation.objects.select_for_update().get(pk=operation.pk)
        if operation.kind != "instance.migrate":
            raise ConflictError(_("Only migrations can be cancelled."))
        if operation.finished:
            raise ConflictError(_("The operation has finished already."))
        if not operation.params.get("live"):
            raise ConflictError(_("A cold migration cannot be cancelled: it finishes by itself."))
        if not operation.cancel_requested:
            operation.cancel_requested = True
            operation.save(update_fields=["cancel_requested"])
            record_audit(
                user=actor,
                action="operation.cancel",
                target=operation,
                tenant=operation.tenant,
                ip=ip,
                detail={"kind": operation.kind},
            )
    return operation


# ---------------------------------------------------------------- host maintenance


def drain_host(*, actor, host: Host, ip: str | None = None) -> Operation:
    """Disable ``host`` for new launches and move every instance off it, one at a time (an operation of the host).

    Running instances migrate live, shut-off ones cold; the scheduler picks each destination. An instance
    that cannot move (busy, paused, in error, no room elsewhere) stays, and the operation says which.
    The host stays disabled afterwards: an admin enables it again after the maintenance.
    """
    require_cloud_admin(actor, _("Only cloud admins drain hosts."))
    if not host_can(host, Capability.MIGRATE):
        raise ConflictError(_("Instances cannot migrate off host %(name)s.") % {"name": host.name})
    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host.pk)
        if _running(host, "host.drain"):
            raise ConflictError(_("Host %(name)s is being drained already.") % {"name": host.name})
        if host.enabled:
            host.enabled = False
            fields = ["enabled"]
            if host.state == Host.State.UP:
                host.state = Host.State.DISABLED
                fields.append("state")
            host.save(update_fields=fields)
        count = Instance.objects.filter(host=host).exclude(state=Instance.State.DELETING).count()
        record_audit(user=actor, action="host.drain", target=host, tenant=None, ip=ip, detail={"instances": count})
        return operations.create_operation(
            kind="host.drain", target=host, tenant=None, user=actor, task=drain_host_task, params={"instances": count}
        )


def run_drain(*, operation_id: int) -> None:
    """The drain task's body: each instance of the host in turn, its migration run here and waited for."""
    _run_host_moves(operation_id=operation_id, move=migrate_instance, moving=MOVING_INSTANCES, done=ALL_MOVED)


def _run_host_moves(*, operation_id: int, move, moving: str, done: str) -> None:
    operation = operations.begin(operation_id=operation_id)
    if operation is None:
        return
    host = Host.objects.filter(pk=operation.target_id).first()
    if host is None:
        operations.succeed(operation=operation, message=HOST_GONE)
        return
    pending = list(
        Instance.objects.filter(host=host)
        .exclude(state=Instance.State.DELETING)
        .order_by("name")
        .values_list("pk", flat=True)
    )
    stayed: list[str] = []
    try:
        _move_each(operation, host, pending, stayed, move=move, moving=moving)
    except SoftTimeLimitExceeded:
        log.warning("%s of host %s stopped at its time limit", operation.kind, host.name)
        limit = settings.LABCLOUD_INSTANCE_TASK_TIME_LIMIT * 4
        operations.fail(operation=operation, error=time_limit_exceeded(limit), detail="\n".join(stayed))
        return
    if stayed:
        log.warning("%s of host %s: %d instance(s) stayed", operation.kind, host.name, len(stayed))
        operations.fail(operation=operation, error=SOME_STAYED, detail="\n".join(stayed))
    else:
        operations.succeed(operation=operation, message=done)


def _move_each(operation: Operation, host: Host, pending: list[int], stayed: list[str], *, move, moving: str) -> None:
    with operations.heartbeats(operation=operation):
        for index, pk in enumerate(pending):
            instance = Instance.objects.select_related("host", "tenant").filter(pk=pk, host=host).first()
            if instance is None:
                continue  # deleted or moved meanwhile
            operations.progress(operation=operation, percent=index * 100 // max(1, len(pending)), message=moving)
            try:
                moved = move(actor=operation.user, instance=instance, queue=False)
            except ServiceError as exc:
                stayed.append(f"{instance.name}: {exc.message}")
                continue
            execute(operation_id=moved.pk)
            moved.refresh_from_db()
            if moved.state != Operation.State.SUCCEEDED:
                stayed.append(f"{instance.name}: {moved.error_text}")


def evacuate_host(*, actor, host: Host, confirm: bool = False, ip: str | None = None) -> Operation:
    """Rebuild every instance of a host that is down on other hosts, one at a time (an operation of the host).

    Without ``confirm`` it only says what would be lost (a ServiceError on ``confirm``): instances whose
    disks are not on shared storage come back from their images, empty. The host is disabled.
    """
    require_cloud_admin(actor, _("Only cloud admins evacuate hosts."))
    if not host_can(host, Capability.MIGRATE):
        raise ConflictError(_("Instances cannot move off host %(name)s.") % {"name": host.name})
    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host.pk)
        if host.state != Host.State.DOWN:
            raise ConflictError(
                _("Host %(name)s answers: drain it instead (evacuation is for a host that is down).")
                % {"name": host.name}
            )
        if _running(host, "host.evacuate"):
            raise ConflictError(_("Host %(name)s is being evacuated already.") % {"name": host.name})
        count, lost = evacuation_loss(host=host)
        if not confirm:
            raise ServiceError(
                _(
                    "Evacuating host %(name)s rebuilds its %(count)d instance(s) on other hosts; %(lost)d of them "
                    "lose their disks (rebuilt empty from their images). Confirm to go on."
                )
                % {"name": host.name, "count": count, "lost": lost},
                field="confirm",
            )
        if host.enabled:
            host.enabled = False
            host.save(update_fields=["enabled"])
        detail = {"instances": count, "disks_lost": lost}
        record_audit(user=actor, action="host.evacuate", target=host, tenant=None, ip=ip, detail=detail)
        return operations.create_operation(
            kind="host.evacuate", target=host, tenant=None, user=actor, task=evacuate_host_task, params=detail
        )


def _running(host: Host, kind: str) -> bool:
    """An operation of ``kind`` on the host is under way. One whose worker stopped (no heartbeat for
    ``LABCLOUD_OPERATION_STALE_SECONDS``; queued ten times as long) is failed here, so it blocks nothing."""
    now = timezone.now()
    stale = timedelta(seconds=settings.LABCLOUD_OPERATION_STALE_SECONDS)
    unfinished = Operation.objects.filter(
        kind=kind, target_type=Host._meta.label_lower, target_id=str(host.pk)
    ).exclude(state__in=[Operation.State.SUCCEEDED, Operation.State.FAILED])
    for operation in unfinished:
        last = operation.heartbeat_at or operation.started_at or operation.created_at
        if last > now - (stale if operation.state == Operation.State.RUNNING else 10 * stale):
            return True
        operations.fail(operation=operation, error=WORKER_STOPPED)
    return False


def run_evacuate(*, operation_id: int) -> None:
    """The evacuation task's body: each instance of the dead host rebuilt elsewhere in turn."""
    _run_host_moves(operation_id=operation_id, move=evacuate_instance, moving=EVACUATING, done=ALL_EVACUATED)
