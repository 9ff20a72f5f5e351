"""Access matrix of every dashboard page and POST action (anonymous, outsider, member, tenant admin, cloud admin)."""

from __future__ import annotations

import itertools

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from portal.middleware import SESSION_KEY
from portal.models import ApiToken, Membership
from portal.services import create_api_token
from portal.testing import ROLES, assert_access_matrix

pytestmark = pytest.mark.django_db

LOGIN = 302  # anonymous users are sent to the login page
PAGES = ["overview", "flavors", "tokens", "members"]
_serial = itertools.count()


def fresh_membership(tenant, role=Membership.Role.MEMBER) -> Membership:
    user = get_user_model().objects.create_user(username=f"extra{next(_serial)}", password="pw-Secret-123")
    return Membership.objects.create(user=user, tenant=tenant, role=role)


@pytest.mark.parametrize("name", PAGES)
def test_pages_need_login_and_open_for_every_user(actors, name):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse(name),
        expected={"anonymous": LOGIN, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        api=False,
    )


@pytest.mark.parametrize("name", PAGES)
def test_anonymous_is_redirected_to_the_login_page(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_login_page(actors):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("login"),
        # Signed-in users are sent on to the overview.
        expected={"anonymous": 200, "outsider": 302, "member": 302, "tenant_admin": 302, "cloud_admin": 302},
        api=False,
    )


def test_logout_needs_post(actors):
    expected = {"anonymous": 302, "outsider": 302, "member": 302, "tenant_admin": 302, "cloud_admin": 302}
    assert_access_matrix(actors, method="post", url=reverse("logout"), expected=expected, api=False)
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("logout"),
        expected={"anonymous": 405, "outsider": 405, "member": 405, "tenant_admin": 405, "cloud_admin": 405},
        api=False,
    )


def test_switch_tenant(actors):
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("switch_tenant"),
        data={"tenant": actors.tenant.pk},
        expected={"anonymous": LOGIN, "outsider": 404, "member": 302, "tenant_admin": 302, "cloud_admin": 302},
        api=False,
    )


def test_switch_tenant_rejects_get_and_garbage(actors):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("switch_tenant"),
        expected={"anonymous": LOGIN, "outsider": 405, "member": 405, "tenant_admin": 405, "cloud_admin": 405},
        api=False,
    )
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("switch_tenant"),
        data={"tenant": "not-a-number"},
        expected={"anonymous": LOGIN, "outsider": 404, "member": 404, "tenant_admin": 404, "cloud_admin": 404},
        api=False,
    )


def test_outsider_cannot_switch_into_a_foreign_tenant(actors):
    client = actors.client("outsider", api=False)
    response = client.post(reverse("switch_tenant"), {"tenant": actors.tenant.pk})
    assert response.status_code == 404
    assert SESSION_KEY not in client.session


def test_token_create(actors):
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("tokens"),
        data={"name": "ci", "scope": "read"},
        expected={"anonymous": LOGIN, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        api=False,
    )
    # Each signed-in actor created exactly one token of their own.
    for role in ROLES[1:]:
        assert ApiToken.objects.filter(user=actors.user(role)).count() == 1
    assert ApiToken.objects.count() == 4


def test_token_revoke_is_for_the_owner_only(actors):
    """Personal tokens: even cloud admins cannot revoke another user's token through the dashboard."""
    made: list[ApiToken] = []

    def url():
        token, _raw = create_api_token(user=actors.member, name=f"t{len(made)}")
        made.append(token)
        return reverse("token_revoke", args=[token.pk])

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        expected={"anonymous": LOGIN, "outsider": 404, "member": 302, "tenant_admin": 404, "cloud_admin": 404},
        api=False,
    )
    revoked = [t.name for t in made if ApiToken.objects.get(pk=t.pk).revoked_at is not None]
    assert revoked == ["t2"]  # the member's own request, third in the matrix order


def test_token_revoke_needs_post(actors):
    token, _raw = create_api_token(user=actors.member, name="ci")
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("token_revoke", args=[token.pk]),
        expected={"anonymous": LOGIN, "outsider": 405, "member": 405, "tenant_admin": 405, "cloud_admin": 405},
        api=False,
    )


def test_add_member(actors):
    """Adding works on the actor's active tenant; a plain member is refused."""
    newcomer = get_user_model().objects.create_user(username="newcomer", password="pw-Secret-123")
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("members"),
        data={"username": "newcomer", "role": "member"},
        # outsider: adds to their own tenant B; tenant_admin: adds to A;
        # cloud_admin (active tenant A, the first by name): already a member now, so the form shows the error.
        expected={"anonymous": LOGIN, "outsider": 302, "member": 403, "tenant_admin": 302, "cloud_admin": 200},
        api=False,
    )
    tenants = set(Membership.objects.filter(user=newcomer).values_list("tenant__name", flat=True))
    assert tenants == {"Tenant A", "Tenant B"}


def test_change_role(actors):
    assert_access_matrix(
        actors,
        method="post",
        url=lambda: reverse("member_role", args=[fresh_membership(actors.tenant).pk]),
        data={"role": "admin"},
        expected={"anonymous": LOGIN, "outsider": 404, "member": 403, "tenant_admin": 302, "cloud_admin": 302},
        api=False,
    )
    # Only the tenant admin's and the cloud admin's requests changed anything.
    promoted = Membership.objects.filter(tenant=actors.tenant, user__username__startswith="extra", role="admin")
    assert promoted.count() == 2


def test_remove_member(actors):
    made: list[Membership] = []

    def url():
        made.append(fresh_membership(actors.tenant))
        return reverse("member_remove", args=[made[-1].pk])

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        expected={"anonymous": LOGIN, "outsider": 404, "member": 403, "tenant_admin": 302, "cloud_admin": 302},
        api=False,
    )
    remaining = [m.user.username for m in made if Membership.objects.filter(pk=m.pk).exists()]
    assert remaining == [made[0].user.username, made[1].user.username, made[2].user.username]


@pytest.mark.parametrize("name", ["member_role", "member_remove"])
def test_member_actions_need_post(actors, name):
    membership = fresh_membership(actors.tenant)
    assert_access_matrix(
        actors,
        method="get",
        url=reverse(name, args=[membership.pk]),
        expected={"anonymous": LOGIN, "outsider": 405, "member": 405, "tenant_admin": 405, "cloud_admin": 405},
        api=False,
    )


def test_csrf_is_enforced(actors):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(actors.tenant_admin)
    response = client.post(reverse("members"), {"username": "member", "role": "admin"})
    assert response.status_code == 403
    response = client.post(reverse("tokens"), {"name": "x", "scope": "read"})
    assert response.status_code == 403
    assert not ApiToken.objects.exists()
