"""Observed state: one map from backend power states to instance states, and the writers of what a backend said.

The hypervisor or cloud holds fact, the row holds it as last seen. Two kinds of callers write it:

* ``record_task_result``: the task that owns the instance (a launch, a power action…) writes what the
  backend answered at the end of its step, unconditionally, and publishes it: the task's end is news;
* ``record_observed``: the watcher (domain events, reconciles, cloud polls) writes only a change, and only
  with a conditional UPDATE on the state and task it read, so it never overwrites what a task wrote
  meanwhile; rows being deleted, or being built while a launch task owns them, are left alone.

Adapters turn their driver's facts (``InstanceState``, ``ServerState``) into an ``Observed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q
from django.utils import timezone

from vms import realtime
from vms.models import Host, Instance
from vms.security_groups import sync_host

# A backend's power state (portal.backends.base.POWER_STATES, and "error" from clouds) → Instance.State.
# "building", "unknown" and anything else change nothing.
BACKEND_STATES = {
    "running": Instance.State.RUNNING,
    "paused": Instance.State.PAUSED,
    "shutoff": Instance.State.SHUTOFF,
    "crashed": Instance.State.CRASHED,
    "error": Instance.State.ERROR,
}
REASON_MAX = Instance._meta.get_field("state_reason").max_length


@dataclass(frozen=True)
class Observed:
    """What a backend reports about one instance now.

    ``reason`` is shown beside the state (for the watcher's writes; a task keeps it only for errors);
    ``addresses`` None means "not reported"; ``busy``: the backend is between states (a cloud's task
    state), so the power state is not written yet.
    """

    state: str
    reason: str = ""
    addresses: tuple[str, ...] | None = None
    busy: bool = False


def instance_state_of(backend_state: str, default: str | None = None) -> str | None:
    return BACKEND_STATES.get(backend_state, default)


def owned_by_a_task() -> Q:
    """Rows the watcher leaves alone: being deleted, being built by the launch task, or moving between hosts
    (the source sees the domain pause and vanish, the destination sees it appear: neither is a fact of the row)."""
    return (
        Q(state=Instance.State.DELETING)
        | (Q(state=Instance.State.BUILDING) & ~Q(task=""))
        | Q(task__in=("migrate", "evacuate"))
    )


def _fields(instance: Instance, observed: Observed, *, by_task: bool) -> dict:
    """The columns ``observed`` sets: the state (not while the backend is between states) with its reason (a
    task keeps one only for an error), and the addresses when reported (the watcher's not while a task runs)."""
    fields: dict = {}
    target = BACKEND_STATES.get(observed.state)
    if target is not None and not observed.busy:
        keep_reason = not by_task or target == Instance.State.ERROR
        reason = (observed.reason if keep_reason else "")[:REASON_MAX]
        fields.update(state=target, state_reason=reason, state_reason_args={})
    if observed.addresses is not None and (by_task or not instance.task):
        fields["addresses"] = list(observed.addresses)
    return fields


def _publish(instance: Instance, fields: dict, now) -> None:
    for key, value in fields.items():
        setattr(instance, key, value)
    instance.updated_at = now
    realtime.instance_changed(instance)


def record_task_result(instance: Instance, observed: Observed) -> None:
    """The task that owns the instance stores what the backend answered, and publishes it."""
    fields = _fields(instance, observed, by_task=True)
    now = timezone.now()
    Instance.objects.filter(pk=instance.pk).update(**fields, updated_at=now)
    _publish(instance, fields, now)


def record_observed(instance: Instance, observed: Observed) -> bool:
    """The watcher stores a change it observed, unless a task changed the row meanwhile; True when written."""
    fields = _fields(instance, observed, by_task=False)
    fields = {key: value for key, value in fields.items() if getattr(instance, key) != value}
    if not fields or _owned(instance):
        return False
    now = timezone.now()
    updated = (
        Instance.objects.filter(pk=instance.pk, state=instance.state, task=instance.task)
        .exclude(owned_by_a_task())
        .update(**fields, updated_at=now)
    )
    if not updated:
        return False
    _publish(instance, fields, now)
    return True


def _owned(instance: Instance) -> bool:
    return (
        instance.state == Instance.State.DELETING
        or (instance.state == Instance.State.BUILDING and bool(instance.task))
        or instance.task in ("migrate", "evacuate")
    )


def mark_host_down(*, host: Host, reason: str) -> Host:
    """Record that the host or cloud did not answer: DOWN, with the error as the reason."""
    went_down = Host.objects.filter(pk=host.pk).exclude(state=Host.State.DOWN).exists()
    host.state = Host.State.DOWN
    host.state_reason = reason[: Host._meta.get_field("state_reason").max_length]
    host.save(update_fields=["state", "state_reason"])
    if went_down:
        host_state_changed(host_id=host.pk)
    return host


def mark_host_answered(*, host: Host) -> None:
    """The host or cloud answered: UP again (an enabled one that was not), seen now."""
    now = timezone.now()
    if host.state != Host.State.UP and host.enabled:
        was_down = host.state == Host.State.DOWN
        Host.objects.filter(pk=host.pk).update(state=Host.State.UP, state_reason="", last_seen=now)
        host.state, host.state_reason = Host.State.UP, ""
        if was_down:
            host_state_changed(host_id=host.pk)
            sync_host(host=host)  # security-group changes made while it was down
    else:
        Host.objects.filter(pk=host.pk).update(last_seen=now)
    host.last_seen = now


def host_state_changed(*, host_id: int) -> None:
    """The host went down or came back: what its instances accept changed (``vms.actions.host_refusal``).

    Publishes each of them again, so open pages redraw their buttons from the new ``allowed_actions``.
    """
    for instance in Instance.objects.filter(host_id=host_id).select_related("host"):
        realtime.instance_changed(instance)
