"""Issue #17 (7e): capturing an instance must not turn an image one may not download into one one may.

A tenant may launch images it cannot download: public images of the cloud, and other tenants' images
shared with it. A member who launches one, shuts it off and captures its disk gets an image of their
own tenant: its file is the shared image's content, so it must not be downloadable either.

For real on ``qemu:///system``: the source image is copied into the test's pool through libvirt, the
instance's root disk is the qcow2 overlay a launch makes on it (no boot needed: capture reads the disk
of a shut-off instance), and the capture runs through the API with the worker's tasks in-process
(qemu-img flattens the overlay chain, the pipeline inspects and activates the new image).
"""

from __future__ import annotations

import subprocess

import pytest
from django.urls import reverse

from images.models import Image
from portal.factories import make_flavor, make_instance, share_image_with
from vms.compute.libvirt.images import ensure_image_on_host
from vms.compute.libvirt.spec import root_volume
from vms.models import Instance
from vms.tests.conftest import active_image

pytestmark = [pytest.mark.libvirt_guests, pytest.mark.django_db]
MIB = 1024**2


@pytest.fixture
def disk_file(tmp_path):
    """A small real qcow2 with a recognisable pattern in it (the "licensed" content of the source image)."""
    raw = tmp_path / "source.raw"
    with open(raw, "wb") as fh:
        fh.truncate(16 * MIB)
        fh.seek(MIB)
        fh.write(b"LCTEST-NOT-FOR-DOWNLOAD" * 64)
    out = tmp_path / "source.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    return out


def shut_off_instance_of(image: Image, *, tenant, owner, host) -> Instance:
    """An instance of ``tenant`` launched from ``image`` on ``host`` and shut off: its root disk is the
    overlay on the host's copy of the image, as a launch leaves it."""
    instance = make_instance(
        tenant,
        make_flavor(disk_gib=1),
        host,
        name=f"from-{image.name}",
        state=Instance.State.SHUTOFF,
        owner=owner,
        image=image,
    )
    replica = ensure_image_on_host(image=image, host=host)
    host.lctest.driver.create_overlay(
        host.storage_pool, root_volume(instance), replica.volume, 16 * MIB, backing_format="qcow2"
    )
    return instance


def capture(actors, instance: Instance, run_tasks) -> Image:
    client = actors.client("member")
    response = run_tasks(
        lambda: client.post(f"/api/v1/instances/{instance.pk}/capture/", {"name": "golden"}, format="json")
    )
    assert response.status_code == 202, response.content
    image = Image.objects.get(pk=response.json()["image"]["id"])
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    assert image.tenant == actors.tenant
    return image


def test_capture_of_an_instance_of_a_shared_image_cannot_be_downloaded(actors, portal_host, disk_file, run_tasks):
    shared = active_image(
        tenant=actors.other_tenant, source=disk_file, name="licensed", virtual_size=16 * MIB, visibility="shared"
    )
    share_image_with(shared, actors.tenant)  # accepted by the tenant's admins
    member = actors.client("member")
    assert member.get(f"/api/v1/images/{shared.pk}/file/").status_code == 403  # may launch, not download

    instance = shut_off_instance_of(shared, tenant=actors.tenant, owner=actors.member, host=portal_host)
    captured = capture(actors, instance, run_tasks)

    for role in ("member", "tenant_admin"):
        response = actors.client(role).get(f"/api/v1/images/{captured.pk}/file/")
        assert response.status_code == 403, (role, response.status_code)
        assert b"LCTEST-NOT-FOR-DOWNLOAD" not in b"".join(getattr(response, "streaming_content", [response.content]))
    assert actors.client("member").get(f"/api/v1/images/{captured.pk}/").json()["downloadable"] is False
    page = actors.client("member", api=False).get(reverse("image_detail", args=[captured.pk]))
    assert page.status_code == 200 and f"/api/v1/images/{captured.pk}/file/".encode() not in page.content
    assert actors.client("cloud_admin").get(f"/api/v1/images/{captured.pk}/file/").status_code == 200

    # A second generation (launched from the capture, captured again) stays so.
    again = shut_off_instance_of(captured, tenant=actors.tenant, owner=actors.member, host=portal_host)
    Instance.objects.filter(pk=instance.pk).delete()
    second = capture(actors, again, run_tasks)
    assert actors.client("member").get(f"/api/v1/images/{second.pk}/file/").status_code == 403


def test_capture_of_an_instance_of_a_public_image_cannot_be_downloaded(actors, portal_host, disk_file, run_tasks):
    public = active_image(tenant=None, source=disk_file, name="cloud-os", virtual_size=16 * MIB, visibility="public")
    instance = shut_off_instance_of(public, tenant=actors.tenant, owner=actors.member, host=portal_host)
    captured = capture(actors, instance, run_tasks)
    assert actors.client("member").get(f"/api/v1/images/{captured.pk}/file/").status_code == 403


def test_capture_of_an_instance_of_an_own_image_can_be_downloaded(actors, portal_host, disk_file, run_tasks):
    own = active_image(tenant=actors.tenant, source=disk_file, name="ours", virtual_size=16 * MIB)
    instance = shut_off_instance_of(own, tenant=actors.tenant, owner=actors.member, host=portal_host)
    captured = capture(actors, instance, run_tasks)
    response = actors.client("member").get(f"/api/v1/images/{captured.pk}/file/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content).startswith(b"QFI\xfb")  # the flattened qcow2
