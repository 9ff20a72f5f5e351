"""Import from a URL, capture from a disk chain, distribution to a real libvirt pool, deletion rules, access."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading

import pytest
from django.contrib.auth.models import AnonymousUser

from images.capture import capture_image
from images.imports import import_image
from images.models import Image, ImageReplica
from images.services import delete_image, update_image
from images.sharing import accept_share, share_image, unshare_image
from images.tests.conftest import upload
from portal.access import CHANGE, VIEW
from portal.backends.libvirt.storage import find_volume
from portal.selectors import tenant_usage
from portal.services import ConflictError, ServiceError, set_quota
from vms.compute.libvirt.images import ensure_image_on_host
from vms.models import Host, Instance, Operation
from vms.services import create_flavor, reserve_instances


@pytest.fixture
def http_server(media):
    """A local HTTP server on 127.0.0.1 serving the test media folder."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media["qcow2"].parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def active_image(actors, media, eager_tasks, django_capture_on_commit_callbacks):
    from images.services import create_image

    image = create_image(
        actor=actors.member, tenant=actors.tenant, name="base", disk_format="qcow2", size=media["qcow2"].stat().st_size
    )
    with django_capture_on_commit_callbacks(execute=True):
        upload(actor=actors.member, image=image, path=media["qcow2"])
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE
    return image


def test_import_from_url(actors, http_server, eager_tasks, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        image = import_image(
            actor=actors.member, tenant=actors.tenant, name="web", url=f"{http_server}/disk.vmdk", disk_format="vmdk"
        )
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    assert image.stored_format == "qcow2" and image.path.exists()
    kinds = set(Operation.objects.filter(target_id=str(image.pk)).values_list("kind", "state"))
    assert kinds == {("image.import", "succeeded"), ("image.process", "succeeded")}


def test_import_beyond_the_storage_quota_leaves_nothing(
    actors, http_server, image_store, eager_tasks, django_capture_on_commit_callbacks, settings
):
    settings.LABCLOUD_IMAGE_MAX_UPLOAD_BYTES = 1024 * 1024  # the raw test disk is 8 MiB
    with django_capture_on_commit_callbacks(execute=True):
        image = import_image(
            actor=actors.member, tenant=actors.tenant, name="big", url=f"{http_server}/disk.raw", disk_format="raw"
        )
    image.refresh_from_db()
    assert image.status == Image.Status.FAILED
    assert "upload limit" in image.failure_reason
    assert not [p for p in image_store.rglob("*") if p.is_file()]
    assert tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]["image_storage_gib"] == 0


def test_import_of_a_missing_url_fails_cleanly(actors, http_server, eager_tasks, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        image = import_image(
            actor=actors.member, tenant=actors.tenant, name="gone", url=f"{http_server}/nope.qcow2", disk_format="qcow2"
        )
    image.refresh_from_db()
    assert image.status == Image.Status.FAILED and "404" in image.failure_reason


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "not a url"])
def test_import_only_takes_http_urls(actors, url):
    with pytest.raises(ServiceError, match="http"):
        import_image(actor=actors.member, tenant=actors.tenant, name="x", url=url, disk_format="raw")
    assert not Image.objects.exists()


def test_import_allowed_hosts(actors, settings):
    settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS = ["mirror.lab.test"]
    with pytest.raises(ServiceError, match="not allowed"):
        import_image(actor=actors.member, tenant=actors.tenant, name="x", url="http://127.0.0.1/x", disk_format="raw")


def test_capture_flattens_an_overlay_chain(actors, tmp_path, eager_tasks, django_capture_on_commit_callbacks):
    base = tmp_path / "base.qcow2"
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", str(base)], check=True, capture_output=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)], check=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x22 4M 1M", str(overlay)], check=True, capture_output=True
    )

    with django_capture_on_commit_callbacks(execute=True):
        image = capture_image(actor=actors.member, tenant=actors.tenant, name="snap", source=overlay)
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    info = subprocess.run(["qemu-img", "info", "--output=json", str(image.path)], check=True, capture_output=True)
    assert b"backing-filename" not in info.stdout
    # Same guest-visible content as the chain, both the base's and the overlay's writes.
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(overlay), str(image.path)], check=True)
    assert base.exists() and overlay.exists()


def test_distribution_uploads_once_and_deletion_cleans_the_host(actors, active_image, lctest_pool):
    host = Host.objects.create(name="lctest-host", uri="qemu:///system", storage_pool=lctest_pool)
    first = ensure_image_on_host(image=active_image, host=host)
    assert first.state == ImageReplica.State.READY
    volume = find_volume(host.uri, pool_name=lctest_pool, name=first.volume)
    assert volume is not None and volume.allocation > 0
    out = subprocess.run(["qemu-img", "compare", str(active_image.path), volume.path], capture_output=True)
    assert out.returncode == 0, out.stdout

    # Cached: the second call reuses the volume without copying again.
    mtime = os.stat(volume.path).st_mtime_ns
    again = ensure_image_on_host(image=active_image, host=host)
    assert again.pk == first.pk
    assert os.stat(volume.path).st_mtime_ns == mtime

    delete_image(actor=actors.member, image=active_image)
    assert find_volume(host.uri, pool_name=lctest_pool, name=first.volume) is None
    assert not ImageReplica.objects.exists()
    assert not active_image.path.exists()


def test_distribution_to_an_unreachable_host_fails_cleanly(actors, active_image):
    from portal.backends.base import BackendError

    host = Host.objects.create(name="gone", uri="qemu+tcp://127.0.0.1:1/system", storage_pool="default")
    with pytest.raises(BackendError):
        ensure_image_on_host(image=active_image, host=host)
    assert ImageReplica.objects.get(image=active_image, host=host).state == ImageReplica.State.FAILED


def test_protected_or_used_images_cannot_be_deleted(actors, active_image):
    update_image(actor=actors.member, image=active_image, protected=True)
    with pytest.raises(ConflictError, match="protected"):
        delete_image(actor=actors.member, image=active_image)
    update_image(actor=actors.member, image=active_image, protected=False)

    flavor = create_flavor(actor=actors.cloud_admin, name="img.f", vcpus=1, ram_mib=128, disk_gib=1)
    (vm,) = reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["user"])
    Instance.objects.filter(pk=vm.pk).update(image=active_image)
    with pytest.raises(ConflictError, match="used by 1 instance"):
        delete_image(actor=actors.member, image=active_image)
    assert Image.objects.filter(pk=active_image.pk).exists() and active_image.path.exists()


def test_deleting_releases_quota(actors, active_image):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"images": 1})
    assert tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]["images"] == 1
    delete_image(actor=actors.member, image=active_image)
    assert tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]["images"] == 0


ROLES = ("anonymous", "outsider", "member", "tenant_admin", "cloud_admin")


def seen_by(actors, image, action=VIEW):
    return {
        role
        for role in ROLES
        if Image.objects.restrict(actors.user(role) or AnonymousUser(), action).filter(pk=image.pk).exists()
    }


def test_access_gate_private_shared_public(actors, active_image):
    assert seen_by(actors, active_image) == {"member", "tenant_admin", "cloud_admin"}
    assert seen_by(actors, active_image, CHANGE) == {"member", "tenant_admin", "cloud_admin"}

    share = share_image(actor=actors.member, image=active_image, reference=actors.other_tenant.slug)
    active_image.refresh_from_db()
    assert active_image.visibility == Image.Visibility.SHARED
    assert seen_by(actors, active_image) == {"member", "tenant_admin", "cloud_admin"}  # pending: B sees nothing
    accept_share(actor=actors.outsider, share=share)
    assert seen_by(actors, active_image) == {"outsider", "member", "tenant_admin", "cloud_admin"}
    # Sharing lets the other tenant use the image, not change it.
    assert seen_by(actors, active_image, CHANGE) == {"member", "tenant_admin", "cloud_admin"}

    unshare_image(actor=actors.member, image=active_image, reference=actors.other_tenant.slug)
    assert seen_by(actors, active_image) == {"member", "tenant_admin", "cloud_admin"}

    with pytest.raises(ServiceError, match="Only cloud admins"):
        update_image(actor=actors.tenant_admin, image=active_image, visibility="public")
    update_image(actor=actors.cloud_admin, image=active_image, visibility="public")
    assert seen_by(actors, active_image) == {"outsider", "member", "tenant_admin", "cloud_admin"}


def test_a_second_copy_to_the_same_host_waits_its_turn(actors, active_image, lctest_pool):
    host = Host.objects.create(name="lctest-busy", uri="qemu:///system", storage_pool=lctest_pool)
    ImageReplica.objects.create(
        image=active_image, host=host, pool=lctest_pool, volume="x", state=ImageReplica.State.COPYING
    )
    with pytest.raises(ConflictError, match="being copied"):
        ensure_image_on_host(image=active_image, host=host)
    # A failed copy is taken over and redone.
    ImageReplica.objects.filter(image=active_image, host=host).update(state=ImageReplica.State.FAILED)
    assert ensure_image_on_host(image=active_image, host=host).state == ImageReplica.State.READY


def test_deleting_marks_the_image_so_a_second_delete_is_refused(actors, active_image):
    Image.objects.filter(pk=active_image.pk).update(status=Image.Status.DELETING)
    with pytest.raises(ConflictError, match="being processed"):
        delete_image(actor=actors.member, image=active_image)
