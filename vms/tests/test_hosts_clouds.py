"""OpenStack clouds as hosts over the API: cloud admins only, write-only encrypted credentials, model rules,
verify against a cloud that refuses connections, placement rules, cloud projects and cloud flavors."""

from __future__ import annotations

import json

import pytest
from django.core.cache import cache
from django.db import connection

from portal.models import AuditEvent
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem
from vms.compute.openstack import login
from vms.models import CloudFlavor, CloudProject, Flavor, Host, Instance, PlacementRule

HOSTS = "/api/v1/hosts/"
PROJECTS = "/api/v1/cloud-projects/"
RULES = "/api/v1/placement-rules/"
FLAVORS = "/api/v1/cloud-flavors/"
LIST = {"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200}
CREATE = {"anonymous": 401, "outsider": 403, "member": 403, "tenant_admin": 403, "cloud_admin": 201}
REFUSING = "http://127.0.0.1:9/v3"  # the discard port: nothing listens, the connection is refused
PASSWORD = "s3cret-Pa55word-xyz"
SECRET = "app-cred-S3CRET-abc"
LOGIN = {"username": "portal", "password": PASSWORD, "project_name": "admin"}


def staff_only(status: int) -> dict:
    return {"anonymous": 401, "outsider": 404, "member": 404, "tenant_admin": 404, "cloud_admin": status}


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()


def make_cloud(name: str | None = None, credentials: dict | None = None, **fields) -> Host:
    values = {"kind": Host.Kind.OPENSTACK, "auth_url": REFUSING, **fields}
    host = Host(name=name or f"cloud{Host.objects.count() + 1}", **values)
    host.credentials = login.encrypt_credentials(LOGIN if credentials is None else credentials)
    host.save()
    return host


@pytest.fixture
def os_cloud(db):
    return make_cloud("os1")


@pytest.fixture
def flavor(db):
    return Flavor.objects.create(name="m1.small", vcpus=2, ram_mib=1024, disk_gib=10)


def detail(url: str, obj) -> str:
    return f"{url}{obj.pk}/"


def stored_column(host: Host) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT credentials FROM {Host._meta.db_table} WHERE id = %s", [host.pk])  # noqa: S608
        return cursor.fetchone()[0]


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text and SECRET not in text, text


# ---------------------------------------------------------------- access matrix: hosts of kind openstack


def test_cloud_list_and_retrieve_matrix(actors, os_cloud):
    assert_access_matrix(actors, method="get", url=HOSTS, expected=LIST)
    assert actors.client("tenant_admin").get(HOSTS).json()["results"] == []
    assert_access_matrix(actors, method="get", url=detail(HOSTS, os_cloud), expected=staff_only(200))


def test_cloud_create_matrix(actors):
    def url():
        Host.objects.filter(name="new").delete()
        return HOSTS

    data = {"name": "new", "kind": "openstack", "auth_url": REFUSING, "credentials": LOGIN}
    assert_access_matrix(actors, method="post", url=url, data=data, expected=CREATE)


def test_cloud_patch_delete_verify_matrix(actors, os_cloud):
    assert_access_matrix(
        actors, method="patch", url=detail(HOSTS, os_cloud), data={"region": "RegionTwo"}, expected=staff_only(200)
    )
    assert_access_matrix(actors, method="post", url=f"{detail(HOSTS, os_cloud)}verify/", expected=staff_only(200))
    assert_access_matrix(actors, method="delete", url=lambda: detail(HOSTS, make_cloud()), expected=staff_only(204))


# ---------------------------------------------------------------- credentials


def test_create_cloud_encrypts_the_login_and_never_returns_it(actors):
    staff = actors.client("cloud_admin")
    data = {
        "name": "os-new",
        "kind": "openstack",
        "auth_url": REFUSING,
        "region": "RegionOne",
        "project_mode": "existing",
        "credentials": {**LOGIN, "user_domain_name": "Default"},
    }
    response = staff.post(HOSTS, data, format="json")
    assert response.status_code == 201, response.content
    assert_no_secret(response.content.decode())
    body = response.json()
    assert body["kind"] == "openstack" and body["credentials_set"] is True
    assert "credentials" not in body and "clear_credentials" not in body
    assert body["credentials_summary"] == {"username": "portal", "project_name": "admin", "user_domain_name": "Default"}
    host = Host.objects.get(name="os-new")
    assert PASSWORD not in stored_column(host) and "portal" not in stored_column(host)
    assert login.decrypt_credentials(host)["password"] == PASSWORD
    for url in (HOSTS, detail(HOSTS, host)):
        assert_no_secret(staff.get(url).content.decode())
    event = AuditEvent.objects.get(action="host.create", target_id=str(host.pk))
    assert_no_secret(json.dumps(event.detail))
    assert event.detail["credentials"] == "changed"


def test_blank_or_omitted_password_keeps_the_stored_one(actors, os_cloud):
    staff = actors.client("cloud_admin")
    response = staff.patch(
        detail(HOSTS, os_cloud), {"region": "R2", "credentials": {"username": "portal", "password": ""}}, format="json"
    )
    assert response.status_code == 200, response.content
    assert_no_secret(response.content.decode())
    os_cloud.refresh_from_db()
    assert os_cloud.region == "R2" and login.decrypt_credentials(os_cloud) == LOGIN
    assert staff.patch(detail(HOSTS, os_cloud), {"enabled": False}, format="json").status_code == 200
    os_cloud.refresh_from_db()
    assert login.decrypt_credentials(os_cloud) == LOGIN


def test_new_password_replaces_the_old_one(actors, os_cloud):
    staff = actors.client("cloud_admin")
    response = staff.patch(detail(HOSTS, os_cloud), {"credentials": {"password": "other-Pass-1"}}, format="json")
    assert response.status_code == 200, response.content
    assert "other-Pass-1" not in response.content.decode()
    os_cloud.refresh_from_db()
    assert login.decrypt_credentials(os_cloud) == {**LOGIN, "password": "other-Pass-1"}
    event = AuditEvent.objects.get(action="host.update")
    assert "other-Pass-1" not in json.dumps(event.detail) and event.detail["credentials"] == "changed"


def test_switching_to_an_application_credential_drops_the_password(actors, os_cloud):
    staff = actors.client("cloud_admin")
    creds = {"application_credential_id": "ac-1", "application_credential_secret": SECRET}
    response = staff.patch(detail(HOSTS, os_cloud), {"credentials": creds}, format="json")
    assert response.status_code == 200, response.content
    assert_no_secret(response.content.decode())
    assert response.json()["credentials_summary"] == {"application_credential_id": "ac-1"}
    os_cloud.refresh_from_db()
    assert login.decrypt_credentials(os_cloud) == creds


def test_clear_credentials(actors):
    host = make_cloud("named", cloud_name="devstack", auth_url="")
    response = actors.client("cloud_admin").patch(detail(HOSTS, host), {"clear_credentials": True}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["credentials_set"] is False
    host.refresh_from_db()
    assert host.credentials == ""
    assert AuditEvent.objects.get(action="host.update").detail["credentials"] == "cleared"


def test_a_managed_cloud_cannot_lose_its_login(actors, os_cloud):
    body = assert_problem(
        actors.client("cloud_admin").patch(detail(HOSTS, os_cloud), {"clear_credentials": True}, format="json"), 400
    )
    assert "credentials" in body["errors"]
    os_cloud.refresh_from_db()
    assert login.decrypt_credentials(os_cloud) == LOGIN


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"kind": "openstack", "credentials": LOGIN}, "auth_url", "Keystone URL"),
        ({"kind": "libvirt"}, "uri", "URI"),
        (
            {"kind": "openstack", "auth_url": REFUSING, "uri": "qemu:///system", "credentials": LOGIN},
            "uri",
            "no libvirt",
        ),
        (
            {"kind": "openstack", "auth_url": REFUSING, "credentials": {"username": "u"}},
            "credentials",
            "complete login",
        ),
        ({"kind": "openstack", "auth_url": REFUSING}, "credentials", "complete login"),
        (
            {"kind": "openstack", "auth_url": REFUSING, "credentials": {"application_credential_id": "x"}},
            "credentials",
            "complete login",
        ),
        ({"kind": "openstack", "auth_url": "not a url", "credentials": LOGIN}, "auth_url", ""),
        ({"kind": "libvirt", "uri": "qemu:///system", "credentials": LOGIN}, "credentials", "libvirt"),
        ({"kind": "openstack", "auth_url": REFUSING, "credentials": {"token": "x"}}, "credentials", ""),
        ({"kind": "cloudstack", "auth_url": REFUSING}, "kind", ""),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(actors, data, field, words):
    response = actors.client("cloud_admin").post(HOSTS, {"name": "bad", **data}, format="json")
    body = assert_problem(response, 400)
    assert field in body["errors"], body
    assert words in body["detail"] or words in json.dumps(body["errors"]), body
    assert_no_secret(response.content.decode())
    assert not Host.objects.exists() and not AuditEvent.objects.filter(action__startswith="host.").exists()


def test_patch_bad_input_changes_nothing(actors, os_cloud):
    staff = actors.client("cloud_admin")
    before = stored_column(os_cloud)
    for data, field in (
        ({"auth_url": "", "region": "R9"}, "auth_url"),
        ({"uri": "qemu:///system"}, "uri"),
        ({"kind": "libvirt"}, "kind"),
        ({"credentials": {"username": "someone-else"}, "region": "R9"}, "credentials"),
    ):
        body = assert_problem(staff.patch(detail(HOSTS, os_cloud), data, format="json"), 400)
        assert field in body["errors"], body
    os_cloud.refresh_from_db()
    assert os_cloud.auth_url == REFUSING and os_cloud.region == "" and os_cloud.kind == "openstack"
    assert stored_column(os_cloud) == before


def test_cloud_name_needs_no_login(actors):
    response = actors.client("cloud_admin").post(
        HOSTS, {"name": "named", "kind": "openstack", "cloud_name": "devstack"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["credentials_set"] is False and response.json()["credentials_summary"] == {}


def test_delete_cloud(actors, os_cloud, flavor):
    CloudProject.objects.create(host=os_cloud, tenant=actors.tenant, project_id="p1")
    PlacementRule.objects.create(tenant=actors.tenant, host=os_cloud)
    staff = actors.client("cloud_admin")
    instance = Instance.objects.create(
        tenant=actors.tenant, name="vm", flavor=flavor, vcpus=2, ram_mib=1024, disk_gib=10, host=os_cloud
    )
    body = assert_problem(staff.delete(detail(HOSTS, os_cloud)), 409, "conflict")
    assert "instances" in body["detail"]
    instance.delete()
    # a placement rule still sends instances there: refused, so launches never fall back silently
    body = assert_problem(staff.delete(detail(HOSTS, os_cloud)), 409, "conflict")
    assert "placement rule" in body["detail"]
    PlacementRule.objects.filter(host=os_cloud).delete()
    assert staff.delete(detail(HOSTS, os_cloud)).status_code == 204
    assert not Host.objects.exists() and not CloudProject.objects.exists()
    assert_no_secret(json.dumps(list(AuditEvent.objects.values_list("detail", flat=True))))


# ---------------------------------------------------------------- verify


def test_verify_an_unreachable_cloud_marks_it_down(actors, os_cloud):
    response = actors.client("cloud_admin").post(f"{detail(HOSTS, os_cloud)}verify/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "down" and "does not answer" in body["state_reason"], body
    assert "127.0.0.1:9" in body["state_reason"]
    assert_no_secret(response.content.decode())
    os_cloud.refresh_from_db()
    assert os_cloud.state == Host.State.DOWN


def test_verify_without_a_login_says_so(actors):
    host = make_cloud("nologin", credentials={}, project_mode="existing")
    body = actors.client("cloud_admin").post(f"{detail(HOSTS, host)}verify/").json()
    assert body["state"] == "down" and "password" in body["state_reason"]


def test_refresh_of_a_cloud_verifies_it(actors, os_cloud):
    body = actors.client("cloud_admin").post(f"{detail(HOSTS, os_cloud)}refresh/").json()
    assert body["state"] == "down" and "does not answer" in body["state_reason"]


# ---------------------------------------------------------------- lists


def test_host_list_has_constant_queries_with_clouds(actors):
    client = actors.client("cloud_admin")

    def make_rows(n: int) -> None:
        for _ in range(n):
            make_cloud()

    assert_constant_queries(make_rows, lambda: client.get(HOSTS), budget=6)
    assert_no_secret(client.get(HOSTS).content.decode())


def test_kind_filter(actors, os_cloud):
    Host.objects.create(name="node1", uri="test:///default")
    staff = actors.client("cloud_admin")
    assert [r["name"] for r in staff.get(HOSTS, {"kind": "openstack"}).json()["results"]] == ["os1"]
    assert [r["name"] for r in staff.get(HOSTS, {"kind": "libvirt"}).json()["results"]] == ["node1"]


# ---------------------------------------------------------------- cloud projects


def test_cloud_project_matrix(actors, os_cloud):
    project = CloudProject.objects.create(host=os_cloud, tenant=actors.other_tenant, project_id="p-other")
    assert_access_matrix(actors, method="get", url=PROJECTS, expected=LIST)
    assert actors.client("tenant_admin").get(PROJECTS).json()["results"] == []
    assert_access_matrix(actors, method="get", url=detail(PROJECTS, project), expected=staff_only(200))

    def url():
        CloudProject.objects.filter(tenant=actors.tenant).delete()
        return PROJECTS

    data = {"host": os_cloud.pk, "tenant": actors.tenant.pk, "project_id": "p-a"}
    # a tenant admin may see the tenant, but not map it: 403 like the other non-staff writes
    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data=data,
        expected={"anonymous": 401, "outsider": 403, "member": 403, "tenant_admin": 403, "cloud_admin": 201},
    )
    assert_access_matrix(
        actors, method="patch", url=detail(PROJECTS, project), data={"project_id": "p2"}, expected=staff_only(200)
    )

    def fresh_project():
        CloudProject.objects.filter(tenant=actors.other_tenant).delete()
        return detail(PROJECTS, CloudProject.objects.create(host=os_cloud, tenant=actors.other_tenant, project_id="px"))

    assert_access_matrix(actors, method="delete", url=fresh_project, expected=staff_only(204))


def test_map_tenant_to_existing_project(actors, os_cloud, flavor):
    staff = actors.client("cloud_admin")
    response = staff.post(
        PROJECTS, {"host": os_cloud.pk, "tenant": actors.tenant.pk, "project_id": "abc"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["managed"] is False and body["host_name"] == "os1" and body["tenant_name"] == "Tenant A"
    # another tenant on the same project: conflict
    body = assert_problem(
        staff.post(
            PROJECTS, {"host": os_cloud.pk, "tenant": actors.other_tenant.pk, "project_id": "abc"}, format="json"
        ),
        409,
    )
    assert "project_id" in body["errors"]
    # a libvirt host is not a cloud
    node = Host.objects.create(name="node1", uri="test:///default")
    body = assert_problem(
        staff.post(PROJECTS, {"host": node.pk, "tenant": actors.other_tenant.pk, "project_id": "x"}, format="json"), 400
    )
    assert "host" in body["errors"]
    # a tenant with instances on the cloud keeps its project
    project = CloudProject.objects.get(tenant=actors.tenant)
    Instance.objects.create(
        tenant=actors.tenant, name="vm", flavor=flavor, vcpus=2, ram_mib=1024, disk_gib=10, host=os_cloud
    )
    assert_problem(staff.patch(detail(PROJECTS, project), {"project_id": "new"}, format="json"), 409)
    assert_problem(staff.delete(detail(PROJECTS, project)), 409)
    project.refresh_from_db()
    assert project.project_id == "abc"
    assert AuditEvent.objects.filter(action="cloudproject.create").count() == 1


def test_push_quota_to_an_unreachable_cloud_records_the_error(actors, os_cloud):
    project = CloudProject.objects.create(host=os_cloud, tenant=actors.tenant, project_id="p1")
    response = actors.client("cloud_admin").post(f"{detail(PROJECTS, project)}push-quota/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["pushed"] == {"os1": False}
    assert "does not answer" in body["project"]["quota_error"]
    assert_problem(actors.client("tenant_admin").post(f"{detail(PROJECTS, project)}push-quota/"), 404)


def test_mapping_a_project_pushes_the_quota_on_commit(actors, os_cloud, run_tasks):
    """The mapping's on-commit task pushes the quota; the cloud refuses here, so the error is recorded."""
    staff = actors.client("cloud_admin")
    response = run_tasks(
        lambda: staff.post(
            PROJECTS, {"host": os_cloud.pk, "tenant": actors.tenant.pk, "project_id": "p2"}, format="json"
        )
    )
    assert response.status_code == 201, response.content
    project = CloudProject.objects.get(host=os_cloud, tenant=actors.tenant)
    assert project.quota_synced_at is None and "does not answer" in project.quota_error
    # mapping it again to the same project changes nothing and pushes nothing
    CloudProject.objects.filter(pk=project.pk).update(quota_error="")
    response = run_tasks(lambda: staff.patch(detail(PROJECTS, project), {"project_id": "p2"}, format="json"))
    assert response.status_code == 200, response.content
    project.refresh_from_db()
    assert project.quota_error == ""


# ---------------------------------------------------------------- placement rules


def test_placement_rule_matrix(actors, os_cloud, flavor):
    rule = PlacementRule.objects.create(tenant=actors.tenant, host=os_cloud)
    assert_access_matrix(actors, method="get", url=RULES, expected=LIST)
    assert actors.client("member").get(RULES).json()["results"] == []
    assert_access_matrix(actors, method="get", url=detail(RULES, rule), expected=staff_only(200))

    def url():
        PlacementRule.objects.filter(flavor=flavor).delete()
        return RULES

    assert_access_matrix(
        actors, method="post", url=url, data={"flavor": flavor.pk, "host": os_cloud.pk}, expected=CREATE
    )
    assert_access_matrix(
        actors, method="patch", url=detail(RULES, rule), data={"host": os_cloud.pk}, expected=staff_only(200)
    )
    assert_access_matrix(
        actors,
        method="delete",
        url=lambda: detail(RULES, PlacementRule.objects.get_or_create(tenant=actors.other_tenant, host=os_cloud)[0]),
        expected=staff_only(204),
    )


def test_placement_rule_rules(actors, os_cloud, flavor):
    staff = actors.client("cloud_admin")
    response = staff.post(RULES, {"tenant": actors.tenant.pk, "flavor": flavor.pk, "host": os_cloud.pk}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["host_name"] == "os1"
    assert_problem(
        staff.post(RULES, {"tenant": actors.tenant.pk, "flavor": flavor.pk, "host": os_cloud.pk}, format="json"), 409
    )
    body = assert_problem(staff.post(RULES, {"host": os_cloud.pk}, format="json"), 400)
    assert "tenant, a flavor or both" in body["detail"]
    assert PlacementRule.objects.count() == 1
    assert AuditEvent.objects.filter(action="placementrule.create").count() == 1


# ---------------------------------------------------------------- cloud flavors (read-only)


def test_cloud_flavor_matrix(actors, os_cloud, flavor):
    row = CloudFlavor.objects.create(host=os_cloud, flavor=flavor, cloud_id="nova-1", signature="x")
    assert_access_matrix(actors, method="get", url=FLAVORS, expected=LIST)
    assert actors.client("outsider").get(FLAVORS).json()["results"] == []
    assert_access_matrix(actors, method="get", url=detail(FLAVORS, row), expected=staff_only(200))
    body = actors.client("cloud_admin").get(FLAVORS).json()["results"][0]
    assert body["cloud_id"] == "nova-1" and body["flavor_name"] == "m1.small" and "signature" not in body
    assert actors.client("cloud_admin").post(FLAVORS, {"host": os_cloud.pk}, format="json").status_code == 405
    assert actors.client("cloud_admin").delete(detail(FLAVORS, row)).status_code == 405
