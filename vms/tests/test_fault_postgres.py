"""PostgreSQL restarted under a running portal while an operation is in flight.

A cluster of the test's own (``portal.testing.OwnPostgres``: initdb, pg_ctl, a free 127.0.0.1 port),
never the machine's shared server: the whole portal runs on it as `manage.py serve` (daphne, the
worker with beat, the watcher) with a Redis of its own, migrated and seeded through manage.py. A
member launches one guest through the API from a 400 MiB image (qemu:///system, a private pool), so
that the launch is copying the image — writing its progress — when the cluster is stopped (by its
postmaster's PID: a fast shutdown, connections refused) and started again.

What must hold: while the database is away the API answers 503 problem+json with Retry-After (not
an HTML 500); none of serve's processes dies; after the restart the API answers by itself at once,
and the launch finishes: the worker waits for the database and runs it again (its steps are
idempotent), leaving exactly one domain, one root disk, one seed and one image copy on the host.
Times are printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from django.conf import settings

from portal.testing import OwnPostgres, OwnRedis
from vms.tests.conftest import leftovers
from vms.tests.faults import Api, Portal, wait_until

pytestmark = [pytest.mark.libvirt_guests]
STALE_SECONDS = 10  # OPERATION_STALE_SECONDS of the portal: how soon an interrupted image copy may be redone
API_BACK_WITHIN = 15.0  # seconds from the cluster answering to the API answering 200 again
LAUNCH_BACK_WITHIN = 120.0  # seconds from the cluster answering to the launch done (copy redone, guest started)

SEED = """
import json, shutil
from django.contrib.auth import get_user_model
from images.models import Image
from portal.models import Membership, Tenant
from portal.services import create_api_token, ensure_quota
from vms.models import Flavor, Host

users = get_user_model()
member = users.objects.create_user("member-pg", password="pw-Secret-123")
admin = users.objects.create_user("admin-pg", password="pw-Secret-123", is_staff=True, is_superuser=True)
tenant = Tenant.objects.create(name="faults", slug="faults")
ensure_quota(tenant=tenant)
Membership.objects.create(user=member, tenant=tenant, role=Membership.Role.MEMBER)
host = Host.objects.create(state=Host.State.UP, virt_type=Host.VirtType.QEMU, **HOST)
flavor = Flavor.objects.create(name="lctest.pg", vcpus=1, ram_mib=128, disk_gib=1)
image = Image.objects.create(
    tenant=tenant, name="tiny", kind="disk", disk_format="qcow2", stored_format="qcow2",
    status=Image.Status.ACTIVE, size=SIZE, virtual_size=400 * 1024**2,
)
image.path.parent.mkdir(parents=True, exist_ok=True)
shutil.copyfile(SOURCE, image.path)
_, token = create_api_token(user=member, name="faults", scope="write")
_, admin_token = create_api_token(user=admin, name="faults", scope="read")
print(json.dumps({"tenant": tenant.pk, "flavor": flavor.pk, "image": image.pk, "host": host.pk,
                  "token": token, "admin_token": admin_token}))
"""


@pytest.fixture
def own_postgres():
    cluster = OwnPostgres()
    try:
        cluster.init()
        cluster.start()
        cluster.create_database("labcloud")
        yield cluster
    finally:
        cluster.remove()


def _manage(env: dict, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_postgres_restarted_while_an_operation_is_in_flight(lctest_host, guest_media, own_postgres, tmp_path, settings):
    settings.LABCLOUD_DOMAIN_PREFIX = lctest_host.prefix
    settings.LABCLOUD_SERIAL_LOG_DIR = str(lctest_host.work)
    settings.LABCLOUD_IMAGE_STORE = tmp_path / "images"
    redis = OwnRedis(tmp_path / "redis.log")
    redis.start()
    portal = Portal(
        tmp_path=tmp_path,
        redis=redis,
        database_url=own_postgres.url("labcloud"),
        # Persistent connections, as production runs them: each web thread's connection dies with the restart.
        env={"OPERATION_STALE_SECONDS": str(STALE_SECONDS), "DB_CONN_MAX_AGE": "600"},
    )
    capacity = lctest_host.driver.capacity(lctest_host.pool)
    host = {
        "name": lctest_host.name("host"),
        "uri": "qemu:///system",
        "storage_pool": lctest_host.pool,
        "cpus": capacity.cpus,
        "memory_mib": capacity.memory_mib,
        "free_memory_mib": capacity.free_memory_mib,
        "pool_capacity": capacity.pool_capacity,
        "pool_available": capacity.pool_available,
    }
    source = tmp_path / "big.qcow2"  # the tiny guest, grown and preallocated: its copy takes a moment
    subprocess.run(["cp", str(guest_media["tiny.qcow2"]), str(source)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", "--preallocation=full", str(source), "400M"], check=True)
    t0 = time.monotonic()
    _manage(portal.env, "migrate", "--noinput")
    seed = SEED.replace("HOST", repr(host)).replace("SIZE", str(source.stat().st_size))
    seed = seed.replace("SOURCE", repr(str(source)))
    ids = json.loads(_manage(portal.env, "shell", "-c", seed).strip().splitlines()[-1])
    print(f"\nown cluster migrated and seeded in {time.monotonic() - t0:.1f} s")
    api, staff = Api(portal.url, ids["token"]), Api(portal.url, ids["admin_token"])
    try:
        portal.start()
        launched = api.post(
            "/api/v1/instances/",
            {"tenant": ids["tenant"], "name": "web-1", "flavor": ids["flavor"], "image": ids["image"]},
        )
        assert launched.status == 202, launched.body
        instance_id = launched.body["instances"][0]["id"]
        launch_id = launched.body["operations"][0]["id"]
        wait_until(
            lambda: 5 < api.operation(launch_id).get("progress", 0) < 60,
            timeout=60,
            what="the launch copying its image",
            interval=0.05,
        )
        pids = {name: portal.pid(name) for name in ("web", "worker", "watcher")}

        stopped_at = time.monotonic()
        own_postgres.stop()
        away = api.get("/api/v1/instances/")
        assert away.status == 503, (away.status, away.content_type, str(away.body)[:300])
        assert away.problem and away.body["code"] == "service_unavailable" and away.headers["Retry-After"] == "5"
        chinese = api.get("/api/v1/instances/", language="zh-hans")
        assert chinese.status == 503 and chinese.body["title"] == "服务不可用"
        assert staff.get(f"/api/v1/operations/{launch_id}/").status == 503

        own_postgres.start()
        back_at = time.monotonic()
        wait_until(lambda: api.get("/api/v1/instances/").status == 200, timeout=API_BACK_WITHIN, what="the API")
        api_at = time.monotonic()
        assert api.operation(launch_id)["state"] in ("queued", "running"), (
            "the launch ended while the database was away"
        )

        done = wait_until(
            lambda: (op := api.operation(launch_id)).get("state") in ("succeeded", "failed") and op,
            timeout=LAUNCH_BACK_WITHIN,
            what="the launch to finish after the restart",
            interval=0.2,
        )
        done_at = time.monotonic()
        assert done["state"] == "succeeded", staff.operation(launch_id)
        seen = api.instance(instance_id)
        assert seen["state"] == "running" and seen["task"] == ""
        operations = staff.get(f"/api/v1/operations/?target_id={instance_id}").body["results"]
        assert [(o["kind"], o["state"]) for o in operations] == [("instance.launch", "succeeded")]
        assert {name: portal.pid(name) for name in pids} == pids  # nothing crashed, nothing was restarted
        assert api.server_errors() == [] and api.errors_not_problems() == []
        assert staff.server_errors() == []
        # Once it answered again, it answers: no request fails on a connection the restart killed.
        assert [r.path for r in api.replies + staff.replies if r.at > api_at and r.status >= 500] == []
        uuid = seen["uuid"]
        prefix = lctest_host.prefix
        assert sorted(leftovers(lctest_host.driver.conn, prefix)) == sorted(
            [f"domain {prefix}{uuid}", f"volume {prefix}{uuid}-root.qcow2", f"volume {prefix}{uuid}-seed.iso"]
        )
        images = [
            v.name for v in lctest_host.driver.list_volumes(lctest_host.pool) if v.name.startswith("labcloud-image")
        ]
        assert len(images) == 1
        runs = portal.count(r"Task vms\.tasks\.run_instance_operation\[[^\]]+\] received")
        stale = len([r for r in api.replies if back_at < r.at <= api_at and r.status == 503])
        print(
            f"PostgreSQL down {back_at - stopped_at:.1f} s; API answering {api_at - back_at:.1f} s after it was back"
            f" ({stale} answer(s) 503 on a connection the restart had killed);"
            f" the in-flight launch finished {done_at - back_at:.1f} s after ({runs} run(s) of its task)"
        )
    finally:
        portal.stop()
        redis.stop()
