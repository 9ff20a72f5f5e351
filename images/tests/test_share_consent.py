"""Sharing an image needs the receiving tenant's consent (issue #17, item 4).

The attacker is a plain member of tenant A. Before, sharing pushed an image straight into any tenant's
catalogue, named by id or slug, and the answer (200 or 400, "there is no tenant …") told which tenants
exist. Now a share is pending until an admin of the receiving tenant accepts it, and every reference
that is not the owner itself gets one answer.
"""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from images.models import Image, ImageShare
from images.selectors import visible_to_tenant
from images.services import update_image
from images.sharing import accept_share, share_image
from portal.factories import make_flavor
from portal.models import AuditEvent
from portal.services import ServiceError
from portal.testing import assert_access_matrix, assert_constant_queries
from vms.lifecycle import launch_instances

pytestmark = pytest.mark.django_db
User = get_user_model()

IMAGES = "/api/v1/images/"


def make_image(tenant, name: str) -> Image:
    return Image.objects.create(
        name=name, tenant=tenant, disk_format="qcow2", stored_format="qcow2", status=Image.Status.ACTIVE, size=4096
    )


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def catalogue_ids(client) -> set[int]:
    response = client.get(IMAGES, {"page_size": 500})
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def assert_not_in_catalogue_of_b(actors, image: Image) -> None:
    """Tenant B (its admin is the "outsider") neither sees nor can launch the image."""
    b_admin = actors.client("outsider")
    assert image.pk not in catalogue_ids(b_admin)
    assert b_admin.get(f"{IMAGES}{image.pk}/").status_code == 404
    page = login(actors.outsider).get(reverse("images")).content.decode()
    assert f'data-image="{image.pk}"' not in page
    assert login(actors.outsider).get(reverse("image_detail", args=[image.pk])).status_code == 404
    assert not Image.objects.filter(visible_to_tenant(tenant_id=actors.other_tenant.pk), pk=image.pk).exists()
    with pytest.raises(ServiceError, match="not available to this tenant"):
        launch_instances(
            actor=actors.outsider, tenant=actors.other_tenant, name="pushed", flavor=make_flavor(), image=image
        )


# ---------------------------------------------------------------- the attacker


@pytest.mark.parametrize("reference", ["slug", "id"])
def test_a_member_cannot_push_an_image_into_another_tenants_catalogue(actors, reference):
    image = make_image(actors.tenant, "crypto-miner")
    target = actors.other_tenant.slug if reference == "slug" else actors.other_tenant.pk
    response = actors.client("member").post(f"{IMAGES}{image.pk}/share/", {"tenant": target}, format="json")
    assert response.status_code < 300, response.content
    assert_not_in_catalogue_of_b(actors, image)


def test_a_member_cannot_push_an_image_into_another_tenants_catalogue_from_the_dashboard(actors):
    image = make_image(actors.tenant, "crypto-miner")
    response = login(actors.member).post(reverse("image_share", args=[image.pk]), {"tenant": actors.other_tenant.slug})
    assert response.status_code == 302
    assert_not_in_catalogue_of_b(actors, image)


def probes(actors, make_tenant) -> dict[str, str]:
    """Tenant references an attacker tries: existing ones (id, slug, a disabled tenant) and unknown ones."""
    disabled = make_tenant("Dormant Lab")
    disabled.enabled = False
    disabled.save()
    return {
        "existing id": str(actors.other_tenant.pk),
        "existing slug": actors.other_tenant.slug,
        "disabled tenant's slug": disabled.slug,
        "unknown id": "987654",
        "unknown slug": "no-such-lab",
        "id past 64 bits": str(2**64),
    }


def masked(value, reference: str):
    """``value`` (decoded JSON) with the reference the request named masked wherever it is echoed."""
    if isinstance(value, dict):
        return {key: masked(item, reference) for key, item in value.items()}
    if isinstance(value, list):
        return [masked(item, reference) for item in value]
    if isinstance(value, str):
        return "<reference>" if value == reference else value.replace(f"“{reference}”", "“<reference>”")
    return value


def test_probing_tenants_through_the_api_gets_one_answer(actors, make_tenant):
    """Same status, same body (but for the reference echoed and the new rows' ids), same number of queries."""
    client = actors.client("member")
    answers = {}
    for label, reference in probes(actors, make_tenant).items():
        image = make_image(actors.tenant, "probe")  # each probe is a first share of an image of its own
        with CaptureQueriesContext(connection) as queries:
            response = client.post(f"{IMAGES}{image.pk}/share/", {"tenant": reference}, format="json")
        body = json.loads(response.content)
        for key in ("id", "image", "created_at", "updated_at", "uuid", "upload_url"):
            body.pop(key, None)
        shape = json.dumps(masked(body, reference), sort_keys=True)
        answers[label] = (response.status_code, shape, len(queries.captured_queries))
    assert len(set(answers.values())) == 1, json.dumps(answers, indent=1, ensure_ascii=False)


def test_probing_tenants_through_the_dashboard_gets_one_answer(actors, make_tenant):
    answers = {}
    for label, reference in probes(actors, make_tenant).items():
        image = make_image(actors.tenant, "probe")
        client = login(actors.member)
        with CaptureQueriesContext(connection) as queries:
            response = client.post(reverse("image_share", args=[image.pk]), {"tenant": reference})
        shown = tuple(masked(str(message), reference) for message in get_messages(response.wsgi_request))
        errors = tuple(
            masked(error, reference)
            for error in re.findall(r'invalid-feedback d-block">([^<]*)<', response.content.decode())
        )
        location = re.sub(r"/images/\d+/", "/images/<pk>/", response.get("Location", ""))
        answers[label] = (response.status_code, location, shown, errors, len(queries.captured_queries))
    assert len(set(answers.values())) == 1, json.dumps(answers, indent=1, ensure_ascii=False)


# ---------------------------------------------------------------- the whole flow, through the API

SHARES = "/api/v1/image-shares/"


def test_share_accept_reject_and_withdraw_through_the_api(actors, make_user):
    """A's member offers an image to B; B's member sees the offer but cannot answer; B's admin accepts (B may
    launch it), then removes it again; A sees each status and withdraws the share."""
    image = make_image(actors.tenant, "physics-workstation")
    owner = actors.client("member")
    b_admin = actors.client("outsider")
    b_member = APIClient()
    b_member.force_login(make_user("b-member"))
    actors.other_tenant.memberships.create(user=User.objects.get(username="b-member"), role="member")

    share = owner.post(f"{IMAGES}{image.pk}/share/", {"tenant": actors.other_tenant.slug}, format="json").json()
    assert share["status"] == "pending" and share["tenant"] is None and share["tenant_name"] is None

    incoming = b_member.get(SHARES, {"direction": "incoming"}).json()["results"]
    assert [row["id"] for row in incoming] == [share["id"]]
    assert incoming[0]["tenant_name"] == "Tenant B" and incoming[0]["owner_tenant_name"] == "Tenant A"
    assert incoming[0]["image_name"] == "physics-workstation" and incoming[0]["requested_by"] == "member"
    assert b_member.get(SHARES, {"direction": "outgoing"}).json()["count"] == 0
    assert b_member.post(f"{SHARES}{share['id']}/accept/").status_code == 403  # members see, admins answer
    assert image.pk not in catalogue_ids(b_admin)

    accepted = b_admin.post(f"{SHARES}{share['id']}/accept/")
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    assert image.pk in catalogue_ids(b_admin) and image.pk in catalogue_ids(b_member)
    assert Image.objects.filter(visible_to_tenant(tenant_id=actors.other_tenant.pk), pk=image.pk).exists()
    mine = owner.get(SHARES, {"image": image.pk}).json()["results"]
    assert [(row["status"], row["tenant"], row["tenant_name"]) for row in mine] == [
        ("accepted", actors.other_tenant.pk, "Tenant B")
    ]
    assert owner.get(f"{IMAGES}{image.pk}/").json()["shared_with"] == [actors.other_tenant.pk]
    assert b_admin.post(f"{SHARES}{share['id']}/accept/").status_code == 200  # answered already: no change

    removed = b_admin.post(f"{SHARES}{share['id']}/reject/")
    assert removed.status_code == 200 and removed.json()["status"] == "rejected"
    assert image.pk not in catalogue_ids(b_admin)
    rejected = owner.get(f"{SHARES}{share['id']}/").json()
    assert rejected["status"] == "rejected" and rejected["tenant"] is None  # only the reference the owner gave
    # Offered again under the same reference: the share as it is, still rejected.
    again = owner.post(f"{IMAGES}{image.pk}/share/", {"tenant": actors.other_tenant.slug}, format="json")
    assert again.status_code == 202 and again.json()["id"] == share["id"] and again.json()["status"] == "rejected"

    assert owner.delete(f"{SHARES}{share['id']}/").status_code == 204
    assert not image.shares.exists()
    assert b_admin.get(f"{SHARES}{share['id']}/").status_code == 404
    events = list(AuditEvent.objects.order_by("pk").values_list("action", "tenant__slug"))
    assert events == [
        ("image.share", "tenant-a"),
        ("image.share_accept", "tenant-b"),
        ("image.share_reject", "tenant-b"),
        ("image.unshare", "tenant-a"),
    ]


def test_a_reference_naming_no_tenant_stays_pending_and_is_withdrawn(actors):
    image = make_image(actors.tenant, "img")
    owner = actors.client("member")
    ghost = owner.post(f"{IMAGES}{image.pk}/share/", {"tenant": "ghost-lab"}, format="json").json()
    # The same tenant named twice (slug, then id): the second is kept like an unknown one, no tenant of its own.
    by_slug = owner.post(f"{IMAGES}{image.pk}/share/", {"tenant": "tenant-b"}, format="json").json()
    by_id = owner.post(f"{IMAGES}{image.pk}/share/", {"tenant": actors.other_tenant.pk}, format="json").json()
    assert {ghost["status"], by_slug["status"], by_id["status"]} == {"pending"}
    rows = {row.reference: row.tenant_id for row in ImageShare.objects.filter(image=image)}
    assert rows == {"ghost-lab": None, "tenant-b": actors.other_tenant.pk, str(actors.other_tenant.pk): None}
    # B sees one offer; cloud admins see them all, and cannot accept one that names no tenant.
    assert actors.client("outsider").get(SHARES).json()["count"] == 1
    staff = actors.client("cloud_admin")
    assert staff.post(f"{SHARES}{ghost['id']}/accept/").status_code == 409
    assert ImageShare.objects.get(pk=ghost["id"]).status == "pending"
    # Withdrawn by reference (as before through unshare/), or by id.
    assert owner.post(f"{IMAGES}{image.pk}/unshare/", {"tenant": "ghost-lab"}, format="json").status_code == 200
    assert owner.post(f"{IMAGES}{image.pk}/unshare/", {"tenant": "never-shared"}, format="json").status_code == 200
    assert owner.delete(f"{SHARES}{by_id['id']}/").status_code == 204
    assert list(ImageShare.objects.values_list("reference", flat=True)) == ["tenant-b"]


def test_making_the_image_private_withdraws_every_share(actors):
    image = make_image(actors.tenant, "img")
    share_image(actor=actors.member, image=image, reference="tenant-b")
    accept_share(actor=actors.outsider, share=image.shares.get())
    share_image(actor=actors.member, image=image, reference="ghost")
    image.refresh_from_db()
    update_image(actor=actors.member, image=image, visibility=Image.Visibility.PRIVATE)
    assert not image.shares.exists()
    assert image.pk not in catalogue_ids(actors.client("outsider"))


# ---------------------------------------------------------------- access matrices


@pytest.fixture
def offered(actors, make_tenant):
    """Shares of an image of tenant B (the outsider's, so the outsider is its owner) offered to tenant A
    (member, tenant admin), to a third tenant C, and under a reference that names no tenant."""
    image = make_image(actors.other_tenant, "b-image")
    third = make_tenant("Tenant C")

    def share(reference: str) -> ImageShare:
        row = share_image(actor=actors.outsider, image=image, reference=reference)
        return row

    return {"a": lambda: share(actors.tenant.slug), "c": lambda: share(third.slug), "none": lambda: share("ghost")}


def renew(share: ImageShare) -> ImageShare:
    """The same offer made afresh (pending), for the next actor of a matrix."""
    ImageShare.objects.filter(pk=share.pk).delete()
    return share_image(actor=None, image=share.image, reference=share.reference)


def test_share_list_matrix(actors, offered):
    offered["a"]()
    assert_access_matrix(
        actors,
        method="get",
        url=SHARES,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


# (which share) -> expected status of the owner (outsider), A's member, A's admin, cloud admin
RETRIEVE = {"a": (200, 200, 200, 200), "c": (200, 404, 404, 200), "none": (200, 404, 404, 200)}
ANSWER = {"a": (403, 403, 200, 200), "c": (403, 404, 404, 200), "none": (403, 404, 404, 409)}
WITHDRAW = {"a": (204, 403, 403, 204), "c": (204, 404, 404, 204), "none": (204, 404, 404, 204)}


@pytest.mark.parametrize("which", RETRIEVE)
def test_share_retrieve_matrix(actors, offered, which):
    share = offered[which]()
    owner, member, admin, staff = RETRIEVE[which]
    assert_access_matrix(
        actors,
        method="get",
        url=f"{SHARES}{share.pk}/",
        expected={"anonymous": 401, "outsider": owner, "member": member, "tenant_admin": admin, "cloud_admin": staff},
    )


@pytest.mark.parametrize("verb", ["accept", "reject"])
@pytest.mark.parametrize("which", ANSWER)
def test_share_answer_matrix(actors, offered, which, verb):
    share = offered[which]()
    owner, member, admin, staff = ANSWER[which]

    def url() -> str:
        return f"{SHARES}{renew(share).pk}/{verb}/"

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        expected={"anonymous": 401, "outsider": owner, "member": member, "tenant_admin": admin, "cloud_admin": staff},
    )


@pytest.mark.parametrize("which", WITHDRAW)
def test_share_withdraw_matrix(actors, offered, which):
    share = offered[which]()
    owner, member, admin, staff = WITHDRAW[which]
    assert_access_matrix(
        actors,
        method="delete",
        url=lambda: f"{SHARES}{renew(share).pk}/",
        expected={"anonymous": 401, "outsider": owner, "member": member, "tenant_admin": admin, "cloud_admin": staff},
    )


LOGIN = 302


@pytest.mark.parametrize("verb", ["accept", "reject"])
@pytest.mark.parametrize("which", ANSWER)
def test_dashboard_answer_matrix(actors, offered, which, verb):
    share = offered[which]()
    owner, member, admin, staff = ANSWER[which]
    ok = {200: 302, 409: 302}
    assert_access_matrix(
        actors,
        method="post",
        url=lambda: reverse(f"image_share_{verb}", args=[renew(share).pk]),
        expected={
            "anonymous": LOGIN,
            "outsider": ok.get(owner, owner),
            "member": ok.get(member, member),
            "tenant_admin": ok.get(admin, admin),
            "cloud_admin": ok.get(staff, staff),
        },
        api=False,
    )


@pytest.mark.parametrize("which", WITHDRAW)
def test_dashboard_withdraw_matrix(actors, offered, which):
    share = offered[which]()
    owner, member, admin, staff = WITHDRAW[which]
    # the image page's gate first: A's members do not see B's private image at all (404)
    expected = {204: 302, 403: 404}

    def url() -> str:
        fresh = renew(share)
        return reverse("image_share_withdraw", args=[fresh.image_id, fresh.pk])

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        expected={
            "anonymous": LOGIN,
            "outsider": expected.get(owner, owner),
            "member": expected.get(member, member),
            "tenant_admin": expected.get(admin, admin),
            "cloud_admin": expected.get(staff, staff),
        },
        api=False,
    )


def test_a_withdraw_url_must_name_the_shares_own_image(actors):
    mine = make_image(actors.tenant, "mine")
    other = make_image(actors.tenant, "other")
    share = share_image(actor=actors.member, image=other, reference="tenant-b")
    assert login(actors.member).post(reverse("image_share_withdraw", args=[mine.pk, share.pk])).status_code == 404
    assert ImageShare.objects.filter(pk=share.pk).exists()


# ---------------------------------------------------------------- query budgets


@pytest.mark.parametrize("role", ["outsider", "member", "cloud_admin"])
def test_share_list_queries_are_constant(actors, role, make_tenant):
    serial = iter(range(1000))

    def make_rows(n: int) -> None:
        for _ in range(n):
            i = next(serial)
            theirs = make_image(actors.other_tenant, f"b{i}")
            accept_share(actor=None, share=share_image(actor=actors.outsider, image=theirs, reference="tenant-a"))
            share_image(actor=actors.outsider, image=make_image(actors.other_tenant, f"p{i}"), reference="tenant-a")
            ours = make_image(actors.tenant, f"a{i}")
            share_image(actor=actors.member, image=ours, reference=make_tenant(f"T{i}").slug)
            share_image(actor=actors.member, image=ours, reference=f"ghost-{i}")

    client = actors.client(role)

    def request() -> None:
        response = client.get(SHARES, {"page_size": 500})
        assert response.status_code == 200

    assert_constant_queries(make_rows, request, budget=6)


@pytest.mark.parametrize("role", ["member", "tenant_admin"])
def test_images_page_with_pending_shares_queries_are_constant(actors, role):
    serial = iter(range(1000))
    client = login(actors.user(role))

    def make_rows(n: int) -> None:
        for _ in range(n):
            image = make_image(actors.other_tenant, f"offer {next(serial)}")
            share_image(actor=actors.outsider, image=image, reference="tenant-a")

    def request() -> None:
        response = client.get(reverse("images"))
        assert response.status_code == 200 and 'id="lc-incoming-shares"' in response.content.decode()

    assert_constant_queries(make_rows, request, budget=9)
