"""Tenancy services: tenants, memberships (last-admin rule), API tokens, audit trail."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.models import ApiToken, AuditEvent, Membership, Tenant
from portal.services import (
    ConflictError,
    ServiceError,
    add_member,
    authenticate_api_token,
    change_role,
    create_api_token,
    create_tenant,
    remove_member,
    revoke_api_token,
    update_tenant,
)


def test_create_tenant_gets_default_quota_slug_and_audit(actors, settings):
    tenant = create_tenant(actor=actors.cloud_admin, name="Physics Lab", ip="127.0.0.1")
    assert tenant.slug == "physics-lab"
    assert tenant.quota.instances == settings.LABCLOUD_DEFAULT_QUOTA["instances"]
    event = AuditEvent.objects.get(action="tenant.create")
    assert (event.tenant, event.ip, event.username) == (tenant, "127.0.0.1", "cloudadmin")


def test_create_tenant_with_limits_and_chinese_name(actors):
    tenant = create_tenant(actor=actors.cloud_admin, name="物理实验室", limits={"instances": 2})
    assert tenant.slug == "tenant"  # slugify drops non-ASCII; the slug is still unique and valid
    assert tenant.quota.instances == 2
    second = create_tenant(actor=actors.cloud_admin, name="化学实验室")
    assert second.slug == "tenant-2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "  "}, "needs a name"),
        ({"name": "Tenant A"}, "already exists"),
        ({"name": "New", "slug": "tenant-a"}, "is taken"),
        ({"name": "New", "limits": {"vcpus": -2}}, "-1 for unlimited"),
        ({"name": "New", "limits": {"gpus": 1}}, "Unknown quota resource"),
    ],
)
def test_create_tenant_rejects_bad_input_and_creates_nothing(actors, kwargs, message):
    count = Tenant.objects.count()
    with pytest.raises(ServiceError, match=message):
        create_tenant(actor=actors.cloud_admin, **kwargs)
    assert Tenant.objects.count() == count


def test_update_tenant_enabled_is_for_cloud_admins(actors):
    with pytest.raises(ServiceError, match="Only cloud admins"):
        update_tenant(actor=actors.tenant_admin, tenant=actors.tenant, enabled=False)
    update_tenant(actor=actors.tenant_admin, tenant=actors.tenant, description="<b>new</b> & improved")
    update_tenant(actor=actors.cloud_admin, tenant=actors.tenant, enabled=False)
    actors.tenant.refresh_from_db()
    assert actors.tenant.description == "<b>new</b> & improved"
    assert actors.tenant.enabled is False
    assert AuditEvent.objects.filter(action="tenant.update").count() == 2


def test_update_tenant_rejects_unknown_fields_and_duplicate_names(actors):
    with pytest.raises(ServiceError, match="cannot be changed"):
        update_tenant(actor=actors.cloud_admin, tenant=actors.tenant, slug="x")
    with pytest.raises(ConflictError):
        update_tenant(actor=actors.cloud_admin, tenant=actors.tenant, name="Tenant B")


def test_membership_lifecycle_is_audited(actors, make_user):
    newcomer = make_user("newcomer")
    membership = add_member(actor=actors.tenant_admin, tenant=actors.tenant, user=newcomer, role="member")
    with pytest.raises(ConflictError, match="already a member"):
        add_member(actor=actors.tenant_admin, tenant=actors.tenant, user=newcomer)
    change_role(actor=actors.tenant_admin, membership=membership, role="admin")
    remove_member(actor=actors.tenant_admin, membership=membership)
    assert not Membership.objects.filter(user=newcomer).exists()
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["membership.create", "membership.update", "membership.delete"]


def test_add_member_rejects_unknown_role_and_disabled_user(actors, make_user):
    user = make_user("sleepy")
    with pytest.raises(ServiceError, match="Unknown role"):
        add_member(actor=actors.tenant_admin, tenant=actors.tenant, user=user, role="owner")
    user.is_active = False
    user.save()
    with pytest.raises(ServiceError, match="disabled"):
        add_member(actor=actors.tenant_admin, tenant=actors.tenant, user=user)


def test_last_tenant_admin_cannot_leave_or_be_demoted(actors):
    own = Membership.objects.get(user=actors.tenant_admin, tenant=actors.tenant)
    with pytest.raises(ConflictError, match="at least one tenant admin"):
        remove_member(actor=actors.tenant_admin, membership=own)
    with pytest.raises(ConflictError, match="at least one tenant admin"):
        change_role(actor=actors.tenant_admin, membership=own, role="member")
    own.refresh_from_db()
    assert own.role == "admin"
    # A cloud admin may still do it (e.g. to hand the tenant over).
    change_role(actor=actors.cloud_admin, membership=own, role="member")


def test_api_token_is_shown_once_and_stored_hashed(actors):
    token, raw = create_api_token(user=actors.member, name="ci", scope="write")
    assert raw.startswith("lc_") and len(raw) > 40
    assert token.digest != raw and raw not in token.digest
    assert token.prefix == raw[:10]
    assert authenticate_api_token(raw=raw) == token
    assert authenticate_api_token(raw=raw + "x") is None
    assert authenticate_api_token(raw="garbage") is None


def test_api_token_last_used_expiry_and_revocation(actors):
    token, raw = create_api_token(user=actors.member, name="short", expires_at=timezone.now() + timedelta(hours=1))
    assert token.last_used_at is None
    authenticate_api_token(raw=raw)
    token.refresh_from_db()
    assert token.last_used_at is not None

    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert authenticate_api_token(raw=raw) is None

    other, other_raw = create_api_token(user=actors.member, name="other")
    revoke_api_token(actor=actors.member, token=other)
    assert authenticate_api_token(raw=other_raw) is None
    assert AuditEvent.objects.filter(action="token.revoke").count() == 1


def test_api_token_of_disabled_user_is_refused(actors):
    _token, raw = create_api_token(user=actors.member, name="t")
    actors.member.is_active = False
    actors.member.save()
    assert authenticate_api_token(raw=raw) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "needs a name"),
        ({"name": "x", "scope": "admin"}, "Unknown scope"),
        ({"name": "x", "expires_at": timezone.now() - timedelta(days=1)}, "in the future"),
    ],
)
def test_api_token_bad_input(actors, kwargs, message):
    with pytest.raises(ServiceError, match=message):
        create_api_token(user=actors.member, **kwargs)
    assert not ApiToken.objects.exists()
