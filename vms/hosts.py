"""Host services (cloud admins): add, change, check and remove hosts and clouds; adopt unmanaged domains;
map tenants to cloud projects; placement rules.

What differs between a libvirt host and a cloud (its settings, its login, how it is asked) is the
host's adapter's business (``vms.compute``); the observed state of hosts and instances is written by
the adapters and the watcher (``vms.compute.state``), never on a page load.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils.translation import gettext as _

from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit, require_cloud_admin, reserve_quota
from vms import realtime
from vms.compute import Capability, compute_for, host_can
from vms.compute.state import instance_state_of
from vms.models import CloudProject, Flavor, Host, Instance, PlacementRule, UnmanagedDomain
from vms.tasks import push_quota_to_task

log = logging.getLogger(__name__)


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
    transaction. The instance's sizes (what its quota and its host count) are the flavor's, or the
    domain's own where it has more (its ``<memory>`` and vCPUs, as the watcher last saw them): a
    domain's memory cannot be made smaller by choosing a small flavor.
    """
    require_cloud_admin(actor, _("Only cloud admins may adopt domains."))
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
            vcpus, ram_mib = max(flavor.vcpus, row.vcpus), max(flavor.ram_mib, row.memory_mib)
            reserve_quota(
                tenant=tenant,
                request={"instances": 1, "vcpus": vcpus, "ram_mib": ram_mib, "disk_gib": flavor.disk_gib},
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
                vcpus=vcpus,
                ram_mib=ram_mib,
                disk_gib=flavor.disk_gib,
                host=row.host,
                domain_name=row.name,
                adopted=True,
                state=instance_state_of(row.state, Instance.State.SHUTOFF),
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


def _validation_error(exc: ValidationError) -> ServiceError:
    """The first message of a model validation error, as a ServiceError naming its field."""
    if hasattr(exc, "error_dict"):
        field, errors = next(iter(exc.message_dict.items()))
        return ServiceError(errors[0], field=None if field == NON_FIELD_ERRORS else field)
    return ServiceError(exc.messages[0])


def prepare_host(
    *,
    host: Host | None,
    values: Mapping[str, Any],
    credentials: Mapping[str, str] | None = None,
    clear_credentials: bool = False,
) -> Host:
    """``host`` (a new one when None) with ``values`` and the login applied and checked, not saved.

    Raises ServiceError (ConflictError for a taken name) when the input is refused. ``credentials``
    (a cloud's login: ``vms.compute.openstack.login.CREDENTIAL_FIELDS``) are write-only: omitted or blank
    values keep what is stored, given ones replace it; ``clear_credentials=True`` forgets the stored login
    first. The host's adapter applies them: a libvirt host has none, a cloud needs a complete login.
    """
    created = host is None
    host = host if host is not None else Host()
    if not created and "kind" in values and values["kind"] != host.kind:
        raise ServiceError(_("The kind of a host cannot change; add a new host instead."), field="kind")
    name = values.get("name", host.name)
    if Host.objects.filter(name=name).exclude(pk=host.pk).exists():
        raise ConflictError(_("A host named “%(name)s” already exists.") % {"name": name}, field="name")
    for field, value in values.items():
        setattr(host, field, value)
    try:
        host.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    adapter = compute_for(host)
    adapter.validate_settings(host)
    adapter.apply_login(host, credentials=dict(credentials or {}), clear=clear_credentials)
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
    require_cloud_admin(actor, _("Only cloud admins can change hosts."))
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
    if not created:  # a changed login, URL or region takes effect on the next call
        saved = host
        transaction.on_commit(lambda: compute_for(saved).forget(saved))
    return host


def delete_host(*, actor, host: Host, ip: str | None = None) -> None:
    """Remove a host or cloud no instance is placed on (its unmanaged domains, image copies, cloud projects,
    cloud flavors go with it; nothing is deleted inside the cloud itself). Refused while instances are placed
    there or placement rules send instances there."""
    require_cloud_admin(actor, _("Only cloud admins can change hosts."))
    gone = Host(pk=host.pk, kind=host.kind)
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
    transaction.on_commit(lambda: compute_for(gone).forget(gone))


def check_host(*, host: Host) -> Host:
    """Ask a host or a cloud now (a libvirt host its capacity, a cloud a login): UP, or DOWN with the reason."""
    return compute_for(host).check_host(host)


# ---------------------------------------------------------------- cloud projects and placement rules (cloud admins)


def map_cloud_project(*, actor, host: Host, tenant: Tenant, project_id: str, ip: str | None = None) -> CloudProject:
    """Map a tenant to an existing Keystone project on a cloud (or change the mapping).

    A mapping made here is not "managed": the portal never deletes that project. A project already
    mapped to another tenant on the cloud is a conflict, and so is moving a tenant that has instances
    on the cloud (their servers live in the old project).
    """
    require_cloud_admin(actor, _("Only cloud admins can map tenants to cloud projects."))
    if not host_can(host, Capability.TENANT_PROJECTS):
        raise ServiceError(_("%(host)s has no tenant projects.") % {"host": host.name}, field="host")
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
    push_quota_to_task.delay(host_id, tenant_id)


def unmap_cloud_project(*, actor, project: CloudProject, ip: str | None = None) -> None:
    """Forget a tenant's project on a cloud (the project itself stays); refused while it has instances there."""
    require_cloud_admin(actor, _("Only cloud admins can change cloud projects."))
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
    require_cloud_admin(actor, _("Only cloud admins can change placement rules."))
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
    require_cloud_admin(actor, _("Only cloud admins can change placement rules."))
    with transaction.atomic():
        record_audit(
            user=actor, action="placementrule.delete", target=rule, tenant=rule.tenant, ip=ip, detail={"via": via}
        )
        rule.delete()
