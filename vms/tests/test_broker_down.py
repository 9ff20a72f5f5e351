"""An action requested while the broker (Redis) is down: accepted, kept, and sent as soon as it is back.

Real parts: a redis-server of this test's own, not running when the request comes (its port refuses
connections, as a stopped Redis does), then started on the same port. Before, the request's
on-commit ``task.delay`` raised out of the view: an HTML 500 for an API client, the operation left
*queued* with the instance busy, and nothing sent it again until the stale sweep, after
10 × ``OPERATION_STALE_SECONDS`` (20 minutes by default).

Now the request answers 202 with the operation *queued*, marked unsent and saying it waits for the
task queue; the sweep (and a worker reconnecting to the broker, see vms/tests/test_fault_redis.py)
sends it at once when the broker answers, exactly once.
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from django.core.cache import cache

from portal import factories
from portal.celery import app as celery_app
from portal.testing import OwnRedis, assert_problem, switch_celery_broker
from vms import execution
from vms.models import Flavor, Host, Instance, Operation

URL = "/api/v1/instances/"


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()


@pytest.fixture
def stopped_broker(tmp_path):
    """The Celery app pointed at a Redis of this test's own that is not running (yet)."""
    server = OwnRedis(tmp_path / "redis.log")
    previous_url, previous_queue = celery_app.conf.broker_url, celery_app.conf.task_default_queue
    previous_eager = celery_app.conf.task_always_eager
    queue = f"lctest-{uuid.uuid4().hex[:12]}"
    switch_celery_broker(server.url(), queue)
    celery_app.conf.task_always_eager = False
    try:
        yield server, queue
    finally:
        server.stop()
        celery_app.conf.task_always_eager = previous_eager
        switch_celery_broker(previous_url, previous_queue)


def test_an_action_asked_while_the_broker_is_down_is_sent_when_it_is_back(transactional_db, actors, stopped_broker):
    server, queue = stopped_broker
    host = Host.objects.create(name="node-b", uri="qemu:///system", state=Host.State.UP)
    flavor = Flavor.objects.create(name="lctest.broker", vcpus=1, ram_mib=256, disk_gib=1)
    instance = factories.make_instance(actors.tenant, flavor, host, name="web-1", state=Instance.State.RUNNING)

    client = actors.client("member")
    client.raise_request_exception = False
    response = client.post(f"{URL}{instance.pk}/reboot/")
    assert response.status_code == 202, (response.status_code, response.content[:300])
    operation = Operation.objects.get(pk=response.json()["id"])
    assert operation.state == Operation.State.QUEUED and operation.unsent
    assert client.get(f"/api/v1/operations/{operation.pk}/").json()["message"] == (
        "Waiting for the task queue; sent as soon as it answers."
    )
    instance.refresh_from_db()
    assert instance.task == "reboot"
    # Still busy: a second request is refused cleanly, nothing is queued twice.
    assert_problem(client.post(f"{URL}{instance.pk}/reboot/"), 409, "conflict")
    assert Operation.objects.count() == 1

    assert execution.recover_stale_operations() == []  # the broker is still down: nothing sent, nothing lost
    operation.refresh_from_db()
    assert operation.unsent and operation.state == Operation.State.QUEUED

    server.start()
    assert execution.recover_stale_operations() == [operation.pk]
    operation.refresh_from_db()
    assert not operation.unsent and operation.state == Operation.State.QUEUED and operation.message == ""
    broker = redis.Redis.from_url(server.url())
    messages = broker.lrange(queue, 0, -1)
    assert len(messages) == 1
    body = json.loads(messages[0])
    assert body["headers"]["task"] == "vms.tasks.run_instance_operation"
    assert body["headers"]["argsrepr"] == f"({operation.pk},)"
    assert execution.recover_stale_operations() == []  # sent once, not again
    assert broker.llen(queue) == 1


def test_a_share_withdrawn_while_the_broker_is_down_stays_withdrawn(transactional_db, actors, stopped_broker):
    """Withdrawing a share of an image with a cloud copy queues a sync of the copy's members after commit.
    With the broker away the withdrawal stands and the owner gets their answer, not a 503 after the fact
    (retrying would find nothing: the share is gone)."""
    from images.models import Image, ImageReplica, ImageShare

    cloud = Host.objects.create(
        name="cloud-b", kind=Host.Kind.OPENSTACK, uri="http://127.0.0.1:1/identity", state=Host.State.UP
    )
    image = Image.objects.create(
        tenant=actors.tenant, name="shared-disk", disk_format="qcow2", status=Image.Status.ACTIVE, size=1
    )
    ImageReplica.objects.create(image=image, host=cloud, cloud_image_id="glance-1", state=ImageReplica.State.READY)
    (share,) = factories.share_image_with(image, actors.other_tenant)

    response = actors.client("member").delete(f"/api/v1/image-shares/{share.pk}/")
    assert response.status_code == 204, response.content
    assert not ImageShare.objects.filter(pk=share.pk).exists()
