"""The host watcher killed (SIGKILL) under a running portal, restarted by `manage.py serve`.

The whole portal runs as `manage.py serve` on this test's SQLite database and a Redis of its own,
with one tiny guest on qemu:///system (a private pool). A member's stop is asked and the watcher
killed at once; then, behind the portal's back, the guest is started again with libvirt directly — a
fact only the watcher can bring into the database.

What must hold: serve restarts the watcher by itself; the API answers all along (no 500); the stop
(the worker's, which needs no watcher) finishes once; the restarted watcher brings the row to the
truth (running) without anyone asking; the other processes keep their pids. Times are printed.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from portal.celery import app as celery_app
from portal.services import create_api_token
from portal.testing import OwnRedis, database_url_of_this_test
from vms import lifecycle
from vms.models import Flavor, Instance, Operation
from vms.tests.conftest import active_image
from vms.tests.faults import Api, Portal, wait_until

pytestmark = [pytest.mark.libvirt_guests, pytest.mark.django_db(transaction=True)]
TRUTH_WITHIN = 30.0  # seconds from the kill to the row showing what the host did meanwhile


@pytest.fixture
def eager_tasks():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


def test_watcher_killed_and_restarted_catches_up(
    portal_host, guest_media, make_tenant, make_user, tmp_path, eager_tasks, settings
):
    redis = OwnRedis(tmp_path / "redis.log")
    redis.start()
    settings.CHANNEL_LAYERS = {
        "default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": {"hosts": [redis.url(0)], "prefix": "lctest"}}
    }
    tenant = make_tenant("faults")
    member = make_user("member-watcher")
    tenant.memberships.create(user=member, role="member")
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny")
    flavor = Flavor.objects.create(name="lctest.watcher", vcpus=1, ram_mib=128, disk_gib=1)
    launch = lifecycle.launch_instances(actor=member, tenant=tenant, name="web-1", flavor=flavor, image=image)
    instance = Instance.objects.get(pk=launch.instances[0].pk)
    assert instance.state == Instance.State.RUNNING, instance.state_reason
    _token, raw = create_api_token(user=member, name="faults", scope="write")

    portal = Portal(tmp_path=tmp_path, redis=redis, database_url=database_url_of_this_test())
    api = Api(portal.url, raw)
    try:
        portal.start()
        portal.out.wait_for(rf"^watcher +\| .*host {portal_host.name}: listening for domain events", timeout=60)
        others = {name: portal.pid(name) for name in ("web", "worker", "console")}
        watcher = portal.pid("watcher")

        mark = len(portal.out.lines)
        asked = api.post(f"/api/v1/instances/{instance.pk}/stop/")
        assert asked.status == 202, asked.body
        os.kill(watcher, signal.SIGKILL)
        killed_at = time.monotonic()
        portal.out.wait_for(rf"watcher \(pid {watcher}\) exited with signal SIGKILL", start=mark, timeout=10)
        done = wait_until(
            lambda: (op := api.operation(asked.body["id"])).get("state") in ("succeeded", "failed") and op,
            timeout=60,
            what="the stop asked as the watcher died",
        )
        assert done["state"] == "succeeded", done
        assert api.instance(instance.pk)["state"] == "shutoff"
        # Behind the portal's back: only the watcher can tell the database.
        assert portal_host.lctest.driver.start(str(instance.uuid)).state == "running"
        changed_at = time.monotonic()

        wait_until(
            lambda: api.instance(instance.pk).get("state") == "running",
            timeout=TRUTH_WITHIN,
            what="the restarted watcher to bring the row to the truth",
            interval=0.2,
        )
        truth_at = time.monotonic()
        restarted_at = portal.printed_at(r"restarted watcher \(pid \d+\)", after=killed_at)
        ready_at = portal.printed_at(r"^watcher +\| .*watcher running", after=killed_at)

        assert portal.pid("watcher") != watcher
        assert {name: portal.pid(name) for name in others} == others
        assert Operation.objects.filter(kind="instance.stop").count() == 1
        assert portal.count(r"Task vms\.tasks\.run_instance_operation\[[^\]]+\] received") == 1
        assert api.server_errors() == [] and api.errors_not_problems() == []
        print(
            f"\nwatcher killed: restarted by serve {restarted_at - killed_at:.1f} s after, running again"
            f" {ready_at - killed_at:.1f} s after; the row right {truth_at - changed_at:.1f} s after the change"
            f" made behind its back ({truth_at - killed_at:.1f} s after the kill)"
        )
    finally:
        portal.stop()
        redis.stop()
