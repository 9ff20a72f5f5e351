"""Concurrent reservations on PostgreSQL: the locked quota row admits exactly the limit."""

import os
import threading
import uuid

import pytest
import redis
from django.db import connection

from portal.celery import app as celery_app
from portal.factories import make_flavor, make_host, make_instance
from portal.selectors import tenant_usage
from portal.services import QuotaExceeded, set_quota
from portal.testing import switch_celery_broker
from vms.lifecycle import create_snapshot
from vms.models import Instance, Snapshot
from vms.services import create_flavor, reserve_instances

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
BROKER = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/14"


def _race(threads_n: int, attempt) -> list[str]:
    """``attempt(i)`` in ``threads_n`` threads released at once; each outcome "ok", "quota" or the error."""
    barrier = threading.Barrier(threads_n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            attempt(i)
            result = "ok"
        except QuotaExceeded:
            result = "quota"
        except Exception as exc:  # reported in the caller's assertion
            result = f"error: {exc!r}"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == threads_n
    return outcomes


def test_twenty_threads_against_a_quota_of_five(make_user, make_tenant):
    admin = make_user("root-admin", staff=True)
    tenant = make_tenant("Race")
    set_quota(actor=admin, tenant=tenant, limits={"instances": 5, "vcpus": -1, "ram_mib": -1, "disk_gib": -1})
    flavor = create_flavor(actor=admin, name="race.tiny", vcpus=1, ram_mib=128, disk_gib=1)

    outcomes = _race(20, lambda i: reserve_instances(actor=admin, tenant=tenant, flavor=flavor, names=[f"race-{i}"]))
    assert outcomes.count("ok") == 5, outcomes
    assert outcomes.count("quota") == 15, outcomes
    assert Instance.objects.filter(tenant=tenant).count() == 5


@pytest.fixture
def private_queue():
    """Tasks queued on commit go to a queue of this test on its own Redis database: no worker runs them."""
    queue = f"lctest-{uuid.uuid4().hex[:12]}"
    previous_url, previous_queue = celery_app.conf.broker_url, celery_app.conf.task_default_queue
    previous_eager = celery_app.conf.task_always_eager
    switch_celery_broker(BROKER, queue)
    celery_app.conf.task_always_eager = False
    try:
        yield queue
    finally:
        client = redis.Redis.from_url(BROKER)
        keys = client.keys(f"*{queue}*")
        if keys:
            client.delete(*keys)
        celery_app.conf.task_always_eager = previous_eager
        switch_celery_broker(previous_url, previous_queue)


def test_twenty_snapshots_race_for_snapshot_storage_of_five(make_user, make_tenant, private_queue):
    """Running instances' snapshots each reserve their RAM (128 MiB) of snapshot storage until measured."""
    admin = make_user("snap-admin", staff=True)
    tenant = make_tenant("Snap race")
    set_quota(actor=admin, tenant=tenant, limits={"snapshots": -1, "snapshot_mib": 5 * 128})
    host = make_host("snap-node")
    flavor = make_flavor("race.snap", ram_mib=128)
    instances = [make_instance(tenant, flavor, host, name=f"snap-{i}") for i in range(20)]

    barrier = threading.Barrier(len(instances))
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(instance) -> None:
        try:
            barrier.wait(timeout=30)
            create_snapshot(actor=admin, instance=instance, name="s")
            result = "ok"
        except QuotaExceeded as exc:
            result = "quota" if exc.resource == "snapshot_mib" else f"quota {exc.resource}"
        except Exception as exc:  # reported in the assertion below
            result = f"error: {exc!r}"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(instance,)) for instance in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sorted(outcomes) == ["ok"] * 5 + ["quota"] * 15, outcomes
    assert Snapshot.objects.filter(tenant=tenant).count() == 5
    assert tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]["snapshot_mib"] == 5 * 128


def test_security_groups_and_rules_race_for_their_quotas(make_user, make_tenant, private_queue):
    """20 groups against room for 4 more (the default group counts), then 20 rules against room for 5 more (their
    firewall syncs go to the test's private queue)."""
    from vms.models import SecurityGroup, SecurityGroupRule
    from vms.security_groups import add_rule, create_security_group

    admin = make_user("sg-admin", staff=True)
    tenant = make_tenant("Race groups")
    set_quota(actor=admin, tenant=tenant, limits={"security_groups": 5, "security_group_rules": -1})
    outcomes = _race(20, lambda i: create_security_group(actor=admin, tenant=tenant, name=f"race-{i}"))
    assert outcomes.count("ok") == 4 and outcomes.count("quota") == 16, outcomes
    assert SecurityGroup.objects.filter(tenant=tenant).count() == 5

    group = SecurityGroup.objects.filter(tenant=tenant).exclude(name="default").first()
    used = SecurityGroupRule.objects.filter(group__tenant=tenant).count()  # 2 of default, 1 per new group
    set_quota(actor=admin, tenant=tenant, limits={"security_group_rules": used + 5})
    outcomes = _race(
        20,
        lambda i: add_rule(actor=admin, group=group, direction="ingress", protocol="tcp", port_min=1000 + i),
    )
    assert outcomes.count("ok") == 5 and outcomes.count("quota") == 15, outcomes
    assert SecurityGroupRule.objects.filter(group__tenant=tenant).count() == used + 5
    assert tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]["security_group_rules"] == used + 5
