"""Copies of images where instances run: a storage volume per libvirt host, one upload, reused after.

``ensure_image_on_host`` uploads the image file into the host's pool through libvirt's storage-volume
stream (it works the same for remote hosts) the first time an instance there needs it. Copies to an
OpenStack cloud's Glance are made by ``vms.compute.openstack`` with the same claim rules below: one copy
at a time per image and host, the copier touching the row as it goes, and a copy silent for
``LABCLOUD_OPERATION_STALE_SECONDS`` counted as dead (its worker died) and redone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from images.models import Image, ImageReplica
from portal.backends.base import BackendError
from portal.backends.libvirt import storage
from portal.services import ConflictError, ServiceError
from vms import operations
from vms.models import Host, Operation


def volume_name(image: Image) -> str:
    return f"labcloud-image-{image.uuid}.{image.stored_format or 'img'}"


def stale_copy() -> Q:
    """Copies another worker may redo: failed ones, and those whose copier went silent for the stale delay."""
    cutoff = timezone.now() - timedelta(seconds=settings.LABCLOUD_OPERATION_STALE_SECONDS)
    return Q(state=ImageReplica.State.FAILED) | Q(state=ImageReplica.State.COPYING, updated_at__lt=cutoff)


def claim_copy(replica: ImageReplica, *, claimable: Q, **reset) -> bool:
    """Take over the copy of ``replica`` if it is ``claimable`` (one conditional UPDATE); False if another has it."""
    return bool(
        ImageReplica.objects.filter(claimable, pk=replica.pk).update(
            state=ImageReplica.State.COPYING, error="", updated_at=timezone.now(), **reset
        )
    )


def copy_failed(replica: ImageReplica, error: str) -> None:
    ImageReplica.objects.filter(pk=replica.pk).update(state=ImageReplica.State.FAILED, error=error[:1000])


def ensure_image_on_host(
    *, image: Image, host: Host, operation: Operation | None = None, progress: Callable[[int], None] | None = None
) -> ImageReplica:
    """The image's volume in a libvirt host's pool, uploaded once through libvirt's stream API and reused after.

    One copy at a time: the replica row is claimed with a conditional update; a second caller while a
    copy runs gets a ConflictError.
    """
    if image.status != Image.Status.ACTIVE:
        raise ServiceError(_("Image “%(name)s” is not active yet.") % {"name": image.name})
    replica, created = ImageReplica.objects.get_or_create(
        image=image,
        host=host,
        defaults={"pool": host.storage_pool, "volume": volume_name(image), "state": ImageReplica.State.COPYING},
    )
    if replica.state == ImageReplica.State.READY:
        return replica
    if not created and not claim_copy(replica, claimable=stale_copy()):
        replica.refresh_from_db()
        if replica.state == ImageReplica.State.READY:
            return replica
        raise ConflictError(
            _("Image “%(name)s” is being copied to %(host)s already.") % {"name": image.name, "host": host.name}
        )

    def report(percent: int) -> None:
        ImageReplica.objects.filter(pk=replica.pk).update(updated_at=timezone.now())  # the copy is alive
        if progress is not None:
            progress(percent)
        elif operation is not None:
            operations.progress(
                operation=operation, percent=percent, message=_("Copying image to %(host)s") % {"host": host.name}
            )

    try:
        storage.upload_file(host.uri, pool_name=replica.pool, name=replica.volume, source=image.path, progress=report)
    except BackendError as exc:
        copy_failed(replica, exc.message)
        raise
    ImageReplica.objects.filter(pk=replica.pk).update(state=ImageReplica.State.READY)
    replica.state = ImageReplica.State.READY
    return replica
