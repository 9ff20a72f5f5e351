"""Write-side business logic of the compute app (services: keyword-only, typed)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils.translation import gettext as _

from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit, reserve_quota
from vms.models import Flavor, Host, Instance

FLAVOR_FIELDS = ("name", "vcpus", "ram_mib", "disk_gib", "description", "is_public", "disabled")


def _validate_flavor(values: Mapping[str, Any]) -> None:
    if "name" in values and not str(values["name"]).strip():
        raise ServiceError(_("A flavor needs a name."), field="name")
    minimums = {"vcpus": 1, "ram_mib": 16, "disk_gib": 1}
    for field, minimum in minimums.items():
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
    from django.core.exceptions import ValidationError

    from vms.models import validate_libvirt_uri

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


def detect_virt_type(*, host: Host, probe_image: Path, actor=None, timeout: float = 60.0) -> str:
    """Choose the host's virtualization type by proof: ``kvm`` only if a guest really boots under KVM there.

    ``probe_image`` is a small bootable disk whose serial console prints ``LABCLOUD-TINY-BOOTED``
    (the tiny guest of ``scripts/build_test_media.sh``). It is copied into the host's pool, booted
    once under KVM (CPU model from the host's CPU mode; QEMU's default model stands in for
    host-model), and removed again. A host where /dev/kvm exists but cannot boot a kernel (nested
    paravirtual KVM) ends up with ``qemu`` (TCG). Stores and returns the choice.
    """
    from portal.backends.base import BackendError
    from portal.backends.libvirt.driver import LibvirtDriver

    driver = LibvirtDriver(host.uri)
    volume = f"{settings.LABCLOUD_DOMAIN_PREFIX}probe-{secrets.token_hex(4)}.qcow2"
    cpu_mode = host.cpu_mode if host.cpu_mode != Host.CpuMode.DEFAULT else Host.CpuMode.HOST_MODEL
    try:
        driver.upload_file(host.storage_pool, volume, probe_image)
        boots = driver.probe_kvm(
            pool=host.storage_pool,
            disk_volume=volume,
            cpu_mode=cpu_mode,
            timeout=timeout,
            name_prefix=f"{settings.LABCLOUD_DOMAIN_PREFIX}probe-",
        )
    except BackendError as exc:
        raise ServiceError(exc.message) from exc
    finally:
        with contextlib.suppress(BackendError):
            driver.delete_volume(host.storage_pool, volume)
    virt_type = Host.VirtType.KVM if boots else Host.VirtType.QEMU
    Host.objects.filter(pk=host.pk).update(virt_type=virt_type)
    host.virt_type = virt_type
    record_audit(user=actor, action="host.detect_virt_type", target=host, detail={"virt_type": virt_type})
    return virt_type
