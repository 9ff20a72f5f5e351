"""Write-side business logic of the image catalogue (keyword-only, typed).

Life of an uploaded image:

    create_image (quota reserved for the announced size, status "uploading")
      -> receive_chunk … (append at the right offset, never past the announced size)
      -> last byte: status "inspecting", operation "image.process" queued on commit
      -> process_image (worker): inspect -> convert to qcow2 if needed -> checksum -> "active"

Every rejection deletes the file and sets ``size`` to 0, so the image holds no storage
usage; failed images do not count against the image quota either.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from images import qemu
from images.inspection import ImageRejected, inspect_file
from images.models import Image
from images.selectors import gib
from images.tasks import distribute_image_task, process_image_task
from portal.access import DELETE, is_cloud_admin
from portal.backends.base import BackendError, HostUnreachable
from portal.files import private_path
from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit, reserve_quota
from vms import operations
from vms.compute import Capability, compute_for, host_can, host_free
from vms.models import Host, Instance, Operation

log = logging.getLogger(__name__)

COPY_CHUNK = 1024 * 1024
EDITABLE_FIELDS = {"name", "description", "min_disk_gib", "min_ram_mib", "os_type", "cloud_init", "protected"}


def ensure_store() -> Path:
    """The image store and its ``incoming`` folder, the portal user's alone (0700; files 0600)."""
    path = Path(settings.LABCLOUD_IMAGE_STORE)
    (path / "incoming").mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in (path, path / "incoming"):
        private_path(folder, 0o700)
    return path


def _check_visibility(*, actor, tenant: Tenant | None, visibility: str) -> None:
    if visibility not in Image.Visibility.values:
        raise ServiceError(_("Unknown visibility “%(value)s”.") % {"value": visibility}, field="visibility")
    if visibility == Image.Visibility.PUBLIC and not is_cloud_admin(actor):
        raise ServiceError(_("Only cloud admins can make an image public."), field="visibility")
    if tenant is None and not is_cloud_admin(actor):
        raise ServiceError(_("Choose the tenant that owns the image."), field="tenant")


def _kind_for(disk_format: str, kind: str | None) -> str:
    if disk_format not in Image.DiskFormat.values:
        raise ServiceError(_("Unsupported disk format “%(format)s”.") % {"format": disk_format}, field="disk_format")
    expected = Image.Kind.ISO if disk_format == Image.DiskFormat.ISO else Image.Kind.DISK
    if kind and kind != expected:
        raise ServiceError(_("An installer ISO has the disk format “iso”, a disk image any other."), field="kind")
    return expected


def check_size(size: int) -> None:
    limit = settings.LABCLOUD_IMAGE_MAX_UPLOAD_BYTES
    if size > limit:
        raise ServiceError(
            _("The file is larger than the upload limit of %(limit)s.") % {"limit": filesizeformat(limit)},
            field="size",
        )


def create_image(
    *,
    actor,
    tenant: Tenant | None,
    name: str,
    disk_format: str,
    size: int = 0,
    kind: str | None = None,
    visibility: str = Image.Visibility.PRIVATE,
    description: str = "",
    min_disk_gib: int = 0,
    min_ram_mib: int = 0,
    os_type: str = Image.OsType.LINUX,
    cloud_init: bool = False,
    protected: bool = False,
    source_url: str = "",
    status: str = Image.Status.UPLOADING,
    ip: str | None = None,
) -> Image:
    """Create the catalogue entry and reserve its quota (one image, ``size`` bytes of storage)."""
    name = name.strip()
    if not name:
        raise ServiceError(_("An image needs a name."), field="name")
    kind = _kind_for(disk_format, kind)
    _check_visibility(actor=actor, tenant=tenant, visibility=visibility)
    if os_type not in Image.OsType.values:
        raise ServiceError(_("Unknown OS type “%(value)s”.") % {"value": os_type}, field="os_type")
    if size < 0 or (status == Image.Status.UPLOADING and size == 0):
        raise ServiceError(_("Give the size of the file in bytes."), field="size")
    check_size(size)
    with transaction.atomic():
        if tenant is not None:
            reserve_quota(tenant=tenant, request={"images": 1, "image_storage_gib": gib(size)})
        image = Image.objects.create(
            name=name,
            description=description,
            tenant=tenant,
            owner=actor if actor is not None and actor.is_authenticated else None,
            visibility=visibility,
            kind=kind,
            disk_format=disk_format,
            size=size,
            min_disk_gib=min_disk_gib,
            min_ram_mib=min_ram_mib,
            os_type=os_type,
            cloud_init=cloud_init,
            protected=protected,
            source_url=source_url,
            status=status,
        )
        record_audit(
            user=actor,
            action="image.create",
            target=image,
            tenant=tenant,
            ip=ip,
            detail={"disk_format": disk_format, "size": size, "source_url": source_url},
        )
    return image


def duration_text(seconds: float) -> str:
    """ "6 hours", "90 minutes", "30 seconds": a limit in the largest whole unit."""
    seconds = int(seconds)
    if seconds >= 3600 and seconds % 3600 == 0:
        return ngettext("%(n)d hour", "%(n)d hours", seconds // 3600) % {"n": seconds // 3600}
    if seconds >= 60 and seconds % 60 == 0:
        return ngettext("%(n)d minute", "%(n)d minutes", seconds // 60) % {"n": seconds // 60}
    return ngettext("%(n)d second", "%(n)d seconds", seconds) % {"n": seconds}


def time_limit_exceeded(seconds: float) -> str:
    """The failure of an image task stopped at its (soft) time limit."""
    return _("The operation took longer than its time limit of %(duration)s.") % {"duration": duration_text(seconds)}


def reject(image: Image, reason: str) -> None:
    """Fail the image: no file, no storage usage, a clear reason."""
    image.partial_path.unlink(missing_ok=True)
    if image.stored_format:
        image.path.unlink(missing_ok=True)
    Image.objects.filter(pk=image.pk).update(
        status=Image.Status.FAILED, failure_reason=reason, size=0, received_bytes=0, updated_at=timezone.now()
    )
    image.status, image.failure_reason, image.size, image.received_bytes = Image.Status.FAILED, reason, 0, 0


def receive_chunk(*, actor, image: Image, stream: IO[bytes], offset: int, length: int, ip: str | None = None) -> Image:
    """Append ``length`` bytes read from ``stream`` at ``offset`` of the upload (resumable, chunked).

    The chunk must start where the previous one ended (``received_bytes``), otherwise a
    ConflictError tells the client where to resume. Bytes past the announced size reject
    the whole image. The last byte queues the inspection.
    """
    if length < 0:
        raise ServiceError(_("The chunk needs a Content-Length."))
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        if image.status not in {Image.Status.UPLOADING, Image.Status.QUEUED} or image.source_url:
            raise ConflictError(
                _("This image does not accept uploads (status: %(status)s).") % {"status": image.status}
            )
        if offset != image.received_bytes:
            raise ConflictError(
                _("The upload continues at byte %(offset)d, not %(given)d.")
                % {"offset": image.received_bytes, "given": offset}
            )
        oversized = offset + length > image.size
        if not oversized:
            ensure_store()
            received = _append(image.partial_path, stream, offset=offset, length=length)
            if received != length:
                raise ServiceError(
                    _("The upload was interrupted after %(n)d of %(length)d bytes; resume at byte %(offset)d.")
                    % {"n": received, "length": length, "offset": offset}
                )
            image.received_bytes = offset + length
            image.status = Image.Status.UPLOADING
            image.save(update_fields=["received_bytes", "status", "updated_at"])
            if image.received_bytes == image.size:
                queue_processing(image, actor=actor)
                record_audit(user=actor, action="image.upload", target=image, tenant=image.tenant, ip=ip)
            return image
    # Outside the transaction, so the rejection itself is not rolled back with the error.
    reason = _("The upload is larger than the announced size of %(size)d bytes.") % {"size": image.size}
    reject(image, reason)
    record_audit(user=actor, action="image.upload", target=image, tenant=image.tenant, outcome="failure", ip=ip)
    raise ServiceError(reason)


def _append(path: Path, stream: IO[bytes], *, offset: int, length: int) -> int:
    """Write up to ``length`` bytes at ``offset``; on a short read the file is cut back to ``offset``."""
    received = 0
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b") as fh:
        fh.seek(offset)
        fh.truncate()
        while received < length:
            chunk = stream.read(min(COPY_CHUNK, length - received))
            if not chunk:
                break
            fh.write(chunk)
            received += len(chunk)
        if received != length:
            fh.truncate(offset)
    return received


def queue_processing(image: Image, *, actor) -> Operation:
    Image.objects.filter(pk=image.pk).update(status=Image.Status.INSPECTING)
    image.status = Image.Status.INSPECTING
    return operations.create_operation(
        kind="image.process", target=image, tenant=image.tenant, user=actor, task=process_image_task
    )


def process_image(*, operation_id: int) -> None:
    """Worker side: inspect, convert when needed, checksum, activate. Idempotent."""
    operation = operations.begin(operation_id=operation_id)
    if operation is None:
        return
    image = Image.objects.get(pk=operation.target_id)
    if image.status == Image.Status.ACTIVE:
        operations.succeed(operation=operation)
        return
    source = image.partial_path
    try:
        if not source.exists():
            raise ImageRejected(_("The uploaded file is missing."))
        operations.progress(operation=operation, percent=5, message=_("Inspecting"))
        inspection = inspect_file(source, declared_format=image.disk_format)
        target_format = "iso" if image.kind == Image.Kind.ISO else "qcow2"
        image.stored_format = target_format
        final = image.path
        if target_format in {"iso", image.disk_format}:
            shutil.move(source, final)
        else:
            _reserve_conversion(image, qemu.measure(source, fmt=inspection.qemu_format))
            Image.objects.filter(pk=image.pk).update(status=Image.Status.CONVERTING)
            operations.progress(operation=operation, percent=10, message=_("Converting to qcow2"))
            qemu.convert(
                source,
                final,
                source_fmt=inspection.qemu_format,
                target_fmt="qcow2",
                progress=lambda p: operations.progress(operation=operation, percent=10 + p * 80 // 100),
            )
            source.unlink(missing_ok=True)
        final.chmod(0o600)  # whatever made it (an upload, an import, qemu-img), the file is the portal's alone
        operations.progress(operation=operation, percent=92, message=_("Computing checksum"))
        image.sha256 = sha256_of(final)
        image.size = final.stat().st_size
        image.virtual_size = inspection.virtual_size
        image.min_disk_gib = max(image.min_disk_gib, gib(inspection.virtual_size))
        image.status = Image.Status.ACTIVE
        image.failure_reason = ""
        # Only the fields this task owns: a user may rename or describe the image meanwhile.
        image.save(
            update_fields=[
                "stored_format",
                "sha256",
                "size",
                "virtual_size",
                "min_disk_gib",
                "status",
                "failure_reason",
                "updated_at",
            ]
        )
        operations.succeed(operation=operation)
    except Exception as exc:  # whatever went wrong, the image fails cleanly and holds nothing
        if isinstance(exc, ImageRejected):
            reason = exc.message
        elif isinstance(exc, SoftTimeLimitExceeded):
            reason = time_limit_exceeded(settings.LABCLOUD_IMAGE_TASK_TIME_LIMIT)
        elif isinstance(exc, qemu.QemuImgError):
            reason = _("qemu-img failed: %(error)s") % {"error": exc}
        else:
            log.exception("processing image %s failed", image.pk)
            reason = _("The image could not be processed.")
        reject(image, reason)
        operations.fail(operation=operation, error=reason)
        record_audit(
            action="image.reject", target=image, tenant=image.tenant, outcome="failure", detail={"reason": reason}
        )


def _reserve_conversion(image: Image, required: int) -> None:
    """A compressed or sparse upload can grow when converted: reserve what qemu-img measures first."""
    if required <= image.size:
        return
    with transaction.atomic():
        if image.tenant is not None:
            try:
                reserve_quota(tenant=image.tenant, request={"image_storage_gib": gib(required) - gib(image.size)})
            except ServiceError as exc:
                raise ImageRejected(
                    _("Converted, the image would need %(size)s: %(reason)s")
                    % {"size": filesizeformat(required), "reason": exc.message}
                ) from exc
        Image.objects.filter(pk=image.pk).update(size=required)
        image.size = required


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- editing and deletion (sharing: images/sharing.py)


def update_image(*, actor, image: Image, ip: str | None = None, **changes: Any) -> Image:
    unknown = set(changes) - EDITABLE_FIELDS - {"visibility"}
    if unknown:
        raise ServiceError(_("These fields cannot be changed: %(fields)s.") % {"fields": ", ".join(sorted(unknown))})
    if "name" in changes and not str(changes["name"]).strip():
        raise ServiceError(_("An image needs a name."), field="name")
    if "visibility" in changes and changes["visibility"] != image.visibility:
        _check_visibility(actor=actor, tenant=image.tenant, visibility=changes["visibility"])
    if "min_disk_gib" in changes and image.virtual_size and changes["min_disk_gib"] < gib(image.virtual_size):
        raise ServiceError(
            _("The minimum disk cannot be smaller than the image's virtual size (%(size)d GiB).")
            % {"size": gib(image.virtual_size)},
            field="min_disk_gib",
        )
    if "os_type" in changes and changes["os_type"] not in Image.OsType.values:
        raise ServiceError(_("Unknown OS type “%(value)s”.") % {"value": changes["os_type"]}, field="os_type")
    with transaction.atomic():
        for field, value in changes.items():
            setattr(image, field, value)
        image.save(update_fields=[*changes, "updated_at"])  # never the fields the worker is filling in
        if image.visibility != Image.Visibility.SHARED:
            image.shares.all().delete()  # not shared any more: every share goes, answered or not
        record_audit(
            user=actor,
            action="image.update",
            target=image,
            tenant=image.tenant,
            ip=ip,
            detail={k: str(v) for k, v in changes.items()},
        )
    return image


def delete_image(*, actor, image: Image, ip: str | None = None) -> None:
    """Delete the image, its file and its copies on hosts; refused while protected or used by an instance.

    The checks run with the image row locked and mark it "deleting", so a launch that
    starts meanwhile sees it gone; if a host refuses to drop its copy, the image is active again.
    """
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        if image.protected:
            raise ConflictError(_("Image “%(name)s” is protected; unprotect it first.") % {"name": image.name})
        users = Instance.objects.filter(image=image).count()
        if users:
            raise ConflictError(
                _("Image “%(name)s” is used by %(count)d instance(s).") % {"name": image.name, "count": users}
            )
        if image.status in {Image.Status.INSPECTING, Image.Status.CONVERTING, Image.Status.DELETING}:
            raise ConflictError(
                _("Image “%(name)s” is being processed; try again when it is done.") % {"name": image.name}
            )
        previous_status = image.status
        Image.objects.filter(pk=image.pk).update(status=Image.Status.DELETING)
    for replica in image.replicas.select_related("host"):
        try:
            compute_for(replica.host).remove_image_copy(replica)
        except BackendError as exc:
            Image.objects.filter(pk=image.pk).update(status=previous_status)
            log.warning("image %s: the copy on host %s could not be removed: %s", image.pk, replica.host.name, exc)
            raise ConflictError(_("A copy of the image on a host could not be removed; try again later.")) from exc
        replica.delete()
    image.partial_path.unlink(missing_ok=True)
    image.path.unlink(missing_ok=True)
    with transaction.atomic():
        record_audit(user=actor, action="image.delete", target=image, tenant=image.tenant, ip=ip)
        image.delete()


@dataclass(frozen=True)
class BulkDeletion:
    deleted: list[str]  # names of the images deleted
    refused: list[str]  # why the others were not (each service refusal's message)


def delete_failed_images(*, actor, images: QuerySet[Image], ip: str | None = None) -> BulkDeletion:
    """Delete the failed images among ``images`` that ``actor`` may delete, one by one as ``delete_image`` does
    (each audited; a refusal, a protected image say, leaves that one and goes on)."""
    deleted, refused = [], []
    for image in images.restrict(actor, DELETE).filter(status=Image.Status.FAILED).order_by("name", "id"):
        try:
            delete_image(actor=actor, image=image, ip=ip)
        except ServiceError as exc:
            refused.append(exc.message)
        else:
            deleted.append(image.name)
    return BulkDeletion(deleted=deleted, refused=refused)


def purge_stale_uploads(*, older_than: timedelta) -> int:
    """Fail uploads nobody continued for ``older_than``: their partial files go, their quota is released."""
    cutoff = timezone.now() - older_than
    stale = Image.objects.filter(status=Image.Status.UPLOADING, updated_at__lt=cutoff)
    count = 0
    for image in stale:
        reject(image, _("The upload was abandoned."))
        count += 1
    return count


# ---------------------------------------------------------------- distribution to hosts


def request_distribution(*, actor, image: Image, host: Host, ip: str | None = None) -> Operation:
    """Queue copying the image to ``host`` ahead of launches (an admin action; launches do it themselves)."""
    if not host_can(host, Capability.IMAGE_COPIES):
        raise ServiceError(
            _("Images reach %(host)s with the first launch there; they cannot be copied ahead.") % {"host": host.name},
            field="host",
        )
    if image.status != Image.Status.ACTIVE:
        raise ServiceError(_("Image “%(name)s” is not active yet.") % {"name": image.name})
    with transaction.atomic():
        record_audit(
            user=actor, action="image.distribute", target=image, tenant=image.tenant, ip=ip, detail={"host": host.name}
        )
        return operations.create_operation(
            kind="image.distribute",
            target=image,
            tenant=image.tenant,
            user=actor,
            task=distribute_image_task,
            params={"host_id": host.pk},
        )


def distribute_image(*, operation_id: int) -> None:
    operation = operations.begin(operation_id=operation_id)
    if operation is None:
        return
    image = Image.objects.get(pk=operation.target_id)
    host = Host.objects.get(pk=operation.params["host_id"])
    try:
        compute_for(host).copy_image(host, image, operation=operation)
    except ServiceError as exc:  # the portal's own refusal, in words for members
        log.warning("copy of image %s to host %s refused: %s", image.pk, host.name, exc.message)
        operations.fail(operation=operation, error=host_free(exc.message, host))
        return
    except BackendError as exc:  # the backend's words name hosts and URIs: for cloud admins, as instance operations
        log.warning("copy of image %s to host %s failed: %s", image.pk, host.name, exc.message)
        generic = operations.HOST_DID_NOT_ANSWER if isinstance(exc, HostUnreachable) else operations.HOST_FAILED
        operations.fail(operation=operation, error=generic, detail=exc.message)
        return
    except SoftTimeLimitExceeded:
        operations.fail(operation=operation, error=time_limit_exceeded(settings.LABCLOUD_IMAGE_TASK_TIME_LIMIT))
        return
    operations.succeed(operation=operation)
