"""Concurrent reservations on PostgreSQL: the locked quota row admits exactly the limit."""

import threading

import pytest
from django.db import connection

from portal.services import QuotaExceeded, set_quota
from vms.models import Instance
from vms.services import create_flavor, reserve_instances

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_twenty_threads_against_a_quota_of_five(make_user, make_tenant):
    admin = make_user("root-admin", staff=True)
    tenant = make_tenant("Race")
    set_quota(actor=admin, tenant=tenant, limits={"instances": 5, "vcpus": -1, "ram_mib": -1, "disk_gib": -1})
    flavor = create_flavor(actor=admin, name="race.tiny", vcpus=1, ram_mib=128, disk_gib=1)

    threads_n = 20
    barrier = threading.Barrier(threads_n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            reserve_instances(actor=admin, tenant=tenant, flavor=flavor, names=[f"race-{i}"])
            result = "ok"
        except QuotaExceeded:
            result = "quota"
        except Exception as exc:  # reported in the assertion below
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
    assert outcomes.count("ok") == 5, outcomes
    assert outcomes.count("quota") == 15, outcomes
    assert Instance.objects.filter(tenant=tenant).count() == 5
