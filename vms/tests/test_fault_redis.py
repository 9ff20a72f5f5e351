"""Redis (the broker and the channel layer) stopped for a few seconds under a running portal, then started again.

The whole portal runs as `manage.py serve` (daphne, the worker with beat, the watcher) on this test's
SQLite database and a redis-server of the test's own, which the test stops (SIGTERM by its PID: the
port refuses connections) and starts again on the same port, empty, as a restarted Redis without
persistence is. One real guest (the tiny test guest under TCG, on qemu:///system in a private pool)
runs; a member's stop is asked while Redis is down.

What must hold: the API keeps answering (the instance list, the operation), the stop is accepted (202,
not an HTML 500) and shows it waits for the task queue; once Redis answers again the worker sends it
by itself and it runs exactly once; the live updates come back (the open socket is closed and a new
one gets the next events). Recovery times are printed (docs/operations.md keeps them).
"""

from __future__ import annotations

import time

import pytest
from django.test import Client

from portal.celery import app as celery_app
from portal.services import create_api_token
from portal.testing import OwnRedis, database_url_of_this_test
from vms import lifecycle
from vms.models import Flavor, Instance, Operation
from vms.tests.conftest import active_image
from vms.tests.faults import Api, LiveSocket, Portal, wait_until

pytestmark = [pytest.mark.libvirt_guests, pytest.mark.django_db(transaction=True)]
BACK_WITHIN = 60.0  # seconds from Redis answering again to the stop being done


@pytest.fixture
def eager_tasks():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


def test_redis_restarted_while_a_stop_is_asked(
    portal_host, guest_media, make_tenant, make_user, tmp_path, eager_tasks, settings
):
    redis = OwnRedis(tmp_path / "redis.log")
    redis.start()
    settings.CHANNEL_LAYERS = {
        "default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": {"hosts": [redis.url(0)], "prefix": "lctest"}}
    }
    tenant = make_tenant("faults")
    member = make_user("member-redis")
    tenant.memberships.create(user=member, role="member")
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny")
    flavor = Flavor.objects.create(name="lctest.redis", vcpus=1, ram_mib=128, disk_gib=1)
    launch = lifecycle.launch_instances(actor=member, tenant=tenant, name="web-1", flavor=flavor, image=image)
    instance = Instance.objects.get(pk=launch.instances[0].pk)
    assert instance.state == Instance.State.RUNNING, instance.state_reason
    _token, raw = create_api_token(user=member, name="faults", scope="write")
    browser = Client()
    browser.force_login(member)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"

    portal = Portal(tmp_path=tmp_path, redis=redis, database_url=database_url_of_this_test())
    api = Api(portal.url, raw)
    try:
        portal.start()
        live = LiveSocket(portal.port, cookie)

        mark = len(portal.out.lines)
        redis.stop()
        stopped_at = time.monotonic()
        listed = api.get("/api/v1/instances/")
        assert listed.status == 200 and [i["id"] for i in listed.body["results"]] == [instance.pk]
        asked = api.post(f"/api/v1/instances/{instance.pk}/stop/")
        assert asked.status == 202, (asked.status, asked.content_type, str(asked.body)[:300])
        operation_id = asked.body["id"]
        waiting = api.operation(operation_id)
        assert waiting["state"] == "queued"
        assert waiting["message"] == "Waiting for the task queue; sent as soon as it answers."
        chinese = api.get(f"/api/v1/operations/{operation_id}/", language="zh-hans").body
        assert chinese["message"] == "正在等待任务队列，一旦其恢复应答即发送。"
        busy = api.instance(instance.pk)
        assert busy["task"] == "stop" and busy["allowed_actions"] == []
        second = api.post(f"/api/v1/instances/{instance.pk}/stop/")
        assert second.status == 409 and second.problem  # busy: refused cleanly, nothing queued twice

        # The worker noticed (its reconnect path is what runs the stop when Redis is back).
        portal.out.wait_for(r"^worker +\| .*Cannot connect to redis://", start=mark, timeout=30)
        redis.start()
        back_at = time.monotonic()
        done = wait_until(
            lambda: (op := api.operation(operation_id)).get("state") in ("succeeded", "failed") and op,
            timeout=BACK_WITHIN,
            what="the stop to be sent and done after Redis came back",
            interval=0.2,
        )
        done_at = time.monotonic()
        assert done["state"] == "succeeded", done
        stopped = api.instance(instance.pk)
        assert stopped["state"] == "shutoff" and stopped["task"] == ""
        assert Operation.objects.filter(kind="instance.stop").count() == 1
        assert portal.count(r"Task vms\.tasks\.run_instance_operation\[[^\]]+\] received") == 1

        # The socket opened before the outage was closed when its Redis went away (the browser reconnects)…
        with pytest.raises(RuntimeError):
            while live.receive(timeout=5) is not None:
                pass
        live.close()
        # …and a new one gets the live updates again.
        live = wait_until(lambda: _socket(portal.port, cookie), timeout=30, what="a live socket after Redis came back")
        started = api.post(f"/api/v1/instances/{instance.pk}/start/")
        assert started.status == 202
        live.wait_for(
            lambda m: m["type"] == "instance" and m["data"]["id"] == instance.pk and m["data"]["state"] == "running",
            timeout=60,
            what="the instance running again",
        )
        live_at = time.monotonic()
        live.close()

        assert api.server_errors() == [] and api.errors_not_problems() == []
        print(
            f"\nRedis down {back_at - stopped_at:.1f} s; stop done {done_at - back_at:.1f} s after Redis answered"
            f" (worker reconnected and sent it); live updates back {live_at - back_at:.1f} s after"
        )
    finally:
        portal.stop()
        redis.stop()


def _socket(port: int, cookie: str) -> LiveSocket | None:
    try:
        return LiveSocket(port, cookie)
    except (OSError, RuntimeError):
        return None
