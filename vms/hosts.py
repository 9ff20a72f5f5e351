"""Host services: capacity refresh, observed instance state, full reconcile and adoption of unmanaged domains.

The hypervisor holds fact, the database holds intent: these services copy fact into rows. The
watcher (``vms.watcher``) calls them from domain events and on a timer; nothing here runs on a
page load. Services are keyword-only and typed; they never raise for an unreachable host except
``reconcile_host``, which marks the host down and re-raises so the caller can back off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
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
from vms.models import CloudProject, Flavor, Host, Instance, PlacementRule, UnmanagedDomain

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
    if host.is_cloud:  # a missed cloud check must fail loudly, not open the local libvirt ("" = default URI)
        raise BackendError(_("%(host)s is an OpenStack cloud, not a libvirt host.") % {"host": host.name})
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


def _validation_error(exc: ValidationError) -> ServiceError:
    """The first message of a model validation error, as a ServiceError naming its field."""
    if hasattr(exc, "error_dict"):
        field, errors = next(iter(exc.message_dict.items()))
        return ServiceError(errors[0], field=None if field == NON_FIELD_ERRORS else field)
    return ServiceError(exc.messages[0])


def _merged_credentials(*, stored: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """The login after an edit: given values replace stored ones; blank ones keep them.

    A secret stays only with the login it belongs to: a new username (or application credential id)
    drops the stored password (or secret), and switching between a password login and an application
    credential drops the other method's fields.
    """
    merged = dict(stored)
    if given.get("application_credential_id"):
        for key in ("username", "password", "project_name"):
            merged.pop(key, None)
        if given["application_credential_id"] != stored.get("application_credential_id"):
            merged.pop("application_credential_secret", None)
    if given.get("username"):
        for key in ("application_credential_id", "application_credential_secret"):
            merged.pop(key, None)
        if given["username"] != stored.get("username"):
            merged.pop("password", None)
    merged.update(given)
    return merged


def _check_login(*, host: Host, login: dict[str, str]) -> None:
    """A cloud without clouds.yaml entry logs in with a password or an application credential, complete."""
    if host.cloud_name:
        return  # clouds.yaml gives the rest; stored values only override it
    password_login = all(login.get(k) for k in ("username", "password", "project_name"))
    app_credential = all(login.get(k) for k in ("application_credential_id", "application_credential_secret"))
    if password_login or app_credential:
        return
    if login or host.project_mode == Host.ProjectMode.MANAGED:
        raise ServiceError(
            _(
                "Give a complete login: username, password and project name, or an application credential id "
                "and secret (or a cloud name from clouds.yaml)."
            ),
            field="credentials",
        )


def prepare_host(
    *,
    host: Host | None,
    values: Mapping[str, Any],
    credentials: Mapping[str, str] | None = None,
    clear_credentials: bool = False,
) -> Host:
    """``host`` (a new one when None) with ``values`` and the login applied and checked, not saved.

    Raises ServiceError (ConflictError for a taken name) when the input is refused. ``credentials``
    (keys of ``vms.cloud.CREDENTIAL_FIELDS``) are write-only: omitted or blank values keep what is
    stored, given ones replace it (see ``_merged_credentials``); ``clear_credentials=True`` forgets
    the stored login first (a managed cloud without a cloud name still needs a complete login).
    """
    from vms import cloud

    created = host is None
    host = host if host is not None else Host()
    if not created and "kind" in values and values["kind"] != host.kind:
        raise ServiceError(_("The kind of a host cannot change; add a new host instead."), field="kind")
    unknown = sorted(set(credentials or {}) - set(cloud.CREDENTIAL_FIELDS))
    if unknown:
        raise ServiceError(
            _("Unknown credential fields: %(fields)s.") % {"fields": ", ".join(unknown)}, field="credentials"
        )
    given = {k: str(v).strip() for k, v in (credentials or {}).items() if v is not None and str(v).strip()}
    name = values.get("name", host.name)
    if Host.objects.filter(name=name).exclude(pk=host.pk).exists():
        raise ConflictError(_("A host named “%(name)s” already exists.") % {"name": name}, field="name")
    for field, value in values.items():
        setattr(host, field, value)
    try:
        host.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    if host.kind != Host.Kind.OPENSTACK:
        if given:
            raise ServiceError(_("A libvirt host has no cloud credentials."), field="credentials")
        if clear_credentials:
            host.credentials = ""
    elif clear_credentials or given:
        try:
            stored = {} if clear_credentials else cloud.decrypt_credentials(host)
        except BackendError:
            stored = {}  # unreadable (the key changed): the new login replaces it
        login = _merged_credentials(stored=stored, given=given)
        _check_login(host=host, login=login)
        if clear_credentials or login != stored:
            host.credentials = cloud.encrypt_credentials(login)
    else:
        try:
            _check_login(host=host, login=cloud.decrypt_credentials(host))
        except BackendError as exc:
            raise ServiceError(exc.message, field="credentials") from exc
    return host


def save_host(
    *,
    actor,
    host: Host | None,
    values: Mapping[str, Any],
    credentials: Mapping[str, str] | None = None,
    clear_credentials: bool = False,
    ip: str | None = None,
    via: str = "api",
) -> Host:
    """Create or change a libvirt host or an OpenStack cloud (cloud admins); a taken name is a conflict.

    ``values`` are model fields (already checked by the caller's form or serializer); the model's own
    rules (``Host.clean``) and the login rules run here too (``prepare_host``: write-only credentials,
    blank keeps, ``clear_credentials`` forgets). Credentials are stored encrypted and never written to
    the audit trail (it says only whether they changed). Invalid input changes nothing.
    """
    from vms import cloud

    if not is_cloud_admin(actor):
        raise ServiceError(_("Only cloud admins can change hosts."))
    created = host is None
    old_credentials = host.credentials if host is not None else ""
    try:
        with transaction.atomic():
            host = prepare_host(host=host, values=values, credentials=credentials, clear_credentials=clear_credentials)
            host.save()
            detail: dict[str, Any] = {"fields": sorted(values), "via": via}
            if host.credentials != old_credentials:
                detail["credentials"] = "changed" if host.credentials else "cleared"
            record_audit(
                user=actor,
                action="host.create" if created else "host.update",
                target=host,
                ip=ip,
                detail=detail,
            )
    except IntegrityError as exc:
        raise ConflictError(_("A host with that name was created at the same time.")) from exc
    if not created and host.is_cloud:
        # A changed login, URL or region takes effect on the next call (the driver keeps a token).
        saved = host
        transaction.on_commit(lambda: cloud.forget_driver(saved))
    return host


def delete_host(*, actor, host: Host, ip: str | None = None) -> None:
    """Remove a host or cloud no instance is placed on (its unmanaged domains, image copies, cloud projects,
    cloud flavors go with it; nothing is deleted inside the cloud itself). Refused while instances are placed
    there or placement rules send instances there."""
    pk, is_cloud = host.pk, host.is_cloud
    rules = PlacementRule.objects.filter(host=host).count()
    if rules and not Instance.objects.filter(host=host).exists():  # with instances: the message below
        raise ConflictError(
            _("%(count)d placement rule(s) send instances to “%(name)s”; change or delete them first.")
            % {"count": rules, "name": host.name}
        )
    try:
        with transaction.atomic():
            record_audit(user=actor, action="host.delete", target=host, ip=ip, detail={"kind": host.kind})
            host.delete()
    except ProtectedError as exc:
        raise ConflictError(
            _("Host “%(name)s” still has instances; move or delete them, or disable the host.") % {"name": host.name}
        ) from exc
    if is_cloud:
        from vms import cloud

        transaction.on_commit(lambda: cloud.forget_driver(Host(pk=pk)))


def check_host(*, host: Host) -> Host:
    """Ask a host or a cloud now: libvirt capacity (``refresh_host``) or an OpenStack login (``verify_cloud``).

    An unreachable host or cloud is marked DOWN with the error as the reason.
    """
    if host.is_cloud:
        from vms import cloud

        return cloud.verify_cloud(host=host)
    return refresh_host(host=host)


# ---------------------------------------------------------------- cloud projects and placement rules (cloud admins)


def _require_cloud_admin(actor, message: str) -> None:
    if not is_cloud_admin(actor):
        raise ServiceError(message)


def map_cloud_project(*, actor, host: Host, tenant: Tenant, project_id: str, ip: str | None = None) -> CloudProject:
    """Map a tenant to an existing Keystone project on a cloud (or change the mapping).

    A mapping made here is not "managed": the portal never deletes that project. A project already
    mapped to another tenant on the cloud is a conflict, and so is moving a tenant that has instances
    on the cloud (their servers live in the old project).
    """
    _require_cloud_admin(actor, _("Only cloud admins can map tenants to cloud projects."))
    if not host.is_cloud:
        raise ServiceError(_("%(host)s is not an OpenStack cloud.") % {"host": host.name}, field="host")
    project_id = (project_id or "").strip()
    if not project_id:
        raise ServiceError(_("Give the id of an existing project."), field="project_id")
    try:
        with transaction.atomic():
            if CloudProject.objects.filter(host=host, project_id=project_id).exclude(tenant=tenant).exists():
                raise ConflictError(
                    _("Project %(project)s is already mapped to another tenant on %(host)s.")
                    % {"project": project_id, "host": host.name},
                    field="project_id",
                )
            row = CloudProject.objects.select_for_update().filter(host=host, tenant=tenant).first()
            created = row is None
            if row is not None and row.project_id == project_id:
                return row
            if row is not None and Instance.objects.filter(host=host, tenant=tenant).exists():
                raise ConflictError(
                    _("Tenant “%(tenant)s” has instances on %(host)s in project %(project)s; delete them first.")
                    % {"tenant": tenant.name, "host": host.name, "project": row.project_id},
                    field="project_id",
                )
            if row is None:
                row = CloudProject(host=host, tenant=tenant)
            old = row.project_id
            row.project_id, row.managed, row.quota_synced_at, row.quota_error = project_id, False, None, ""
            row.save()
            record_audit(
                user=actor,
                action="cloudproject.create" if created else "cloudproject.update",
                target=row,
                tenant=tenant,
                ip=ip,
                detail={"cloud": host.name, "project_id": project_id, **({"old_project_id": old} if old else {})},
            )
            host_id, tenant_id = host.pk, tenant.pk
            transaction.on_commit(lambda: _push_quota_later(host_id=host_id, tenant_id=tenant_id))
    except IntegrityError as exc:
        raise ConflictError(_("The tenant or the project was mapped on this cloud at the same time.")) from exc
    return row


def _push_quota_later(*, host_id: int, tenant_id: int) -> None:
    """A newly mapped project gets the tenant's quota, as a managed one does when it is made."""
    from vms.tasks import push_quota_to_task

    push_quota_to_task.delay(host_id, tenant_id)


def unmap_cloud_project(*, actor, project: CloudProject, ip: str | None = None) -> None:
    """Forget a tenant's project on a cloud (the project itself stays); refused while it has instances there."""
    _require_cloud_admin(actor, _("Only cloud admins can change cloud projects."))
    with transaction.atomic():
        if Instance.objects.filter(host_id=project.host_id, tenant_id=project.tenant_id).exists():
            raise ConflictError(
                _("Tenant “%(tenant)s” still has instances on this cloud; delete them first.")
                % {"tenant": project.tenant.name}
            )
        record_audit(
            user=actor,
            action="cloudproject.delete",
            target=project,
            tenant=project.tenant,
            ip=ip,
            detail={"cloud": project.host.name, "project_id": project.project_id},
        )
        project.delete()


def save_placement_rule(
    *, actor, rule: PlacementRule | None, values: dict, ip: str | None = None, via: str = "api"
) -> PlacementRule:
    """Create or change a placement rule; a second rule for the same tenant and flavor is a conflict."""
    _require_cloud_admin(actor, _("Only cloud admins can change placement rules."))
    created = rule is None
    rule = rule if rule is not None else PlacementRule()
    for field, value in values.items():
        setattr(rule, field, value)
    try:
        rule.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    try:
        with transaction.atomic():
            if PlacementRule.objects.filter(tenant=rule.tenant, flavor=rule.flavor).exclude(pk=rule.pk).exists():
                raise ConflictError(_("There is already a rule for this tenant and flavor; change that one."))
            rule.save()
            record_audit(
                user=actor,
                action="placementrule.create" if created else "placementrule.update",
                target=rule,
                tenant=rule.tenant,
                ip=ip,
                detail={"fields": sorted(values), "host": rule.host.name, "via": via},
            )
    except IntegrityError as exc:
        raise ConflictError(_("The same rule was created at the same time.")) from exc
    return rule


def delete_placement_rule(*, actor, rule: PlacementRule, ip: str | None = None, via: str = "api") -> None:
    _require_cloud_admin(actor, _("Only cloud admins can change placement rules."))
    with transaction.atomic():
        record_audit(
            user=actor, action="placementrule.delete", target=rule, tenant=rule.tenant, ip=ip, detail={"via": via}
        )
        rule.delete()
