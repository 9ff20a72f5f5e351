"""/api/v1/memberships/: access matrix, the last-admin rule, audit, constant queries."""

from __future__ import annotations

import pytest

from portal.models import AuditEvent, Membership, Tenant
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem

URL = "/api/v1/memberships/"


@pytest.fixture
def newbie(make_user):
    return make_user("newbie")


def detail(membership) -> str:
    return f"{URL}{membership.pk}/"


def membership_of(actors, user) -> Membership:
    return Membership.objects.get(tenant=actors.tenant, user=user)


# ---------------------------------------------------------------- access matrix


def test_list_matrix(actors):
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_retrieve_matrix(actors):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(membership_of(actors, actors.member)),
        expected={"anonymous": 401, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_create_matrix(actors, newbie):
    def url():
        Membership.objects.filter(user=newbie).delete()
        return URL

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data={"tenant": actors.tenant.pk, "username": "newbie", "role": "member"},
        # the outsider cannot see tenant A: for them it does not exist (400, not 403)
        expected={"anonymous": 401, "outsider": 400, "member": 403, "tenant_admin": 201, "cloud_admin": 201},
    )


def test_patch_matrix(actors):
    membership = membership_of(actors, actors.member)

    def url():
        Membership.objects.filter(pk=membership.pk).update(role=Membership.Role.MEMBER)
        return detail(membership)

    assert_access_matrix(
        actors,
        method="patch",
        url=url,
        data={"role": "admin"},
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_delete_matrix(actors, newbie):
    def url():
        membership, _ = Membership.objects.get_or_create(tenant=actors.tenant, user=newbie)
        return detail(membership)

    assert_access_matrix(
        actors,
        method="delete",
        url=url,
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 204, "cloud_admin": 204},
    )


# ---------------------------------------------------------------- content


def rows(response) -> set[tuple[str, str, str]]:
    assert response.status_code == 200, response.content
    tenants = dict(Tenant.objects.values_list("pk", "name"))
    return {(tenants[row["tenant"]], row["user"], row["role"]) for row in response.json()["results"]}


def test_members_see_their_tenants_members_only(actors):
    team_a = {("Tenant A", "member", "member"), ("Tenant A", "tadmin", "admin")}
    assert rows(actors.client("member").get(URL)) == team_a
    assert rows(actors.client("tenant_admin").get(URL)) == team_a
    assert rows(actors.client("outsider").get(URL)) == {("Tenant B", "outsider", "admin")}
    assert rows(actors.client("cloud_admin").get(URL)) == team_a | {("Tenant B", "outsider", "admin")}


def test_fields(actors):
    membership = membership_of(actors, actors.member)
    body = actors.client("member").get(detail(membership)).json()
    assert set(body) == {"id", "tenant", "user", "role", "created_at"}
    assert body["tenant"] == actors.tenant.pk
    assert body["user"] == "member"


def test_filters(actors):
    staff = actors.client("cloud_admin")
    assert rows(staff.get(URL, {"tenant": actors.other_tenant.pk})) == {("Tenant B", "outsider", "admin")}
    assert rows(staff.get(URL, {"role": "admin", "tenant": actors.tenant.pk})) == {("Tenant A", "tadmin", "admin")}
    assert rows(staff.get(URL, {"username": "member"})) == {("Tenant A", "member", "member")}
    # a tenant the requester cannot see is not a valid choice
    body = assert_problem(actors.client("member").get(URL, {"tenant": actors.other_tenant.pk}), 400)
    assert "tenant" in body["errors"]


def test_add_member_writes_audit(actors, newbie):
    response = actors.client("tenant_admin").post(
        URL, {"tenant": actors.tenant.pk, "username": "newbie", "role": "admin"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["user"] == "newbie"
    assert response.json()["role"] == "admin"
    assert membership_of(actors, newbie).role == "admin"
    event = AuditEvent.objects.get(action="membership.create")
    assert event.tenant_id == actors.tenant.pk
    assert event.username == "tadmin"
    assert event.detail == {"role": "admin"}


def test_add_member_errors(actors, newbie):
    client = actors.client("tenant_admin")
    body = assert_problem(client.post(URL, {"tenant": actors.tenant.pk, "username": "nobody"}, format="json"), 400)
    assert "username" in body["errors"]
    body = assert_problem(client.post(URL, {"tenant": actors.tenant.pk, "username": "member"}, format="json"), 409)
    assert "username" in body["errors"]
    newbie.is_active = False
    newbie.save()
    body = assert_problem(client.post(URL, {"tenant": actors.tenant.pk, "username": "newbie"}, format="json"), 400)
    assert "username" in body["errors"]
    body = assert_problem(
        client.post(URL, {"tenant": actors.tenant.pk, "username": "newbie", "role": "owner"}, format="json"), 400
    )
    assert "role" in body["errors"]
    # the outsider (admin of B) naming tenant A: "does not exist", like a missing id
    body = assert_problem(
        actors.client("outsider").post(URL, {"tenant": actors.tenant.pk, "username": "newbie"}, format="json"), 400
    )
    assert "tenant" in body["errors"]
    missing = assert_problem(
        actors.client("outsider").post(URL, {"tenant": 987654, "username": "newbie"}, format="json"), 400
    )
    assert missing["errors"]["tenant"] == [body["errors"]["tenant"][0].replace(str(actors.tenant.pk), "987654")]
    assert not Membership.objects.filter(user=newbie).exists()


def test_member_cannot_probe_usernames(actors):
    # permission is checked before the username is looked up
    response = actors.client("member").post(URL, {"tenant": actors.tenant.pk, "username": "nobody"}, format="json")
    assert_problem(response, 403)


def test_change_role_writes_audit(actors):
    membership = membership_of(actors, actors.member)
    response = actors.client("tenant_admin").patch(detail(membership), {"role": "admin"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["role"] == "admin"
    event = AuditEvent.objects.get(action="membership.update")
    assert event.detail == {"from": "member", "to": "admin"}


def test_last_tenant_admin_rule(actors):
    own = membership_of(actors, actors.tenant_admin)
    client = actors.client("tenant_admin")
    assert_problem(client.patch(detail(own), {"role": "member"}, format="json"), 409)
    assert_problem(client.delete(detail(own)), 409)
    assert membership_of(actors, actors.tenant_admin).role == "admin"
    # with a second admin, stepping down is fine
    Membership.objects.filter(pk=membership_of(actors, actors.member).pk).update(role="admin")
    assert client.patch(detail(own), {"role": "member"}, format="json").status_code == 200


def test_remove_member_writes_audit(actors):
    membership = membership_of(actors, actors.member)
    response = actors.client("tenant_admin").delete(detail(membership))
    assert response.status_code == 204
    assert not Membership.objects.filter(pk=membership.pk).exists()
    event = AuditEvent.objects.get(action="membership.delete")
    assert event.target_id == str(membership.pk)
    assert event.tenant_id == actors.tenant.pk


# ---------------------------------------------------------------- queries


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_list_has_constant_queries(actors, make_user, role):
    client = actors.client(role)

    def make_rows(n: int) -> None:
        for i in range(n):
            user = make_user(f"user{Membership.objects.count()}-{i}")
            Membership.objects.create(tenant=actors.tenant, user=user)

    assert_constant_queries(make_rows, lambda: client.get(URL), budget=8)
