"""Benchmark: latency and query count of the API's list endpoints as the data grows.

    .venv/bin/python bench/api_lists.py [--tenants 200] [--rounds 30] [--only instances] [--no-http]

Builds a throw-away test database (SQLite, or PostgreSQL when DATABASE_URL points at it), fills it
with tenants, members, quotas, flavors, instances and audit events, then requests each list endpoint
as a cloud admin and as a member of many tenants, at page sizes 50 and 500 (the largest the API
allows), and prints p50/p95 latency and the query count:

- "http": what a client waits for: daphne (as ``make run`` serves) on 127.0.0.1 with this database,
  requested with API tokens over one keep-alive connection, until the whole body is read;
- "in-process": the same request through Django's test client (a profile: no server, no socket).

The two are interleaved round by round. The query count must not depend on the page size; the
numbers are printed, not asserted. daphne is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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
                snapshot_mib=10240,
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


def percentiles(timings: list[float]) -> tuple[float, float]:
    timings = sorted(timings)
    return statistics.median(timings), timings[max(0, round(0.95 * (len(timings) - 1)))]


class Server:
    """daphne serving the portal on 127.0.0.1 with this process's test database (stopped by its PID)."""

    def __init__(self) -> None:
        from portal.testing import database_url_of_this_test, free_port

        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="lcbench-lists-", suffix=".log", dir="/var/tmp")[1])
        env = {
            **os.environ,
            "DATABASE_URL": database_url_of_this_test(),
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "ALLOWED_HOSTS": "127.0.0.1",
            "API_THROTTLE_USER": "100000/min",
        }
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "portal.asgi:application"],
                cwd=Path(__file__).resolve().parent.parent,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"daphne exited:\n{self.log.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit("daphne not listening after 30 s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.unlink(missing_ok=True)


class HttpClient:
    """One keep-alive connection to the server, authenticated with a personal API token."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def get(self, url: str) -> float:
        start = time.perf_counter()
        self.connection.request("GET", url, headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - start) * 1000
        assert response.status == 200, (url, response.status, body[:300])
        return elapsed


def in_process(client: APIClient, url: str) -> tuple[float, int]:
    with CaptureQueriesContext(connection) as ctx:
        start = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - start) * 1000
    assert response.status_code == 200, (url, response.status_code)
    return elapsed, len(ctx.captured_queries)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", default="", help="measure only the endpoints whose path contains this")
    parser.add_argument("--no-http", action="store_true", help="in-process only (no server)")
    args = parser.parse_args()

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    server = None
    try:
        from portal.services import create_api_token

        start = time.perf_counter()
        admin, member = populate(args.tenants)
        print(
            f"data: {args.tenants} tenants, {args.tenants * 25} instances, 40 flavors, "
            f"{args.tenants * 10} audit events ({time.perf_counter() - start:.1f} s to load); "
            f"database: {connection.vendor}; {os.cpu_count()} CPUs"
        )
        roles = {}
        for role, user in (("admin", admin), ("member", member)):
            client = APIClient()
            client.force_authenticate(user)
            roles[role] = (client, create_api_token(user=user, name="bench")[1])
        if not args.no_http:
            connection.close()  # the server reads what this process wrote
            server = Server()
        print(
            f"{'endpoint':28} {'as':7} {'page':>5} {'http p50':>9} {'http p95':>9} "
            f"{'in-proc p50':>12} {'in-proc p95':>12} {'queries':>8}"
        )
        for url in [u for u in ENDPOINTS if args.only in u]:
            for role, (client, token) in roles.items():
                remote = HttpClient(server.port, token) if server else None
                for page_size in (50, 500):
                    target = f"{url}?page_size={page_size}"
                    local_times, http_times, queries = [], [], 0
                    for i in range(args.rounds + 1):  # the first of each is a warm-up
                        elapsed, count = in_process(client, target)
                        http_elapsed = remote.get(target) if remote else 0.0
                        if i == 0:
                            queries = count
                            continue
                        local_times.append(elapsed)
                        http_times.append(http_elapsed)
                    hp50, hp95 = percentiles(http_times)
                    lp50, lp95 = percentiles(local_times)
                    shown = f"{hp50:9.1f} {hp95:9.1f}" if remote else f"{'-':>9} {'-':>9}"
                    print(f"{url:28} {role:7} {page_size:>5} {shown} {lp50:12.1f} {lp95:12.1f} {queries:>8}")
    finally:
        if server is not None:
            server.stop()
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
