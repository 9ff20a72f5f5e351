"""The portal's tenants, quotas and flavors as they are mirrored in an OpenStack cloud.

What a tenant owns in the cloud lives in its Keystone project (``CloudProject``): created by the
portal (project mode "managed") or mapped by an admin to an existing project ("existing"). The
portal's objects are mirrored lazily and remembered, so a launch costs few API calls:

* flavors: ``cloud_flavor`` creates (or, when the portal flavor changed, recreates) the Nova flavor,
  private flavors with access for the projects of the tenants that may use them (``CloudFlavor``);
* quotas: ``push_quota`` sets the project's Nova compute quota (instances, cores, RAM) to the
  tenant's portal quota and reads it back.

Nothing here talks to the database while holding a lock across a cloud call.
"""

from __future__ import annotations

import hashlib
import json
import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from portal.backends.base import BackendError
from portal.models import Tenant
from portal.services import ServiceError, ensure_quota
from portal.texts import said
from vms.compute.openstack.login import cloud_driver
from vms.models import CloudFlavor, CloudProject, Flavor, Host

log = logging.getLogger(__name__)


def managed_project_name(tenant: Tenant) -> str:
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}{tenant.slug}"


def project_for(*, host: Host, tenant: Tenant) -> str:
    """The tenant's project id on the cloud; created (managed mode) on first use, with the quota pushed."""
    found = CloudProject.objects.filter(host=host, tenant=tenant).first()
    if found is not None:
        return found.project_id
    if host.project_mode != Host.ProjectMode.MANAGED:
        raise ServiceError(
            said(
                gettext_noop(
                    "Tenant “%(tenant)s” is not mapped to a project on cloud %(host)s; an administrator must map it."
                ),
                tenant=tenant.name,
                host=host.name,
            )
        )
    info = cloud_driver(host).ensure_project(
        name=managed_project_name(tenant),
        description=_("labcloud tenant %(name)s") % {"name": tenant.name},
        domain=host.project_domain or "Default",
    )
    try:
        with transaction.atomic():
            CloudProject.objects.create(host=host, tenant=tenant, project_id=info.id, managed=True)
    except IntegrityError:
        pass  # a concurrent launch of the same tenant recorded it first: the same project
    push_quota_to(host=host, tenant=tenant)
    return CloudProject.objects.get(host=host, tenant=tenant).project_id


def delete_projects(*, projects: list[tuple[int, str]]) -> None:
    """Remove managed projects of a deleted tenant (their servers are gone: a tenant with instances stays)."""
    for host_id, project_id in projects:
        host = Host.objects.filter(pk=host_id).first()
        if host is None:
            continue
        try:
            driver = cloud_driver(host)
            driver.delete_project(project_id=project_id)
            driver.forget_compute_quota(project_id=project_id)
        except BackendError as exc:
            log.warning("could not delete project %s on %s: %s", project_id, host.name, exc.message)


def _nova_limits(tenant: Tenant) -> dict[str, int]:
    quota = ensure_quota(tenant=tenant)
    return {"instances": quota.instances, "cores": quota.vcpus, "ram_mib": quota.ram_mib}


def push_quota_to(*, host: Host, tenant: Tenant) -> bool:
    """Set the project's Nova compute quota to the tenant's quota and read it back; the outcome is recorded."""
    project = CloudProject.objects.filter(host=host, tenant=tenant).first()
    if project is None:
        return False
    try:
        cloud_driver(host).set_compute_quota(project_id=project.project_id, **_nova_limits(tenant))
    except BackendError as exc:
        log.warning("quota push to %s for %s failed: %s", host.name, tenant.slug, exc.message)
        CloudProject.objects.filter(pk=project.pk).update(quota_error=exc.message[:255])
        return False
    CloudProject.objects.filter(pk=project.pk).update(quota_synced_at=timezone.now(), quota_error="")
    return True


def push_quota(*, tenant: Tenant) -> dict[str, bool]:
    """Push the tenant's quota to every cloud it has a project on: {cloud name: pushed}."""
    results = {}
    for project in CloudProject.objects.filter(tenant=tenant).select_related("host"):
        results[project.host.name] = push_quota_to(host=project.host, tenant=tenant)
    return results


def nova_flavor_name(flavor: Flavor) -> str:
    return f"{settings.LABCLOUD_DOMAIN_PREFIX}{flavor.name}"


def _flavor_projects(host: Host, flavor: Flavor) -> list[str]:
    if flavor.is_public:
        return []
    return sorted(
        CloudProject.objects.filter(host=host, tenant__in=flavor.tenants.all()).values_list("project_id", flat=True)
    )


def _signature(flavor: Flavor, projects: list[str]) -> str:
    raw = json.dumps([flavor.name, flavor.vcpus, flavor.ram_mib, flavor.disk_gib, flavor.is_public, projects])
    return hashlib.sha256(raw.encode()).hexdigest()


def cloud_flavor(*, host: Host, flavor: Flavor) -> str:
    """The Nova flavor id of a portal flavor on this cloud, (re)created when the portal flavor changed."""
    projects = _flavor_projects(host, flavor)
    signature = _signature(flavor, projects)
    found = CloudFlavor.objects.filter(host=host, flavor=flavor).first()
    if found is not None and found.signature == signature:
        return found.cloud_id
    info = cloud_driver(host).ensure_flavor(
        name=nova_flavor_name(flavor),
        vcpus=flavor.vcpus,
        ram_mib=flavor.ram_mib,
        disk_gib=flavor.disk_gib,
        is_public=flavor.is_public,
        project_ids=projects,
    )
    if found is not None and found.cloud_id != info.id:
        # the old copy (another name after a rename; recreated ones are gone already): not needed any more
        cloud_driver(host).delete_flavor(flavor_id=found.cloud_id)
    CloudFlavor.objects.update_or_create(
        host=host, flavor=flavor, defaults={"cloud_id": info.id, "signature": signature}
    )
    return info.id


def sync_flavor(*, flavor_id: int) -> dict[str, str]:
    """Bring every cloud's copy of the flavor up to date after an edit; a disabled flavor leaves the clouds."""
    results: dict[str, str] = {}
    flavor = Flavor.objects.filter(pk=flavor_id).first()
    for row in CloudFlavor.objects.filter(flavor_id=flavor_id).select_related("host"):
        try:
            if flavor is None or flavor.disabled:
                cloud_driver(row.host).delete_flavor(flavor_id=row.cloud_id)
                row.delete()
                results[row.host.name] = "deleted"
            else:
                results[row.host.name] = cloud_flavor(host=row.host, flavor=flavor)
        except BackendError as exc:
            log.warning("flavor sync to %s failed: %s", row.host.name, exc.message)
            results[row.host.name] = f"error: {exc.message}"
    return results


def forget_flavor_copies(*, flavor: Flavor) -> list[tuple[int, str]]:
    """(cloud id, Nova flavor id) of a flavor about to be deleted, for ``delete_flavor_copies`` after commit."""
    return list(CloudFlavor.objects.filter(flavor=flavor).values_list("host_id", "cloud_id"))


def delete_flavor_copies(*, copies: list[tuple[int, str]]) -> None:
    for host_id, cloud_id in copies:
        host = Host.objects.filter(pk=host_id).first()
        if host is None:
            continue
        try:
            cloud_driver(host).delete_flavor(flavor_id=cloud_id)
        except BackendError as exc:
            log.warning("could not delete flavor %s on %s: %s", cloud_id, host.name, exc.message)
