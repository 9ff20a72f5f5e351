"""Changes that must reach the clouds: a tenant's quota or deletion, a flavor (its sizes, access or deletion),
an image's visibility and its shares (a share that stops being accepted).

Signals rather than service calls, because cloud admins change quotas and flavors through the
admin site, the API and the services alike. Only objects that already have a copy in a cloud
queue work, after the transaction commits.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.dispatch import receiver

from images.models import Image, ImageReplica, ImageShare
from portal.models import Quota, Tenant
from vms import operations
from vms.compute.openstack.mirror import forget_flavor_copies
from vms.models import CloudFlavor, CloudProject, Flavor

log = logging.getLogger(__name__)


def _send_after_commit(task, *args) -> None:
    """Queue ``task(*args)`` once the transaction commits, to bring the clouds in line with the portal.

    With the broker away the change that asked for it stands (it is committed; the request does not fail
    after the fact) and the clouds follow at the next sync of the same object (its next change or launch);
    the log says so for the operator.
    """

    def send() -> None:
        try:
            task.delay(*args)
        except operations.BROKER_ERRORS as exc:
            log.error("%s%r not queued: the broker did not take it (%s)", task.name, args, exc)

    transaction.on_commit(send)


@receiver(post_save, sender=Tenant, dispatch_uid="vms.default_security_group")
def _tenant_saved(sender, instance: Tenant, created: bool, raw: bool = False, **_kwargs) -> None:
    """Every tenant has its ``default`` security group from the start, as every OpenStack project does."""
    if created and not raw:
        from vms.security_groups import ensure_default_group

        ensure_default_group(tenant=instance)


@receiver(post_save, sender=Quota, dispatch_uid="vms.quota_to_clouds")
def _quota_saved(sender, instance: Quota, **_kwargs) -> None:
    if CloudProject.objects.filter(tenant_id=instance.tenant_id).exists():
        from vms.tasks import push_quota_task

        _send_after_commit(push_quota_task, instance.tenant_id)


def _flavor_changed(flavor_id: int) -> None:
    if CloudFlavor.objects.filter(flavor_id=flavor_id).exists():
        from vms.tasks import sync_flavor_task

        _send_after_commit(sync_flavor_task, flavor_id)


@receiver(post_save, sender=Flavor, dispatch_uid="vms.flavor_to_clouds")
def _flavor_saved(sender, instance: Flavor, created: bool, **_kwargs) -> None:
    if not created:
        _flavor_changed(instance.pk)


@receiver(m2m_changed, sender=Flavor.tenants.through, dispatch_uid="vms.flavor_access_to_clouds")
def _flavor_access_changed(sender, instance, action: str, reverse: bool, pk_set, **_kwargs) -> None:
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    flavor_ids = list(pk_set or ()) if reverse else [instance.pk]
    for flavor_id in flavor_ids:
        _flavor_changed(flavor_id)


@receiver(pre_delete, sender=Flavor, dispatch_uid="vms.flavor_delete_in_clouds")
def _flavor_deleted(sender, instance: Flavor, **_kwargs) -> None:
    copies = forget_flavor_copies(flavor=instance)
    if copies:
        from vms.tasks import delete_flavor_copies_task

        _send_after_commit(delete_flavor_copies_task, copies)


def _cloud_copies():
    """Ready copies in a cloud's image service (their visibility is the cloud's to enforce)."""
    return ImageReplica.objects.filter(state=ImageReplica.State.READY).exclude(cloud_image_id="")


@receiver(post_save, sender=Image, dispatch_uid="vms.image_to_clouds")
def _image_saved(sender, instance: Image, created: bool, **_kwargs) -> None:
    """A visibility change reaches the Glance copies at once (a private image must leave public view)."""
    if created:
        return
    if _cloud_copies().filter(image=instance).exists():
        from vms.tasks import sync_image_copies_task

        _send_after_commit(sync_image_copies_task, instance.pk)


def _sync_image_copies_later(image_ids) -> None:
    """After commit, the cloud copies of these images follow their portal image (only those with a copy)."""
    copies = _cloud_copies().filter(image_id__in=list(image_ids)).values_list("image_id", flat=True)
    if copies:
        from vms.tasks import sync_image_copies_task

        for image_id in sorted(set(copies)):
            _send_after_commit(sync_image_copies_task, image_id)


def _sync_shared_image_later(share: ImageShare) -> None:
    """The tenant of ``share`` may no longer use the image: after commit, its projects leave the Glance members
    of the image's cloud copies (only a shared image with a copy; a visibility change aligns them by itself)."""
    if share.tenant_id is None:
        return  # a share that names no tenant never made anyone a member
    if Image.objects.filter(pk=share.image_id, visibility=Image.Visibility.SHARED).exists():
        _sync_image_copies_later([share.image_id])


@receiver(post_save, sender=ImageShare, dispatch_uid="vms.image_share_to_clouds")
def _image_share_saved(sender, instance: ImageShare, created: bool, **_kwargs) -> None:
    """A share rejected (or removed by its tenant) takes the tenant's projects off the Glance members at once.

    A pending share makes no project a member; an accepted one's project becomes a member at its first launch
    there, as the owner's does.
    """
    if not created and instance.status != ImageShare.Status.ACCEPTED:
        _sync_shared_image_later(instance)


@receiver(post_delete, sender=ImageShare, dispatch_uid="vms.image_share_withdrawn_in_clouds")
def _image_share_deleted(sender, instance: ImageShare, **_kwargs) -> None:
    """An accepted share withdrawn (also through ``shared_with.remove``/``clear``, or with its tenant, which
    deletes its shares) takes the tenant's projects off the Glance members at once."""
    if instance.status == ImageShare.Status.ACCEPTED:
        _sync_shared_image_later(instance)


@receiver(pre_delete, sender=Tenant, dispatch_uid="vms.tenant_projects_in_clouds")
def _tenant_deleted(sender, instance: Tenant, **_kwargs) -> None:
    """The Keystone projects the portal made for the tenant go with it (mapped, existing ones stay)."""
    projects = [
        [host_id, project_id]
        for host_id, project_id in CloudProject.objects.filter(tenant=instance, managed=True).values_list(
            "host_id", "project_id"
        )
    ]
    if projects:
        from vms.tasks import delete_cloud_projects_task

        _send_after_commit(delete_cloud_projects_task, projects)
    # the images it accepted lose its projects' membership: the deletion of its shares does that (post_delete)
