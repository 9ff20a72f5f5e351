"""Upload → inspection → conversion → active, with real files, real qemu-img and the real format inspector."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess

import pytest

from images.models import Image
from images.services import create_image, purge_stale_uploads, receive_chunk
from images.tests.conftest import upload
from portal.selectors import tenant_usage
from portal.services import ConflictError, QuotaExceeded, ServiceError, set_quota
from vms.models import Operation


def new_image(actors, path, disk_format, **kwargs):
    return create_image(
        actor=actors.member,
        tenant=actors.tenant,
        name=f"test {disk_format}",
        disk_format=disk_format,
        size=path.stat().st_size,
        **kwargs,
    )


def qemu_info(path):
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True)
    return json.loads(out.stdout)


def store_files(store):
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())


@pytest.mark.parametrize("fmt", ["qcow2", "raw", "vmdk", "vhd", "vdi"])
def test_disk_upload_becomes_an_active_qcow2(actors, media, fmt, eager_tasks, django_capture_on_commit_callbacks):
    image = new_image(actors, media[fmt], fmt)
    assert image.status == Image.Status.UPLOADING
    with django_capture_on_commit_callbacks(execute=True):
        upload(actor=actors.member, image=image, path=media[fmt])
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    assert image.stored_format == "qcow2"
    info = qemu_info(image.path)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    # VHD rounds the size up to its CHS geometry; every other format keeps it exactly.
    assert image.virtual_size == info["virtual-size"]
    assert image.virtual_size == 8 * 1024 * 1024 or (fmt == "vhd" and image.virtual_size - 8 * 1024**2 < 1024**2)
    assert image.sha256 == hashlib.sha256(image.path.read_bytes()).hexdigest()
    assert image.size == image.path.stat().st_size
    assert not image.partial_path.exists()
    # The converted disk holds the same data as the original.
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(media["raw"]), str(image.path)], check=True)
    op = Operation.objects.get(kind="image.process", target_id=str(image.pk))
    assert op.state == Operation.State.SUCCEEDED and op.progress == 100


def test_iso_stays_an_iso(actors, media, eager_tasks, django_capture_on_commit_callbacks):
    image = new_image(actors, media["iso"], "iso")
    assert image.kind == Image.Kind.ISO
    with django_capture_on_commit_callbacks(execute=True):
        upload(actor=actors.member, image=image, path=media["iso"])
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    assert image.stored_format == "iso"
    assert image.path.suffix == ".iso"
    assert image.path.read_bytes() == media["iso"].read_bytes()


HOSTILE = [
    ("backing", "qcow2", "safety checks (backing_file)"),
    ("datafile", "qcow2", "safety checks (data_file)"),
    ("vmdk_descriptor", "vmdk", "safety checks (descriptor)"),
    ("huge", "qcow2", "exceeds the limit"),
    ("raw", "qcow2", "The file is raw, not qcow2 as declared."),
    ("truncated", "qcow2", "truncated or corrupt"),
    ("qcow2", "iso", "The file is qcow2, not iso as declared."),
]


@pytest.mark.parametrize(("name", "declared", "reason"), HOSTILE, ids=[h[0] + "-as-" + h[1] for h in HOSTILE])
def test_hostile_images_are_rejected_and_leave_nothing(
    actors, media, image_store, name, declared, reason, eager_tasks, django_capture_on_commit_callbacks
):
    image = new_image(actors, media[name], declared)
    with django_capture_on_commit_callbacks(execute=True):
        upload(actor=actors.member, image=image, path=media[name])
    image.refresh_from_db()
    assert image.status == Image.Status.FAILED
    assert reason in image.failure_reason
    assert store_files(image_store) == []
    usage = tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]
    assert usage["images"] == 0 and usage["image_storage_gib"] == 0
    op = Operation.objects.get(kind="image.process", target_id=str(image.pk))
    assert op.state == Operation.State.FAILED and reason in op.error


def test_chunks_must_continue_where_the_upload_stands(actors, media):
    path = media["qcow2"]
    image = new_image(actors, path, "qcow2")
    data = path.read_bytes()
    receive_chunk(actor=actors.member, image=image, stream=io.BytesIO(data[:1000]), offset=0, length=1000)
    with pytest.raises(ConflictError, match="continues at byte 1000"):
        receive_chunk(actor=actors.member, image=image, stream=io.BytesIO(data[5:10]), offset=5, length=5)
    image.refresh_from_db()
    assert image.received_bytes == 1000


def test_a_short_chunk_is_cut_back_so_the_client_can_resume(actors, media):
    path = media["qcow2"]
    image = new_image(actors, path, "qcow2")
    with pytest.raises(ServiceError, match="interrupted after 100 of 5000 bytes"):
        receive_chunk(actor=actors.member, image=image, stream=io.BytesIO(b"x" * 100), offset=0, length=5000)
    image.refresh_from_db()
    assert image.received_bytes == 0
    assert image.partial_path.stat().st_size == 0


def test_bytes_past_the_announced_size_reject_the_upload(actors, media, image_store):
    image = create_image(actor=actors.member, tenant=actors.tenant, name="liar", disk_format="raw", size=10)
    with pytest.raises(ServiceError, match="larger than the announced size"):
        receive_chunk(actor=actors.member, image=image, stream=io.BytesIO(b"x" * 11), offset=0, length=11)
    image.refresh_from_db()
    assert image.status == Image.Status.FAILED
    assert store_files(image_store) == []


def test_image_quotas_are_enforced_before_the_transfer(actors):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"images": 1, "image_storage_gib": 2})
    with pytest.raises(QuotaExceeded, match="image storage"):
        create_image(actor=actors.member, tenant=actors.tenant, name="big", disk_format="raw", size=3 * 1024**3)
    create_image(actor=actors.member, tenant=actors.tenant, name="one", disk_format="raw", size=1024)
    with pytest.raises(QuotaExceeded, match="images: requested 1, limit 1, currently in use 1"):
        create_image(actor=actors.member, tenant=actors.tenant, name="two", disk_format="raw", size=1024)
    assert Image.objects.count() == 1


def test_upload_size_limit(actors, settings):
    settings.LABCLOUD_IMAGE_MAX_UPLOAD_BYTES = 1000
    with pytest.raises(ServiceError, match="larger than the upload limit"):
        create_image(actor=actors.member, tenant=actors.tenant, name="x", disk_format="raw", size=1001)
    assert not Image.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": " "}, "needs a name"),
        ({"disk_format": "exe"}, "Unsupported disk format"),
        ({"disk_format": "iso", "kind": "disk"}, "installer ISO"),
        ({"visibility": "public"}, "Only cloud admins"),
        ({"visibility": "everyone"}, "Unknown visibility"),
        ({"size": 0}, "size of the file"),
        ({"os_type": "beos"}, "Unknown OS type"),
    ],
)
def test_bad_metadata_is_refused_and_creates_nothing(actors, kwargs, message):
    args = {"name": "ok", "disk_format": "raw", "size": 100, **kwargs}
    with pytest.raises(ServiceError, match=message):
        create_image(actor=actors.member, tenant=actors.tenant, **args)
    assert not Image.objects.exists()


def test_cloud_images_need_a_cloud_admin(actors):
    with pytest.raises(ServiceError, match="Choose the tenant"):
        create_image(actor=actors.tenant_admin, tenant=None, name="x", disk_format="raw", size=1)
    image = create_image(
        actor=actors.cloud_admin, tenant=None, name="x", disk_format="raw", size=1, visibility="public"
    )
    assert image.tenant is None


def test_stale_uploads_are_purged(actors, media, image_store):
    from datetime import timedelta

    image = new_image(actors, media["qcow2"], "qcow2")
    receive_chunk(actor=actors.member, image=image, stream=io.BytesIO(b"QFI\xfb"), offset=0, length=4)
    Image.objects.filter(pk=image.pk).update(updated_at=image.updated_at - timedelta(days=2))
    assert purge_stale_uploads(older_than=timedelta(days=1)) == 1
    image.refresh_from_db()
    assert image.status == Image.Status.FAILED and "abandoned" in image.failure_reason
    assert store_files(image_store) == []
    assert tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]["image_storage_gib"] == 0


def test_the_purge_runs_on_the_beat_schedule(db, settings):
    from images import tasks

    entry = settings.CELERY_BEAT_SCHEDULE["purge-stale-uploads"]
    assert entry["task"] == tasks.purge_stale_uploads_task.name
    assert tasks.purge_stale_uploads_task.apply().get() == 0


def test_conversion_that_outgrows_the_storage_quota_is_refused(actors):
    """A compressed VMDK can be far bigger as qcow2: what qemu-img measures is reserved before converting."""
    from images.inspection import ImageRejected
    from images.services import _reserve_conversion

    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"image_storage_gib": 2})
    image = create_image(actor=actors.member, tenant=actors.tenant, name="z", disk_format="vmdk", size=100 * 1024**2)
    _reserve_conversion(image, 2 * 1024**3)  # fits: 2 GiB
    image.refresh_from_db()
    assert image.size == 2 * 1024**3
    with pytest.raises(ImageRejected, match=r"would need 3\.0"):
        _reserve_conversion(image, 3 * 1024**3)
    image.refresh_from_db()
    assert image.size == 2 * 1024**3


def test_conversion_reserves_what_qemu_img_measures(actors, media, eager_tasks, django_capture_on_commit_callbacks):
    from images import qemu

    required = qemu.measure(media["vmdk"], fmt="vmdk")
    assert required > 0
    image = new_image(actors, media["vmdk"], "vmdk")
    with django_capture_on_commit_callbacks(execute=True):
        upload(actor=actors.member, image=image, path=media["vmdk"])
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE
    assert image.size <= required  # the stored file never exceeds what was reserved


def test_editing_during_processing_does_not_undo_the_worker(actors, media):
    from images.services import process_image, update_image

    image = new_image(actors, media["qcow2"], "qcow2")
    upload(actor=actors.member, image=image, path=media["qcow2"])  # queues processing (on commit: not run here)
    image.refresh_from_db()
    stale = Image.objects.get(pk=image.pk)  # what a web request loaded while the worker runs
    process_image(operation_id=Operation.objects.get(kind="image.process", target_id=str(image.pk)).pk)
    update_image(actor=actors.member, image=stale, name="renamed meanwhile")
    image.refresh_from_db()
    assert image.name == "renamed meanwhile"
    assert image.status == Image.Status.ACTIVE and image.sha256


def test_min_disk_cannot_go_below_the_virtual_size(actors, media, eager_tasks, django_capture_on_commit_callbacks):
    from images.services import update_image

    image = new_image(actors, media["qcow2"], "qcow2")
    with django_capture_on_commit_callbacks(execute=True):
        upload(actor=actors.member, image=image, path=media["qcow2"])
    image.refresh_from_db()
    with pytest.raises(ServiceError, match="minimum disk"):
        update_image(actor=actors.member, image=image, min_disk_gib=0)
