"""Query budgets: the list pages must not run a query per row."""

from __future__ import annotations

import itertools

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portal.factories import make_instance
from portal.models import Membership
from portal.services import create_api_token
from portal.testing import assert_constant_queries
from vms.models import Flavor
from vms.operations import create_operation, fail, succeed

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

    # 7th: the top bar's notification bell (test_the_bell_costs_one_query_on_every_page).
    assert_constant_queries(make_rows, ok(client_for(actors.user(role)), reverse("flavors")), budget=7)


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
    # sections' own rows (instances, operations, hosts) are covered in test_dashboard_overview. +1: the top bar's
    # notification bell.
    assert_constant_queries(make_rows, ok(client_for(actors.tenant_admin), reverse("overview")), budget=16)


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
@pytest.mark.parametrize("page", ["flavors", "tokens", "members", "keypairs", "networks", "security_groups", "images"])
def test_the_bell_costs_one_query_on_every_page(actors, role, page):
    """The bell's unread count is one query, whatever the number of operations: the only one of the page that
    reads operations (vms.notifications.unread_count)."""
    instance = make_instance(actors.tenant, name="web")

    def make_rows(n: int) -> None:
        for i in range(n):
            operation = create_operation(kind="instance.reboot", target=instance, tenant=actors.tenant)
            (succeed if i % 2 else fail)(operation=operation, **({} if i % 2 else {"error": "boom"}))

    client = client_for(actors.user(role))
    make_rows(2)
    with CaptureQueriesContext(connection) as few:
        assert 'data-unread="2"' in client.get(reverse(page)).content.decode()
    make_rows(20)
    with CaptureQueriesContext(connection) as many:
        assert 'data-unread="22"' in client.get(reverse(page)).content.decode()
    assert len(few.captured_queries) == len(many.captured_queries)
    reading = [q["sql"] for q in many.captured_queries if "vms_operation" in q["sql"]]
    assert len(reading) == 1, reading
