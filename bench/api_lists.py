"""Benchmark: latency and query count of the API's list endpoints as the data grows.

    .venv/bin/python bench/api_lists.py [--tenants 200] [--rounds 30]

Builds a throw-away test database (SQLite in memory, or PostgreSQL when DATABASE_URL
points at it), fills it with tenants, members, quotas, flavors, instances and audit
events, then requests each list endpoint as a cloud admin and as a member of many
tenants, at page sizes 50 and 500, and prints p50/p95 latency and the query count.
The query count must not depend on the page size; the numbers are printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

ENDPOINTS = [
    "/api/v1/instances/",
    "/api/v1/tenants/",
    "/api/v1/quotas/",
    "/api/v1/flavors/",
    "/api/v1/memberships/",
    "/api/v1/audit-events/",
]


def populate(tenants: int) -> tuple:
    from portal.models import AuditEvent, Membership, Quota, Tenant
    from vms.models import Flavor, Host, Instance

    User = get_user_model()
    admin = User.objects.create_user("bench-admin", password=None, is_staff=True, is_superuser=True)
    member = User.objects.create_user("bench-member", password=None)
    flavors = [Flavor(name=f"f{i}", vcpus=1 + i % 4, ram_mib=512 * (1 + i % 8), disk_gib=10) for i in range(40)]
    Flavor.objects.bulk_create(flavors)
    flavors = list(Flavor.objects.all())
    hosts = [Host.objects.create(name=f"host{i}", uri="test:///default", state="up") for i in range(4)]
    rows = Tenant.objects.bulk_create([Tenant(name=f"Tenant {i}", slug=f"t{i}") for i in range(tenants)])
    Quota.objects.bulk_create(
        [
            Quota(
                tenant=t,
                instances=50,
                vcpus=100,
                ram_mib=204800,
                disk_gib=2000,
                snapshots=10,
                images=10,
                image_storage_gib=100,
            )
            for t in rows
        ]
    )
    users = User.objects.bulk_create([User(username=f"u{i}") for i in range(tenants)])
    Membership.objects.bulk_create(
        [Membership(user=u, tenant=t, role="admin") for u, t in zip(users, rows, strict=True)]
        + [Membership(user=member, tenant=t, role="member") for t in rows]
    )
    Instance.objects.bulk_create(
        [
            Instance(
                tenant=t,
                owner=member,
                name=f"vm{j}",
                flavor=flavors[j % 40],
                vcpus=1,
                ram_mib=512,
                disk_gib=10,
                host=hosts[j % 4],
                state="running",
                domain_name=f"labcloud-bench-{t.pk}-{j}",
            )
            for t in rows
            for j in range(25)
        ]
    )
    AuditEvent.objects.bulk_create(
        [AuditEvent(tenant=t, username="u", action="bench.event", target_repr=str(j)) for t in rows for j in range(10)]
    )
    return admin, member


def measure(client: APIClient, url: str, rounds: int) -> tuple[float, float, int]:
    timings = []
    queries = 0
    for i in range(rounds):
        with CaptureQueriesContext(connection) as ctx:
            start = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code)
        if i == 0:
            queries = len(ctx.captured_queries)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1], queries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        start = time.perf_counter()
        admin, member = populate(args.tenants)
        print(
            f"data: {args.tenants} tenants, {args.tenants * 25} instances, 40 flavors, "
            f"{args.tenants * 10} audit events ({time.perf_counter() - start:.1f} s to load); "
            f"database: {connection.vendor}"
        )
        print(f"{'endpoint':32} {'as':7} {'page':>5} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}")
        for url in ENDPOINTS:
            for role, user in (("admin", admin), ("member", member)):
                client = APIClient()
                client.force_authenticate(user)
                for page_size in (50, 500):
                    p50, p95, queries = measure(client, f"{url}?page_size={page_size}", args.rounds)
                    print(f"{url:32} {role:7} {page_size:>5} {p50:8.1f} {p95:8.1f} {queries:>8}")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
