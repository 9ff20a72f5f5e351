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
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from images.models import Image
from images.selectors import visible_to_tenant
from portal.factories import make_flavor
from portal.services import ServiceError
from vms.lifecycle import launch_instances

pytestmark = pytest.mark.django_db

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
