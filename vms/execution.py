"""Instance lifecycle, the worker's half: run a queued instance operation through the host's adapter.

``execute(operation_id=…)`` is the body of the Celery task ``vms.tasks.run_instance_operation``. It
talks to the host only through ``compute_for(instance.host)``; each adapter step is idempotent, so a
task redelivered after a worker died finishes the job. A failure fails the operation with a message
members may read (a service's refusal as it is; a backend's failure as one of the portal's generic
messages, its own words — host names, URIs — kept in ``error_detail`` for cloud admins; an unexpected
error generic too, the traceback in the worker's log), and ``_fail`` undoes what the request reserved
(quota, a disk row, a snapshot row) so nothing is left half-created. A database that goes away under
a running operation does not fail it: once the database answers again the operation is handed back
to the queue and run again. ``recover_stale_operations`` re-queues operations whose worker stopped
sending heartbeats and sends those the broker did not take.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from images.services import time_limit_exceeded
from portal.backends.base import BackendError, HostUnreachable
from portal.services import ServiceError
from vms import actions, operations, realtime
from vms.compute import compute_for, host_free
from vms.compute.state import REASON_MAX
from vms.models import Host, Instance, InstanceDisk, Operation, Snapshot
from vms.operations import Said, said
from vms.security_groups import queue_sync
from vms.tasks import run_instance_operation

log = logging.getLogger(__name__)

DATABASE_WAIT_SECONDS = 60  # how long a running operation waits for its database to come back


def execute(*, operation_id: int) -> None:
    """Run one instance operation (the Celery task's body); safe to run again after a crash.

    A database that goes away (a restart) is waited for: before the operation began, it begins once the
    database answers; after, the operation is handed back to the queue (``_hand_back``).
    """
    try:
        operation = operations.begin(operation_id=operation_id)
    except DatabaseError as exc:
        if connection.in_atomic_block:  # run inside a caller's transaction (tests running tasks eagerly)
            raise
        _wait_for_database(operation_id, exc)
        operation = operations.begin(operation_id=operation_id)
    if operation is None:
        return
    try:
        _execute(operation)
    except DatabaseError as exc:
        if connection.in_atomic_block:
            raise
        _hand_back(operation.pk, exc)


def _execute(operation: Operation) -> None:
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
        message = _run(operation, instance, action)
    except ServiceError as exc:
        log.warning("operation %s (%s) refused: %s", operation.pk, operation.kind, exc.message)
        cause = exc.__cause__.message if isinstance(exc.__cause__, BackendError) else ""  # the backend's words
        _fail(operation, instance, _members_words(exc, instance.host), detail=cause)
        return
    except BackendError as exc:
        # The backend's words name hosts and URIs: for cloud admins (error_detail), not for the tenant.
        log.warning("operation %s (%s) failed: %s", operation.pk, operation.kind, exc.message)
        generic = operations.HOST_DID_NOT_ANSWER if isinstance(exc, HostUnreachable) else operations.HOST_FAILED
        _fail(operation, instance, generic, detail=exc.message)
        return
    except DatabaseError:
        raise  # not the operation's failure: execute() hands it back once the database answers
    except SoftTimeLimitExceeded:
        log.warning("operation %s (%s) stopped at its time limit", operation.pk, operation.kind)
        _fail(operation, instance, time_limit_exceeded(settings.LABCLOUD_INSTANCE_TASK_TIME_LIMIT))
        return
    except Exception as exc:
        # The details (paths, SQL…) go to the log for the operator, not to the tenant.
        log.exception("operation %s (%s) crashed", operation.pk, operation.kind)
        _fail(operation, instance, operations.INTERNAL_ERROR, detail=f"{type(exc).__name__}: {exc}")
        return
    if action != "delete":
        Instance.objects.filter(pk=instance.pk).update(task="", updated_at=timezone.now())
        instance.task = ""
        realtime.instance_changed(instance)
    operations.succeed(operation=operation, message=message)
    if action in MEMBERSHIP_CHANGES:
        # A remote-group rule names its members' NICs: every host of the tenant learns of the NIC that came,
        # went or moved (its own host was brought up to date before the guest started).
        queue_sync(instance.tenant)


def _run(operation: Operation, instance: Instance, action: str) -> str:
    """Carry out ``action`` on the host; the message the finished operation shows."""
    if action not in actions.ACTIONS:
        raise ServiceError(said(gettext_noop("Unknown operation %(kind)s."), kind=operation.kind))
    if action == "delete":
        return _delete(operation, instance)  # an instance never placed on a host can go too
    adapter = compute_for(instance.host)
    params = operation.params
    if action == "launch":
        return adapter.launch(operation, instance)
    if action in actions.POWER_ACTIONS:
        adapter.power(operation, instance, action)
    elif action == "finish_install":
        adapter.finish_install(operation, instance)
        return _("Installed system booted from disk.")
    elif action == "resize":
        adapter.resize(operation, instance)
    elif action == "set_resources":
        adapter.set_resources(operation, instance)
    elif action == "attach_disk":
        adapter.attach_disk(operation, instance, InstanceDisk.objects.get(pk=params["disk_id"]))
    elif action == "detach_disk":
        disk = InstanceDisk.objects.filter(pk=params["disk_id"]).first()
        if disk is not None:
            adapter.detach_disk(operation, instance, disk)
            disk.delete()
    elif action.startswith("snapshot_"):
        _snapshot(operation, instance, action)
    elif action == "migrate":
        return adapter.migrate(operation, instance, Host.objects.get(pk=params["to_host_id"]))
    elif action == "evacuate":
        return adapter.evacuate(operation, instance, Host.objects.get(pk=params["to_host_id"]))
    return ""


def _snapshot(operation: Operation, instance: Instance, action: str) -> None:
    adapter = compute_for(instance.host)
    snapshot = Snapshot.objects.filter(pk=operation.params["snapshot_id"]).first()
    if snapshot is None:
        return
    if action == "snapshot_create":
        adapter.create_snapshot(operation, instance, snapshot)
        Snapshot.objects.filter(pk=snapshot.pk).update(state=Snapshot.State.AVAILABLE)
    elif action == "snapshot_revert":
        adapter.revert_snapshot(operation, instance, snapshot)
        Snapshot.objects.filter(pk=snapshot.pk).update(state=Snapshot.State.AVAILABLE)
    else:
        adapter.delete_snapshot(operation, instance, snapshot)
        snapshot.delete()


def _delete(operation: Operation, instance: Instance) -> str:
    if instance.host_id is not None:
        compute_for(instance.host).remove(instance, operation)
    tenant_id, pk = instance.tenant_id, instance.pk
    with transaction.atomic():
        Snapshot.objects.filter(instance_id=pk).delete()
        InstanceDisk.objects.filter(instance_id=pk).delete()
        Instance.objects.filter(pk=pk).delete()
        realtime.instance_deleted(tenant_id=tenant_id, instance_id=pk)
    return _("Instance deleted.")


def _hand_back(operation_id: int, exc: DatabaseError) -> None:
    """The database went away under a running operation (a restart, a failover): wait until it answers,
    then queue the operation again (its steps are idempotent, the re-run finishes the job).

    Counted as an attempt, as a dead worker's is. If the database stays away longer than
    DATABASE_WAIT_SECONDS the error is raised: the recovery sweep picks the operation up later.
    """
    _wait_for_database(operation_id, exc)
    requeued = _requeue(operation_id)
    log.warning("operation %s: database back, %s", operation_id, "queued again" if requeued else "already done")


def _wait_for_database(operation_id: int, exc: DatabaseError) -> None:
    """Until the database answers on a new connection (raises ``exc`` after DATABASE_WAIT_SECONDS)."""
    log.warning("operation %s lost its database (%s); waiting for it", operation_id, exc)
    deadline = time.monotonic() + DATABASE_WAIT_SECONDS
    delay = 0.25
    while True:
        connection.close()
        try:
            connection.ensure_connection()
            return
        except DatabaseError:
            if time.monotonic() > deadline:
                raise exc from None
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def _requeue(operation_id: int) -> bool:
    with transaction.atomic():
        fresh = Operation.objects.select_for_update().filter(pk=operation_id).first()
        if fresh is None or fresh.finished:
            return False
        fresh.params = {**fresh.params, "attempts": int(fresh.params.get("attempts", 0)) + 1}
        fresh.state = Operation.State.QUEUED
        fresh.heartbeat_at = timezone.now()
        fresh.save(update_fields=["params", "state", "heartbeat_at"])
        transaction.on_commit(lambda: operations.send(operation=fresh, task=run_instance_operation))
    return True


def _members_words(exc: ServiceError, host) -> str | Said:
    """A refusal as members read it: without the host's name or address and without server paths; kept as its
    msgid and parameters when it was made from one (each reader translates it)."""
    if exc.said is None:
        return host_free(exc.message, host)
    args = {k: host_free(v, host) if isinstance(v, str) else v for k, v in exc.said.args.items()}
    return said(exc.said.text, **args)


def _reason_fields(message: str | Said) -> dict:
    """An error state's reason as the row keeps it: the portal's own message as its msgid and parameters (each
    reader translates it), anything else (a backend's words) as it is, cut to the column."""
    if isinstance(message, Said) and len(message.text) <= REASON_MAX:
        return {"state_reason": message.text, "state_reason_args": message.args}
    return {"state_reason": str(message)[:REASON_MAX], "state_reason_args": {}}


def _fail(operation: Operation, instance: Instance | None, message: str | Said, *, detail: str = "") -> None:
    """Fail the operation and undo what its request reserved; a failed launch leaves nothing on the host.

    ``message`` is what members see (also as a failed launch's state reason); ``detail`` is for cloud admins.
    The instance's row is put right before the operation reads failed (whoever waits on the operation then
    reads the instance as it stays); what is left on the host is cleaned up last, best effort.
    """
    if instance is None:
        operations.fail(operation=operation, error=message, detail=detail)
        return
    cleanups: list = []
    action = operation.kind.removeprefix("instance.")
    params = operation.params
    fields: dict = {"task": ""}
    adapter = compute_for(instance.host) if instance.host_id is not None else None
    if action == "launch":
        fields.update(state=Instance.State.ERROR, **_reason_fields(message))
        if adapter is not None:
            cleanups.append(lambda: adapter.remove(instance))  # best effort: what the launch made goes
    elif action == "delete":
        fields.update(state=Instance.State.ERROR, **_reason_fields(message))
    elif action.startswith("snapshot_"):
        snapshot = Snapshot.objects.filter(pk=params.get("snapshot_id")).first()
        if snapshot is not None and action == "snapshot_create":
            if adapter is not None:
                cleanups.append(lambda: adapter.discard_snapshot(instance, snapshot))
            Snapshot.objects.filter(pk=snapshot.pk).delete()  # nothing was created: give the quota back
        elif snapshot is not None:
            Snapshot.objects.filter(pk=snapshot.pk).update(state=Snapshot.State.AVAILABLE)
    elif action == "attach_disk":
        disk = InstanceDisk.objects.filter(pk=params.get("disk_id")).first()
        if disk is not None and not disk.attached:
            if adapter is not None and disk.volume:
                cleanups.append(lambda: adapter.discard_disk(instance, disk))
            InstanceDisk.objects.filter(pk=disk.pk).delete()
    elif action == "resize":  # back to the old flavor: the quota reserved for the new one is released
        vcpus, ram_mib, disk_gib = params["from_sizes"]
        fields.update(flavor_id=params["from_flavor_id"], vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib)
    elif action == "set_resources":
        fields.update(vcpus=params["from_vcpus"], ram_mib=params["from_ram_mib"])
    elif action in ("migrate", "evacuate"):  # it stayed where it was: the capacity held at the destination goes
        fields.update(migration_target=None)
    Instance.objects.filter(pk=instance.pk).update(**fields, updated_at=timezone.now())
    for key, value in fields.items():
        setattr(instance, key, value)
    realtime.instance_changed(instance)
    operations.fail(operation=operation, error=message, detail=detail)
    for cleanup in cleanups:
        cleanup()


MEMBERSHIP_CHANGES = frozenset({"launch", "delete", "migrate", "evacuate"})

STOPPED_TIMES = gettext_noop("The worker running this operation stopped %(n)d times.")


def recover_stale_operations(*, stale_after: timedelta | None = None, max_attempts: int = 3) -> list[int]:
    """Send what the broker did not take; re-queue instance operations whose worker died; fail those that
    died ``max_attempts`` times. Returns the ids sent or re-queued.

    Runs from Celery beat and at worker start. Operations whose message never reached the broker
    (``unsent_task``) are sent at once, whatever their age (``operations.send_unsent``). A *running*
    operation whose heartbeat (sent every quarter of ``stale_after`` while its task runs) stopped for
    ``stale_after`` lost its worker: it is queued again and the attempt counted. A *queued* operation
    is only waiting for a free worker; if it has waited ten times as long, its message may be lost,
    so it is sent once more (not counted: waiting is not failing). Host clean-up of a failed launch happens after the
    sweep's transaction, never while rows are locked.
    """
    stale_after = stale_after or timedelta(seconds=settings.LABCLOUD_OPERATION_STALE_SECONDS)
    sent = operations.send_unsent()
    now = timezone.now()
    running_cutoff, queued_cutoff = now - stale_after, now - 10 * stale_after
    requeued, to_fail = [], []
    waiting = Q(state=Operation.State.QUEUED, unsent_task="")  # unsent ones wait for the broker, not a worker
    candidates = Operation.objects.filter(kind__startswith="instance.").filter(
        Q(state=Operation.State.RUNNING, heartbeat_at__lt=running_cutoff)
        | Q(state=Operation.State.RUNNING, heartbeat_at__isnull=True, started_at__lt=running_cutoff)
        | (waiting & Q(heartbeat_at__lt=queued_cutoff))
        | (waiting & Q(heartbeat_at__isnull=True, created_at__lt=queued_cutoff))
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
            transaction.on_commit(lambda op=fresh: operations.send(operation=op, task=run_instance_operation))
        requeued.append(pk)
    for operation in to_fail:
        instance = Instance.objects.select_related("host", "tenant").filter(pk=operation.target_id).first()
        _fail(
            operation,
            instance,
            said(STOPPED_TIMES, n=max_attempts),
        )
    if requeued:
        log.info("re-queued stale instance operations: %s", requeued)
    return sent + requeued
