"""/api/v1/images/: access matrix, resumable chunked upload of real files, import, sharing, download,
deletion rules, distribution to a real libvirt pool, constant queries."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import threading

import pytest
from django.core.cache import cache

from images.models import Image
from images.services import create_image
from portal.backends.libvirt.storage import find_volume
from portal.factories import share_image_with
from portal.models import AuditEvent
from portal.services import set_quota
from portal.testing import assert_access_matrix, assert_constant_queries
from vms.models import Host, Operation

URL = "/api/v1/images/"
ALL = ("anonymous", "outsider", "member", "tenant_admin", "cloud_admin")
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()


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


# ---------------------------------------------------------------- helpers


def detail(image) -> str:
    return f"{URL}{image if isinstance(image, int) else image.pk}/"


def file_url(image) -> str:
    return f"{detail(image)}file/"


def ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def assert_problem(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def store_files(store) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())


def make_image(actors, *, owner: str | None = "a", visibility: str = "private", status: str = "active", name="img"):
    """An image row (and, when active, a stored file) for the access tests."""
    tenant = {"a": actors.tenant, "b": actors.other_tenant, None: None}[owner]
    image = Image.objects.create(
        name=f"{name}{Image.objects.count()}",
        tenant=tenant,
        owner=actors.member if owner == "a" else actors.cloud_admin,
        visibility=visibility,
        disk_format="qcow2",
        stored_format="qcow2" if status == Image.Status.ACTIVE else "",
        size=1000,
        status=status,
    )
    if visibility == Image.Visibility.SHARED:
        share_image_with(image, actors.other_tenant)
    if status == Image.Status.ACTIVE:
        image.path.parent.mkdir(parents=True, exist_ok=True)
        image.path.write_bytes(b"QFI\xfb" + b"\0" * 996)
    return image


@pytest.fixture
def images(actors):
    """A private image of tenant A, one of A shared with B, a public cloud image and a private one of B."""
    return {
        "private": make_image(actors, name="private"),
        "shared": make_image(actors, visibility="shared", name="shared"),
        "public": make_image(actors, owner=None, visibility="public", name="public"),
        "b": make_image(actors, owner="b", name="b"),
    }


def announce(client, tenant, path_or_size, disk_format: str, **extra):
    size = path_or_size if isinstance(path_or_size, int) else path_or_size.stat().st_size
    body = {"tenant": tenant.pk, "name": f"api {disk_format}", "disk_format": disk_format, "size": size, **extra}
    response = client.post(URL, body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def put_chunk(client, image_id: int, data: bytes, *, content_range: str | None = None, **extra):
    if content_range is not None:
        extra["HTTP_CONTENT_RANGE"] = content_range
    return client.generic("PUT", file_url(image_id), data, content_type="application/octet-stream", **extra)


def put_in_chunks(client, image_id: int, data: bytes, *, pieces: int = 3, total: int | None = None):
    total = len(data) if total is None else total
    step = -(-len(data) // pieces)
    responses = []
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        responses.append(
            put_chunk(client, image_id, chunk, content_range=f"bytes {start}-{start + len(chunk) - 1}/{total}")
        )
    return responses


# ---------------------------------------------------------------- access matrix


def test_list_matrix(actors, images):
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


@pytest.mark.parametrize(
    ("which", "outsider", "members"),
    [("private", 404, 200), ("shared", 200, 200), ("public", 200, 200), ("b", 200, 404)],
)
def test_retrieve_matrix(actors, images, which, outsider, members):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(images[which]),
        expected={
            "anonymous": 401,
            "outsider": outsider,
            "member": members,
            "tenant_admin": members,
            "cloud_admin": 200,
        },
    )


def test_create_matrix(actors):
    assert_access_matrix(
        actors,
        method="post",
        url=URL,
        data={"tenant": actors.tenant.pk, "name": "new", "disk_format": "qcow2", "size": 1000},
        # A tenant the requester is not a member of does not exist for the request: 400, like a wrong id.
        expected={"anonymous": 401, "outsider": 400, "member": 201, "tenant_admin": 201, "cloud_admin": 201},
    )


def test_create_cloud_image_matrix(actors):
    assert_access_matrix(
        actors,
        method="post",
        url=URL,
        data={"name": "debian", "disk_format": "qcow2", "size": 1000, "visibility": "public"},
        expected={"anonymous": 401, "outsider": 400, "member": 400, "tenant_admin": 400, "cloud_admin": 201},
    )


# (owner, visibility, status) -> expected statuses for outsider, member/tenant admin, cloud admin
CHANGE_CASES = {
    "private": (("a", "private"), 404, 200, 200),
    "shared": (("a", "shared"), 403, 200, 200),
    "public": ((None, "public"), 403, 403, 200),
}


@pytest.mark.parametrize("which", CHANGE_CASES)
def test_patch_matrix(actors, images, which):
    _kind, outsider, members, staff = CHANGE_CASES[which]
    assert_access_matrix(
        actors,
        method="patch",
        url=detail(images[which]),
        data={"description": "edited"},
        expected={
            "anonymous": 401,
            "outsider": outsider,
            "member": members,
            "tenant_admin": members,
            "cloud_admin": staff,
        },
    )


@pytest.mark.parametrize("which", CHANGE_CASES)
def test_delete_matrix(actors, which):
    (owner, visibility), outsider, members, _staff = CHANGE_CASES[which]
    assert_access_matrix(
        actors,
        method="delete",
        url=lambda: detail(make_image(actors, owner=owner, visibility=visibility)),
        expected={
            "anonymous": 401,
            "outsider": outsider,
            "member": 204 if members == 200 else members,
            "tenant_admin": 204 if members == 200 else members,
            "cloud_admin": 204,
        },
    )


@pytest.mark.parametrize("which", CHANGE_CASES)
def test_upload_matrix(actors, which):
    """An empty chunk at offset 0 is a valid request: the gate decides. Cloud images are active: 409."""
    (owner, visibility), outsider, members, _staff = CHANGE_CASES[which]
    status = "active" if owner is None else "uploading"
    assert_access_matrix(
        actors,
        method="put",
        url=lambda: file_url(make_image(actors, owner=owner, visibility=visibility, status=status)),
        expected={
            "anonymous": 401,
            "outsider": outsider,
            "member": members,
            "tenant_admin": members,
            "cloud_admin": 409 if owner is None else 200,
        },
    )


@pytest.mark.parametrize("which", CHANGE_CASES)
def test_download_matrix(actors, images, which):
    """Download is for the owner tenant's members and cloud admins: sharing and publishing allow use only."""
    _kind, outsider, members, _staff = CHANGE_CASES[which]
    assert_access_matrix(
        actors,
        method="get",
        url=file_url(images[which]),
        expected={
            "anonymous": 401,
            "outsider": outsider,
            "member": members,
            "tenant_admin": members,
            "cloud_admin": 200,
        },
    )


def test_import_matrix(actors):
    assert_access_matrix(
        actors,
        method="post",
        url=f"{URL}import/",
        data={"tenant": actors.tenant.pk, "name": "web", "url": "http://127.0.0.1:9/x.qcow2", "disk_format": "qcow2"},
        expected={"anonymous": 401, "outsider": 400, "member": 202, "tenant_admin": 202, "cloud_admin": 202},
    )


@pytest.mark.parametrize("verb", ["share", "unshare"])
@pytest.mark.parametrize("which", CHANGE_CASES)
def test_share_matrix(actors, images, verb, which, make_tenant):
    _kind, outsider, members, staff = CHANGE_CASES[which]
    ok = 202 if verb == "share" else 200
    assert_access_matrix(
        actors,
        method="post",
        url=f"{detail(images[which])}{verb}/",
        data={"tenant": make_tenant("Tenant C").slug},
        expected={
            "anonymous": 401,
            "outsider": outsider,
            "member": ok if members == 200 else members,
            "tenant_admin": ok if members == 200 else members,
            "cloud_admin": ok if staff == 200 else staff,
        },
    )


@pytest.mark.parametrize("which", CHANGE_CASES)
def test_distribute_matrix(actors, images, which):
    """Cloud admins only; who cannot see the image gets 404, who can but is no cloud admin 403."""
    host = Host.objects.create(name="lctest-matrix", uri="qemu:///system", storage_pool="default")
    assert_access_matrix(
        actors,
        method="post",
        url=f"{detail(images[which])}distribute/",
        data={"host": host.pk},
        expected={
            "anonymous": 401,
            "outsider": 404 if which == "private" else 403,
            "member": 403,
            "tenant_admin": 403,
            "cloud_admin": 202,
        },
    )


# ---------------------------------------------------------------- listing


def test_who_lists_what(actors, images):
    assert ids(actors.client("member").get(URL)) == {images[k].pk for k in ("private", "shared", "public")}
    assert ids(actors.client("tenant_admin").get(URL)) == {images[k].pk for k in ("private", "shared", "public")}
    assert ids(actors.client("outsider").get(URL)) == {images[k].pk for k in ("shared", "public", "b")}
    assert ids(actors.client("cloud_admin").get(URL)) == {image.pk for image in images.values()}


def test_fields_and_who_sees_the_sharing(actors, images):
    shared = images["shared"]
    row = actors.client("member").get(detail(shared)).json()
    assert row["tenant"] == actors.tenant.pk
    assert row["owner"] == "member"
    assert row["shared_with"] == [actors.other_tenant.pk]
    assert row["upload_url"] == f"/api/v1/images/{shared.pk}/file/"
    assert row["uuid"] == str(shared.uuid)
    assert {"size", "virtual_size", "sha256", "status", "failure_reason", "received_bytes", "stored_format"} <= set(row)
    # The tenants it is shared with do not learn who else it is shared with.
    assert actors.client("outsider").get(detail(shared)).json()["shared_with"] is None
    public = actors.client("member").get(detail(images["public"])).json()
    assert public["tenant"] is None and public["shared_with"] is None
    assert actors.client("cloud_admin").get(detail(images["public"])).json()["shared_with"] == []


def test_filters_search_and_ordering(actors, images):
    iso = create_image(actor=actors.member, tenant=actors.tenant, name="Alpine ISO", disk_format="iso", size=10)
    client = actors.client("cloud_admin")
    assert ids(client.get(URL, {"kind": "iso"})) == {iso.pk}
    assert ids(client.get(URL, {"status": "uploading"})) == {iso.pk}
    assert ids(client.get(URL, {"visibility": "shared"})) == {images["shared"].pk}
    assert ids(client.get(URL, {"disk_format": "iso"})) == {iso.pk}
    assert ids(client.get(URL, {"os_type": "windows"})) == set()
    assert ids(client.get(URL, {"tenant": actors.other_tenant.pk})) == {images["b"].pk}
    assert ids(client.get(URL, {"search": "alpine"})) == {iso.pk}
    rows = client.get(URL, {"ordering": "-size"}).json()["results"]
    assert [row["size"] for row in rows] == sorted((row["size"] for row in rows), reverse=True)
    # Filtering by a tenant you cannot see is an invalid choice, not an empty list.
    assert_problem(actors.client("member").get(URL, {"tenant": actors.other_tenant.pk}), 400, "invalid")


def test_list_queries_are_constant(actors):
    def make_rows(n):
        for i in range(n):
            make_image(actors, visibility="shared" if i % 2 else "private", name="q")
            make_image(actors, owner=None, visibility="public", name="q")
            make_image(actors, owner="b", name="q")

    for role in ("member", "cloud_admin"):
        client = actors.client(role)

        def request(client=client):
            response = client.get(URL, {"page_size": 200})
            assert response.status_code == 200

        assert_constant_queries(make_rows, request, budget=8)


# ---------------------------------------------------------------- create, change, delete


def test_create_answers_the_image(actors):
    response = actors.client("member").post(
        URL,
        {
            "tenant": actors.tenant.pk,
            "name": "  Debian 12 ",
            "disk_format": "iso",
            "size": 12345,
            "os_type": "linux",
            "min_ram_mib": 512,
            "description": "netinst",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Debian 12"
    assert body["kind"] == "iso" and body["status"] == "uploading" and body["received_bytes"] == 0
    assert body["tenant"] == actors.tenant.pk and body["owner"] == "member" and body["shared_with"] == []
    assert AuditEvent.objects.filter(action="image.create", target_id=str(body["id"])).exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"size": 0}, "size"),
        ({"size": None}, "size"),
        ({"disk_format": "exe"}, "disk_format"),
        ({"name": " "}, "name"),
        ({"disk_format": "iso", "kind": "disk"}, "kind"),
        ({"visibility": "public"}, "visibility"),
        ({"tenant": None}, "tenant"),
        ({"tenant": 2**63 + 5}, "tenant"),
    ],
)
def test_create_refuses_bad_data(actors, data, field):
    body = {"tenant": actors.tenant.pk, "name": "x", "disk_format": "raw", "size": 100, **data}
    problem = assert_problem(actors.client("member").post(URL, body, format="json"), 400, "invalid")
    assert field in problem["errors"], problem
    assert not Image.objects.exists()


def test_quota_exceeded_at_create(actors):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"image_storage_gib": 1})
    body = {"tenant": actors.tenant.pk, "name": "big", "disk_format": "raw", "size": 2 * 1024**3}
    problem = assert_problem(actors.client("member").post(URL, body, format="json"), 403, "quota_exceeded")
    assert problem["resource"] == "image_storage_gib" and problem["requested"] == 2 and problem["limit"] == 1
    assert not Image.objects.exists()


def test_patch_changes_metadata_through_the_service(actors, images):
    client = actors.client("member")
    response = client.patch(
        detail(images["private"]), {"name": "renamed", "min_disk_gib": 20, "cloud_init": True}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "renamed" and response.json()["min_disk_gib"] == 20
    assert AuditEvent.objects.filter(action="image.update", target_id=str(images["private"].pk)).exists()
    problem = assert_problem(client.patch(detail(images["private"]), {"visibility": "public"}, format="json"), 400)
    assert "visibility" in problem["errors"]
    staff = actors.client("cloud_admin")
    assert staff.patch(detail(images["private"]), {"visibility": "public"}, format="json").json()["visibility"] == (
        "public"
    )
    assert images["private"].pk in ids(actors.client("outsider").get(URL))


def test_protected_images_cannot_be_deleted(actors, images, image_store):
    image = images["private"]
    client = actors.client("member")
    assert client.patch(detail(image), {"protected": True}, format="json").status_code == 200
    assert_problem(client.delete(detail(image)), 409, "conflict")
    assert image.path.exists()
    assert client.patch(detail(image), {"protected": False}, format="json").status_code == 200
    assert client.delete(detail(image)).status_code == 204
    assert not Image.objects.filter(pk=image.pk).exists()
    assert not image.path.exists()


def test_images_being_processed_cannot_be_deleted(actors):
    image = make_image(actors, status="inspecting")
    assert_problem(actors.client("member").delete(detail(image)), 409, "conflict")


# ---------------------------------------------------------------- upload


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk"])
def test_chunked_upload_of_a_real_image(actors, media, fmt, eager_tasks, django_capture_on_commit_callbacks):
    client = actors.client("member")
    data = media[fmt].read_bytes()
    image = announce(client, actors.tenant, media[fmt], fmt)
    assert image["status"] == "uploading"
    with django_capture_on_commit_callbacks(execute=True):
        responses = put_in_chunks(client, image["id"], data)
    assert [r.status_code for r in responses] == [200, 200, 202], responses[-1].content
    step = -(-len(data) // 3)
    assert responses[0].json() == {"received_bytes": step, "status": "uploading"}
    assert responses[1].json() == {"received_bytes": 2 * step, "status": "uploading"}
    assert responses[2].json()["status"] == "inspecting" and responses[2].json()["received_bytes"] == len(data)

    body = client.get(detail(image["id"])).json()
    assert body["status"] == "active", body["failure_reason"]
    assert body["stored_format"] == "qcow2" and body["virtual_size"] == 8 * MIB and body["min_disk_gib"] == 1
    stored = Image.objects.get(pk=image["id"]).path
    assert body["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(media["raw"]), str(stored)], check=True)
    ops = client.get("/api/v1/operations/", {"target_type": "images.image", "target_id": image["id"]}).json()
    assert [(op["kind"], op["state"], op["progress"]) for op in ops["results"]] == [("image.process", "succeeded", 100)]


def test_multi_megabyte_chunks_are_streamed(actors, media, settings, eager_tasks, django_capture_on_commit_callbacks):
    """8 MiB in 3 chunks of ~2.7 MiB: DATA_UPLOAD_MAX_MEMORY_SIZE (here 1 MiB) only guards request.body."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = MIB
    client = actors.client("tenant_admin")
    data = media["raw"].read_bytes()
    assert len(data) == 8 * MIB
    image = announce(client, actors.tenant, media["raw"], "raw")
    with django_capture_on_commit_callbacks(execute=True):
        responses = put_in_chunks(client, image["id"], data)
    assert [r.status_code for r in responses] == [200, 200, 202], [r.content for r in responses]
    body = client.get(detail(image["id"])).json()
    assert body["status"] == "active", body["failure_reason"]
    assert body["disk_format"] == "raw" and body["stored_format"] == "qcow2"
    stored = Image.objects.get(pk=image["id"]).path
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(media["raw"]), str(stored)], check=True)


def test_whole_file_without_content_range_and_download(actors, media, eager_tasks, django_capture_on_commit_callbacks):
    client = actors.client("member")
    image = announce(client, actors.tenant, media["iso"], "iso", name='../Debian 12 "netinst"\r\n')
    with django_capture_on_commit_callbacks(execute=True):
        response = put_chunk(client, image["id"], media["iso"].read_bytes())
    assert response.status_code == 202, response.content
    assert client.get(detail(image["id"])).json()["status"] == "active"

    download = client.get(file_url(image["id"]))
    assert download.status_code == 200
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Disposition"] == 'attachment; filename="debian-12-netinst.iso"'
    assert int(download["Content-Length"]) == media["iso"].stat().st_size
    assert b"".join(download.streaming_content) == media["iso"].read_bytes()
    download.close()


def test_download_is_for_owners_only_and_of_active_images(actors, images):
    shared = images["shared"]
    response = actors.client("tenant_admin").get(file_url(shared))
    assert b"".join(response.streaming_content) == shared.path.read_bytes()
    assert_problem(actors.client("outsider").get(file_url(shared)), 403, "permission_denied")
    uploading = make_image(actors, status="uploading")
    assert_problem(actors.client("member").get(file_url(uploading)), 409, "conflict")
    # Whatever the client accepts, a problem is a problem document (no 406).
    response = actors.client("outsider").get(file_url(shared), HTTP_ACCEPT="application/octet-stream")
    assert_problem(response, 403)


def test_wrong_offset_answers_where_to_resume(actors, media, eager_tasks, django_capture_on_commit_callbacks):
    client = actors.client("member")
    data = media["qcow2"].read_bytes()
    total = len(data)
    image = announce(client, actors.tenant, media["qcow2"], "qcow2")
    first = put_chunk(client, image["id"], data[:1000], content_range=f"bytes 0-999/{total}")
    assert first.json() == {"received_bytes": 1000, "status": "uploading"}

    skipped = put_chunk(client, image["id"], data[2000:3000], content_range=f"bytes 2000-2999/{total}")
    problem = assert_problem(skipped, 409, "conflict")
    assert problem["received_bytes"] == 1000 and "1000" in problem["detail"]
    again = put_chunk(client, image["id"], data[:1000], content_range=f"bytes 0-999/{total}")
    assert assert_problem(again, 409)["received_bytes"] == 1000

    with django_capture_on_commit_callbacks(execute=True):
        rest = put_chunk(client, image["id"], data[1000:], content_range=f"bytes 1000-{total - 1}/{total}")
    assert rest.status_code == 202, rest.content
    assert client.get(detail(image["id"])).json()["status"] == "active"
    # A finished upload takes no more bytes.
    assert assert_problem(put_chunk(client, image["id"], b"x"), 409)["received_bytes"] == total


@pytest.mark.parametrize(
    ("content_range", "body"),
    [
        ("bytes=0-9/1000", b"x" * 10),  # not the syntax
        ("bytes 0-9/*x", b"x" * 10),
        ("bytes 0-9/1000", b"x" * 11),  # the range and the body disagree
        ("bytes 9-0/1000", b""),
        ("bytes 0-9/999", b"x" * 10),  # not the announced total
    ],
)
def test_inconsistent_content_range_is_refused_and_changes_nothing(actors, content_range, body):
    client = actors.client("member")
    image = announce(client, actors.tenant, 1000, "raw")
    problem = assert_problem(put_chunk(client, image["id"], body, content_range=content_range), 400, "invalid")
    assert "Content-Range" in problem["errors"]
    row = client.get(detail(image["id"])).json()
    assert (row["status"], row["received_bytes"]) == ("uploading", 0)


def test_content_length_is_required(actors):
    client = actors.client("member")
    image = announce(client, actors.tenant, 1000, "raw")
    chunked = put_chunk(client, image["id"], b"x" * 10, CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked")
    assert "Content-Length" in assert_problem(chunked, 400, "invalid")["errors"]
    bad = put_chunk(client, image["id"], b"x" * 10, CONTENT_LENGTH="ten")
    assert "Content-Length" in assert_problem(bad, 400, "invalid")["errors"]
    assert client.get(detail(image["id"])).json()["received_bytes"] == 0


@pytest.mark.parametrize("with_range", [False, True])
def test_oversized_upload_fails_the_image_and_leaves_nothing(actors, media, image_store, with_range):
    client = actors.client("member")
    data = media["qcow2"].read_bytes()
    announced = len(data) - 10
    image = announce(client, actors.tenant, announced, "qcow2")
    if with_range:
        assert put_in_chunks(client, image["id"], data[:4096], pieces=1, total=announced)[0].status_code == 200
        last = f"bytes 4096-{len(data) - 1}/{announced}"
        response = put_chunk(client, image["id"], data[4096:], content_range=last)
    else:
        response = put_chunk(client, image["id"], data)
    problem = assert_problem(response, 400, "invalid")
    assert "larger than the announced size" in problem["detail"]
    row = client.get(detail(image["id"])).json()
    assert row["status"] == "failed" and "larger than the announced size" in row["failure_reason"]
    assert row["size"] == 0 and row["received_bytes"] == 0
    assert store_files(image_store) == []


def test_hostile_file_fails_with_the_reason_visible(
    actors, media, image_store, eager_tasks, django_capture_on_commit_callbacks
):
    client = actors.client("member")
    image = announce(client, actors.tenant, media["backing"], "qcow2")
    with django_capture_on_commit_callbacks(execute=True):
        response = put_chunk(client, image["id"], media["backing"].read_bytes())
    assert response.status_code == 202
    row = client.get(detail(image["id"])).json()
    assert row["status"] == "failed"
    assert "safety checks (backing_file)" in row["failure_reason"]
    assert store_files(image_store) == []
    (op,) = client.get("/api/v1/operations/", {"target_id": image["id"]}).json()["results"]
    assert op["state"] == "failed" and "backing_file" in op["error"]


# ---------------------------------------------------------------- import


def test_import_from_a_url(actors, http_server, eager_tasks, django_capture_on_commit_callbacks):
    client = actors.client("member")
    body = {
        "tenant": actors.tenant.pk,
        "name": "web",
        "url": f"{http_server}/disk.vmdk",
        "disk_format": "vmdk",
        "os_type": "other",
        "min_ram_mib": 256,
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{URL}import/", body, format="json")
    assert response.status_code == 202, response.content
    queued = response.json()
    assert queued["status"] == "queued" and queued["source_url"] == body["url"] and queued["os_type"] == "other"
    row = client.get(detail(queued["id"])).json()
    assert row["status"] == "active", row["failure_reason"]
    assert row["stored_format"] == "qcow2" and row["min_ram_mib"] == 256
    ops = client.get("/api/v1/operations/", {"target_id": queued["id"], "ordering": "created_at"}).json()["results"]
    assert {(op["kind"], op["state"]) for op in ops} == {("image.import", "succeeded"), ("image.process", "succeeded")}


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.qcow2", "not a url"])
def test_import_only_takes_http_urls(actors, url):
    body = {"tenant": actors.tenant.pk, "name": "x", "url": url, "disk_format": "qcow2"}
    problem = assert_problem(actors.client("member").post(f"{URL}import/", body, format="json"), 400, "invalid")
    assert "url" in problem["errors"]
    assert not Image.objects.exists()


def test_an_imported_image_takes_no_upload(actors):
    image = make_image(actors, status="queued")
    Image.objects.filter(pk=image.pk).update(source_url="http://127.0.0.1/x")
    assert assert_problem(put_chunk(actors.client("member"), image.pk, b""), 409)["received_bytes"] == 0


# ---------------------------------------------------------------- sharing


def test_share_accept_and_unshare_change_what_the_outsider_lists(actors, images):
    image = images["private"]
    member, outsider = actors.client("member"), actors.client("outsider")
    assert image.pk not in ids(outsider.get(URL))

    response = member.post(f"{detail(image)}share/", {"tenant": actors.other_tenant.slug}, format="json")
    assert response.status_code == 202, response.content
    share = response.json()
    assert share["status"] == "pending" and share["tenant"] is None and share["reference"] == "tenant-b"
    assert member.get(detail(image)).json()["visibility"] == "shared"
    assert member.get(detail(image)).json()["shared_with"] == []  # nobody accepted yet
    assert image.pk not in ids(outsider.get(URL))

    # Tenant B's admin (the outsider) accepts: B sees and can use it, not change or download it.
    assert outsider.post(f"/api/v1/image-shares/{share['id']}/accept/").status_code == 200
    assert member.get(detail(image)).json()["shared_with"] == [actors.other_tenant.pk]
    assert image.pk in ids(outsider.get(URL))
    assert outsider.get(detail(image)).status_code == 200
    assert outsider.patch(detail(image), {"name": "mine"}, format="json").status_code == 403
    assert_problem(outsider.get(file_url(image)), 403)

    # Withdrawn by the owner, named by the id it now knows.
    response = member.post(f"{detail(image)}unshare/", {"tenant": actors.other_tenant.pk}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["shared_with"] == []
    assert image.pk not in ids(outsider.get(URL))
    assert outsider.get(detail(image)).status_code == 404
    actions = list(AuditEvent.objects.filter(target_id=str(image.pk)).values_list("action", flat=True))
    assert {"image.share", "image.share_accept", "image.unshare"} <= set(actions)


@pytest.mark.parametrize("tenant", ["", " ", "a b", "ünïcode", "x" * 101, None, True])
def test_share_with_a_malformed_reference(actors, images, tenant):
    response = actors.client("member").post(f"{detail(images['private'])}share/", {"tenant": tenant}, format="json")
    assert "tenant" in assert_problem(response, 400, "invalid")["errors"]
    assert not images["private"].shares.exists()


def test_share_with_the_own_tenant_is_refused(actors, images):
    client = actors.client("member")
    url = f"{detail(images['private'])}share/"
    for own in (actors.tenant.slug, actors.tenant.pk):
        assert "tenant" in assert_problem(client.post(url, {"tenant": own}, format="json"), 400)["errors"]
    assert not images["private"].shares.exists()


# ---------------------------------------------------------------- distribution


def test_distribute_to_a_real_pool(actors, media, lctest_pool, eager_tasks, django_capture_on_commit_callbacks):
    member = actors.client("member")
    image = announce(member, actors.tenant, media["qcow2"], "qcow2")
    with django_capture_on_commit_callbacks(execute=True):
        assert put_chunk(member, image["id"], media["qcow2"].read_bytes()).status_code == 202
    host = Host.objects.create(name="lctest-host", uri="qemu:///system", storage_pool=lctest_pool)
    url = f"{detail(image['id'])}distribute/"

    assert_problem(member.post(url, {"host": host.pk}, format="json"), 403, "permission_denied")
    staff = actors.client("cloud_admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(url, {"host": host.pk}, format="json")
    assert response.status_code == 202, response.content
    queued = response.json()
    assert queued["kind"] == "image.distribute" and queued["state"] == "queued" and queued["user"] == "cloudadmin"

    operation = staff.get(f"/api/v1/operations/{queued['id']}/").json()
    assert operation["state"] == "succeeded", operation["error"]
    # The owner tenant's members follow the copy of their image too.
    assert member.get(f"/api/v1/operations/{queued['id']}/").json()["progress"] == 100
    stored = Image.objects.get(pk=image["id"])
    replica = stored.replicas.get(host=host)
    volume = find_volume(host.uri, pool_name=lctest_pool, name=replica.volume)
    assert volume is not None
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(stored.path), volume.path], check=True)


def test_distribute_needs_an_active_image_and_a_host(actors):
    host = Host.objects.create(name="lctest-h", uri="qemu:///system", storage_pool="default")
    staff = actors.client("cloud_admin")
    uploading = make_image(actors, status="uploading")
    assert_problem(staff.post(f"{detail(uploading)}distribute/", {"host": host.pk}, format="json"), 400)
    active = make_image(actors)
    response = staff.post(f"{detail(active)}distribute/", {"host": host.pk + 1000}, format="json")
    assert "host" in assert_problem(response, 400, "invalid")["errors"]
    assert not Operation.objects.filter(kind="image.distribute").exists()


def test_source_url_is_only_shown_to_the_owner_tenant(actors, images):
    shared = images["shared"]
    Image.objects.filter(pk=shared.pk).update(source_url="https://user:secret@mirror.test/x.qcow2?sig=1")
    owner_view = actors.client("member").get(detail(shared.pk)).json()
    outsider_view = actors.client("outsider").get(detail(shared.pk)).json()
    assert owner_view["source_url"].startswith("https://user:secret@")
    assert outsider_view["source_url"] is None
