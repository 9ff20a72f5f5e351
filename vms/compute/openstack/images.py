"""Portal images as Glance images of an OpenStack cloud: uploaded once per cloud, with the portal's visibility.

``cloud_image`` uploads the portal's image file to Glance the first time a launch needs it there,
reusing an identical image already in Glance (same checksum), and remembers it as an ``ImageReplica``
of the cloud (its ``cloud_image_id``). One upload at a time, with the claim rules of libvirt copies
(``images.distribution``). Visibility and sharing changes reach the copies at once
(``sync_image_copies``, queued by ``vms.signals``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_noop

from images.distribution import claim_copy, copy_failed, stale_copy
from images.models import Image, ImageReplica
from images.selectors import accepting_tenant_ids
from portal.backends.base import BackendError, NotFound
from portal.backends.openstack.driver import OpenStackDriver
from portal.services import ConflictError, ServiceError
from portal.texts import said
from vms.compute.openstack.login import cloud_driver
from vms.models import CloudProject, Host

log = logging.getLogger(__name__)

GLANCE_FORMATS = {"qcow2", "raw", "iso", "vmdk", "vhd", "vdi"}


def glance_visibility(image: Image) -> str:
    return {"public": "public", "shared": "shared"}.get(image.visibility, "private")


def projects_allowed(*, host: Host, image_id: str) -> set[str]:
    """The cloud projects that may use a Glance image: the owners of the portal images it backs (an identical
    image is reused by checksum, so one Glance image may back several) and the tenants that accepted one of
    them when shared (a pending or rejected share makes no member).
    """
    images = Image.objects.filter(replicas__host=host, replicas__cloud_image_id=image_id)
    tenants = Q(tenant_id__in=images.values("tenant_id")) | Q(tenant_id__in=accepting_tenant_ids(images=images))
    return set(CloudProject.objects.filter(tenants, host=host).values_list("project_id", flat=True))


def align_copy(
    driver: OpenStackDriver,
    *,
    host: Host,
    image: Image,
    image_id: str,
    project_id: str | None,
    prune: bool = False,
) -> bool:
    """Make a Glance copy match the portal image's visibility now; False when it must be uploaded again.

    A private image must be owned by the tenant's project: a copy owned elsewhere is deleted (it may have
    been public before) and uploaded again. A shared one gets the tenant's project as a member; with
    ``prune`` (after a sharing change, not at launch) it also loses the members no tenant allowed to use
    it has (a tenant taken off its list).
    """
    visibility = glance_visibility(image)
    try:
        found = driver.image(image_id=image_id)
    except NotFound:
        return False
    if found.status != "active" or (visibility == "private" and project_id and found.owner != project_id):
        driver.delete_image(image_id=image_id)
        return False
    if found.visibility != visibility:
        driver.set_image_visibility(image_id=image_id, visibility=visibility)
    if visibility == "shared":
        if project_id:
            driver.add_image_member(image_id=image_id, project_id=project_id)
        if prune:
            allowed = projects_allowed(host=host, image_id=image_id)
            for member in driver.image_members(image_id=image_id):
                if member not in allowed and member != project_id:
                    driver.remove_image_member(image_id=image_id, project_id=member)
    return True


def cloud_image(
    *,
    host: Host,
    image: Image,
    project_id: str,
    report: Callable[[int], None] | None = None,
    recheck: bool = False,
) -> str:
    """The Glance image id of a portal image on this cloud: uploaded once (or reused by checksum), then remembered.

    Private images belong to the tenant's project; public and shared ones to the portal's own project,
    shared ones with the tenant's project added as a member. One upload at a time: the replica row is
    claimed (state COPYING) and a concurrent caller gets a ConflictError and waits, as for libvirt hosts.

    A recorded copy is trusted without asking Glance (visibility changes reach it through
    ``sync_image_copies``); ``recheck`` asks Glance first, for when Nova did not find the copy.
    """
    driver = cloud_driver(host)
    visibility = glance_visibility(image)
    replica, created = ImageReplica.objects.get_or_create(
        image=image, host=host, defaults={"pool": "", "volume": "", "state": ImageReplica.State.COPYING}
    )
    if not created:
        claimable = stale_copy()
        if replica.state == ImageReplica.State.READY:
            if not recheck:
                if visibility == "shared":
                    driver.add_image_member(image_id=replica.cloud_image_id, project_id=project_id)
                return replica.cloud_image_id
            if align_copy(driver, host=host, image=image, image_id=replica.cloud_image_id, project_id=project_id):
                return replica.cloud_image_id
            claimable = Q(state=ImageReplica.State.READY)  # gone from Glance: upload it again
        if not claim_copy(replica, claimable=claimable, cloud_image_id=""):
            raise ConflictError(
                said(gettext_noop("Image “%(name)s” is being uploaded to this cloud already."), name=image.name)
            )
    disk_format = image.stored_format or image.disk_format
    try:
        if disk_format not in GLANCE_FORMATS:
            raise ServiceError(said(gettext_noop("Image format %(format)s cannot go to Glance."), format=disk_format))
        if report is not None:
            report(0)
        uploaded = driver.upload_image(
            path=image.path,
            name=f"{settings.LABCLOUD_DOMAIN_PREFIX}{image.name}"[:255],
            disk_format="iso" if image.kind == Image.Kind.ISO else disk_format,
            visibility=visibility,
            project_id=project_id if visibility == "private" else None,
            properties={"labcloud_image": str(image.pk), "min_disk": image.min_disk_gib, "min_ram": image.min_ram_mib},
        )
        if uploaded.reused:  # an identical image was there: make sure it is shared as the portal's is now
            align_copy(driver, host=host, image=image, image_id=uploaded.id, project_id=project_id)
        elif visibility == "shared":
            driver.add_image_member(image_id=uploaded.id, project_id=project_id)
    except (BackendError, ServiceError) as exc:
        copy_failed(replica, exc.message)
        raise
    ImageReplica.objects.filter(pk=replica.pk).update(
        cloud_image_id=uploaded.id, state=ImageReplica.State.READY, error="", updated_at=timezone.now()
    )
    if report is not None:
        report(100)
    return uploaded.id


def sync_image_copies(*, image_id: int) -> dict[str, str]:
    """After an image's visibility or sharing changed: every cloud's copy follows at once.

    A private one leaves public view, and a shared one stops being shared with tenants taken off its list.
    """
    results: dict[str, str] = {}
    image = Image.objects.filter(pk=image_id).first()
    replicas = ImageReplica.objects.filter(image_id=image_id, state=ImageReplica.State.READY).select_related("host")
    for replica in replicas.filter(host__in=Host.objects.clouds()):
        try:
            driver = cloud_driver(replica.host)
            project = (
                CloudProject.objects.filter(host=replica.host, tenant_id=image.tenant_id).first() if image else None
            )
            if image is None or not align_copy(
                driver,
                host=replica.host,
                image=image,
                image_id=replica.cloud_image_id,
                project_id=project.project_id if project else None,
                prune=True,
            ):
                replica.delete()
                results[replica.host.name] = "removed"
            else:
                results[replica.host.name] = glance_visibility(image)
        except BackendError as exc:
            log.warning("image copy on %s not updated: %s", replica.host.name, exc.message)
            results[replica.host.name] = f"error: {exc.message}"
    return results
