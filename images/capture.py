"""Images captured from an instance's disk: the request and the worker's flattening of the overlay chain.

The instance side (shut off, busy while its disk is read) belongs to ``vms.lifecycle``; when the
disk has been read, or the capture failed, this module tells whoever registered for it
(``register_capture_finished``: the compute app clears the instance's task), so the image app
never writes instance rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext as _

from images import qemu
from images.models import Image
from images.selectors import tenant_may_download
from images.services import create_image, ensure_store, queue_processing, reject, time_limit_exceeded
from images.tasks import capture_image_task
from portal.models import Tenant
from vms import operations
from vms.models import Operation

log = logging.getLogger(__name__)

CaptureFinished = Callable[[dict], None]  # called with the capture operation's params
_capture_finished: list[CaptureFinished] = []


def register_capture_finished(callback: CaptureFinished) -> None:
    """Call ``callback(params)`` once a capture has read its source (or failed); ``params`` are the caller's."""
    if callback not in _capture_finished:
        _capture_finished.append(callback)


def capture_image(
    *,
    actor,
    tenant: Tenant,
    name: str,
    source: Path,
    source_format: str = "qcow2",
    source_image: Image | None = None,
    params: dict | None = None,
    ip: str | None = None,
) -> Image:
    """Create an image from an instance disk (a qcow2 overlay chain), flattened into a standalone qcow2.

    The caller (the instance's "capture" action) makes sure the instance is shut off and marks it busy;
    ``params`` (e.g. the instance's id) go to the ``register_capture_finished`` callbacks once the disk
    has been read or the capture failed. Quota is reserved for the disk's virtual size, the most the
    flattened file can take.

    ``source_image`` is the image the instance was launched from: when the tenant may not download it
    (shared with the tenant, public, or itself not downloadable), neither may it download the capture,
    which holds the same content.
    """
    facts = qemu.info(source, fmt=source_format)
    with transaction.atomic():
        image = create_image(
            actor=actor,
            tenant=tenant,
            name=name,
            disk_format=Image.DiskFormat.QCOW2,
            size=facts.virtual_size,
            status=Image.Status.CONVERTING,
            ip=ip,
        )
        if source_image is not None and not tenant_may_download(tenant_id=tenant.pk, image=source_image):
            Image.objects.filter(pk=image.pk).update(downloadable=False)
            image.downloadable = False
        operations.create_operation(
            kind="image.capture",
            target=image,
            tenant=tenant,
            user=actor,
            task=capture_image_task,
            params={**(params or {}), "source": str(source)},
        )
    return image


def flatten_capture(*, operation_id: int) -> None:
    operation = operations.begin(operation_id=operation_id)
    if operation is None:
        return
    image = Image.objects.get(pk=operation.target_id)
    source = Path(operation.params["source"])
    try:
        _flatten(operation, image, source)
    finally:
        for callback in _capture_finished:
            callback(operation.params)


def _flatten(operation: Operation, image: Image, source: Path) -> None:
    try:
        ensure_store()
        qemu.convert(
            source,
            image.partial_path,
            source_fmt="qcow2",
            progress=lambda p: operations.progress(operation=operation, percent=p * 90 // 100),
        )
    except (qemu.QemuImgError, OSError) as exc:
        if isinstance(exc, qemu.QemuImgError):
            reason = str(exc)  # qemu-img's words, without server paths (images.qemu)
        else:  # an OSError names the files: for the log, not for the member
            log.warning("capture of image %s failed: %s", image.pk, exc)
            reason = _("The disk of the instance could not be read.")
        reject(image, reason)
        operations.fail(operation=operation, error=reason)
        return
    except SoftTimeLimitExceeded:
        reason = time_limit_exceeded(settings.LABCLOUD_IMAGE_TASK_TIME_LIMIT)
        reject(image, reason)
        operations.fail(operation=operation, error=reason)
        return
    operations.succeed(operation=operation)
    with transaction.atomic():
        Image.objects.filter(pk=image.pk).update(received_bytes=image.partial_path.stat().st_size)
        queue_processing(image, actor=operation.user)
