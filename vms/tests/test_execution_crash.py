"""A worker killed (SIGKILL) in the middle of a launch: after a restart the launch finishes, nothing is orphaned.

The real path: a Celery worker process (``celery -A portal worker``) on Redis (its own database and
queue), the test's SQLite database file, the real ``qemu:///system`` and a private pool. The image
is made large enough (400 MiB, preallocated) that its copy to the host takes a moment, and the
worker is killed while the operation reports "Copying image". The restarted worker picks the
operation up again once its heartbeat is stale (re-queued by the worker's own start-up sweep or by
the one Celery beat runs every 30 s, called here until one of them did; exactly once), the copy is
redone, and the instance ends up running with exactly its own disk and seed on the host. Deleting it
then leaves nothing and frees the quota.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

from portal.celery import app as celery_app
from portal.selectors import tenant_usage
from portal.testing import database_url_of_this_test, switch_celery_broker
from vms import execution, lifecycle
from vms.compute import libvirt as libvirt_compute
from vms.models import Flavor, Instance, Operation
from vms.tests.conftest import active_image, leftovers

pytestmark = [pytest.mark.libvirt_guests, pytest.mark.django_db(transaction=True)]
BASE = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
BROKER = f"{BASE}/14"
STALE = 2  # seconds without heartbeat before an operation counts as orphaned


@pytest.fixture
def worker_queue():
    """This test's queue on its own Redis database (no other worker takes its tasks); cleaned up after."""
    previous_url, previous_queue = celery_app.conf.broker_url, celery_app.conf.task_default_queue
    previous_eager = celery_app.conf.task_always_eager
    queue = f"lctest-{uuid.uuid4().hex[:12]}"
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


class Worker:
    """``celery -A portal worker`` as a child process, with the test's settings in its environment."""

    def __init__(self, queue: str, portal_host, log: Path) -> None:
        self.queue, self.host, self.log = queue, portal_host, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": database_url_of_this_test(),
            "CELERY_BROKER_URL": BROKER,
            "LABCLOUD_DOMAIN_PREFIX": settings.LABCLOUD_DOMAIN_PREFIX,
            "LABCLOUD_SERIAL_LOG_DIR": settings.LABCLOUD_SERIAL_LOG_DIR,
            "LABCLOUD_IMAGE_STORE": str(settings.LABCLOUD_IMAGE_STORE),
            "OPERATION_STALE_SECONDS": str(STALE),
            "DJANGO_SETTINGS_MODULE": "portal.settings",
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "-Q",
                self.queue,
                "--pool",
                "solo",
                "-n",
                f"{self.queue}@localhost",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


def test_worker_killed_mid_launch_recovers_without_orphans(
    portal_host, guest_media, make_tenant, make_user, worker_queue, tmp_path
):
    big = tmp_path / "big.qcow2"
    subprocess.run(["cp", str(guest_media["tiny.qcow2"]), str(big)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", "--preallocation=full", str(big), "400M"], check=True)
    tenant = make_tenant("crash")
    user = make_user("member-crash")
    tenant.memberships.create(user=user, role="member")
    image = active_image(tenant=tenant, source=big, name="big", virtual_size=400 * 1024**2)
    flavor = Flavor.objects.create(name="lctest.crash", vcpus=1, ram_mib=128, disk_gib=1)
    worker = Worker(worker_queue, portal_host, tmp_path / "worker.log")
    try:
        worker.start()
        launch = lifecycle.launch_instances(actor=user, tenant=tenant, name="crashy", flavor=flavor, image=image)
        instance, operation = launch.instances[0], launch.operations[0]

        def copying():
            operation.refresh_from_db()
            return operation.state == Operation.State.RUNNING and "Copying" in operation.message

        wait_for(copying, 60, "the launch to start copying the image")
        worker.kill()
        operation.refresh_from_db()
        assert operation.state == Operation.State.RUNNING, "the launch finished before the worker was killed"
        killed_at_progress = operation.progress

        # The restarted worker sweeps at start, and beat every 30 s (called here): whichever sweep sees the
        # heartbeat stale first re-queues the launch, exactly once (the attempt is counted under the row lock).
        worker.start()

        def requeued():
            execution.recover_stale_operations(stale_after=timedelta(seconds=STALE))
            operation.refresh_from_db()
            return operation.params.get("attempts") == 1

        wait_for(requeued, 60, "the orphaned launch to be re-queued", interval=0.2)

        def finished():
            operation.refresh_from_db()
            return operation.finished

        wait_for(finished, 180, "the recovered launch to finish", interval=0.2)
        instance.refresh_from_db()
        assert operation.state == Operation.State.SUCCEEDED, operation.error
        assert operation.params["attempts"] == 1
        assert instance.state == Instance.State.RUNNING and instance.task == ""
        driver = portal_host.lctest.driver
        assert driver.state(str(instance.uuid)).state == "running"
        prefix = portal_host.lctest.prefix
        assert sorted(leftovers(driver.conn, prefix)) == sorted(
            [
                f"domain {instance.domain_name}",
                f"volume {libvirt_compute.root_volume(instance)}",
                f"volume {libvirt_compute.seed_volume(instance)}",
            ]
        )
        images = [v.name for v in driver.list_volumes(portal_host.storage_pool) if v.name.startswith("labcloud-image")]
        assert len(images) == 1  # the copy was redone into the same volume, not duplicated
        print(f"\nworker killed at {killed_at_progress} % of the launch; recovered and running")

        lifecycle.delete_instance(actor=user, instance=instance)
        wait_for(lambda: not Instance.objects.filter(pk=instance.pk).exists(), 120, "the delete", interval=0.2)
        assert leftovers(driver.conn, prefix) == []
        usage = tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]
        assert (usage["instances"], usage["vcpus"], usage["ram_mib"], usage["disk_gib"]) == (0, 0, 0, 0)
    finally:
        worker.stop()
        connection.close()
