"""The real test guests (a bootable tiny Linux disk, an installer ISO, GRUB's rescue ISO) pass the pipeline."""

from __future__ import annotations

import pytest

from images.models import Image
from images.services import create_image
from images.tests.conftest import upload


@pytest.mark.parametrize(
    ("name", "disk_format"),
    [("tiny.qcow2", "qcow2"), ("installer.iso", "iso"), ("grub-rescue-cdrom.iso", "iso")],
)
def test_real_guest_media_become_active(
    actors, guest_media, name, disk_format, eager_tasks, django_capture_on_commit_callbacks
):
    path = guest_media[name]
    image = create_image(
        actor=actors.member, tenant=actors.tenant, name=name, disk_format=disk_format, size=path.stat().st_size
    )
    with django_capture_on_commit_callbacks(execute=True):
        upload(actor=actors.member, image=image, path=path, chunk=8 * 1024 * 1024)
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    assert image.kind == (Image.Kind.ISO if disk_format == "iso" else Image.Kind.DISK)
    assert image.size > 1024 * 1024
    if disk_format == "qcow2":
        assert image.virtual_size == 20 * 1024 * 1024
        assert image.min_disk_gib == 1
