"""Admin site of the image catalogue: staff only, deletion through images.services, replicas read-only."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.messages import get_messages
from django.urls import reverse

from images.models import Image, ImageReplica, ImageShare
from images.services import create_image
from images.tests.conftest import upload
from portal.models import AuditEvent
from portal.testing import assert_access_matrix, assert_constant_queries
from vms.models import Host

pytestmark = pytest.mark.django_db

STAFF_ONLY = {"anonymous": 302, "outsider": 302, "member": 302, "tenant_admin": 302, "cloud_admin": 200}


@pytest.fixture
def stored_image(actors, media, eager_tasks, django_capture_on_commit_callbacks) -> Image:
    image = create_image(
        actor=actors.member, tenant=actors.tenant, name="base", disk_format="qcow2", size=media["qcow2"].stat().st_size
    )
    with django_capture_on_commit_callbacks(execute=True):
        upload(actor=actors.member, image=image, path=media["qcow2"])
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE and image.path.exists()
    return image


def make_image(tenant, name: str, **fields) -> Image:
    values = {"disk_format": "qcow2", "status": "active", "size": 1024, **fields}
    return Image.objects.create(name=name, tenant=tenant, **values)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.mark.parametrize(
    "page", ["admin:images_image_changelist", "admin:images_imagereplica_changelist", "admin:app_list"]
)
def test_admin_pages_are_for_cloud_admins_only(actors, page):
    url = reverse(page, kwargs={"app_label": "images"}) if page == "admin:app_list" else reverse(page)
    assert_access_matrix(actors, method="GET", url=url, expected=STAFF_ONLY, api=False)


def test_image_change_and_delete_pages_are_for_cloud_admins_only(actors):
    image = make_image(actors.tenant, "a")
    for name in ("admin:images_image_change", "admin:images_image_delete"):
        assert_access_matrix(actors, method="GET", url=reverse(name, args=[image.pk]), expected=STAFF_ONLY, api=False)


def test_images_cannot_be_added_in_the_admin(actors, client):
    client.force_login(actors.cloud_admin)
    assert client.get(reverse("admin:images_image_add")).status_code == 403
    assert client.get(reverse("admin:images_imagereplica_add")).status_code == 403


def test_list_columns_filters_and_search(actors, client):
    make_image(actors.tenant, "debian-13", stored_format="qcow2", size=3 * 1024**3, protected=True)
    make_image(None, "windows-iso", visibility="public", status="failed")
    client.force_login(actors.cloud_admin)
    html = client.get(reverse("admin:images_image_changelist")).content.decode()
    assert "debian-13" in html and "windows-iso" in html and "3.0\xa0GB" in html and "Tenant A" in html
    html = client.get(reverse("admin:images_image_changelist"), {"status__exact": "failed"}).content.decode()
    assert "windows-iso" in html and "debian-13" not in html
    html = client.get(reverse("admin:images_image_changelist"), {"q": "debian"}).content.decode()
    assert "debian-13" in html and "windows-iso" not in html


def test_technical_fields_are_read_only(actors, client):
    image = make_image(actors.tenant, "debian", sha256="b" * 64)
    client.force_login(actors.cloud_admin)
    html = client.get(reverse("admin:images_image_change", args=[image.pk])).content.decode()
    assert 'name="name"' in html and 'name="protected"' in html
    for field in ("sha256", "size", "status", "disk_format", "tenant", "uuid", "received_bytes"):
        assert f'name="{field}"' not in html, field
    response = client.post(
        reverse("admin:images_image_change", args=[image.pk]),
        {
            "name": "debian-renamed",
            "description": "",
            "visibility": "private",
            "os_type": "linux",
            "min_disk_gib": 3,
            "min_ram_mib": 0,
            "protected": "on",
            "status": "failed",
            "sha256": "c" * 64,
            "shares-TOTAL_FORMS": "0",  # the shares inline (read-only)
            "shares-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    image.refresh_from_db()
    assert (image.name, image.min_disk_gib, image.protected) == ("debian-renamed", 3, True)
    assert (image.status, image.sha256) == ("active", "b" * 64)  # read-only fields ignored
    event = AuditEvent.objects.get(action="image.update")
    assert event.detail["via"] == "admin" and "name" in event.detail["fields"]


def test_deleting_in_the_admin_removes_the_file(actors, client, stored_image):
    path = stored_image.path
    client.force_login(actors.cloud_admin)
    confirm = client.get(reverse("admin:images_image_delete", args=[stored_image.pk])).content.decode()
    assert "Are you sure" in confirm and "permission to delete" not in confirm
    response = client.post(reverse("admin:images_image_delete", args=[stored_image.pk]), {"post": "yes"})
    assert response.status_code == 302 and response["Location"] == reverse("admin:images_image_changelist")
    assert not Image.objects.filter(pk=stored_image.pk).exists() and not path.exists()
    assert messages_of(response) == ["1 image deleted."]
    assert AuditEvent.objects.filter(action="image.delete", user=actors.cloud_admin).count() == 1
    assert LogEntry.objects.filter(action_flag=DELETION, object_repr="base").count() == 1


def test_deleting_a_protected_image_in_the_admin_is_refused(actors, client):
    image = make_image(actors.tenant, "keep-me", protected=True)
    client.force_login(actors.cloud_admin)
    response = client.post(reverse("admin:images_image_delete", args=[image.pk]), {"post": "yes"})
    assert response.status_code == 302 and response["Location"] == reverse("admin:images_image_change", args=[image.pk])
    assert messages_of(response) == ["Image “keep-me” is protected; unprotect it first."]
    assert Image.objects.filter(pk=image.pk).exists()
    assert not AuditEvent.objects.filter(action="image.delete").exists()
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()


def test_delete_action_goes_through_the_service(actors, client, stored_image):
    path = stored_image.path
    kept = make_image(actors.tenant, "keep-me", protected=True)
    client.force_login(actors.cloud_admin)
    response = client.post(
        reverse("admin:images_image_changelist"),
        {"action": "delete_selected", "_selected_action": [stored_image.pk, kept.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert messages_of(response) == ["Image “keep-me” is protected; unprotect it first.", "1 image deleted."]
    assert list(Image.objects.values_list("name", flat=True)) == ["keep-me"]
    assert not path.exists()
    assert LogEntry.objects.filter(action_flag=DELETION).count() == 1


def test_replicas_are_listed_read_only(actors, client):
    image = make_image(actors.tenant, "debian")
    host = Host.objects.create(name="node1", uri="qemu:///system")
    replica = ImageReplica.objects.create(image=image, host=host, pool="default", volume="vol-1", state="ready")
    client.force_login(actors.cloud_admin)
    html = client.get(reverse("admin:images_imagereplica_changelist")).content.decode()
    assert "vol-1" in html and "node1" in html
    assert 'name="action"' not in html  # no bulk deletion
    change = client.get(reverse("admin:images_imagereplica_change", args=[replica.pk])).content.decode()
    assert 'name="volume"' not in change and "vol-1" in change
    response = client.post(reverse("admin:images_imagereplica_delete", args=[replica.pk]), {"post": "yes"})
    assert response.status_code == 403 and ImageReplica.objects.filter(pk=replica.pk).exists()


def test_image_list_has_a_constant_query_count(actors, client):
    client.force_login(actors.cloud_admin)
    counter = {"n": 0}

    def make_rows(n):
        for _ in range(n):
            counter["n"] += 1
            make_image(actors.tenant if counter["n"] % 2 else None, f"bulk-{counter['n']}")

    assert_constant_queries(make_rows, lambda: client.get(reverse("admin:images_image_changelist")), budget=12)


def test_shared_with_chosen_tenants_but_none_is_said(actors, client, make_tenant):
    """Setting "shared with chosen tenants" in the admin with no share is no longer silent (#19)."""
    image = make_image(actors.tenant, "lonely")
    client.force_login(actors.cloud_admin)
    form = {
        "name": "lonely",
        "description": "",
        "visibility": "shared",
        "os_type": "linux",
        "min_disk_gib": 0,
        "min_ram_mib": 0,
        "shares-TOTAL_FORMS": "0",
        "shares-INITIAL_FORMS": "0",
    }
    response = client.post(reverse("admin:images_image_change", args=[image.pk]), form, follow=True)
    said = messages_of(response)
    assert any("shared with chosen tenants, but with none yet" in note for note in said), said
    image.refresh_from_db()
    assert image.visibility == "shared"  # allowed: its owners share it next

    ImageShare.objects.create(image=image, tenant=make_tenant("Other"), requested_by=actors.tenant_admin)
    response = client.post(reverse("admin:images_image_change", args=[image.pk]), form, follow=True)
    assert not any("with none yet" in note for note in messages_of(response))
