"""What the dashboard pages show, and what their forms do (real database, real services)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from portal.middleware import SESSION_KEY
from portal.models import QUOTA_RESOURCES, ApiToken, AuditEvent, Membership
from portal.services import create_api_token
from vms.models import Flavor
from vms.services import create_flavor, reserve_instances

pytestmark = pytest.mark.django_db


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def card(html: str, resource: str) -> str:
    """The HTML of one quota card on the overview."""
    start = html.index(">", html.index(f'data-resource="{resource}"')) + 1
    end = html.find("lc-quota-card", start)
    return html[start : end if end != -1 else html.index("Usage in percent")]


def text(html: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# ---------------------------------------------------------------- overview


def test_overview_shows_the_tenants_quota_usage(actors, make_tenant):
    tenant = make_tenant("Lab Physics", instances=-1, vcpus=8, ram_mib=4096, disk_gib=100)
    Membership.objects.create(user=actors.member, tenant=tenant, role=Membership.Role.ADMIN)
    flavor = create_flavor(actor=actors.cloud_admin, name="m1.small", vcpus=2, ram_mib=1024, disk_gib=20)
    reserve_instances(actor=actors.member, tenant=tenant, flavor=flavor, names=["a", "b", "c"])

    client = login(actors.member)
    client.post(reverse("switch_tenant"), {"tenant": tenant.pk})
    response = client.get(reverse("overview"))
    html = response.content.decode()

    assert response.status_code == 200
    assert 'id="lc-tenant-title">Lab Physics<' in html
    assert text(card(html, "vcpus")).startswith("vCPUs 75% 6 / 8")  # 3 × 2 of 8: amber
    assert "bg-warning" in card(html, "vcpus") and 'aria-valuenow="75"' in card(html, "vcpus")
    assert "2 available" in text(card(html, "vcpus"))
    assert "3,072 / 4,096" in text(card(html, "ram_mib"))
    assert "60 / 100" in text(card(html, "disk_gib")) and "bg-success" in card(html, "disk_gib")
    assert "unlimited" in text(card(html, "instances")) and "3 / ∞" in text(card(html, "instances"))
    assert 'id="lc-role">Tenant admin<' in html
    assert re.search(r'id="lc-member-count">\s*<i class="bi bi-people me-1"></i>1</a>', html)
    # The chart gets the limited resources only, with their percentages.
    chart = response.context["chart"]
    assert chart["labels"][0] == "vCPUs" and chart["values"][0] == 75
    # Every resource but the unlimited instances: vCPUs, RAM, disk, snapshots, snapshot storage, images, image storage,
    # security groups and their rules.
    assert len(chart["values"]) == len(QUOTA_RESOURCES) - 1 == 9
    assert 'id="lc-quota-chart-data"' in html
    assert "vendor/chartjs/chart.umd.min.js" in html


def test_overview_colours_a_full_quota_red(actors, make_tenant):
    tenant = make_tenant("Full", vcpus=2)
    Membership.objects.create(user=actors.outsider, tenant=tenant)
    flavor = create_flavor(actor=actors.cloud_admin, name="m1.small", vcpus=2, ram_mib=1024, disk_gib=1)
    reserve_instances(actor=actors.outsider, tenant=tenant, flavor=flavor, names=["only"])
    client = login(actors.outsider)
    client.post(reverse("switch_tenant"), {"tenant": tenant.pk})
    html = client.get(reverse("overview")).content.decode()
    assert "bg-danger" in card(html, "vcpus") and "0 available" in text(card(html, "vcpus"))


def test_overview_of_a_member_and_of_the_cloud_admin(actors):
    html = login(actors.member).get(reverse("overview")).content.decode()
    assert "Tenant A" in html and 'id="lc-role">Member<' in html
    assert re.search(r'id="lc-member-count">\s*<i class="bi bi-people me-1"></i>2</a>', html)
    html = login(actors.cloud_admin).get(reverse("overview")).content.decode()
    assert 'id="lc-role">Cloud admin<' in html


def test_user_without_tenant_gets_a_friendly_empty_state(make_user):
    client = login(make_user("loner"))
    for name in ["overview", "flavors", "members"]:
        html = client.get(reverse(name)).content.decode()
        assert "You are not a member of any tenant yet" in html, name
        assert "ask your cloud administrator" in html.lower(), name
    assert "No tenant" in html  # the tenant switcher says so too


def test_outsider_never_sees_tenant_a(actors):
    private = create_flavor(
        actor=actors.cloud_admin, name="a.secret", vcpus=1, ram_mib=512, disk_gib=1, is_public=False
    )
    private.tenants.set([actors.tenant])
    client = login(actors.outsider)
    for name in ["overview", "flavors", "tokens", "members"]:
        html = client.get(reverse(name)).content.decode()
        assert "Tenant A" not in html, name
        assert "a.secret" not in html, name
        assert "Tenant B" in html, name


# ---------------------------------------------------------------- tenant switcher


def test_switching_tenant_changes_the_pages(actors):
    Membership.objects.create(user=actors.member, tenant=actors.other_tenant)
    client = login(actors.member)
    html = client.get(reverse("overview")).content.decode()
    assert 'id="lc-tenant-title">Tenant A<' in html
    assert f'name="tenant" value="{actors.other_tenant.pk}"' in html  # offered in the switcher

    response = client.post(reverse("switch_tenant"), {"tenant": actors.other_tenant.pk, "next": reverse("members")})
    assert response.status_code == 302 and response["Location"] == reverse("members")
    assert client.session[SESSION_KEY] == actors.other_tenant.pk
    response = client.get(reverse("members"))
    assert "You are now working in Tenant B." in response.content.decode()
    assert [m.user.username for m in response.context["memberships"]] == ["member", "outsider"]


def test_switch_ignores_an_offsite_next(actors):
    client = login(actors.member)
    response = client.post(reverse("switch_tenant"), {"tenant": actors.tenant.pk, "next": "https://evil.example/"})
    assert response["Location"] == reverse("overview")


def test_switcher_lists_only_the_users_tenants(actors, make_tenant):
    make_tenant("Zeta")
    html = login(actors.member).get(reverse("overview")).content.decode()
    assert "Zeta" not in html and "Tenant B" not in html
    html = login(actors.cloud_admin).get(reverse("overview")).content.decode()
    assert "Zeta" in html and "Tenant B" in html


def test_cannot_switch_into_a_disabled_tenant(actors):
    actors.other_tenant.enabled = False
    actors.other_tenant.save()
    assert login(actors.outsider).post(reverse("switch_tenant"), {"tenant": actors.other_tenant.pk}).status_code == 404


# ---------------------------------------------------------------- flavors


@pytest.fixture
def flavors(actors):
    admin = actors.cloud_admin
    public = create_flavor(actor=admin, name="m1.tiny", vcpus=1, ram_mib=512, disk_gib=5, description="Tiny one")
    for_a = create_flavor(
        actor=admin, name="gpu.a", vcpus=8, ram_mib=16384, disk_gib=80, is_public=False, tenants=[actors.tenant]
    )
    for_b = create_flavor(
        actor=admin, name="gpu.b", vcpus=8, ram_mib=16384, disk_gib=80, is_public=False, tenants=[actors.other_tenant]
    )
    retired = create_flavor(actor=admin, name="m0.old", vcpus=1, ram_mib=256, disk_gib=1, disabled=True)
    return public, for_a, for_b, retired


def test_flavors_page_shows_what_the_tenant_can_use(actors, flavors):
    html = login(actors.member).get(reverse("flavors")).content.decode()
    assert 'data-flavor="m1.tiny"' in html and "Tiny one" in html and "512 MiB" in html
    assert 'data-flavor="gpu.a"' in html and "16 GiB" in html and "Private" in html
    assert "gpu.b" not in html  # private to tenant B
    assert "m0.old" not in html  # disabled
    assert "Edit" not in html

    html = login(actors.outsider).get(reverse("flavors")).content.decode()
    assert "gpu.b" in html and "gpu.a" not in html and "m1.tiny" in html


def test_flavors_page_for_staff_lists_every_flavor_with_disabled_marked(actors, flavors):
    response = login(actors.cloud_admin).get(reverse("flavors"))
    html = response.content.decode()
    assert [f.name for f in response.context["flavors"]] == ["m0.old", "m1.tiny", "gpu.a", "gpu.b"]
    old_row = html[html.index('data-flavor="m0.old"') :].split("</tr>")[0]
    assert "lc-row-muted" in html and "Disabled" in old_row
    gpu_b_row = html[html.index('data-flavor="gpu.b"') :].split("</tr>")[0]
    assert "Tenant B" in gpu_b_row  # who a private flavor is shared with


def test_flavors_page_sorts_by_its_column_headers(actors, flavors):
    client = login(actors.cloud_admin)

    def names(**params) -> list[str]:
        return [f.name for f in client.get(reverse("flavors"), params).context["flavors"]]

    assert names(sort="name") == ["gpu.a", "gpu.b", "m0.old", "m1.tiny"]
    assert set(names(sort="-ram")[:2]) == {"gpu.a", "gpu.b"} and names(sort="-ram")[-1] == "m0.old"
    assert names(sort="vcpus")[0] == "m0.old"
    assert names(sort="nonsense") == names()  # the usual order
    html = client.get(reverse("flavors"), {"sort": "-ram"}).content.decode()
    assert 'aria-sort="descending" class="text-end"><a' in html and "sort=ram" in html


def test_private_flavor_follows_its_sharing(actors, flavors):
    _public, for_a, _for_b, _retired = flavors
    client = login(actors.member)
    assert "gpu.a" in client.get(reverse("flavors")).content.decode()
    for_a.tenants.clear()
    assert "gpu.a" not in client.get(reverse("flavors")).content.decode()
    for_a.tenants.add(actors.other_tenant)
    assert "gpu.a" in login(actors.outsider).get(reverse("flavors")).content.decode()


def test_no_flavors_empty_state(actors):
    assert Flavor.objects.count() == 0
    assert "No flavors available" in login(actors.member).get(reverse("flavors")).content.decode()


# ---------------------------------------------------------------- API tokens


def test_token_is_shown_once_then_only_its_prefix(actors):
    client = login(actors.member)
    response = client.post(reverse("tokens"), {"name": "ci runner", "scope": "write", "expires_at": ""})
    assert response.status_code == 200
    raw = response.context["raw_token"]
    html = response.content.decode()
    assert raw.startswith("lc_") and f'value="{raw}"' in html
    assert 'id="lc-copy-token"' in html
    assert "no-store" in response["Cache-Control"]
    token = ApiToken.objects.get(user=actors.member)
    assert token.name == "ci runner" and token.scope == "write" and token.expires_at is None
    assert token.digest == ApiToken.hash(raw)

    html = client.get(reverse("tokens")).content.decode()
    assert raw not in html
    assert f"{token.prefix}…" in html
    assert "Read and write" in html and "active" in html


def test_token_expiry_date_and_validation(actors):
    client = login(actors.member)
    tomorrow = timezone.localdate() + timedelta(days=1)
    client.post(reverse("tokens"), {"name": "short", "scope": "read", "expires_at": tomorrow.isoformat()})
    token = ApiToken.objects.get()
    assert timezone.localtime(token.expires_at).date() == tomorrow

    yesterday = timezone.localdate() - timedelta(days=1)
    response = client.post(reverse("tokens"), {"name": "old", "scope": "read", "expires_at": yesterday.isoformat()})
    html = response.content.decode()
    assert response.status_code == 200 and response.context["raw_token"] is None
    assert "The expiry date must be in the future." in html
    assert "is-invalid" in html
    assert ApiToken.objects.count() == 1

    response = client.post(reverse("tokens"), {"name": "", "scope": "admin"})
    assert response.context["form"].errors.keys() == {"name", "scope"}
    assert ApiToken.objects.count() == 1


def test_revoke_token(actors):
    token, _raw = create_api_token(user=actors.member, name="deploy")
    client = login(actors.member)
    html = client.get(reverse("tokens")).content.decode()
    assert "data-lc-confirm=" in html and reverse("token_revoke", args=[token.pk]) in html

    response = client.post(reverse("token_revoke", args=[token.pk]), follow=True)
    token.refresh_from_db()
    assert token.revoked_at is not None
    html = response.content.decode()
    assert "Token “deploy” has been revoked." in html
    assert "revoked" in html
    assert reverse("token_revoke", args=[token.pk]) not in html  # nothing left to revoke
    assert AuditEvent.objects.filter(action="token.revoke", target_id=str(token.pk)).count() == 1


def test_token_statuses(actors):
    create_api_token(user=actors.member, name="a")
    expired, _raw = create_api_token(user=actors.member, name="b")
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    tokens = login(actors.member).get(reverse("tokens")).context["tokens"]
    assert {t.name: t.status for t in tokens} == {"a": "active", "b": "expired"}


def test_tokens_page_lists_only_own_tokens(actors):
    create_api_token(user=actors.tenant_admin, name="admins-token")
    assert "admins-token" not in login(actors.member).get(reverse("tokens")).content.decode()
    assert "admins-token" not in login(actors.cloud_admin).get(reverse("tokens")).content.decode()


# ---------------------------------------------------------------- members


def test_members_read_only_for_a_member(actors):
    client = login(actors.member)
    html = client.get(reverse("members")).content.decode()
    assert 'data-member="member"' in html and 'data-member="tadmin"' in html
    assert 'data-member="outsider"' not in html
    assert 'id="lc-add-member"' not in html
    assert not re.search(r"/members/\d+/(role|remove)/", html)
    newcomer = get_user_model().objects.create_user(username="newcomer")
    response = client.post(reverse("members"), {"username": "newcomer", "role": "admin"})
    assert response.status_code == 403
    assert not Membership.objects.filter(user=newcomer).exists()


def test_tenant_admin_adds_changes_and_removes_a_member(actors, make_user):
    make_user("newcomer")
    client = login(actors.tenant_admin)
    html = client.get(reverse("members")).content.decode()
    assert 'id="lc-add-member"' in html

    response = client.post(reverse("members"), {"username": "newcomer", "role": "member"}, follow=True)
    assert "newcomer has been added to Tenant A as Member." in response.content.decode()
    membership = Membership.objects.get(user__username="newcomer", tenant=actors.tenant)
    assert membership.role == "member"

    response = client.post(reverse("member_role", args=[membership.pk]), {"role": "admin"}, follow=True)
    assert "newcomer is now Tenant admin." in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == "admin"

    response = client.post(reverse("member_remove", args=[membership.pk]), follow=True)
    assert "newcomer has been removed from Tenant A." in response.content.decode()
    assert not Membership.objects.filter(pk=membership.pk).exists()
    actions = list(AuditEvent.objects.filter(action__startswith="membership.").values_list("action", flat=True))
    assert sorted(actions) == ["membership.create", "membership.delete", "membership.update"]


def test_add_member_errors_are_shown_on_the_form(actors):
    client = login(actors.tenant_admin)
    response = client.post(reverse("members"), {"username": "ghost", "role": "member"})
    assert response.status_code == 200
    assert "No user named “ghost”." in response.content.decode()
    assert response.context["form"].errors == {"username": ["No user named “ghost”."]}

    response = client.post(reverse("members"), {"username": "member", "role": "member"})
    assert "member is already a member of Tenant A." in response.content.decode()
    assert Membership.objects.filter(tenant=actors.tenant).count() == 2


def test_last_admin_rule_error_is_shown_and_nothing_changes(actors):
    client = login(actors.tenant_admin)
    own = Membership.objects.get(user=actors.tenant_admin, tenant=actors.tenant)

    response = client.post(reverse("member_role", args=[own.pk]), {"role": "member"}, follow=True)
    assert "A tenant must keep at least one tenant admin." in response.content.decode()
    own.refresh_from_db()
    assert own.role == "admin"

    response = client.post(reverse("member_remove", args=[own.pk]), follow=True)
    assert "A tenant must keep at least one tenant admin." in response.content.decode()
    assert Membership.objects.filter(pk=own.pk).exists()
    assert "alert-danger" in response.content.decode()


def test_invalid_role_is_refused(actors):
    membership = Membership.objects.get(user=actors.member)
    client = login(actors.tenant_admin)
    response = client.post(reverse("member_role", args=[membership.pk]), {"role": "god"}, follow=True)
    assert "Choose a valid role." in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == "member"


# ---------------------------------------------------------------- login / layout


def test_login_through_the_form(actors):
    client = Client()
    html = client.get(reverse("login")).content.decode()
    assert 'name="username"' in html and "csrfmiddlewaretoken" in html
    response = client.post(reverse("login"), {"username": "member", "password": "wrong"})
    assert response.status_code == 200 and "alert-danger" in response.content.decode()
    response = client.post(reverse("login"), {"username": "member", "password": "pw-Secret-123"})
    assert response.status_code == 302 and response["Location"] == reverse("overview")


def test_layout_navigation(actors):
    html = login(actors.member).get(reverse("overview")).content.decode()
    for name in ["overview", "flavors", "members", "tokens", "logout", "switch_tenant", "set_language"]:
        assert f'href="{reverse(name)}"' in html or f'action="{reverse(name)}"' in html, name
    assert reverse("admin:index") not in html
    # Every asset and link stays on this origin (a random CSRF token may
    # well contain the letters "cdn", so look at the URLs themselves).
    urls = re.findall(r"""(?:src|href|action)=["']([^"']*)["']""", html)
    assert urls and not [url for url in urls if "//" in url], urls
    assert "/static/vendor/bootstrap/css/bootstrap.min.css" in html
    assert "/static/vendor/bootstrap-icons/bootstrap-icons.min.css" in html
    html = login(actors.cloud_admin).get(reverse("overview")).content.decode()
    assert f'href="{reverse("admin:index")}"' in html


def test_friendly_error_pages(actors):
    token, _raw = create_api_token(user=actors.tenant_admin, name="not yours")
    response = login(actors.member).post(reverse("token_revoke", args=[token.pk]))
    assert response.status_code == 404
    assert "This page does not exist" in response.content.decode()
    response = login(actors.member).post(reverse("members"), {"username": "outsider", "role": "member"})
    assert response.status_code == 403
    assert "You are not allowed to do this" in response.content.decode()
    response = Client().get("/no-such-page/")
    assert response.status_code == 404 and "Back to the overview" in response.content.decode()


def test_favicon_ico_leads_to_the_portals_icon(client):
    """Browsers ask for /favicon.ico on pages without an icon link (the API's JSON): not a 404."""
    from django.contrib.staticfiles import finders

    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"].endswith("portal/favicon.svg")
    assert finders.find("portal/favicon.svg")


def test_members_and_tokens_pages_sort_by_their_column_headers(actors):
    client = login(actors.tenant_admin)
    members = client.get(reverse("members"), {"sort": "-user"}).context["memberships"]
    assert [m.user.username for m in members] == ["tadmin", "member"]
    by_role = client.get(reverse("members"), {"sort": "role"}).context["memberships"]
    assert [m.role for m in by_role] == ["admin", "member"]
    for name in ("older", "newer"):
        create_api_token(user=actors.tenant_admin, name=name)
    tokens = client.get(reverse("tokens"), {"sort": "-created"}).context["tokens"]
    assert [t.name for t in tokens] == ["newer", "older"]
    assert [t.name for t in client.get(reverse("tokens"), {"sort": "name"}).context["tokens"]] == ["newer", "older"]
