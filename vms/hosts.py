"""Host services: capacity refresh, observed instance state, full reconcile and adoption of unmanaged domains.

The hypervisor holds fact, the database holds intent: these services copy fact into rows. The
watcher (``vms.watcher``) calls them from domain events and on a timer; nothing here runs on a
page load. Services are keyword-only and typed; they never raise for an unreachable host except
``reconcile_host``, which marks the host down and re-raises so the caller can back off.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from portal.access import is_cloud_admin
from portal.backends.base import BackendError, InstanceState, NotFound
from portal.backends.libvirt.driver import LibvirtDriver
from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit, reserve_quota
from vms import realtime
from vms.models import Flavor, Host, Instance, UnmanagedDomain

log = logging.getLogger(__name__)


# Transient domains the portal itself creates briefly (KVM boot probes): never instances, never unmanaged.
def ignored_prefixes() -> tuple[str, ...]:
    """Transient domains of the KVM boot probe (``detect_virt_type``), whatever the naming prefix."""
    return ("labcloud-probe-", f"{settings.LABCLOUD_DOMAIN_PREFIX}probe-")


# Driver power state (portal.backends.base.POWER_STATES) → Instance.State; "building"/"unknown" change nothing.
OBSERVED_STATES = {
    "running": Instance.State.RUNNING,
    "paused": Instance.State.PAUSED,
    "shutoff": Instance.State.SHUTOFF,
    "crashed": Instance.State.CRASHED,
}

HOST_CAPACITY_FIELDS = [
    "cpus",
    "memory_mib",
    "free_memory_mib",
    "pool_capacity",
    "pool_available",
    "libvirt_version",
    "state",
    "state_reason",
    "last_seen",
]

REASON_MAX = Instance._meta.get_field("state_reason").max_length


def driver_for(host: Host) -> LibvirtDriver:
    return LibvirtDriver(host.uri)


def ignored_domain(name: str) -> bool:
    return name.startswith(ignored_prefixes())


def observed_reason(state: InstanceState) -> str:
    """What a row shows as its state reason for a driver state: nothing while running, else libvirt's reason."""
    return "" if state.state == "running" or state.reason == "unknown" else state.reason


# ---------------------------------------------------------------- hosts


def mark_host_down(*, host: Host, reason: str) -> Host:
    """Record that the host did not answer: DOWN, with the error as the reason."""
    host.state = Host.State.DOWN
    host.state_reason = reason[: Host._meta.get_field("state_reason").max_length]
    host.save(update_fields=["state", "state_reason"])
    return host


def refresh_host(*, host: Host) -> Host:
    """Ask the host for its capacity and store it; an unreachable host becomes DOWN with the error as reason."""
    try:
        capacity = driver_for(host).capacity(host.storage_pool or None)
    except BackendError as exc:
        log.info("host %s is down: %s", host.name, exc.message)
        return mark_host_down(host=host, reason=exc.message)
    host.cpus = capacity.cpus
    host.memory_mib = capacity.memory_mib
    host.free_memory_mib = capacity.free_memory_mib
    host.pool_capacity = capacity.pool_capacity
    host.pool_available = capacity.pool_available
    host.libvirt_version = capacity.libvirt_version
    host.state = Host.State.UP if host.enabled else Host.State.DISABLED
    host.state_reason = ""
    host.last_seen = timezone.now()
    host.save(update_fields=HOST_CAPACITY_FIELDS)
    return host


# ---------------------------------------------------------------- instance state


def _owned_by_a_task() -> Q:
    """Rows the watcher leaves alone: being deleted, or being built by the launch task."""
    return Q(state=Instance.State.DELETING) | (Q(state=Instance.State.BUILDING) & ~Q(task=""))


def _set_state(*, instance: Instance, state: str, reason: str) -> bool:
    """Conditional UPDATE (on the state we read): never overwrites a change a lifecycle task made meanwhile."""
    reason = reason[:REASON_MAX]
    if instance.state == state and instance.state_reason == reason:
        return False
    if instance.state == Instance.State.DELETING or (instance.state == Instance.State.BUILDING and instance.task):
        return False
    now = timezone.now()
    updated = (
        Instance.objects.filter(pk=instance.pk, state=instance.state, task=instance.task)
        .exclude(_owned_by_a_task())
        .update(state=state, state_reason=reason, updated_at=now)
    )
    if not updated:
        return False
    instance.state, instance.state_reason, instance.updated_at = state, reason, now
    realtime.instance_changed(instance)
    return True


def apply_observed_state(*, instance: Instance, state: str, reason: str = "") -> bool:
    """Copy a driver power state into the row; True when the row changed (and the change was published).

    Rows being deleted, or being built while a launch task owns them, are left alone; "building"
    and "unknown" driver states change nothing.
    """
    target = OBSERVED_STATES.get(state)
    if target is None:
        return False
    return _set_state(instance=instance, state=target, reason=reason)


def mark_vanished(*, instance: Instance) -> bool:
    """The instance's domain is gone from its host: the row goes to ERROR (unless a task owns it)."""
    return _set_state(instance=instance, state=Instance.State.ERROR, reason=_("The domain vanished from the host."))


def refresh_addresses(*, instance: Instance, host: Host, running: bool) -> bool:
    """Store the instance's IP addresses (DHCP leases on its networks; none when not running); True if changed."""
    try:
        addresses = driver_for(host).addresses(str(instance.uuid)) if running else []
    except BackendError:
        return False
    if addresses == instance.addresses:
        return False
    Instance.objects.filter(pk=instance.pk).update(addresses=addresses, updated_at=timezone.now())
    instance.addresses = addresses
    realtime.instance_changed(instance)
    return True


def reconcile_host(*, host: Host) -> dict[str, int]:
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

    for instance in Instance.objects.filter(host=host).exclude(_owned_by_a_task()):
        domain = by_uuid.get(str(instance.uuid))
        if domain is None:
            if instance.state != Instance.State.ERROR and mark_vanished(instance=instance):
                counts["vanished"] += 1
        else:
            if apply_observed_state(instance=instance, state=domain.state, reason=observed_reason(domain)):
                counts["changed"] += 1
            if instance.mac_address and refresh_addresses(
                instance=instance, host=host, running=domain.state == "running"
            ):
                counts["addresses"] += 1

    owned = {str(u) for u in Instance.objects.filter(uuid__in=list(by_uuid)).values_list("uuid", flat=True)}
    unowned = {uuid: d for uuid, d in by_uuid.items() if uuid not in owned}
    counts["unmanaged"] = len(unowned)
    existing = {str(row.uuid): row for row in UnmanagedDomain.objects.filter(host=host)}
    stale = [row.pk for uuid, row in existing.items() if uuid not in unowned]
    if stale:
        counts["unmanaged_removed"] = UnmanagedDomain.objects.filter(pk__in=stale).delete()[0]
    now = timezone.now()
    new, changed = [], []
    for uuid, domain in unowned.items():
        values = {"name": domain.name, "state": domain.state, "vcpus": domain.vcpus, "memory_mib": domain.memory_mib}
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
    if host.state != Host.State.UP and host.enabled:
        # It answered: whatever refresh_host said before, the host is reachable again.
        Host.objects.filter(pk=host.pk).update(state=Host.State.UP, state_reason="", last_seen=now)
        host.state, host.state_reason, host.last_seen = Host.State.UP, "", now
    return counts


# ---------------------------------------------------------------- adoption


def adopt_domain(
    *,
    actor,
    unmanaged: UnmanagedDomain,
    tenant: Tenant,
    flavor: Flavor,
    name: str | None = None,
    ip: str | None = None,
) -> Instance:
    """Turn an unmanaged domain into an instance of ``tenant`` (cloud admins only), reserving its quota.

    All or nothing: quota reserved, the instance row created and the unmanaged row removed in one
    transaction. The instance's sizes come from ``flavor`` (they are what its quota counts).
    """
    if not is_cloud_admin(actor):
        raise ServiceError(_("Only cloud admins may adopt domains."))
    name = (name if name is not None else unmanaged.name).strip()
    max_name = Instance._meta.get_field("name").max_length
    if not name or len(name) > max_name:
        raise ServiceError(
            _("An instance name has 1 to %(max)d characters; give one for this domain.") % {"max": max_name},
            field="name",
        )
    if not tenant.enabled:
        raise ServiceError(_("Tenant “%(name)s” is disabled.") % {"name": tenant.name}, field="tenant")
    try:
        with transaction.atomic():
            row = UnmanagedDomain.objects.select_for_update().filter(pk=unmanaged.pk).select_related("host").first()
            if row is None:
                raise ConflictError(_("This domain was adopted or has vanished meanwhile."))
            if Instance.objects.filter(uuid=row.uuid).exists():
                raise ConflictError(_("An instance already owns this domain."))
            reserve_quota(
                tenant=tenant,
                request={"instances": 1, "vcpus": flavor.vcpus, "ram_mib": flavor.ram_mib, "disk_gib": flavor.disk_gib},
            )
            if Instance.objects.filter(tenant=tenant, name=name).exists():
                raise ConflictError(
                    _("Tenant “%(tenant)s” already has an instance named “%(name)s”.")
                    % {"tenant": tenant.name, "name": name},
                    field="name",
                )
            instance = Instance.objects.create(
                uuid=row.uuid,
                tenant=tenant,
                owner=actor,
                name=name,
                flavor=flavor,
                vcpus=flavor.vcpus,
                ram_mib=flavor.ram_mib,
                disk_gib=flavor.disk_gib,
                host=row.host,
                domain_name=row.name,
                adopted=True,
                state=OBSERVED_STATES.get(row.state, Instance.State.SHUTOFF),
                desired_power_state=(
                    Instance.PowerState.RUNNING if row.state in {"running", "paused"} else Instance.PowerState.STOPPED
                ),
            )
            row.delete()
            record_audit(
                user=actor,
                action="instance.adopt",
                target=instance,
                tenant=tenant,
                ip=ip,
                detail={"host": row.host.name, "domain": row.name, "uuid": str(row.uuid), "flavor": flavor.name},
            )
            realtime.instance_changed(instance)
    except IntegrityError as exc:  # a concurrent launch or adoption took the name or UUID
        raise ConflictError(_("The instance could not be created: its name or UUID is taken.")) from exc
    return instance


def domain_state(*, host: Host, uuid: str) -> InstanceState | None:
    """The domain's current state on its host; None when it no longer exists there."""
    try:
        return driver_for(host).state(uuid)
    except NotFound:
        return None


def counts_summary(counts: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items())


def save_host(*, actor, host: Host | None, values: dict, ip: str | None = None) -> Host:
    """Create or change a host (values already validated by HostSerializer); a taken name is a conflict."""
    created = host is None
    host = host if host is not None else Host()
    name = values.get("name", host.name)
    try:
        with transaction.atomic():
            if Host.objects.filter(name=name).exclude(pk=host.pk).exists():
                raise ConflictError(_("A host named “%(name)s” already exists.") % {"name": name}, field="name")
            for field, value in values.items():
                setattr(host, field, value)
            host.save()
            record_audit(
                user=actor,
                action="host.create" if created else "host.update",
                target=host,
                ip=ip,
                detail={"fields": sorted(values), "via": "api"},
            )
    except IntegrityError as exc:
        raise ConflictError(_("A host with that name was created at the same time.")) from exc
    return host


def delete_host(*, actor, host: Host, ip: str | None = None) -> None:
    """Remove a host no instance is placed on (its unmanaged-domain rows and image copies go with it)."""
    try:
        with transaction.atomic():
            record_audit(user=actor, action="host.delete", target=host, ip=ip)
            host.delete()
    except ProtectedError as exc:
        raise ConflictError(
            _("Host “%(name)s” still has instances; move or delete them, or disable the host.") % {"name": host.name}
        ) from exc
