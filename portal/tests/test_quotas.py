"""Quota service: reservations against usage derived from rows, inside the caller's transaction."""

import pytest
from django.db import transaction

from portal.models import AuditEvent
from portal.selectors import quota_overview, tenant_usage
from portal.services import QuotaExceeded, reserve_quota, set_quota
from vms.models import Instance
from vms.services import create_flavor, reserve_instances


@pytest.fixture
def flavor(actors):
    return create_flavor(actor=actors.cloud_admin, name="q.small", vcpus=2, ram_mib=1024, disk_gib=10)


def test_reservation_within_limits_creates_rows_and_usage(actors, flavor):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"instances": 3, "vcpus": 6})
    created = reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["a", "b"])
    assert [i.name for i in created] == ["a", "b"]
    usage = tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]
    assert usage["instances"] == 2
    assert usage["vcpus"] == 4
    assert usage["ram_mib"] == 2048
    assert usage["disk_gib"] == 20
    # The other tenant's usage is untouched.
    assert tenant_usage(tenant_ids=[actors.other_tenant.pk])[actors.other_tenant.pk]["instances"] == 0


def test_exceeding_names_resource_request_limit_and_usage_and_creates_nothing(actors, flavor):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"instances": 10, "vcpus": 5})
    reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["one"])
    events_before = AuditEvent.objects.count()
    with pytest.raises(QuotaExceeded) as err:
        reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["two", "three"])
    exc = err.value
    assert (exc.resource, exc.requested, exc.limit, exc.in_use) == ("vcpus", 4, 5, 2)
    assert exc.message == "Quota exceeded for vCPUs: requested 4, limit 5, currently in use 2."
    # All or nothing: no row of the batch exists, and nothing was audited as created.
    assert list(Instance.objects.values_list("name", flat=True)) == ["one"]
    assert AuditEvent.objects.count() == events_before


def test_unlimited_quota_never_refuses(actors, flavor):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"instances": -1, "vcpus": -1})
    reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=[f"vm{i}" for i in range(12)])
    assert Instance.objects.filter(tenant=actors.tenant).count() == 12


def test_zero_quota_refuses_everything(actors, flavor):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"instances": 0})
    with pytest.raises(QuotaExceeded, match="limit 0"):
        reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["x"])


def test_deleting_rows_releases_usage(actors, flavor):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"instances": 1})
    (first,) = reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["first"])
    with pytest.raises(QuotaExceeded):
        reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["second"])
    first.delete()
    reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["second"])


def test_usage_follows_rows_not_flavor_edits(actors, flavor):
    reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["keep"])
    flavor.vcpus = 16
    flavor.save()
    assert tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]["vcpus"] == 2


@pytest.mark.django_db(transaction=True)
def test_reserve_outside_a_transaction_is_a_programming_error(actors):
    with pytest.raises(RuntimeError, match=r"transaction\.atomic"):
        reserve_quota(tenant=actors.tenant, request={"instances": 1})


def test_reserve_rejects_unknown_resource(actors):
    from portal.services import ServiceError

    with transaction.atomic(), pytest.raises(ServiceError, match="Unknown quota resource"):
        reserve_quota(tenant=actors.tenant, request={"gpus": 1})


def test_quota_overview_lines(actors, flavor):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"instances": 4, "ram_mib": -1})
    reserve_instances(actor=actors.member, tenant=actors.tenant, flavor=flavor, names=["a"])
    lines = {line.resource: line for line in quota_overview(tenant=actors.tenant)}
    assert lines["instances"].used == 1 and lines["instances"].limit == 4 and lines["instances"].percent == 25
    assert lines["instances"].available == 3
    assert lines["ram_mib"].unlimited and lines["ram_mib"].available is None and lines["ram_mib"].used == 1024


def test_set_quota_validates_and_changes_nothing_on_error(actors):
    from portal.services import ServiceError

    before = actors.tenant.quota.limits()
    with pytest.raises(ServiceError):
        set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"instances": 5, "vcpus": -7})
    actors.tenant.quota.refresh_from_db()
    assert actors.tenant.quota.limits() == before


def test_set_quota_is_audited_with_the_change(actors):
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"instances": 7})
    event = AuditEvent.objects.filter(action="quota.update").get()
    assert event.tenant == actors.tenant
    assert event.username == "cloudadmin"
    assert event.detail["instances"][1] == 7
