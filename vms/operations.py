"""Operation services: record long actions, queue their Celery task on commit, report progress.

A task receives the operation id, calls ``begin`` (idempotent: a redelivered task of a
finished operation does nothing), reports ``progress`` as it goes and ends with
``succeed`` or ``fail``.

When the broker does not take the task's message (Redis down), the request still succeeds: the
operation stays *queued*, remembers its task (``unsent_task``) and says it waits for the task
queue; ``send_unsent`` sends it as soon as the broker answers (a worker runs it each time it
connects to the broker, and the recovery sweep every ``OPERATION_RECOVERY_INTERVAL`` seconds).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import kombu.exceptions
from django.conf import settings
from django.db import DatabaseError, connection, models, transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from portal.celery import app as celery_app
from portal.models import Tenant
from vms import actions, realtime
from vms.models import Operation
from vms.models.operations import Said as Said  # re-exported: a worker's message with parameters
from vms.models.operations import said as said

log = logging.getLogger(__name__)

# The portal's own messages that operations store untranslated (gettext_noop, or ``said`` with parameters)
# and that every reader translates when it shows them (``Operation.error_text``/``message_text``, and the
# live socket in its page's language): a failure is recorded once, by the worker, but read by members in
# their own languages.
WAITING_FOR_BROKER = gettext_noop("Waiting for the task queue; sent as soon as it answers.")
HOST_DID_NOT_ANSWER = gettext_noop("The host did not answer; the action was not carried out. Try again later.")
HOST_FAILED = gettext_noop("The host could not carry out the action; the cloud administrators can see why.")
INTERNAL_ERROR = gettext_noop("Internal error; the administrators can find the details in the worker's log.")
# What a producer raises when the broker cannot be reached (kombu wraps the transport's errors).
BROKER_ERRORS = (kombu.exceptions.OperationalError, ConnectionError, OSError)


# What operations of other kinds than instance actions are called (the image pipeline registers its own).
_labels: dict[str, Callable[[], str]] = {}


def register_operation_labels(labels: dict[str, object]) -> None:
    """``kind`` → its name as a noun ("Image import"), lazily translated."""
    _labels.update({kind: (lambda label=label: str(label)) for kind, label in labels.items()})


def operation_labels() -> dict[str, str]:
    """Every operation kind's name as a noun, in the active language: instance actions from the registry."""
    labels = {f"instance.{name}": str(action.noun) for name, action in actions.ACTIONS.items()}
    labels.update({kind: label() for kind, label in _labels.items()})
    return labels


def create_operation(
    *,
    kind: str,
    target: models.Model,
    tenant: Tenant | None,
    user=None,
    task: Callable | None = None,
    params: dict | None = None,
) -> Operation:
    """Record an operation; with ``task``, queue ``task.delay(operation_id)`` once the transaction commits."""
    operation = Operation.objects.create(
        kind=kind,
        tenant=tenant,
        user=user if user is not None and user.is_authenticated else None,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        target_repr=str(target)[:200],
        params=params or {},
    )
    realtime.operation_changed(operation)  # first: "queued" is news before anything the task says
    if task is not None:
        transaction.on_commit(lambda: send(operation=operation, task=task))
    return operation


def send(*, operation: Operation, task) -> bool:
    """Hand ``task(operation.pk)`` to the broker; when it cannot be reached, keep the operation to send later.

    Runs after the request's commit: the operation and what it reserved are in the database either
    way, so a broker outage must not turn the accepted request into an error. Returns whether it went.
    """
    try:
        task.delay(operation.pk)
    except BROKER_ERRORS as exc:
        log.warning("operation %s: the broker did not take its task (%s); sent when it answers", operation.pk, exc)
        marked = Operation.objects.filter(pk=operation.pk, state=Operation.State.QUEUED).update(
            unsent_task=task.name, message=WAITING_FOR_BROKER
        )
        if marked:
            operation.unsent_task, operation.message = task.name, WAITING_FOR_BROKER
            realtime.operation_changed(operation)
        return False
    return True


def send_unsent() -> list[int]:
    """Send the tasks of queued operations that the broker did not take; the ids sent (none while it is down).

    Each operation is claimed with a conditional UPDATE before its message goes, so two callers (a
    worker reconnecting, the sweep) never send it twice; a send that fails again puts the claim back.
    """
    sent: list[int] = []
    pending = Operation.objects.filter(state=Operation.State.QUEUED).exclude(unsent_task="").order_by("pk")
    for operation in pending:
        task = celery_app.tasks.get(operation.unsent_task)
        if task is None:
            log.error("operation %s: unknown task %s", operation.pk, operation.unsent_task)
            continue
        claimed = Operation.objects.filter(pk=operation.pk, unsent_task=operation.unsent_task).update(
            unsent_task="", message=""
        )
        if not claimed:
            continue
        try:
            task.delay(operation.pk)
        except BROKER_ERRORS as exc:
            Operation.objects.filter(pk=operation.pk, unsent_task="", state=Operation.State.QUEUED).update(
                unsent_task=operation.unsent_task, message=WAITING_FOR_BROKER
            )
            log.warning("the broker still does not take tasks (%s); %d operations wait", exc, pending.count())
            break
        operation.unsent_task, operation.message = "", ""
        realtime.operation_changed(operation)
        sent.append(operation.pk)
    if sent:
        log.info("sent the tasks of operations the broker had not taken: %s", sent)
    return sent


def _stale_before():
    return timezone.now() - timedelta(seconds=settings.LABCLOUD_OPERATION_STALE_SECONDS)


def begin(*, operation_id: int) -> Operation | None:
    """Mark the operation running; None when it is finished or another live worker runs it (a redelivered task).

    A running operation whose heartbeat is older than ``LABCLOUD_OPERATION_STALE_SECONDS`` belongs
    to a dead worker and may be taken over.
    """
    with transaction.atomic():
        operation = Operation.objects.select_for_update().filter(pk=operation_id).first()
        if operation is None or operation.finished:
            return None
        if (
            operation.state == Operation.State.RUNNING
            and operation.heartbeat_at is not None
            and operation.heartbeat_at > _stale_before()
        ):
            return None
        now = timezone.now()
        operation.state = Operation.State.RUNNING
        operation.started_at = operation.started_at or now
        operation.heartbeat_at = now
        operation.unsent_task = ""  # its message did arrive (one that failed to send may still have gone)
        if operation.message == WAITING_FOR_BROKER:
            operation.message = ""
        operation.save(update_fields=["state", "started_at", "heartbeat_at", "unsent_task", "message"])
    realtime.operation_changed(operation)
    return operation


@contextmanager
def heartbeats(*, operation: Operation) -> Iterator[None]:
    """Send heartbeats from a thread while the block runs, so even one long driver call never looks dead.

    Every quarter of ``LABCLOUD_OPERATION_STALE_SECONDS``; the thread uses (and closes) its own
    database connection.
    """
    if connection.in_atomic_block:
        # Run inside a caller's transaction (tests running tasks eagerly): another connection could
        # neither see this operation's row nor write while that transaction holds SQLite's lock.
        yield
        return
    stop = threading.Event()
    interval = max(0.2, settings.LABCLOUD_OPERATION_STALE_SECONDS / 4)

    def beat() -> None:
        try:
            while not stop.wait(interval):
                # a database restarting costs a beat or two, not the thread: the next one reconnects
                informative_update(
                    Operation.objects.filter(pk=operation.pk, finished_at__isnull=True), heartbeat_at=timezone.now()
                )
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"heartbeat-{operation.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def heartbeat(*, operation: Operation) -> None:
    """Tell the recovery sweep this operation's worker is alive (progress() does this too)."""
    operation.heartbeat_at = timezone.now()
    informative_update(Operation.objects.filter(pk=operation.pk), heartbeat_at=operation.heartbeat_at)


def _text(value: str | Said) -> tuple[str, dict[str, Any]]:
    """What a message is stored as: the text (a msgid, or a backend's words) and its parameters."""
    return (value.text, value.args) if isinstance(value, Said) else (value, {})


def progress(*, operation: Operation, percent: int, message: str | Said | None = None) -> None:
    percent = max(0, min(100, int(percent)))
    fields: dict[str, Any] = {"progress": percent, "heartbeat_at": timezone.now()}
    if message is not None:
        text, args = _text(message)
        fields["message"], fields["message_args"] = text[:200], args
    informative_update(Operation.objects.filter(pk=operation.pk), **fields)
    for key, value in fields.items():
        setattr(operation, key, value)
    realtime.operation_changed(operation)


def informative_update(queryset: models.QuerySet, **fields) -> bool:
    """An UPDATE that only tells how a long step goes (progress, a heartbeat, a copy's sign of life).

    A database restarting in the middle of a long step must not abort the step: the error is logged,
    the broken connection dropped (the next write opens a new one) and False returned. Inside a
    transaction the error is raised as usual.
    """
    try:
        queryset.update(**fields)
    except DatabaseError as exc:
        if connection.in_atomic_block:
            raise
        log.warning("%s not updated (%s)", queryset.model._meta.label, exc)
        connection.close()
        return False
    return True


def succeed(*, operation: Operation, message: str | Said = "") -> None:
    text, args = _text(message)
    _finish(operation, Operation.State.SUCCEEDED, progress=100, message=text, message_args=args)


def fail(*, operation: Operation, error: str | Said, detail: str = "") -> None:
    """``error`` is what members see: a msgid (``gettext_noop``) or ``said(msgid, **parameters)``, translated
    by each reader, or a service's refusal; ``detail`` is for cloud admins."""
    text, args = _text(error)
    _finish(operation, Operation.State.FAILED, error=text, error_args=args, error_detail=detail)


def _finish(operation: Operation, state: str, **fields) -> None:
    fields = {"state": state, "finished_at": timezone.now(), **fields}
    Operation.objects.filter(pk=operation.pk).update(**fields)
    for key, value in fields.items():
        setattr(operation, key, value)
    realtime.operation_changed(operation)
