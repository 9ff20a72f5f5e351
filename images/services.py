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
import ipaddress
import logging
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.translation import gettext as _

from images import qemu
from images.inspection import ImageRejected, inspect_file
from images.models import Image, ImageReplica
from images.selectors import GIB, gib
from portal.access import is_cloud_admin
from portal.backends.base import BackendError
from portal.backends.libvirt import storage
from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit, reserve_quota
from vms import operations
from vms.models import Host, Instance, Operation

log = logging.getLogger(__name__)

COPY_CHUNK = 1024 * 1024
EDITABLE_FIELDS = {"name", "description", "min_disk_gib", "min_ram_mib", "os_type", "cloud_init", "protected"}


def _store() -> Path:
    path = Path(settings.LABCLOUD_IMAGE_STORE)
    (path / "incoming").mkdir(parents=True, exist_ok=True)
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


def _check_size(size: int) -> None:
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
    shared_with: Iterable[Tenant] = (),
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
    _check_size(size)
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
        if visibility == Image.Visibility.SHARED:
            image.shared_with.set(list(shared_with))
        record_audit(
            user=actor,
            action="image.create",
            target=image,
            tenant=tenant,
            ip=ip,
            detail={"disk_format": disk_format, "size": size, "source_url": source_url},
        )
    return image


def _reject(image: Image, reason: str) -> None:
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
            _store()
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
                _queue_processing(image, actor=actor)
                record_audit(user=actor, action="image.upload", target=image, tenant=image.tenant, ip=ip)
            return image
    # Outside the transaction, so the rejection itself is not rolled back with the error.
    reason = _("The upload is larger than the announced size of %(size)d bytes.") % {"size": image.size}
    _reject(image, reason)
    record_audit(user=actor, action="image.upload", target=image, tenant=image.tenant, outcome="failure", ip=ip)
    raise ServiceError(reason)


def _append(path: Path, stream: IO[bytes], *, offset: int, length: int) -> int:
    """Write up to ``length`` bytes at ``offset``; on a short read the file is cut back to ``offset``."""
    mode = "r+b" if path.exists() else "wb"
    received = 0
    with open(path, mode) as fh:
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


def _queue_processing(image: Image, *, actor) -> Operation:
    from images.tasks import process_image_task

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
        elif isinstance(exc, qemu.QemuImgError):
            reason = _("qemu-img failed: %(error)s") % {"error": exc}
        else:
            log.exception("processing image %s failed", image.pk)
            reason = _("The image could not be processed.")
        _reject(image, reason)
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


# ---------------------------------------------------------------- import from a URL


def check_import_url(url: str) -> str:
    """Refuse URLs the worker must not fetch: other schemes, hosts outside the allow-list, and, unless the
    allow-list names the host, any host that resolves to a loopback, private, link-local or otherwise
    non-global address (cloud metadata services, the portal's own services, the lab's internal network)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ServiceError(_("Import from an http:// or https:// URL."), field="url")
    host = parsed.hostname
    allowed = settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS
    if allowed and host not in allowed:
        raise ServiceError(_("Imports from %(host)s are not allowed on this cloud.") % {"host": host}, field="url")
    if host in allowed:
        return url
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except (OSError, ValueError) as exc:
        raise ServiceError(_("The host %(host)s cannot be resolved.") % {"host": host}, field="url") from exc
    if not all(ipaddress.ip_address(address.split("%")[0]).is_global for address in addresses):
        raise ServiceError(
            _("Imports from local or private addresses are not allowed (%(host)s).") % {"host": host}, field="url"
        )
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: their target would escape the checks of check_import_url."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise ImageRejected(_("The server redirected the download; give the final URL."))


def import_image(
    *,
    actor,
    tenant: Tenant | None,
    name: str,
    url: str,
    disk_format: str,
    ip: str | None = None,
    **options: Any,
) -> Image:
    check_import_url(url)
    from images.tasks import import_image_task

    with transaction.atomic():
        image = create_image(
            actor=actor,
            tenant=tenant,
            name=name,
            disk_format=disk_format,
            source_url=url,
            status=Image.Status.QUEUED,
            ip=ip,
            **options,
        )
        operations.create_operation(
            kind="image.import", target=image, tenant=tenant, user=actor, task=import_image_task
        )
    return image


def download_image(*, operation_id: int) -> None:
    """Worker side of an import: stream the URL into the image store within the quota, then process it."""
    operation = operations.begin(operation_id=operation_id)
    if operation is None:
        return
    image = Image.objects.get(pk=operation.target_id)
    try:
        _store()
        check_import_url(image.source_url)  # again: DNS may answer differently now
        opener = urllib.request.build_opener(_NoRedirect)
        request = urllib.request.Request(image.source_url, headers={"User-Agent": "labcloud-image-import"})  # noqa: S310
        with opener.open(request, timeout=30) as response:
            announced = int(response.headers.get("Content-Length") or 0)
            limit = _download_budget(image, announced)
            operations.progress(operation=operation, percent=1, message=_("Downloading"))
            received = 0
            last_percent = -1
            with open(image.partial_path, "wb") as fh:
                while chunk := response.read(COPY_CHUNK):
                    received += len(chunk)
                    if received > limit:
                        raise ImageRejected(
                            _("The download exceeds %(limit)s (upload limit or image storage quota).")
                            % {"limit": filesizeformat(limit)}
                        )
                    fh.write(chunk)
                    percent = received * 60 // announced if announced else 0
                    if percent != last_percent:
                        last_percent = percent
                        operations.progress(operation=operation, percent=percent)
            if announced and received != announced:
                raise ImageRejected(
                    _("The download ended after %(received)d of %(announced)d bytes.")
                    % {"received": received, "announced": announced}
                )
        Image.objects.filter(pk=image.pk).update(size=received, received_bytes=received)
    except urllib.error.HTTPError as exc:
        _fail_download(image, operation, _("The server answered HTTP %(code)d.") % {"code": exc.code})
        return
    except (ImageRejected, ServiceError) as exc:
        _fail_download(image, operation, exc.message)
        return
    except Exception:  # anything else (network, disk, HTTP protocol): fail cleanly, never leave it running
        log.exception("import of image %s failed", image.pk)
        _fail_download(image, operation, _("The download failed."))
        return
    operations.succeed(operation=operation)
    with transaction.atomic():
        _queue_processing(Image.objects.get(pk=image.pk), actor=operation.user)


def _fail_download(image: Image, operation: Operation, reason: str) -> None:
    _reject(image, reason)
    operations.fail(operation=operation, error=reason)


def _download_budget(image: Image, announced: int) -> int:
    """Bytes the download may take: the upload limit, and the tenant's remaining storage quota.

    The budget is reserved at once (written as the image's size under the quota lock), so
    concurrent imports cannot each count on the same remaining quota.
    """
    limit = settings.LABCLOUD_IMAGE_MAX_UPLOAD_BYTES
    if announced:
        _check_size(announced)
    if image.tenant is None:
        return min(limit, announced) if announced else limit
    with transaction.atomic():
        if announced:
            reserve_quota(tenant=image.tenant, request={"image_storage_gib": gib(announced)})
            budget = min(limit, announced)
        else:
            quota = reserve_quota(tenant=image.tenant, request={})
            if quota.image_storage_gib < 0:
                budget = limit
            else:
                from portal.selectors import tenant_usage

                used = tenant_usage(tenant_ids=[image.tenant_id])[image.tenant_id]["image_storage_gib"]
                budget = min(limit, max(0, quota.image_storage_gib - used) * GIB)
        Image.objects.filter(pk=image.pk).update(size=budget)
    return budget


# ---------------------------------------------------------------- capture


def capture_image(
    *,
    actor,
    tenant: Tenant,
    name: str,
    source: Path,
    source_format: str = "qcow2",
    instance_id: int | None = None,
    ip: str | None = None,
) -> Image:
    """Create an image from an instance disk (a qcow2 overlay chain), flattened into a standalone qcow2.

    The caller (the instance's "capture" action) makes sure the instance is shut off and marks
    it busy; with ``instance_id``, the instance's task is cleared once the disk has been read
    (or the capture failed). Quota is reserved for the disk's virtual size, the most the
    flattened file can take.
    """
    from images.tasks import capture_image_task

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
        operations.create_operation(
            kind="image.capture",
            target=image,
            tenant=tenant,
            user=actor,
            task=capture_image_task,
            params={"source": str(source), "instance_id": instance_id},
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
        _release_captured_instance(operation.params.get("instance_id"))


def _release_captured_instance(instance_id: int | None) -> None:
    if instance_id is None:
        return
    from vms import realtime
    from vms.models import Instance

    if Instance.objects.filter(pk=instance_id, task="capture").update(task="", updated_at=timezone.now()):
        instance = Instance.objects.filter(pk=instance_id).first()
        if instance is not None:
            realtime.instance_changed(instance)


def _flatten(operation: Operation, image: Image, source: Path) -> None:
    try:
        _store()
        qemu.convert(
            source,
            image.partial_path,
            source_fmt="qcow2",
            progress=lambda p: operations.progress(operation=operation, percent=p * 90 // 100),
        )
    except (qemu.QemuImgError, OSError) as exc:
        _reject(image, str(exc))
        operations.fail(operation=operation, error=str(exc))
        return
    operations.succeed(operation=operation)
    with transaction.atomic():
        Image.objects.filter(pk=image.pk).update(received_bytes=image.partial_path.stat().st_size)
        _queue_processing(image, actor=operation.user)


# ---------------------------------------------------------------- editing, sharing, deletion


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
            image.shared_with.clear()
        record_audit(
            user=actor,
            action="image.update",
            target=image,
            tenant=image.tenant,
            ip=ip,
            detail={k: str(v) for k, v in changes.items()},
        )
    return image


def share_image(*, actor, image: Image, tenant: Tenant, ip: str | None = None) -> Image:
    if image.tenant_id == tenant.pk:
        raise ServiceError(_("The image already belongs to %(tenant)s.") % {"tenant": tenant.name}, field="tenant")
    with transaction.atomic():
        if image.visibility == Image.Visibility.PRIVATE:
            image.visibility = Image.Visibility.SHARED
            image.save(update_fields=["visibility", "updated_at"])
        image.shared_with.add(tenant)
        record_audit(
            user=actor, action="image.share", target=image, tenant=image.tenant, ip=ip, detail={"with": tenant.slug}
        )
    return image


def unshare_image(*, actor, image: Image, tenant: Tenant, ip: str | None = None) -> Image:
    with transaction.atomic():
        image.shared_with.remove(tenant)
        record_audit(
            user=actor, action="image.unshare", target=image, tenant=image.tenant, ip=ip, detail={"with": tenant.slug}
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
            if replica.host.is_cloud:  # the copy in the cloud's Glance (vms.cloud.cloud_image)
                from vms.cloud import cloud_driver

                if replica.volume:
                    cloud_driver(replica.host).delete_image(image_id=replica.volume)
            else:
                storage.delete_volume(replica.host.uri, pool_name=replica.pool, name=replica.volume)
        except BackendError as exc:
            Image.objects.filter(pk=image.pk).update(status=previous_status)
            raise ConflictError(
                _("The copy on host %(host)s could not be removed; try again later.") % {"host": replica.host.name}
            ) from exc
        replica.delete()
    image.partial_path.unlink(missing_ok=True)
    image.path.unlink(missing_ok=True)
    with transaction.atomic():
        record_audit(user=actor, action="image.delete", target=image, tenant=image.tenant, ip=ip)
        image.delete()


def purge_stale_uploads(*, older_than: timedelta) -> int:
    """Fail uploads nobody continued for ``older_than``: their partial files go, their quota is released."""
    cutoff = timezone.now() - older_than
    stale = Image.objects.filter(status=Image.Status.UPLOADING, updated_at__lt=cutoff)
    count = 0
    for image in stale:
        _reject(image, _("The upload was abandoned."))
        count += 1
    return count


# ---------------------------------------------------------------- distribution to hosts


def volume_name(image: Image) -> str:
    return f"labcloud-image-{image.uuid}.{image.stored_format or 'img'}"


def _copy_stale_after() -> timedelta:
    """A copy whose progress has not moved for this long belongs to a dead worker and may be redone."""
    return timedelta(seconds=settings.LABCLOUD_OPERATION_STALE_SECONDS)


def ensure_image_on_host(
    *, image: Image, host: Host, operation: Operation | None = None, progress: Callable[[int], None] | None = None
) -> ImageReplica:
    """The image's volume in the host's pool, uploaded once through libvirt's stream API and reused after.

    One copy at a time: the replica row is claimed with a conditional update; a second caller
    while a copy runs gets a ConflictError. The copier touches the row as it makes progress, so a
    copy silent for ``LABCLOUD_OPERATION_STALE_SECONDS`` counts as dead (its worker died) and is redone.
    """
    if image.status != Image.Status.ACTIVE:
        raise ServiceError(_("Image “%(name)s” is not active yet.") % {"name": image.name})
    if host.is_cloud:
        raise ServiceError(_("Images reach an OpenStack cloud's Glance with the first launch there."), field="host")
    replica, created = ImageReplica.objects.get_or_create(
        image=image,
        host=host,
        defaults={"pool": host.storage_pool, "volume": volume_name(image), "state": ImageReplica.State.COPYING},
    )
    if replica.state == ImageReplica.State.READY:
        return replica
    if not created:
        claimable = Q(state=ImageReplica.State.FAILED) | Q(
            state=ImageReplica.State.COPYING, updated_at__lt=timezone.now() - _copy_stale_after()
        )
        claimed = ImageReplica.objects.filter(claimable, pk=replica.pk).update(
            state=ImageReplica.State.COPYING, error="", updated_at=timezone.now()
        )
        if not claimed:
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
        storage.upload_file(
            host.uri,
            pool_name=replica.pool,
            name=replica.volume,
            source=image.path,
            progress=report,
        )
    except BackendError as exc:
        ImageReplica.objects.filter(pk=replica.pk).update(state=ImageReplica.State.FAILED, error=exc.message)
        raise
    ImageReplica.objects.filter(pk=replica.pk).update(state=ImageReplica.State.READY)
    replica.state = ImageReplica.State.READY
    return replica


def request_distribution(*, actor, image: Image, host: Host, ip: str | None = None) -> Operation:
    """Queue copying the image to ``host`` ahead of launches (an admin action; launches do it themselves)."""
    from images.tasks import distribute_image_task

    if host.is_cloud:
        raise ServiceError(_("Images reach an OpenStack cloud's Glance with the first launch there."), field="host")
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
        ensure_image_on_host(image=image, host=host, operation=operation)
    except (BackendError, ServiceError) as exc:
        operations.fail(operation=operation, error=exc.message)
        return
    operations.succeed(operation=operation)
