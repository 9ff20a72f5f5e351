"""The watcher's side of a libvirt host: a full sync of its domains into the rows (unmanaged domains included),
and what the watcher asks when a domain event arrives."""

from __future__ import annotations

import logging

from django.utils import timezone
from django.utils.translation import gettext as _

from portal.backends.base import (
    BackendError,
    InstanceState,
    NotFound,
)
from vms.compute import state
from vms.compute.libvirt.spec import driver_for, ignored_domain, instance_volumes, observed, shared_storage
from vms.compute.state import Observed, mark_host_answered, mark_host_down
from vms.models import Host, Instance, UnmanagedDomain

log = logging.getLogger(__name__)


def _sync_unmanaged(host: Host, by_uuid: dict[str, InstanceState]) -> tuple[int, int]:
    """Domains no instance owns become UnmanagedDomain rows (a cloud admin may adopt them); (count, removed)."""
    owned = {str(u) for u in Instance.objects.filter(uuid__in=list(by_uuid)).values_list("uuid", flat=True)}
    unowned = {uuid: d for uuid, d in by_uuid.items() if uuid not in owned}
    existing = {str(row.uuid): row for row in UnmanagedDomain.objects.filter(host=host)}
    stale = [row.pk for uuid, row in existing.items() if uuid not in unowned]
    removed = UnmanagedDomain.objects.filter(pk__in=stale).delete()[0] if stale else 0
    now = timezone.now()
    new, changed = [], []
    for uuid, domain in unowned.items():
        # The memory it can use (``<memory>``), not what a balloon asks for: adoption counts it.
        memory = domain.max_memory_mib or domain.memory_mib
        values = {"name": domain.name, "state": domain.state, "vcpus": domain.vcpus, "memory_mib": memory}
        row = existing.get(uuid)
        if row is None:
            new.append(UnmanagedDomain(host=host, uuid=uuid, **values))
        else:
            for field, value in values.items():
                setattr(row, field, value)
            row.last_seen = now
            changed.append(row)
    if new:
        UnmanagedDomain.objects.bulk_create(new, ignore_conflicts=True)
    if changed:
        UnmanagedDomain.objects.bulk_update(changed, ["name", "state", "vcpus", "memory_mib", "last_seen"])
    return len(unowned), removed


def _remove_evacuated(host: Host, by_uuid: dict[str, InstanceState]) -> int:
    """Instances rebuilt on other hosts while this one was down: their old copies here go — the domain destroyed
    and undefined, its volumes deleted unless they are the same files the instance uses now (shared storage)."""
    removed = 0
    driver = driver_for(host)
    for instance in Instance.objects.filter(evacuated_from=host).select_related("host"):
        uuid = str(instance.uuid)
        try:
            if uuid in by_uuid and instance.host_id != host.pk:
                driver.undefine(uuid)
                log.warning("host %s: removed the old copy of evacuated instance %s", host.name, uuid)
            if instance.host_id != host.pk and not shared_storage(host, instance.host):
                for volume in instance_volumes(instance):
                    driver.delete_volume(host.storage_pool, volume)
        except BackendError as exc:
            log.warning("host %s: old copy of evacuated instance %s not removed yet: %s", host.name, uuid, exc.message)
            continue
        Instance.objects.filter(pk=instance.pk).update(evacuated_from=None)
        removed += 1
    return removed


def mark_vanished(*, instance: Instance) -> bool:
    """The instance's domain is gone from its host: the row goes to ERROR (unless a task owns it)."""
    return state.record_observed(instance, Observed(state="error", reason=_("The domain vanished from the host.")))


def domain_state(*, host: Host, uuid: str) -> InstanceState | None:
    """The domain's current state on its host; None when it no longer exists there."""
    try:
        return driver_for(host).state(uuid)
    except NotFound:
        return None


def refresh_addresses(*, instance: Instance, host: Host, running: bool) -> bool:
    """Store the instance's IP addresses (DHCP leases on its networks; none when not running); True if changed."""
    try:
        addresses = driver_for(host).addresses(str(instance.uuid)) if running else []
    except BackendError:
        return False
    return state.record_observed(instance, Observed(state="", addresses=tuple(addresses)))


def reconcile_host(host: Host) -> dict[str, int]:
    """Full sync of one host: row states from its domains, vanished domains, unmanaged domains.

    One driver call. A host that does not answer is marked down and the ``BackendError`` re-raised.
    """
    try:
        domains = [d for d in driver_for(host).list_instances() if not ignored_domain(d.name)]
    except BackendError as exc:
        mark_host_down(host=host, reason=exc.message)
        raise
    by_uuid = {d.uuid.lower(): d for d in domains}
    counts = {
        "domains": len(domains),
        "changed": 0,
        "addresses": 0,
        "vanished": 0,
        "unmanaged": 0,
        "unmanaged_removed": 0,
    }
    for instance in Instance.objects.filter(host=host).exclude(state.owned_by_a_task()):
        instance.host = host  # its live update asks what the host can do: no query per row
        domain = by_uuid.get(str(instance.uuid))
        if domain is None:
            if instance.state != Instance.State.ERROR and mark_vanished(instance=instance):
                counts["vanished"] += 1
            continue
        if state.record_observed(instance, observed(domain)):
            counts["changed"] += 1
        if instance.mac_address and refresh_addresses(instance=instance, host=host, running=domain.state == "running"):
            counts["addresses"] += 1
    counts["evacuated_removed"] = _remove_evacuated(host, by_uuid)
    counts["unmanaged"], counts["unmanaged_removed"] = _sync_unmanaged(host, by_uuid)
    # It answered: whatever the capacity refresh said before, the host is reachable again.
    mark_host_answered(host=host)
    return counts
