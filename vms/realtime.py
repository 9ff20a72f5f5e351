"""Live updates: services and the watcher publish changes to channel groups; the browser listens.

Groups: ``tenant-<id>`` (every member of the tenant) and ``staff`` (cloud admins, who see
everything). Messages are sent after the surrounding transaction commits, so a client never
sees a state the database does not hold. ``vms.consumers.LiveConsumer`` relays them to the
browser as JSON ``{"type": "instance"|"operation"|"instance.deleted", "data": {...}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction

log = logging.getLogger(__name__)

STAFF_GROUP = "staff"


def tenant_group(tenant_id: int) -> str:
    return f"tenant-{tenant_id}"


def _send(groups: list[str], event: dict[str, Any]) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        for group in groups:
            async_to_sync(layer.group_send)(group, {"type": "live.event", "event": event})
    except Exception:  # live updates are best effort; a reload still shows the truth
        log.warning("could not publish a live update", exc_info=True)


def publish(*, tenant_id: int | None, kind: str, data: dict[str, Any]) -> None:
    """Send ``{"type": kind, "data": data}`` to the tenant's members and to staff once the transaction commits."""
    groups = [STAFF_GROUP] + ([tenant_group(tenant_id)] if tenant_id is not None else [])
    event = {"type": kind, "data": data}
    transaction.on_commit(lambda: _send(groups, event))


def instance_changed(instance) -> None:
    from vms.selectors import instance_payload

    publish(tenant_id=instance.tenant_id, kind="instance", data=instance_payload(instance))


def instance_deleted(*, tenant_id: int, instance_id: int) -> None:
    publish(tenant_id=tenant_id, kind="instance.deleted", data={"id": instance_id})


def operation_changed(operation) -> None:
    publish(
        tenant_id=operation.tenant_id,
        kind="operation",
        data={
            "id": operation.pk,
            "kind": operation.kind,
            "target_type": operation.target_type,
            "target_id": operation.target_id,
            "target": operation.target_repr,
            "state": operation.state,
            "progress": operation.progress,
            "message": operation.message,
            "error": operation.error,
        },
    )
