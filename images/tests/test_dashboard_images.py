"""Dashboard pages of the image catalogue: access matrix, what the pages show, what their forms do, query budgets."""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import re
import threading

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from images.models import Image, ImageReplica, ImageShare
from images.services import create_image
from images.sharing import share_image
from images.tests.conftest import upload
from portal.factories import share_image_with
from portal.middleware import SESSION_KEY
from portal.models import AuditEvent, Membership
from portal.testing import assert_access_matrix, assert_constant_queries
from vms.models import Host, Operation
from vms.operations import create_operation

pytestmark = pytest.mark.django_db

LOGIN = 302  # anonymous users are sent to the login page
_serial = itertools.count()


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(html: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def make_image(tenant=None, **fields) -> Image:
    """A catalogue row in any state, without a file (the services are exercised by the form tests)."""
    defaults = {
        "name": f"image-{next(_serial)}",
        "tenant": tenant,
        "disk_format": "qcow2",
        "stored_format": "qcow2",
        "status": Image.Status.ACTIVE,
        "size": 5 * 1024 * 1024,
    }
    defaults.update(fields)
    if defaults["disk_format"] == "iso":
        defaults.setdefault("kind", Image.Kind.ISO)
    return Image.objects.create(**defaults)


@pytest.fixture
def private_image(actors) -> Image:
    return make_image(actors.tenant, name="team-disk")


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
def active_image(actors, media, eager_tasks, django_capture_on_commit_callbacks) -> Image:
    """A real, processed image of tenant A with its file in the store."""
    image = create_image(
        actor=actors.member, tenant=actors.tenant, name="base", disk_format="qcow2", size=media["qcow2"].stat().st_size
    )
    with django_capture_on_commit_callbacks(execute=True):
        upload(actor=actors.member, image=image, path=media["qcow2"])
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    return image


# ---------------------------------------------------------------- access matrix


@pytest.mark.parametrize("name", ["images", "image_upload", "image_import"])
def test_pages_need_login_and_open_for_every_user(actors, name):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse(name),
        expected={"anonymous": LOGIN, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        api=False,
    )


@pytest.mark.parametrize("name", ["image_detail", "image_live"])
def test_a_private_image_is_for_its_tenant_and_cloud_admins(actors, private_image, name):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse(name, args=[private_image.pk]),
        expected={"anonymous": LOGIN, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        api=False,
    )


def test_a_public_image_of_the_cloud_is_seen_by_all_and_changed_by_cloud_admins(actors):
    image = make_image(None, name="debian", visibility=Image.Visibility.PUBLIC)
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("image_detail", args=[image.pk]),
        expected={"anonymous": LOGIN, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        api=False,
    )
    # Visible but not allowed: 403.
    for name in ("image_edit", "image_share", "image_delete"):
        data = {"tenant": actors.other_tenant.slug} if name == "image_share" else {"name": "x"}
        assert_access_matrix(
            actors,
            method="post",
            url=reverse(name, args=[image.pk]),
            data=data,
            expected={
                "anonymous": LOGIN,
                "outsider": 403,
                "member": 403,
                "tenant_admin": 403,
                "cloud_admin": (200, 302),
            },
            api=False,
        )


def edit_data(image: Image, **changes) -> dict:
    data = {
        "name": image.name,
        "description": image.description,
        "visibility": image.visibility,
        "os_type": image.os_type,
        "min_disk_gib": image.min_disk_gib,
        "min_ram_mib": image.min_ram_mib,
    }
    if image.cloud_init:
        data["cloud_init"] = "on"
    if image.protected:
        data["protected"] = "on"
    data.update(changes)
    return data


def test_edit(actors, private_image):
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("image_edit", args=[private_image.pk]),
        data=edit_data(private_image, description="edited"),
        expected={"anonymous": LOGIN, "outsider": 404, "member": 302, "tenant_admin": 302, "cloud_admin": 302},
        api=False,
    )
    private_image.refresh_from_db()
    assert private_image.description == "edited"


def test_share_and_unshare(actors, private_image, make_tenant):
    third = make_tenant("Tenant C")
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("image_share", args=[private_image.pk]),
        data={"tenant": third.slug},
        expected={"anonymous": LOGIN, "outsider": 404, "member": 302, "tenant_admin": 302, "cloud_admin": 302},
        api=False,
    )

    def url():
        share = share_image(actor=actors.cloud_admin, image=private_image, reference=third.slug)
        return reverse("image_share_withdraw", args=[private_image.pk, share.pk])

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        expected={"anonymous": LOGIN, "outsider": 404, "member": 302, "tenant_admin": 302, "cloud_admin": 302},
        api=False,
    )


def test_delete(actors):
    made: list[Image] = []

    def url():
        made.append(make_image(actors.tenant))
        return reverse("image_delete", args=[made[-1].pk])

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        expected={"anonymous": LOGIN, "outsider": 404, "member": 302, "tenant_admin": 302, "cloud_admin": 302},
        api=False,
    )
    left = [image.pk for image in made if Image.objects.filter(pk=image.pk).exists()]
    assert left == [made[0].pk, made[1].pk]  # anonymous and outsider deleted nothing


def test_copy_to_host_is_for_cloud_admins(actors, private_image):
    host = Host.objects.create(name="node1", uri="qemu:///system")
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("image_distribute", args=[private_image.pk]),
        data={"host": host.pk},
        expected={"anonymous": LOGIN, "outsider": 404, "member": 403, "tenant_admin": 403, "cloud_admin": 302},
        api=False,
    )
    operation = Operation.objects.get(kind="image.distribute")
    assert operation.params == {"host_id": host.pk} and operation.target_id == str(private_image.pk)


def test_upload_without_javascript_creates_the_image_in_the_active_tenant(actors):
    def data():
        return {
            "name": "tiny",
            "disk_format": "raw",
            "visibility": "private",
            "os_type": "linux",
            "min_disk_gib": 0,
            "min_ram_mib": 0,
            "file": SimpleUploadedFile("tiny.img", b"\0" * 4096),
        }

    failures = []
    for role, want in {
        "anonymous": LOGIN,
        "outsider": 302,
        "member": 302,
        "tenant_admin": 302,
        "cloud_admin": 302,
    }.items():
        response = actors.client(role, api=False).post(reverse("image_upload"), data())
        if response.status_code != want:
            failures.append(f"{role}: {response.status_code}")
    assert not failures
    owners = sorted(Image.objects.values_list("tenant__name", flat=True))
    # The outsider's lands in Tenant B; the cloud admin works in Tenant A (the first by name) and chose it.
    assert owners == ["Tenant A", "Tenant A", "Tenant A", "Tenant B"]


def test_import(actors):
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("image_import"),
        data={
            "name": "web",
            "url": "http://127.0.0.1:9/disk.qcow2",
            "disk_format": "qcow2",
            "visibility": "private",
            "os_type": "linux",
            "min_disk_gib": 0,
            "min_ram_mib": 0,
        },
        expected={"anonymous": LOGIN, "outsider": 302, "member": 302, "tenant_admin": 302, "cloud_admin": 302},
        api=False,
    )
    assert Image.objects.filter(source_url="http://127.0.0.1:9/disk.qcow2").count() == 4
    assert Operation.objects.filter(kind="image.import").count() == 4


@pytest.mark.parametrize(
    "name",
    [
        "image_edit",
        "image_share",
        "image_delete",
        "image_distribute",
        "image_share_withdraw",
        "image_share_accept",
        "image_share_reject",
        "image_live",
    ],
)
def test_actions_answer_only_their_method(actors, private_image, name):
    share = share_image(actor=actors.member, image=private_image, reference=actors.other_tenant.slug)
    args = {"image_share_withdraw": [private_image.pk, share.pk], "image_share_accept": [share.pk]}.get(
        name, [share.pk] if name == "image_share_reject" else [private_image.pk]
    )
    method, wrong = ("post", 405) if name == "image_live" else ("get", 405)
    assert_access_matrix(
        actors,
        method=method,
        url=reverse(name, args=args),
        expected={"anonymous": LOGIN, "outsider": wrong, "member": wrong, "tenant_admin": wrong, "cloud_admin": wrong},
        api=False,
    )


def test_csrf_is_enforced(actors, private_image):
    client = Client(enforce_csrf_checks=True)
    client.force_login(actors.member)
    assert client.post(reverse("image_delete", args=[private_image.pk])).status_code == 403
    assert Image.objects.filter(pk=private_image.pk).exists()


# ---------------------------------------------------------------- list


def names(html: str) -> list[str]:
    return re.findall(
        r'<a class="fw-semibold link-body-emphasis text-decoration-none" href="/images/\d+/">([^<]+)</a>', html
    )


def test_list_shows_what_the_active_tenant_may_use(actors):
    make_image(actors.tenant, name="a-private")
    make_image(actors.other_tenant, name="b-private")
    make_image(None, name="cloud-public", visibility=Image.Visibility.PUBLIC, disk_format="iso", stored_format="iso")
    shared = make_image(actors.other_tenant, name="b-shared-with-a", visibility=Image.Visibility.SHARED)
    share_image_with(shared, actors.tenant)

    html = login(actors.member).get(reverse("images")).content.decode()
    assert names(html) == ["a-private", "b-shared-with-a", "cloud-public"]
    row = html[html.index(f'data-image="{Image.objects.get(name="cloud-public").pk}"') :]
    row = row[: row.index("</tr>")]
    assert "ISO" in text(row) and "cloud" in text(row) and "Public" in text(row) and "5.0 MB" in text(row)
    a_row = html[html.index(f'data-image="{Image.objects.get(name="a-private").pk}"') :]
    assert "Tenant A" in text(a_row[: a_row.index("</tr>")])

    # The outsider works in Tenant B: its own, the public one, not A's private image.
    assert names(login(actors.outsider).get(reverse("images")).content.decode()) == [
        "b-private",
        "b-shared-with-a",
        "cloud-public",
    ]
    # Cloud admins see the whole catalogue.
    assert len(names(login(actors.cloud_admin).get(reverse("images")).content.decode())) == 4


def test_list_filters(actors):
    make_image(actors.tenant, name="debian-13", os_type="linux")
    make_image(actors.tenant, name="debian-installer", disk_format="iso", stored_format="iso")
    make_image(actors.tenant, name="windows", os_type="windows", status=Image.Status.FAILED, failure_reason="bad")
    make_image(None, name="ubuntu", visibility=Image.Visibility.PUBLIC)
    client = login(actors.member)

    def listed(**params) -> list[str]:
        return names(client.get(reverse("images"), params).content.decode())

    assert listed(kind="iso") == ["debian-installer"]
    assert listed(kind="disk") == ["debian-13", "ubuntu", "windows"]
    assert listed(status="failed") == ["windows"]
    assert listed(visibility="public") == ["ubuntu"]
    assert listed(q="DEBIAN") == ["debian-13", "debian-installer"]
    assert listed(q="debian", kind="disk") == ["debian-13"]
    assert listed(kind="nonsense") == [
        "debian-13",
        "debian-installer",
        "ubuntu",
        "windows",
    ]  # unknown values: no filter
    html = client.get(reverse("images"), {"status": "queued"}).content.decode()
    assert "No image matches these filters" in html
    assert '<option value="failed" selected>' in client.get(reverse("images"), {"status": "failed"}).content.decode()


def test_list_polls_only_while_an_image_is_in_progress(actors):
    image = make_image(actors.tenant, name="coming", status=Image.Status.CONVERTING)
    client = login(actors.member)
    html = client.get(reverse("images")).content.decode()
    assert 'hx-trigger="every 2s"' in html and "vendor/htmx/htmx.min.js" in html
    assert "Converting" in text(html)

    # The poll returns only the rows (same filters), still polling while something is in progress.
    partial = client.get(reverse("images") + "?kind=disk", headers={"HX-Request": "true"}).content.decode()
    assert partial.startswith('<tbody id="lc-image-rows"') and "<html" not in partial
    assert 'hx-get="/images/?kind=disk"' in partial

    Image.objects.filter(pk=image.pk).update(status=Image.Status.ACTIVE)
    partial = client.get(reverse("images"), headers={"HX-Request": "true"}).content.decode()
    assert "hx-trigger" not in partial and "Active" in text(partial)
    assert "htmx.min.js" not in client.get(reverse("images")).content.decode()


def test_list_is_paginated_and_keeps_the_filters(actors):
    for i in range(55):
        make_image(actors.tenant, name=f"disk-{i:02d}")
    make_image(actors.tenant, name="installer", disk_format="iso", stored_format="iso")
    client = login(actors.member)
    html = client.get(reverse("images"), {"kind": "disk", "page": 2}).content.decode()
    assert names(html) == [f"disk-{i}" for i in range(50, 55)]
    assert "51–55 of 55" in text(html)
    assert 'href="?kind=disk&amp;page=1"' in html  # the previous page keeps the filter
    assert 'hx-get="' not in html  # nothing in progress


def test_list_sorts_by_its_column_headers(actors):
    small = make_image(actors.tenant, name="b-small", size=1024)
    big = make_image(actors.tenant, name="a-big", size=10 * 1024**3)
    middle = make_image(actors.tenant, name="c-middle", size=1024**2)
    client = login(actors.member)

    def order(**params) -> list[str]:
        html = client.get(reverse("images"), params).content.decode()
        names = re.findall(r'href="/images/(\d+)/"', html)
        return list(dict.fromkeys(int(pk) for pk in names))

    assert order() == [big.pk, small.pk, middle.pk]  # by name
    assert order(sort="-size") == [big.pk, middle.pk, small.pk]
    assert order(sort="size") == [small.pk, middle.pk, big.pk]
    assert order(sort="bogus") == order()
    html = client.get(reverse("images"), {"sort": "-size"}).content.decode()
    assert re.search(r'<th scope="col" aria-sort="descending" class="text-end"><a [^>]*href="[^"]*sort=size', html)


def test_list_without_a_tenant(make_user):
    html = login(make_user("loner")).get(reverse("images")).content.decode()
    assert 'id="lc-no-tenant"' in html and "Upload image" not in html


# ---------------------------------------------------------------- detail


def test_detail_shows_the_metadata(actors):
    image = make_image(
        actors.tenant,
        name="debian-13",
        description="Debian 13 generic cloud image",
        disk_format="vmdk",
        stored_format="qcow2",
        size=3 * 1024**3,
        virtual_size=20 * 1024**3,
        sha256="a" * 64,
        min_disk_gib=20,
        min_ram_mib=2048,
        cloud_init=True,
        protected=True,
        visibility=Image.Visibility.SHARED,
        owner=actors.member,
    )
    share_image_with(image, actors.other_tenant)
    html = login(actors.member).get(reverse("image_detail", args=[image.pk])).content.decode()
    page = text(html)
    for fact in (
        "debian-13",
        "Debian 13 generic cloud image",
        "uploaded as VMDK, stored as qcow2",
        "3.0 GB",
        "20.0 GB",
        "a" * 64,
        "20 GiB",
        "2 GiB",
        "cloud-init",
        "yes, it cannot be deleted",
        "Tenant A",
        "added by member",
        "Shared with chosen tenants: Tenant B",
        str(image.uuid),
    ):
        assert fact in page, fact
    assert f'href="/api/v1/images/{image.pk}/file/"' in html  # a member of the owner tenant may download
    assert 'id="lc-image-edit"' in html and 'id="lc-image-sharing"' in html and 'id="lc-image-delete"' in html
    assert 'id="lc-image-replicas"' not in html  # copies on hosts are for cloud admins
    assert "hx-trigger" not in html  # nothing in progress


def test_a_viewer_sees_no_management_and_no_download(actors):
    image = make_image(None, name="debian", visibility=Image.Visibility.PUBLIC)
    html = login(actors.member).get(reverse("image_detail", args=[image.pk])).content.decode()
    assert "The cloud admins manage it." in html
    for part in ("lc-image-edit", "lc-image-sharing", "lc-image-delete", "lc-image-download", "lc-image-replicas"):
        assert f'id="{part}"' not in html


def test_detail_shows_the_failure_reason(actors):
    image = make_image(
        actors.tenant,
        status=Image.Status.FAILED,
        size=0,
        failure_reason="The image refers to other files (backing or data file).",
    )
    html = login(actors.member).get(reverse("image_detail", args=[image.pk])).content.decode()
    failure = html[html.index('id="lc-image-failure"') :]
    failure = failure[: failure.index("</div>\n  </div>")]
    assert "alert-danger" in html[html.index('id="lc-image-failure"') - 100 : html.index('id="lc-image-failure"')]
    assert "The image refers to other files (backing or data file)." in text(failure)
    assert 'id="lc-image-download"' not in html  # nothing to download


def test_detail_shows_operations_and_polls_until_they_finish(actors):
    image = make_image(actors.tenant, status=Image.Status.CONVERTING)
    operation = create_operation(kind="image.process", target=image, tenant=actors.tenant, user=actors.member)
    Operation.objects.filter(pk=operation.pk).update(state="running", progress=42, message="Converting to qcow2")
    client = login(actors.member)
    html = client.get(reverse("image_detail", args=[image.pk])).content.decode()
    assert f'hx-get="/images/{image.pk}/live/"' in html and 'hx-trigger="every 2s"' in html
    ops = text(html[html.index('id="lc-image-operations"') :])
    assert "Check and convert" in ops and "Running" in ops and "42% · Converting to qcow2" in ops
    assert f'id="lc-op-{operation.pk}-bar" style="width: 42%"' in html

    live = client.get(reverse("image_live", args=[image.pk]), headers={"HX-Request": "true"})
    assert "HX-Refresh" not in live and 'hx-trigger="every 2s"' in live.content.decode()

    # Finished: the poll answers with a reload of the page, which then shows the final state without polling.
    Operation.objects.filter(pk=operation.pk).update(state="succeeded", progress=100)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.ACTIVE)
    live = client.get(reverse("image_live", args=[image.pk]), headers={"HX-Request": "true"})
    assert live["HX-Refresh"] == "true" and "hx-trigger" not in live.content.decode()
    html = client.get(reverse("image_detail", args=[image.pk])).content.decode()
    assert "hx-trigger" not in html and "Succeeded" in text(html)


def test_live_poll_of_a_deleted_image_goes_back_to_the_list(actors, private_image):
    client = login(actors.member)
    Image.objects.filter(pk=private_image.pk).delete()
    live = client.get(reverse("image_live", args=[private_image.pk]), headers={"HX-Request": "true"})
    assert live.status_code == 200 and live["HX-Redirect"] == reverse("images")
    assert client.get(reverse("image_live", args=[private_image.pk])).status_code == 404


def test_detail_of_an_upload_in_progress_shows_the_received_bytes(actors):
    image = make_image(
        actors.tenant, status=Image.Status.UPLOADING, size=8 * 1024 * 1024, received_bytes=2 * 1024 * 1024
    )
    html = login(actors.member).get(reverse("image_detail", args=[image.pk])).content.decode()
    assert "2.0 MB of 8.0 MB received." in text(html) and 'style="width: 25%"' in html


# ---------------------------------------------------------------- edit, sharing, deletion


def test_edit_changes_the_metadata_and_is_audited(actors, private_image):
    client = login(actors.member)
    data = edit_data(private_image, name="renamed", min_ram_mib=4096, os_type="windows", cloud_init="on")
    response = client.post(reverse("image_edit", args=[private_image.pk]), data, follow=True)
    assert "Image “renamed” has been saved." in response.content.decode()
    private_image.refresh_from_db()
    assert (private_image.name, private_image.min_ram_mib, private_image.os_type) == ("renamed", 4096, "windows")
    assert private_image.cloud_init is True
    event = AuditEvent.objects.get(action="image.update")
    assert event.user == actors.member and event.tenant == actors.tenant
    assert event.detail == {"name": "renamed", "min_ram_mib": "4096", "os_type": "windows", "cloud_init": "True"}

    # Unchanged form: nothing is written.
    response = client.post(reverse("image_edit", args=[private_image.pk]), edit_data(private_image), follow=True)
    assert "Nothing was changed." in response.content.decode()
    assert AuditEvent.objects.filter(action="image.update").count() == 1


def test_edit_errors_are_shown_and_change_nothing(actors, private_image):
    client = login(actors.member)
    response = client.post(reverse("image_edit", args=[private_image.pk]), edit_data(private_image, name=" "))
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    # Public is for cloud admins: not even offered, and refused when forced.
    response = client.post(
        reverse("image_edit", args=[private_image.pk]), edit_data(private_image, visibility="public")
    )
    assert response.status_code == 200 and "is-invalid" in response.content.decode()
    private_image.refresh_from_db()
    assert private_image.name == "team-disk" and private_image.visibility == "private"
    assert not AuditEvent.objects.filter(action="image.update").exists()


def test_cloud_admins_can_make_an_image_public(actors, private_image):
    client = login(actors.cloud_admin)
    assert '<option value="public">' in client.get(reverse("image_detail", args=[private_image.pk])).content.decode()
    client.post(reverse("image_edit", args=[private_image.pk]), edit_data(private_image, visibility="public"))
    private_image.refresh_from_db()
    assert private_image.visibility == "public"


def test_sharing_panel(actors, private_image):
    client = login(actors.member)
    outsider = login(actors.outsider)
    assert outsider.get(reverse("image_detail", args=[private_image.pk])).status_code == 404

    response = client.post(reverse("image_share", args=[private_image.pk]), {"tenant": "tenant-b"}, follow=True)
    assert "Image “team-disk” offered to “tenant-b”: it is shared once an admin of that tenant accepts it." in (
        response.content.decode()
    )
    private_image.refresh_from_db()
    share = private_image.shares.get()
    assert private_image.visibility == "shared" and share.status == "pending" and share.tenant == actors.other_tenant
    panel = response.content.decode()
    panel = panel[panel.index('id="lc-image-sharing"') :]
    assert 'data-shared="tenant-b" data-share-status="pending"' in panel and "Tenant B" not in panel
    # Pending: tenant B does not see it yet; accepted by its admin, it sees and can use it, not change or download it.
    assert outsider.get(reverse("image_detail", args=[private_image.pk])).status_code == 404
    outsider.post(reverse("image_share_accept", args=[share.pk]))
    html = outsider.get(reverse("image_detail", args=[private_image.pk])).content.decode()
    assert "Members of the tenant that owns it manage it." in html and 'id="lc-image-download"' not in html
    assert "team-disk" in names(outsider.get(reverse("images")).content.decode())
    panel = client.get(reverse("image_detail", args=[private_image.pk])).content.decode()
    assert 'data-share-status="accepted"' in panel and "Tenant B" in panel

    # The owner itself is refused on the form; any other name is offered, known or not.
    response = client.post(reverse("image_share", args=[private_image.pk]), {"tenant": "tenant-a"})
    assert "The image already belongs to Tenant A." in response.content.decode()
    response = client.post(reverse("image_share", args=[private_image.pk]), {"tenant": "a b"})
    assert "Name the tenant by its id or its short name (slug)." in response.content.decode()

    response = client.post(reverse("image_share_withdraw", args=[private_image.pk, share.pk]), follow=True)
    assert "Image “team-disk” is no longer offered to “tenant-b”." in response.content.decode()
    assert outsider.get(reverse("image_detail", args=[private_image.pk])).status_code == 404
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"image.share", "image.share_accept", "image.unshare"} <= actions
    # Withdrawing it again: it is gone, 404.
    assert client.post(reverse("image_share_withdraw", args=[private_image.pk, share.pk])).status_code == 404


def test_deleting_a_protected_image_shows_the_error_and_keeps_it(actors, private_image):
    Image.objects.filter(pk=private_image.pk).update(protected=True)
    response = login(actors.tenant_admin).post(reverse("image_delete", args=[private_image.pk]), follow=True)
    assert response.redirect_chain == [(reverse("image_detail", args=[private_image.pk]), 302)]
    html = response.content.decode()
    alert = html[html.index("alert-danger") : html.index("alert-danger") + 400]
    assert "Image “team-disk” is protected; unprotect it first." in alert
    assert Image.objects.filter(pk=private_image.pk).exists()
    assert not AuditEvent.objects.filter(action="image.delete").exists()


def test_deleting_removes_the_file(actors, active_image):
    path = active_image.path
    assert path.exists()
    response = login(actors.member).post(reverse("image_delete", args=[active_image.pk]), follow=True)
    assert response.redirect_chain == [(reverse("images"), 302)]
    assert "Image “base” has been deleted." in response.content.decode()
    assert not path.exists() and not Image.objects.filter(pk=active_image.pk).exists()
    assert AuditEvent.objects.filter(action="image.delete", user=actors.member).exists()


def test_copy_to_host_panel_shows_the_replicas(actors, private_image):
    node1 = Host.objects.create(name="node1", uri="qemu+ssh://node1/system")
    node2 = Host.objects.create(name="node2", uri="qemu+ssh://node2/system")
    Host.objects.create(name="off", uri="qemu+ssh://off/system", enabled=False)
    ImageReplica.objects.create(image=private_image, host=node1, pool="default", volume="v1", state="ready")
    ImageReplica.objects.create(
        image=private_image, host=node2, pool="default", volume="v2", state="failed", error="pool full"
    )
    client = login(actors.cloud_admin)
    html = client.get(reverse("image_detail", args=[private_image.pk])).content.decode()
    panel = html[html.index('id="lc-image-replicas"') :]
    assert 'data-replica="node1"' in panel and "Ready" in text(panel) and "pool full" in panel
    select = panel[panel.index("<select") : panel.index("</select>")]
    assert "node1" in select and "node2" in select and "off" not in select

    response = client.post(reverse("image_distribute", args=[private_image.pk]), {"host": node2.pk}, follow=True)
    assert "Copying “team-disk” to node2 has been queued." in response.content.decode()
    # An image that is not active yet cannot be copied: the service's message is shown.
    waiting = make_image(actors.tenant, name="waiting", status=Image.Status.UPLOADING)
    response = client.post(reverse("image_distribute", args=[waiting.pk]), {"host": node1.pk})
    assert response.status_code == 200 and "Image “waiting” is not active yet." in response.content.decode()


# ---------------------------------------------------------------- upload and import


def test_upload_page_configures_the_uploader(actors):
    html = login(actors.member).get(reverse("image_upload")).content.decode()
    form = html[html.index('<form method="post" action="/images/upload/"') :]
    form = form[: form.index(">")]
    assert 'data-api-url="/api/v1/images/"' in form and 'data-chunk-size="8388608"' in form
    assert f'data-tenant="{actors.tenant.pk}"' in form and 'data-detail-url="/images/0/"' in form
    assert 'enctype="multipart/form-data"' in form
    assert "images/upload.js" in html and 'id="lc-upload-text"' in html and "<noscript>" in html
    # Members choose private or shared; no owner choice, no public images.
    assert 'value="public"' not in html and 'name="owner"' not in html
    assert '<optgroup label="Installer ISO">' in html


def test_upload_page_for_cloud_admins_offers_public_images_of_the_cloud(actors):
    html = login(actors.cloud_admin).get(reverse("image_upload")).content.decode()
    assert 'value="public"' in html and 'name="owner"' in html and 'value="cloud"' in html


def test_upload_without_javascript_processes_a_real_file(
    actors, media, eager_tasks, django_capture_on_commit_callbacks
):
    data = {
        "name": "from the form",
        "disk_format": "vmdk",
        "visibility": "private",
        "os_type": "linux",
        "min_disk_gib": 0,
        "min_ram_mib": 512,
        "cloud_init": "on",
        "file": SimpleUploadedFile("disk.vmdk", media["vmdk"].read_bytes()),
    }
    client = login(actors.member)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("image_upload"), data)
    image = Image.objects.get(name="from the form")
    assert response.status_code == 302 and response["Location"] == reverse("image_detail", args=[image.pk])
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    assert image.stored_format == "qcow2" and image.cloud_init and image.min_ram_mib == 512
    html = client.get(response["Location"]).content.decode()
    assert 'data-status="active"' in html and image.sha256 in html


def test_upload_without_javascript_shows_service_errors(actors, settings):
    settings.LABCLOUD_IMAGE_MAX_UPLOAD_BYTES = 1000
    data = {
        "name": "too big",
        "disk_format": "raw",
        "visibility": "private",
        "os_type": "linux",
        "min_disk_gib": 0,
        "min_ram_mib": 0,
        "file": SimpleUploadedFile("big.img", b"\0" * 4096),
    }
    response = login(actors.member).post(reverse("image_upload"), data)
    assert response.status_code == 200
    assert "The file is larger than the upload limit of 1000" in response.content.decode()
    assert not Image.objects.exists()


def test_import_from_a_local_http_server(actors, http_server, eager_tasks, django_capture_on_commit_callbacks):
    client = login(actors.member)
    data = {
        "name": "imported",
        "url": f"{http_server}/disk.qcow2",
        "disk_format": "qcow2",
        "visibility": "private",
        "os_type": "linux",
        "min_disk_gib": 0,
        "min_ram_mib": 0,
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("image_import"), data)
    image = Image.objects.get(name="imported")
    assert response["Location"] == reverse("image_detail", args=[image.pk])
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    assert image.source_url == f"{http_server}/disk.qcow2" and image.tenant == actors.tenant
    html = client.get(response["Location"]).content.decode()
    assert "Download from URL" in html and "Check and convert" in html and 'data-status="active"' in html
    assert html.count("Succeeded") == 2


def test_import_errors_are_shown_on_the_form(actors, settings):
    settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS = ["cloud.debian.org"]
    data = {"name": "x", "url": "https://evil.example/disk.qcow2", "disk_format": "qcow2", "visibility": "private"}
    data.update(os_type="linux", min_disk_gib=0, min_ram_mib=0)
    response = login(actors.member).post(reverse("image_import"), data)
    assert response.status_code == 200
    assert "Imports from evil.example are not allowed on this cloud." in response.content.decode()
    assert not Image.objects.exists()


def test_cloud_admins_import_images_of_the_cloud(actors):
    data = {"name": "cloud", "url": "http://127.0.0.1:9/x.iso", "disk_format": "iso", "visibility": "public"}
    data.update(os_type="other", min_disk_gib=0, min_ram_mib=0, owner="cloud")
    login(actors.cloud_admin).post(reverse("image_import"), data)
    image = Image.objects.get(name="cloud")
    assert image.tenant is None and image.kind == "iso" and image.visibility == "public"


# ---------------------------------------------------------------- query budgets


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_list_page_queries(actors, role):
    client = login(actors.user(role))

    def make_rows(n: int) -> None:
        for _ in range(n):
            make_image(actors.tenant)
            make_image(None, visibility=Image.Visibility.PUBLIC, status=Image.Status.CONVERTING)
            shared = make_image(actors.other_tenant, visibility=Image.Visibility.SHARED)
            share_image_with(shared, actors.tenant)
            offered = make_image(actors.other_tenant, visibility=Image.Visibility.SHARED)
            share_image_with(offered, actors.tenant, status=ImageShare.Status.PENDING)

    def request():
        response = client.get(reverse("images"))
        assert response.status_code == 200

    assert_constant_queries(make_rows, request, budget=10)  # 10th: the top bar's notification bell


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_detail_page_queries(actors, role, private_image, make_tenant):
    client = login(actors.user(role))
    private_image.visibility = Image.Visibility.SHARED
    private_image.save()

    def make_rows(n: int) -> None:
        for _ in range(n):
            i = next(_serial)
            share_image_with(private_image, make_tenant(f"Shared {i}"))
            share_image(actor=actors.member, image=private_image, reference=f"unknown-{i}")
            host = Host.objects.create(name=f"node{i}", uri=f"qemu+ssh://node{i}/system")
            ImageReplica.objects.create(image=private_image, host=host, pool="default", volume=f"v{i}")
            create_operation(kind="image.distribute", target=private_image, tenant=actors.tenant)

    def request():
        response = client.get(reverse("image_detail", args=[private_image.pk]))
        assert response.status_code == 200

    # 14th: whether the tenant may launch it; 15th: the top bar's notification bell (the operations made here are in it)
    assert_constant_queries(make_rows, request, budget=15)


def test_membership_change_takes_effect_at_once(actors, private_image):
    client = login(actors.member)
    assert client.get(reverse("image_detail", args=[private_image.pk])).status_code == 200
    Membership.objects.filter(user=actors.member).delete()
    assert client.get(reverse("image_detail", args=[private_image.pk])).status_code == 404


# ---------------------------------------------------------------- Simplified Chinese


def test_pages_in_chinese(actors, private_image, settings):
    from portal.tests.test_i18n import ensure_compiled_messages

    ensure_compiled_messages()
    client = login(actors.member)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    html = client.get(reverse("images")).content.decode()
    assert "上传镜像" in html and "从 URL 导入" in html and "按名称搜索" in html and "可用" in html
    assert "Upload image" not in html
    html = client.get(reverse("image_detail", args=[private_image.pk])).content.decode()
    assert "详细信息" in html and "保存更改" in html and "共享" in html
    html = client.get(reverse("image_upload")).content.decode()
    assert "文件的处理过程" in html
    script = re.search(r'<script id="lc-upload-text" type="application/json">(.*?)</script>', html).group(1)
    uploader = json.loads(script)  # the uploader's messages come translated
    assert uploader["uploading"] == "正在上传…" and uploader["units"][0] == "字节"
    response = client.post(reverse("image_share", args=[private_image.pk]), {"tenant": "a b"})
    assert "请用 ID 或短名称（slug）指明租户。" in response.content.decode()


def test_operation_texts_the_portal_stores_are_shown_in_the_readers_language(actors, private_image):
    """Operation messages and errors are stored untranslated (the worker has no reader's language);
    the image page shows them in the reader's."""
    from vms.operations import HOST_DID_NOT_ANSWER

    operation = create_operation(
        kind="image.distribute", target=private_image, tenant=actors.tenant, user=actors.member
    )
    Operation.objects.filter(pk=operation.pk).update(state=Operation.State.FAILED, error=HOST_DID_NOT_ANSWER)
    client = login(actors.member)
    page = client.get(reverse("image_detail", args=[private_image.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "主机没有应答" in page and HOST_DID_NOT_ANSWER not in page


def test_detail_offers_launch_only_where_the_launch_form_takes_the_image(actors, make_tenant):
    """ "Launch" on an image's page opens the launch form with the image chosen; it is offered only for an active
    image the tenant the user works in may launch (not while uploading, not another tenant's private image)."""
    active = make_image(actors.tenant, name="ready-disk")
    uploading = make_image(actors.tenant, name="half-disk", status=Image.Status.UPLOADING)
    elsewhere = make_image(make_tenant("Other Lab"), name="their-disk")
    member = login(actors.member)
    page = member.get(reverse("image_detail", args=[active.pk])).content.decode()
    launch = f"{reverse('instance_launch')}?image={active.pk}"
    assert f'href="{launch}" id="lc-image-launch"' in page
    form = member.get(launch).content.decode()
    assert re.search(rf'<input[^>]*name="image"[^>]*value="{active.pk}"[^>]*checked', form), "the image is chosen"
    assert "lc-image-launch" not in member.get(reverse("image_detail", args=[uploading.pk])).content.decode()
    staff = login(actors.cloud_admin)  # sees every image; working in Tenant A, may not launch Other Lab's own
    session = staff.session
    session[SESSION_KEY] = actors.tenant.pk
    session.save()
    assert "lc-image-launch" not in staff.get(reverse("image_detail", args=[elsewhere.pk])).content.decode()
    assert "lc-image-launch" in staff.get(reverse("image_detail", args=[active.pk])).content.decode()


def test_failed_images_are_deleted_together(actors, make_tenant):
    """ "Delete N failed images" on the list: every failed image of the catalogue the user may delete goes (each
    audited); a protected one stays and says why; active images and other tenants' failed ones are untouched."""
    failed = [make_image(actors.tenant, name=f"broken-{i}", status=Image.Status.FAILED) for i in range(2)]
    kept = make_image(actors.tenant, name="guarded", status=Image.Status.FAILED, protected=True)
    active = make_image(actors.tenant, name="good")
    theirs = make_image(make_tenant("Other Lab"), name="their-broken", status=Image.Status.FAILED)
    client = login(actors.member)
    html = client.get(reverse("images"), {"status": "active"}).content.decode()  # filtered: still offered
    assert 'id="lc-image-delete-failed"' in html and "Delete 3 failed images" in text(html)
    response = client.post(reverse("image_delete_failed"), follow=True)
    notes = [str(m) for m in response.context["messages"]]
    assert "2 failed images deleted." in notes and any("guarded" in n and "protected" in n for n in notes), notes
    assert not Image.objects.filter(pk__in=[i.pk for i in failed]).exists()
    assert Image.objects.filter(pk__in=[kept.pk, active.pk, theirs.pk]).count() == 3
    assert AuditEvent.objects.filter(action="image.delete").count() == 2
    assert "lc-image-delete-failed" in client.get(reverse("images")).content.decode()  # the protected one
    Image.objects.filter(pk=kept.pk).update(protected=False)
    client.post(reverse("image_delete_failed"))
    assert "lc-image-delete-failed" not in client.get(reverse("images")).content.decode()
    assert login(actors.outsider).post(reverse("image_delete_failed")).status_code == 302  # Tenant B's admin
    assert Image.objects.filter(pk=theirs.pk).exists()  # Other Lab's failed image is not theirs to delete
    anonymous = Client().post(reverse("image_delete_failed"))
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    assert client.get(reverse("image_delete_failed")).status_code == 405
    assert Image.objects.filter(pk=theirs.pk).exists()
