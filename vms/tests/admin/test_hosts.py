"""Admin site of OpenStack clouds: staff only, credentials write-only (never rendered, blank keeps, encrypted,
not audited), saving through vms.hosts, the verify/refresh action, cloud projects, placement rules, cloud flavors."""

from __future__ import annotations

import json

import pytest
from django.contrib.admin import helpers
from django.contrib.messages import get_messages
from django.urls import reverse

from portal.models import AuditEvent
from portal.testing import assert_access_matrix, assert_constant_queries
from vms.compute.openstack import login
from vms.models import CloudFlavor, CloudProject, Flavor, Host, PlacementRule

pytestmark = pytest.mark.django_db

STAFF_ONLY = {"anonymous": 302, "outsider": 302, "member": 302, "tenant_admin": 302, "cloud_admin": 200}
REFUSING = "http://127.0.0.1:9/v3"
PASSWORD = "s3cret-Pa55word-xyz"
SECRET = "app-cred-S3CRET-abc"
LOGIN = {"username": "portal", "password": PASSWORD, "project_name": "admin"}
CLOUD_FORM = {
    "name": "os1",
    "kind": "openstack",
    "enabled": "on",
    "cloud_name": "",
    "auth_url": REFUSING,
    "region": "",
    "verify_tls": "on",
    "project_mode": "managed",
    "project_domain": "Default",
    "os_network": "",
}


def make_cloud(name: str = "os1", **fields) -> Host:
    host = Host(name=name, kind=Host.Kind.OPENSTACK, auth_url=REFUSING, **fields)
    host.credentials = login.encrypt_credentials(LOGIN)
    host.save()
    return host


@pytest.fixture
def os_cloud(db):
    return make_cloud()


@pytest.fixture
def flavor(db):
    return Flavor.objects.create(name="m1.small", vcpus=2, ram_mib=1024, disk_gib=10)


def url(model: str, view: str = "changelist", *args) -> str:
    return reverse(f"admin:vms_{model}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def run_action(client, model: str, action: str, objs):
    data = {"action": action, helpers.ACTION_CHECKBOX_NAME: [o.pk for o in objs]}
    return client.post(url(model), data, follow=True)


def test_pages_are_for_cloud_admins_only(actors, os_cloud, flavor):
    project = CloudProject.objects.create(host=os_cloud, tenant=actors.tenant, project_id="p1")
    rule = PlacementRule.objects.create(tenant=actors.tenant, host=os_cloud)
    row = CloudFlavor.objects.create(host=os_cloud, flavor=flavor, cloud_id="n1", signature="x")
    for page in (
        url("host"),
        url("host", "change", os_cloud.pk),
        url("host", "add"),
        url("cloudproject"),
        url("cloudproject", "change", project.pk),
        url("placementrule"),
        url("placementrule", "change", rule.pk),
        url("cloudflavor"),
        url("cloudflavor", "change", row.pk),
    ):
        assert_access_matrix(actors, method="GET", url=page, expected=STAFF_ONLY, api=False)


def test_add_cloud_encrypts_and_audits_without_secret(actors, client):
    client.force_login(actors.cloud_admin)
    data = {**CLOUD_FORM, "os_username": "portal", "os_password": PASSWORD, "os_project_name": "admin"}
    response = client.post(url("host", "add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    host = Host.objects.get(name="os1")
    assert host.kind == Host.Kind.OPENSTACK and PASSWORD not in host.credentials
    assert login.decrypt_credentials(host) == LOGIN
    event = AuditEvent.objects.get(action="host.create")
    assert event.detail["via"] == "admin" and PASSWORD not in json.dumps(event.detail)


def test_change_page_never_renders_a_secret(actors, os_cloud, client):
    os_cloud.credentials = login.encrypt_credentials(
        {**LOGIN, "application_credential_id": "ac", "application_credential_secret": SECRET}
    )
    os_cloud.save()
    client.force_login(actors.cloud_admin)
    html = client.get(url("host", "change", os_cloud.pk)).content.decode()
    assert PASSWORD not in html and SECRET not in html
    assert 'name="os_password"' in html and 'name="os_application_credential_secret"' in html
    assert 'value="portal"' in html  # the login names are shown
    assert 'name="uri"' not in html  # the libvirt settings are not a cloud's
    for field in ("state", "cpus", "credentials", "kind"):
        assert f'name="{field}"' not in html, field


def test_blank_password_keeps_the_stored_one(actors, os_cloud, client):
    client.force_login(actors.cloud_admin)
    data = {**CLOUD_FORM, "region": "R2", "os_username": "portal", "os_password": "", "os_project_name": "admin"}
    response = client.post(url("host", "change", os_cloud.pk), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    os_cloud.refresh_from_db()
    assert os_cloud.region == "R2" and login.decrypt_credentials(os_cloud) == LOGIN
    data["os_password"] = "new-Pass-2"
    assert client.post(url("host", "change", os_cloud.pk), data).status_code == 302
    os_cloud.refresh_from_db()
    assert login.decrypt_credentials(os_cloud)["password"] == "new-Pass-2"
    assert "new-Pass-2" not in json.dumps(list(AuditEvent.objects.values_list("detail", flat=True)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"auth_url": "", "cloud_name": ""}, "Keystone URL"),
        ({"os_password": ""}, "complete login"),
    ],
)
def test_bad_cloud_is_refused_and_nothing_saved(actors, client, changes, message):
    client.force_login(actors.cloud_admin)
    data = {**CLOUD_FORM, "os_username": "portal", "os_password": PASSWORD, "os_project_name": "admin", **changes}
    response = client.post(url("host", "add"), data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert PASSWORD not in response.content.decode()
    assert not Host.objects.exists() and not AuditEvent.objects.exists()


def test_libvirt_host_needs_its_uri(actors, client):
    client.force_login(actors.cloud_admin)
    response = client.post(url("host", "add"), {"name": "node1", "kind": "libvirt", "enabled": "on"})
    assert response.status_code == 200 and "needs its URI" in response.content.decode()
    response = client.post(url("host", "add"), {"name": "node1", "kind": "libvirt", "uri": "qemu:///system"})
    assert response.status_code == 302, response.content.decode()[:3000]
    host = Host.objects.get(name="node1")
    assert host.storage_pool == "default" and host.vnc_listen == "127.0.0.1"


def test_verify_action_marks_an_unreachable_cloud_down(actors, os_cloud, client):
    node = Host.objects.create(name="node1", uri="test:///default", storage_pool="default-pool")
    client.force_login(actors.cloud_admin)
    response = run_action(client, "host", "refresh_capacity", [os_cloud, node])
    assert response.status_code == 200
    os_cloud.refresh_from_db()
    node.refresh_from_db()
    assert os_cloud.state == Host.State.DOWN and "does not answer" in os_cloud.state_reason
    assert node.state == Host.State.UP
    text = " ".join(messages_of(response))
    assert "os1 did not answer" in text and "does not answer" in text and "node1: 16 CPUs" in text


def test_host_changelist_has_constant_queries_with_clouds(actors, client):
    client.force_login(actors.cloud_admin)

    def make_rows(n: int) -> None:
        for _ in range(n):
            make_cloud(f"os{Host.objects.count() + 1}")

    def request():
        response = client.get(url("host"))
        assert response.status_code == 200
        assert PASSWORD not in response.content.decode()

    assert_constant_queries(make_rows, request, budget=10)


def test_map_a_tenant_and_push_quota(actors, os_cloud, client):
    client.force_login(actors.cloud_admin)
    response = client.post(
        url("cloudproject", "add"), {"host": os_cloud.pk, "tenant": actors.tenant.pk, "project_id": "abc"}
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    project = CloudProject.objects.get()
    assert project.project_id == "abc" and not project.managed
    assert AuditEvent.objects.filter(action="cloudproject.create").exists()
    response = run_action(client, "cloudproject", "push_quota_now", [project])
    project.refresh_from_db()
    assert "does not answer" in project.quota_error
    assert "quota not pushed to os1" in " ".join(messages_of(response))


def test_placement_rules_in_the_admin(actors, os_cloud, flavor, client):
    client.force_login(actors.cloud_admin)
    page = client.get(url("placementrule")).content.decode()
    assert "most specific rule wins" in page
    response = client.post(url("placementrule", "add"), {"flavor": flavor.pk, "host": os_cloud.pk})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert AuditEvent.objects.filter(action="placementrule.create").exists()
    response = client.post(url("placementrule", "add"), {"flavor": flavor.pk, "host": os_cloud.pk})
    assert response.status_code == 200 and "already a rule" in response.content.decode()
    response = client.post(url("placementrule", "add"), {"host": os_cloud.pk})
    assert response.status_code == 200 and "a tenant, a flavor or both" in response.content.decode()
    assert PlacementRule.objects.count() == 1


def test_cloud_flavors_are_read_only(actors, os_cloud, flavor, client):
    CloudFlavor.objects.create(host=os_cloud, flavor=flavor, cloud_id="n1", signature="x")
    client.force_login(actors.cloud_admin)
    assert "n1" in client.get(url("cloudflavor")).content.decode()
    assert client.get(url("cloudflavor", "add")).status_code == 403
