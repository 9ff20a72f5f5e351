"""Portal images on a libvirt host: one storage volume per image in the host's pool, uploaded once through
libvirt's storage-volume stream (the same for remote hosts) and shared by every instance there.

One copy at a time per image and host, with the claim rules of ``images.distribution``.
"""

from __future__ import annotations

from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from images.distribution import claim_copy, copy_failed, stale_copy
from images.models import Image, ImageReplica
from portal.backends.base import BackendError
from portal.backends.libvirt import storage
from portal.services import ConflictError, ServiceError
from portal.texts import said
from vms import operations
from vms.compute.libvirt.spec import libvirt_uri
from vms.models import Host, Operation


def volume_name(image: Image) -> str:
    return f"labcloud-image-{image.uuid}.{image.stored_format or 'img'}"


def ensure_image_on_host(
    *, image: Image, host: Host, operation: Operation | None = None, progress: Callable[[int], None] | None = None
) -> ImageReplica:
    """The image's volume in the host's pool, uploaded once and reused after; a ConflictError while another
    worker copies it (``images.distribution.wait_for_copy`` waits for that)."""
    if image.status != Image.Status.ACTIVE:
        raise ServiceError(said(gettext_noop("Image “%(name)s” is not active yet."), name=image.name))
    replica, created = ImageReplica.objects.get_or_create(
        image=image,
        host=host,
        defaults={"pool": host.storage_pool, "volume": volume_name(image), "state": ImageReplica.State.COPYING},
    )
    if replica.state == ImageReplica.State.READY:
        return replica
    if created and _on_shared_storage(image=image, host=host, replica=replica):
        return replica
    if not created and not claim_copy(replica, claimable=stale_copy()):
        replica.refresh_from_db()
        if replica.state == ImageReplica.State.READY:
            return replica
        raise ConflictError(
            said(gettext_noop("Image “%(name)s” is being copied to this host already."), name=image.name)
        )

    def report(percent: int) -> None:
        # the copy is alive (best effort: a database restart must not abort the copy)
        operations.informative_update(ImageReplica.objects.filter(pk=replica.pk), updated_at=timezone.now())
        if progress is not None:
            progress(percent)
        elif operation is not None:
            operations.progress(operation=operation, percent=percent, message=_("Copying the image to the host"))

    try:
        storage.upload_file(
            libvirt_uri(host), pool_name=replica.pool, name=replica.volume, source=image.path, progress=report
        )
    except BackendError as exc:
        copy_failed(replica, exc.message)
        raise
    except SoftTimeLimitExceeded:  # the task's time limit: the copy is redone by the next one who needs it
        copy_failed(replica, _("The copy took longer than its task's time limit."))
        raise
    ImageReplica.objects.filter(pk=replica.pk).update(state=ImageReplica.State.READY)
    replica.state = ImageReplica.State.READY
    return replica


def _on_shared_storage(*, image: Image, host: Host, replica: ImageReplica) -> bool:
    """A host sharing its storage with one that has the image ready sees the same file: recorded, not copied
    (a copy would replace the file under the other host's instances)."""
    if not host.storage_share:
        return False
    sibling = (
        ImageReplica.objects.filter(image=image, state=ImageReplica.State.READY, host__storage_share=host.storage_share)
        .exclude(host=host)
        .first()
    )
    if sibling is None or sibling.volume != replica.volume:
        return False
    uri = libvirt_uri(host)
    storage.refresh_pool(uri, pool_name=replica.pool)
    if storage.find_volume(uri, pool_name=replica.pool, name=replica.volume) is None:
        return False  # "shared" in name only: copied as usual
    ImageReplica.objects.filter(pk=replica.pk).update(state=ImageReplica.State.READY)
    replica.state = ImageReplica.State.READY
    return True


def shared_with_others(replica: ImageReplica) -> bool:
    """Another host on the same shared storage still uses the replica's file."""
    share = replica.host.storage_share
    return bool(share) and (
        ImageReplica.objects.filter(image_id=replica.image_id, host__storage_share=share, volume=replica.volume)
        .exclude(pk=replica.pk)
        .exists()
    )
