"""Query budgets: the list pages must not run a query per row."""

from __future__ import annotations

import itertools

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from portal.models import Membership
from portal.services import create_api_token
from portal.testing import assert_constant_queries
from vms.models import Flavor

pytestmark = pytest.mark.django_db
_serial = itertools.count()


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def ok(client: Client, url: str):
    def request():
        response = client.get(url)
        assert response.status_code == 200

    return request


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_flavors_page_queries(actors, role):
    def make_rows(n: int) -> None:
        for _ in range(n):
            i = next(_serial)
            Flavor.objects.create(name=f"pub{i}", vcpus=1, ram_mib=512, disk_gib=1)
            private = Flavor.objects.create(name=f"priv{i}", vcpus=2, ram_mib=1024, disk_gib=2, is_public=False)
            private.tenants.set([actors.tenant, actors.other_tenant])
            Flavor.objects.create(name=f"off{i}", vcpus=1, ram_mib=512, disk_gib=1, disabled=True)

    assert_constant_queries(make_rows, ok(client_for(actors.user(role)), reverse("flavors")), budget=6)


def test_tokens_page_queries(actors):
    def make_rows(n: int) -> None:
        for _ in range(n):
            create_api_token(user=actors.member, name=f"token{next(_serial)}")

    assert_constant_queries(make_rows, ok(client_for(actors.member), reverse("tokens")), budget=6)


@pytest.mark.parametrize("role", ["member", "tenant_admin"])
def test_members_page_queries(actors, role):
    User = get_user_model()

    def make_rows(n: int) -> None:
        for _ in range(n):
            user = User.objects.create_user(username=f"user{next(_serial)}", first_name="Ada", last_name="L.")
            Membership.objects.create(user=user, tenant=actors.tenant)

    assert_constant_queries(make_rows, ok(client_for(actors.user(role)), reverse("members")), budget=7)


def test_overview_queries(actors):
    def make_rows(n: int) -> None:
        for _ in range(n):
            user = get_user_model().objects.create_user(username=f"user{next(_serial)}")
            Membership.objects.create(user=user, tenant=actors.tenant)

    # +2: disk and snapshot usage; +2: instances by state and recent operations (vms.dashboard). The activity
    # sections' own rows (instances, operations, hosts) are covered in test_dashboard_overview.
    assert_constant_queries(make_rows, ok(client_for(actors.tenant_admin), reverse("overview")), budget=15)
