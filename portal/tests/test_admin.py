"""Admin site: staff only, usage columns without N+1, changes audited, quotas always present."""

import pytest
from django.urls import reverse

from portal.models import AuditEvent, Tenant
from portal.testing import assert_access_matrix, assert_constant_queries
from vms.services import create_flavor, reserve_instances

ADMIN_PAGES = [
    "admin:index",
    "admin:portal_tenant_changelist",
    "admin:portal_quota_changelist",
    "admin:portal_membership_changelist",
    "admin:portal_apitoken_changelist",
    "admin:portal_auditevent_changelist",
    "admin:vms_flavor_changelist",
    "admin:vms_host_changelist",
    "admin:vms_instance_changelist",
    "admin:vms_operation_changelist",
]
STAFF_ONLY = {"anonymous": 302, "outsider": 302, "member": 302, "tenant_admin": 302, "cloud_admin": 200}


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_admin_pages_are_for_cloud_admins_only(actors, page):
    assert_access_matrix(actors, method="GET", url=reverse(page), expected=STAFF_ONLY, api=False)


def test_tenant_change_page_access(actors):
    url = reverse("admin:portal_tenant_change", args=[actors.tenant.pk])
    assert_access_matrix(actors, method="GET", url=url, expected=STAFF_ONLY, api=False)


def test_tenant_list_shows_usage_against_limits(actors, client):
    flavor = create_flavor(actor=actors.cloud_admin, name="adm.f", vcpus=3, ram_mib=256, disk_gib=2)
    reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["a", "b"])
    client.force_login(actors.cloud_admin)
    page = client.get(reverse("admin:portal_tenant_changelist")).content.decode()
    limits = actors.tenant.quota
    assert f"2 / {limits.instances}" in page
    assert f"6 / {limits.vcpus}" in page


def test_tenant_and_quota_lists_have_constant_query_counts(actors, client, make_tenant):
    client.force_login(actors.cloud_admin)
    counter = {"n": 0}

    def make_rows(n):
        for _ in range(n):
            counter["n"] += 1
            make_tenant(f"Bulk {counter['n']}")

    for page in ("admin:portal_tenant_changelist", "admin:portal_quota_changelist"):
        assert_constant_queries(make_rows, lambda page=page: client.get(reverse(page)), budget=15)


def test_creating_a_tenant_in_the_admin_creates_its_quota_and_an_audit_event(actors, client):
    client.force_login(actors.cloud_admin)
    form = {
        "name": "Admin Made",
        "slug": "admin-made",
        "description": "",
        "enabled": "on",
        "quota-TOTAL_FORMS": "0",
        "quota-INITIAL_FORMS": "0",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
    }
    response = client.post(reverse("admin:portal_tenant_add"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant = Tenant.objects.get(slug="admin-made")
    assert tenant.quota.instances >= 0
    assert AuditEvent.objects.filter(action="tenant.create", tenant=tenant).exists()


def test_audit_events_are_read_only_in_the_admin(actors, client):
    event = AuditEvent.objects.create(action="x", username="member")
    client.force_login(actors.cloud_admin)
    assert client.get(reverse("admin:portal_auditevent_add")).status_code == 403
    assert client.post(reverse("admin:portal_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_quota_forms_show_usage_and_say_when_a_limit_is_below_it(actors, client):
    """Each limit shows the tenant's usage beside it; a limit set under the usage is allowed (as in Nova) but said,
    on the quota's own page and in the tenant's (#19)."""
    from django.contrib.messages import get_messages

    flavor = create_flavor(actor=actors.cloud_admin, name="adm.q", vcpus=3, ram_mib=256, disk_gib=2)
    reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["a", "b"])
    quota = actors.tenant.quota
    client.force_login(actors.cloud_admin)
    page = client.get(reverse("admin:portal_quota_change", args=[quota.pk])).content.decode()
    assert "-1 means unlimited. In use now: 6" in page and "In use now: 2" in page  # vCPUs, instances
    tenant_page = client.get(reverse("admin:portal_tenant_change", args=[actors.tenant.pk])).content.decode()
    assert "In use now: 6" in tenant_page

    values = {**quota.limits(), "tenant": actors.tenant.pk, "vcpus": 4}
    response = client.post(reverse("admin:portal_quota_change", args=[quota.pk]), values, follow=True)
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("vCPUs limit of tenant" in note and "(4) is below what it uses now (6)" in note for note in said), said
    quota.refresh_from_db()
    assert quota.vcpus == 4

    values["vcpus"] = 10
    response = client.post(reverse("admin:portal_quota_change", args=[quota.pk]), values, follow=True)
    assert not any("below what it uses now" in str(m) for m in get_messages(response.wsgi_request))
