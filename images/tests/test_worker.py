"""The real path: a Celery worker consuming from Redis processes an upload queued on commit."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.db import connections

from images.models import Image
from images.services import create_image
from images.tests.conftest import upload
from portal.celery import app as celery_app
from portal.celery import image_queue
from portal.testing import switch_celery_broker
from vms.models import Operation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_worker():
    """A worker thread on a Redis database and a queue of its own, so no other worker on this machine
    (a developer's `make run`, another test run) takes the tasks."""
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    previous, previous_queue = celery_app.conf.broker_url, celery_app.conf.task_default_queue
    queue = f"lctest-{uuid.uuid4().hex[:12]}"
    switch_celery_broker(f"{base}/14", queue)
    celery_app.conf.task_always_eager = False

    def close_db(**_kwargs) -> None:
        # The worker thread's database connection would outlive the test and block dropping the test database.
        connections.close_all()

    task_postrun.connect(close_db, weak=False)
    try:
        # Image tasks go to the image queue (portal.celery.route_task), named after this test's queue.
        queues = [queue, image_queue()]
        with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30, queues=queues):
            yield
    finally:
        task_postrun.disconnect(close_db)
        # kombu keeps the queue's bindings in Redis keys named after it: remove what this test declared.
        client = redis.Redis.from_url(f"{base}/14")
        leftovers = client.keys(f"*{queue}*")
        if leftovers:
            client.delete(*leftovers)
        switch_celery_broker(previous, previous_queue)


def test_upload_is_processed_by_a_real_worker(actors, media, redis_worker):
    path = media["vmdk"]
    image = create_image(
        actor=actors.member, tenant=actors.tenant, name="via redis", disk_format="vmdk", size=path.stat().st_size
    )
    upload(actor=actors.member, image=image, path=path)  # the last chunk queues the task when its transaction commits

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        image.refresh_from_db()
        if image.status in {Image.Status.ACTIVE, Image.Status.FAILED}:
            break
        time.sleep(0.2)
    assert image.status == Image.Status.ACTIVE, image.failure_reason
    assert image.stored_format == "qcow2"
    operation = Operation.objects.get(kind="image.process", target_id=str(image.pk))
    assert operation.state == Operation.State.SUCCEEDED
    assert operation.started_at and operation.finished_at
