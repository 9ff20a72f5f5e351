"""Issue #17 (7c): an instance's user-data is for its owner, the tenant's admins and cloud admins.

user-data often carries secrets (passwords, tokens in a cloud-config); as Nova keeps it from plain
members of a project, another member of the same tenant must not read it: not through the API, the
dashboard, the admin site or the live updates.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from portal.factories import make_instance
from portal.models import Membership
from vms.realtime import instance_payload

SECRET = "#cloud-config\npassword: lctest-s3cret-of-member-a\n"


@pytest.fixture
def member_b(actors, make_user):
    """A second plain member of the same tenant as ``actors.member`` (member A)."""
    user = make_user("memberb")
    Membership.objects.create(user=user, tenant=actors.tenant, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def instance_of_a(actors):
    return make_instance(actors.tenant, name="vm-a", owner=actors.member, user_data=SECRET)


def api_get(user, url):
    client = Client()
    client.force_login(user)
    return client.get(url, HTTP_ACCEPT="application/json")


def test_another_member_of_the_tenant_cannot_read_the_user_data(actors, member_b, instance_of_a):
    url = f"/api/v1/instances/{instance_of_a.pk}/"
    response = api_get(member_b, url)
    assert response.status_code == 200  # B may see and operate the instance …
    assert response.json()["user_data"] is None  # … but not read what A launched it with
    assert b"s3cret" not in response.content
    listing = api_get(member_b, f"/api/v1/instances/?tenant={actors.tenant.pk}")
    assert listing.status_code == 200 and b"s3cret" not in listing.content
    page = api_get(member_b, reverse("instance_detail", args=[instance_of_a.pk]))
    assert page.status_code == 200 and b"s3cret" not in page.content
    assert "user_data" not in instance_payload(instance_of_a)  # the live updates never carry it
    admin_page = api_get(member_b, f"/admin/vms/instance/{instance_of_a.pk}/change/")
    assert admin_page.status_code == 302 and b"s3cret" not in admin_page.content  # the admin site: staff only


def test_the_owner_tenant_admins_and_cloud_admins_read_it(actors, instance_of_a):
    url = f"/api/v1/instances/{instance_of_a.pk}/"
    for user in (actors.member, actors.tenant_admin, actors.cloud_admin):
        response = api_get(user, url)
        assert response.status_code == 200, user
        assert response.json()["user_data"] == SECRET, user
    assert api_get(actors.outsider, url).status_code == 404
    admin_page = api_get(actors.cloud_admin, f"/admin/vms/instance/{instance_of_a.pk}/change/")
    assert admin_page.status_code == 200 and b"s3cret" in admin_page.content


def test_an_instance_without_owner_is_for_tenant_admins_only(actors, member_b):
    """The owner left (their account deleted): the tenant's admins still read it, members do not."""
    orphan = make_instance(actors.tenant, name="vm-orphan", owner=None, user_data=SECRET)
    url = f"/api/v1/instances/{orphan.pk}/"
    assert api_get(actors.member, url).json()["user_data"] is None
    assert api_get(actors.tenant_admin, url).json()["user_data"] == SECRET
