"""Live updates: services and the watcher publish changes to channel groups; the browser listens.

Groups: ``tenant-<id>`` (every member of the tenant) and ``staff`` (cloud admins, who see
everything). What members get names no host: instance events to the tenant group carry no
``host_id`` (the staff group's do), and operation messages and errors are written host-free
(``vms.compute.host_free``). Messages are sent after the surrounding transaction commits, so a client never
sees a state the database does not hold. ``vms.consumers.LiveConsumer`` relays them to the
browser as JSON ``{"type": "instance"|"operation"|"instance.deleted"|"metrics", "data": {...}}``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

from vms.actions import allowed_actions, allowed_admin_actions

log = logging.getLogger(__name__)

STAFF_GROUP = "staff"


def tenant_group(tenant_id: int) -> str:
    return f"tenant-{tenant_id}"


class _Sender:
    """Delivers events from a thread of its own, so a service or task never waits for Redis.

    One event loop lives in that thread for the process's lifetime (channels_redis keeps its
    connections per loop); events keep their order. ``flush()`` waits until everything queued so
    far went out (tests and short-lived commands use it).
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, groups: list[str], event: dict[str, Any]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="labcloud-live-sender", daemon=True)
                self._thread.start()
        self._queue.put((groups, event))

    def flush(self, timeout: float = 5.0) -> None:
        done = threading.Event()
        self._queue.put(done)
        if self._thread is not None:
            done.wait(timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            groups, event = item
            layer = get_channel_layer()
            if layer is None:
                continue
            try:
                for group in groups:
                    loop.run_until_complete(layer.group_send(group, {"type": "live.event", "event": event}))
            except Exception:  # live updates are best effort; a reload still shows the truth
                log.warning("could not publish a live update", exc_info=True)


_sender = _Sender()


def flush(timeout: float = 5.0) -> None:
    """Wait until the live updates published so far have been handed to the channel layer."""
    _sender.flush(timeout)


def instance_group(instance_id: int) -> str:
    """The sockets of the pages of one instance (``?instance=<id>``), for its high-volume events."""
    return f"instance-{instance_id}"


def publish(*, tenant_id: int | None, kind: str, data: dict[str, Any], groups: list[str] | None = None) -> None:
    """Send ``{"type": kind, "data": data}`` once the transaction commits.

    To the tenant's members and to staff, unless ``groups`` names the groups.
    """
    if groups is None:
        groups = [STAFF_GROUP] + ([tenant_group(tenant_id)] if tenant_id is not None else [])
    event = {"type": kind, "data": data}
    transaction.on_commit(lambda: _sender.put(groups, event))


def instance_changed(instance) -> None:
    """The instance's new state: to its tenant's members without the host (infrastructure is for cloud
    admins), to the ``staff`` group with ``host_id``."""
    publish(
        tenant_id=instance.tenant_id, kind="instance", data=instance_payload(instance, staff=True), groups=[STAFF_GROUP]
    )
    publish(
        tenant_id=instance.tenant_id,
        kind="instance",
        data=instance_payload(instance),
        groups=[tenant_group(instance.tenant_id)],
    )


def instance_deleted(*, tenant_id: int, instance_id: int) -> None:
    publish(tenant_id=tenant_id, kind="instance.deleted", data={"id": instance_id})


def operation_changed(operation) -> None:
    """The operation's state to its tenant and to staff; only staff get ``error_detail`` (the backend's words).

    ``message`` and ``error`` go as stored, with their parameters: the portal's own messages are untranslated
    there, and each reader's socket translates them in the language of its page (``LiveConsumer``).
    """
    data = {
        "id": operation.pk,
        "tenant_id": operation.tenant_id,
        "kind": operation.kind,
        "target_type": operation.target_type,
        "target_id": operation.target_id,
        "target": operation.target_repr,
        "state": operation.state,
        "progress": operation.progress,
        "message": operation.message,
        "message_args": operation.message_args,
        "error": operation.error,
        "error_args": operation.error_args,
    }
    if operation.tenant_id is not None:
        publish(tenant_id=None, kind="operation", data=data, groups=[tenant_group(operation.tenant_id)])
    staff_data = {**data, "error_detail": operation.error_detail}
    publish(tenant_id=None, kind="operation", data=staff_data, groups=[STAFF_GROUP])


def metrics_sampled(*, tenant_id: int, instance_id: int, point: dict[str, Any]) -> None:
    """A new metrics point of an instance (``vms.watcher.metrics``): that instance's open pages extend their graphs."""
    publish(
        tenant_id=tenant_id,
        kind="metrics",
        data={"id": instance_id, "tenant_id": tenant_id, "point": point},
        groups=[instance_group(instance_id)],
    )


def instance_payload(instance, *, staff: bool = False) -> dict[str, Any]:
    """What live updates carry about an instance (no secrets: no user-data); ``host_id`` only for ``staff``."""
    payload = {
        "id": instance.pk,
        "uuid": str(instance.uuid),
        "name": instance.name,
        "tenant_id": instance.tenant_id,
        "state": instance.state,
        "state_display": str(instance.get_state_display()),
        "state_reason": instance.state_reason,
        "state_reason_args": instance.state_reason_args,
        "task": instance.task,
        "desired_power_state": instance.desired_power_state,
        "installing": instance.installing,
        "vcpus": instance.vcpus,
        "ram_mib": instance.ram_mib,
        "disk_gib": instance.disk_gib,
        "addresses": instance.addresses,
        "allowed_actions": allowed_actions(instance),
        "updated_at": instance.updated_at.isoformat() if instance.updated_at else None,
    }
    if staff:
        payload["host_id"] = instance.host_id
        payload["admin_actions"] = allowed_admin_actions(instance)
    return payload
