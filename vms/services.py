"""Write-side business logic of the compute app (services: keyword-only, typed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils.translation import gettext as _

from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit, require_cloud_admin, reserve_quota
from vms import limits
from vms.models import Flavor, Host, Instance, validate_libvirt_uri

FLAVOR_FIELDS = ("name", "vcpus", "ram_mib", "disk_gib", "description", "is_public", "disabled")


def _validate_flavor(values: Mapping[str, Any]) -> None:
    if "name" in values and not str(values["name"]).strip():
        raise ServiceError(_("A flavor needs a name."), field="name")
    for field, minimum in limits.FLAVOR_MINIMUMS.items():
        if field in values and (not isinstance(values[field], int) or values[field] < minimum):
            raise ServiceError(
                _("%(field)s must be a whole number of at least %(minimum)d.") % {"field": field, "minimum": minimum},
                field=field,
            )


@transaction.atomic
def create_flavor(
    *,
    actor,
    name: str,
    vcpus: int,
    ram_mib: int,
    disk_gib: int,
    description: str = "",
    is_public: bool = True,
    disabled: bool = False,
    tenants: Iterable[Tenant] = (),
    ip: str | None = None,
) -> Flavor:
    require_cloud_admin(actor, _("Only cloud admins can change flavors."))
    values = {"name": name.strip(), "vcpus": vcpus, "ram_mib": ram_mib, "disk_gib": disk_gib}
    _validate_flavor(values)
    if Flavor.objects.filter(name=values["name"]).exists():
        raise ConflictError(_("A flavor named “%(name)s” already exists.") % {"name": values["name"]}, field="name")
    flavor = Flavor.objects.create(**values, description=description, is_public=is_public, disabled=disabled)
    flavor.tenants.set(list(tenants))
    record_audit(user=actor, action="flavor.create", target=flavor, ip=ip)
    return flavor


@transaction.atomic
def update_flavor(
    *, actor, flavor: Flavor, tenants: Iterable[Tenant] | None = None, ip: str | None = None, **changes: Any
) -> Flavor:
    require_cloud_admin(actor, _("Only cloud admins can change flavors."))
    unknown = set(changes) - set(FLAVOR_FIELDS)
    if unknown:
        raise ServiceError(_("These fields cannot be changed: %(fields)s.") % {"fields": ", ".join(sorted(unknown))})
    if "name" in changes:
        changes["name"] = str(changes["name"]).strip()
    _validate_flavor(changes)
    if "name" in changes and Flavor.objects.filter(name=changes["name"]).exclude(pk=flavor.pk).exists():
        raise ConflictError(_("A flavor named “%(name)s” already exists.") % {"name": changes["name"]}, field="name")
    for field, value in changes.items():
        setattr(flavor, field, value)
    flavor.save()
    if tenants is not None:
        flavor.tenants.set(list(tenants))
    detail = dict(changes)
    if tenants is not None:
        detail["tenants"] = sorted(t.slug for t in flavor.tenants.all())
    record_audit(user=actor, action="flavor.update", target=flavor, ip=ip, detail=detail)
    return flavor


def delete_flavor(*, actor, flavor: Flavor, ip: str | None = None) -> None:
    require_cloud_admin(actor, _("Only cloud admins can change flavors."))
    try:
        with transaction.atomic():
            record_audit(user=actor, action="flavor.delete", target=flavor, ip=ip)
            flavor.delete()
    except ProtectedError as exc:
        raise ConflictError(
            _("Flavor “%(name)s” is used by instances; disable it instead.") % {"name": flavor.name}
        ) from exc


@transaction.atomic
def ensure_host(*, name: str, uri: str, actor=None) -> Host:
    try:
        validate_libvirt_uri(uri)
    except ValidationError as exc:
        raise ServiceError(exc.messages[0], field="uri") from exc
    host, created = Host.objects.get_or_create(name=name, defaults={"uri": uri})
    if created:
        record_audit(user=actor, action="host.create", target=host)
    return host


def reserve_instances(
    *, actor, tenant: Tenant, flavor: Flavor, names: Sequence[str], ip: str | None = None
) -> list[Instance]:
    """Record the intent to run ``names`` instances of ``flavor`` and reserve their quota, all or nothing.

    This is the first, transactional half of a launch: the quota row is locked,
    the request is checked against usage derived from instance rows, and the
    rows are created in the same transaction, so concurrent launches can never
    overshoot the quota. Placement and the boot itself are queued on commit by
    the launch service of "Instances on libvirt".
    """
    if not names:
        raise ServiceError(_("Launch at least one instance."), field="count")
    if len(set(names)) != len(names):
        raise ServiceError(_("Instance names must be unique."), field="name")
    if not Flavor.objects.usable_by(tenant).filter(pk=flavor.pk).exists():
        raise ServiceError(
            _("Flavor “%(name)s” is not available to this tenant.") % {"name": flavor.name}, field="flavor"
        )
    count = len(names)
    try:
        with transaction.atomic():
            reserve_quota(
                tenant=tenant,
                request={
                    "instances": count,
                    "vcpus": count * flavor.vcpus,
                    "ram_mib": count * flavor.ram_mib,
                    "disk_gib": count * flavor.disk_gib,
                },
            )
            taken = set(Instance.objects.filter(tenant=tenant, name__in=names).values_list("name", flat=True))
            if taken:
                raise ConflictError(
                    _("These instance names are taken: %(names)s.") % {"names": ", ".join(sorted(taken))}, field="name"
                )
            instances = [
                Instance.objects.create(
                    tenant=tenant,
                    owner=actor,
                    name=name,
                    flavor=flavor,
                    vcpus=flavor.vcpus,
                    ram_mib=flavor.ram_mib,
                    disk_gib=flavor.disk_gib,
                )
                for name in names
            ]
            for instance in instances:
                record_audit(user=actor, action="instance.create", target=instance, tenant=tenant, ip=ip)
    except IntegrityError as exc:
        raise ConflictError(_("An instance with that name was created at the same time; pick another name.")) from exc
    return instances
