"""The access gate (``restrict``) for every model: the standard five actors, every action."""

import pytest
from django.contrib.auth.models import AnonymousUser

from portal.access import CHANGE, DELETE, VIEW
from portal.models import ApiToken, AuditEvent, Membership, Quota, Tenant
from portal.services import create_api_token, record_audit
from vms.models import Flavor, Host, Instance
from vms.services import create_flavor, reserve_instances

ACTORS = ("anonymous", "outsider", "member", "tenant_admin", "cloud_admin")


def visible(actors, queryset_of, role: str, action: str, obj) -> bool:
    user = actors.user(role) or AnonymousUser()
    return queryset_of().restrict(user, action).filter(pk=obj.pk).exists()


def assert_gate(actors, queryset_of, obj, expected: dict[str, dict[str, bool]]) -> None:
    failures = []
    for action, by_role in expected.items():
        for role in ACTORS:
            got = visible(actors, queryset_of, role, action, obj)
            if got != by_role[role]:
                failures.append(f"{obj._meta.label} {action} as {role}: {got}, expected {by_role[role]}")
    assert not failures, "\n".join(failures)


def roles(*allowed: str) -> dict[str, bool]:
    return {role: role in allowed for role in ACTORS}


@pytest.fixture
def instance(actors):
    flavor = create_flavor(actor=actors.cloud_admin, name="gate.f", vcpus=1, ram_mib=128, disk_gib=1)
    (vm,) = reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["gate-vm"])
    return vm


def test_tenant(actors):
    assert_gate(
        actors,
        lambda: Tenant.objects,
        actors.tenant,
        {
            VIEW: roles("member", "tenant_admin", "cloud_admin"),
            CHANGE: roles("tenant_admin", "cloud_admin"),
            DELETE: roles("cloud_admin"),
        },
    )


def test_membership(actors):
    membership = Membership.objects.get(user=actors.member, tenant=actors.tenant)
    assert_gate(
        actors,
        lambda: Membership.objects,
        membership,
        {
            VIEW: roles("member", "tenant_admin", "cloud_admin"),
            CHANGE: roles("tenant_admin", "cloud_admin"),
            DELETE: roles("tenant_admin", "cloud_admin"),
        },
    )


def test_quota(actors):
    assert_gate(
        actors,
        lambda: Quota.objects,
        actors.tenant.quota,
        {VIEW: roles("member", "tenant_admin", "cloud_admin"), CHANGE: roles("cloud_admin")},
    )


def test_audit_event(actors):
    event = record_audit(user=actors.member, action="test.action", tenant=actors.tenant)
    assert_gate(
        actors,
        lambda: AuditEvent.objects,
        event,
        {VIEW: roles("tenant_admin", "cloud_admin"), CHANGE: roles("cloud_admin"), DELETE: roles("cloud_admin")},
    )


def test_api_token_is_personal_even_for_cloud_admins(actors):
    token, _raw = create_api_token(user=actors.member, name="mine")
    assert_gate(actors, lambda: ApiToken.objects, token, {VIEW: roles("member"), DELETE: roles("member")})


def test_public_flavor(actors):
    flavor = create_flavor(actor=actors.cloud_admin, name="pub", vcpus=1, ram_mib=128, disk_gib=1)
    assert_gate(
        actors,
        lambda: Flavor.objects,
        flavor,
        {VIEW: roles("outsider", "member", "tenant_admin", "cloud_admin"), CHANGE: roles("cloud_admin")},
    )


def test_private_flavor_only_for_tenants_with_access(actors):
    flavor = create_flavor(
        actor=actors.cloud_admin,
        name="priv",
        vcpus=1,
        ram_mib=128,
        disk_gib=1,
        is_public=False,
        tenants=[actors.tenant],
    )
    assert_gate(actors, lambda: Flavor.objects, flavor, {VIEW: roles("member", "tenant_admin", "cloud_admin")})


def test_disabled_flavor_hidden_from_users(actors):
    flavor = create_flavor(actor=actors.cloud_admin, name="off", vcpus=1, ram_mib=128, disk_gib=1, disabled=True)
    assert_gate(actors, lambda: Flavor.objects, flavor, {VIEW: roles("cloud_admin")})


def test_private_flavor_shared_with_two_tenants_is_listed_once(actors):
    flavor = create_flavor(
        actor=actors.cloud_admin,
        name="both",
        vcpus=1,
        ram_mib=128,
        disk_gib=1,
        is_public=False,
        tenants=[actors.tenant, actors.other_tenant],
    )
    Membership.objects.create(user=actors.outsider, tenant=actors.tenant, role="member")
    assert list(Flavor.objects.restrict(actors.outsider, VIEW)) == [flavor]


def test_host(actors):
    host = Host.objects.create(name="h1", uri="test:///default")
    assert_gate(actors, lambda: Host.objects, host, {VIEW: roles("cloud_admin"), CHANGE: roles("cloud_admin")})


def test_instance(actors, instance):
    assert_gate(
        actors,
        lambda: Instance.objects,
        instance,
        {
            VIEW: roles("member", "tenant_admin", "cloud_admin"),
            CHANGE: roles("member", "tenant_admin", "cloud_admin"),
            DELETE: roles("member", "tenant_admin", "cloud_admin"),
        },
    )


def test_disabled_tenant_hides_its_objects_from_members(actors, instance):
    actors.tenant.enabled = False
    actors.tenant.save()
    assert not Instance.objects.restrict(actors.member, VIEW).exists()
    assert not Tenant.objects.restrict(actors.tenant_admin, VIEW).filter(pk=actors.tenant.pk).exists()
    assert Instance.objects.restrict(actors.cloud_admin, VIEW).filter(pk=instance.pk).exists()


def test_inactive_user_sees_nothing(actors, instance):
    actors.member.is_active = False
    actors.member.save()
    assert not Instance.objects.restrict(actors.member, VIEW).exists()
