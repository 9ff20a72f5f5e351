"""A host's libvirtd killed (SIGKILL) and started again while a guest runs and an operation is in flight.

The host is the tests' second libvirt host (scripts/second_host/: a libvirtd of its own, reached over
ssh as the portal reaches a remote host) — never the machine's qemu:///system. The whole portal runs
as `manage.py serve` on this test's SQLite database and a Redis of its own. One tiny guest runs
there; a member's second launch, from an 800 MiB image, is copying that image to the host when the
daemon is killed.

What must hold: the watcher marks the host down within seconds; the in-flight launch fails cleanly
(the member reads a generic, translated reason, the cloud admin the backend's words; the instance is
in error, not busy); the running guest's QEMU keeps running; while the host is down the API answers,
actions are refused up front with a problem+json 409 ``host_unavailable`` in the user's language and
``allowed_actions`` is empty; once the daemon is back the host comes up by itself, the guest is found
running as it was, actions work again and the failed instance can be deleted, leaving nothing on the
host. No answer is a 500, nothing is queued twice. Times are printed.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import libvirt
import pytest

from portal.celery import app as celery_app
from portal.services import create_api_token
from portal.testing import OwnRedis, database_url_of_this_test
from portal.testing_second_host import kill_libvirtd, start_libvirtd
from vms import lifecycle
from vms.compute.libvirt.images import volume_name
from vms.models import Flavor, Instance, Operation
from vms.operations import HOST_DID_NOT_ANSWER, HOST_FAILED
from vms.tests.conftest import active_image, leftovers
from vms.tests.faults import Api, Portal, wait_until

pytestmark = [pytest.mark.libvirt_guests, pytest.mark.second_host, pytest.mark.django_db(transaction=True)]
DOWN_WITHIN = 15.0  # seconds from the kill to the host shown down
UP_WITHIN = 90.0  # seconds from the daemon answering again to the host shown up (the watcher's backoff)
GENERIC = (HOST_DID_NOT_ANSWER, HOST_FAILED)  # what a member may read of a host's failure


@pytest.fixture
def eager_tasks():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


def _qemu_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("qemu")
    except OSError:
        return False


def test_libvirtd_killed_and_restarted_under_a_running_portal(
    second_host, second_host_row, guest_media, make_tenant, make_user, tmp_path, eager_tasks, settings
):
    settings.LABCLOUD_IMAGE_STORE = tmp_path / "images"
    settings.LABCLOUD_IMAGE_STORE.mkdir()
    settings.LABCLOUD_SERIAL_LOG_DIR = str(second_host.directory / "log")  # the same path inside its namespace
    redis = OwnRedis(tmp_path / "redis.log")
    redis.start()
    settings.CHANNEL_LAYERS = {
        "default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": {"hosts": [redis.url(0)], "prefix": "lctest"}}
    }
    host = second_host_row
    tenant = make_tenant("faults")
    member = make_user("member-libvirtd")
    admin = make_user("admin-libvirtd", staff=True)
    tenant.memberships.create(user=member, role="member")
    tiny = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny")
    big_file = tmp_path / "big.qcow2"  # the tiny guest grown and preallocated: its copy takes a moment
    subprocess.run(["cp", str(guest_media["tiny.qcow2"]), str(big_file)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", "--preallocation=full", str(big_file), "800M"], check=True)
    big = active_image(tenant=tenant, source=big_file, name="big", virtual_size=800 * 1024**2)
    flavor = Flavor.objects.create(name="lctest.libvirtd", vcpus=1, ram_mib=128, disk_gib=1)
    launch = lifecycle.launch_instances(actor=member, tenant=tenant, name="web-1", flavor=flavor, image=tiny)
    instance = Instance.objects.select_related("host").get(pk=launch.instances[0].pk)
    assert instance.state == Instance.State.RUNNING, instance.state_reason
    qemu_pid = int((second_host.directory / "run" / "libvirt" / "qemu" / f"{instance.domain_name}.pid").read_text())
    _token, raw = create_api_token(user=member, name="faults", scope="write")
    _token, admin_raw = create_api_token(user=admin, name="faults-admin", scope="read")

    portal = Portal(tmp_path=tmp_path, redis=redis, database_url=database_url_of_this_test())
    api, staff = Api(portal.url, raw), Api(portal.url, admin_raw)
    killed = False
    try:
        portal.start()
        portal.out.wait_for(rf"^watcher +\| .*host {host.name}: listening for domain events", timeout=60)

        launched = api.post(
            "/api/v1/instances/", {"tenant": tenant.pk, "name": "web-2", "flavor": flavor.pk, "image": big.pk}
        )
        assert launched.status == 202, launched.body
        second_id, launch_id = launched.body["instances"][0]["id"], launched.body["operations"][0]["id"]
        wait_until(
            lambda: 5 < api.operation(launch_id).get("progress", 0) < 50,
            timeout=60,
            what="the second launch copying its image",
            interval=0.05,
        )

        old_pid = kill_libvirtd(second_host)
        killed, killed_at = True, time.monotonic()
        wait_until(
            lambda: staff.get(f"/api/v1/hosts/{host.pk}/").body.get("state") == "down",
            timeout=DOWN_WITHIN,
            what="the host shown down",
        )
        down_at = time.monotonic()
        failed = wait_until(
            lambda: (op := api.operation(launch_id)).get("state") in ("failed", "succeeded") and op,
            timeout=60,
            what="the in-flight launch to end",
        )
        assert failed["state"] == "failed", failed
        assert failed["error"] in GENERIC, failed["error"]
        assert failed["error_detail"] is None and "lctest" not in str(failed) and "qemu" not in str(failed)
        assert staff.operation(launch_id)["error_detail"]
        second = api.instance(second_id)
        assert second["state"] == "error" and second["task"] == "" and second["state_reason"] in GENERIC

        # While the host is down: the API answers, actions are refused up front, the guest lives on.
        assert api.get("/api/v1/instances/").status == 200
        seen = api.instance(instance.pk)
        assert seen["task"] == "" and seen["state"] == "running" and seen["allowed_actions"] == []
        refused = api.post(f"/api/v1/instances/{instance.pk}/reboot/")
        assert refused.status == 409 and refused.problem and refused.body["code"] == "host_unavailable"
        assert "lctest" not in str(refused.body) and "qemu" not in str(refused.body)
        chinese = api.post(f"/api/v1/instances/{instance.pk}/reboot/", language="zh-hans")
        assert chinese.status == 409 and chinese.body["title"] == "主机不可用"
        gone = api.call("DELETE", f"/api/v1/instances/{second_id}/")
        assert gone.status == 409 and gone.body["code"] == "host_unavailable"
        assert _qemu_alive(qemu_pid)

        new_pid = start_libvirtd(second_host)
        killed, back_at = False, time.monotonic()
        assert new_pid != old_pid
        wait_until(
            lambda: staff.get(f"/api/v1/hosts/{host.pk}/").body.get("state") == "up",
            timeout=UP_WITHIN,
            what="the host shown up again",
            interval=0.2,
        )
        up_at = time.monotonic()
        wait_until(
            lambda: "reboot" in api.instance(instance.pk).get("allowed_actions", []),
            timeout=10,
            what="the actions offered again",
        )
        assert api.instance(instance.pk)["state"] == "running" and _qemu_alive(qemu_pid)

        stopped = api.post(f"/api/v1/instances/{instance.pk}/stop/")
        assert stopped.status == 202, stopped.body
        done = wait_until(
            lambda: (op := api.operation(stopped.body["id"])).get("state") in ("failed", "succeeded") and op,
            timeout=60,
            what="the stop after the restart",
        )
        assert done["state"] == "succeeded", staff.operation(stopped.body["id"])
        assert api.instance(instance.pk)["state"] == "shutoff"
        works_at = time.monotonic()
        deleted = api.call("DELETE", f"/api/v1/instances/{second_id}/")
        assert deleted.status == 202, deleted.body
        wait_until(lambda: api.get(f"/api/v1/instances/{second_id}/").status == 404, timeout=60, what="the delete")

        kinds = list(Operation.objects.order_by("pk").values_list("target_id", "kind", "state"))
        assert kinds == [
            (str(instance.pk), "instance.launch", "succeeded"),
            (str(second_id), "instance.launch", "failed"),
            (str(instance.pk), "instance.stop", "succeeded"),
            (str(second_id), "instance.delete", "succeeded"),
        ]
        prefix = settings.LABCLOUD_DOMAIN_PREFIX
        assert sorted(n for n in leftovers(libvirt.open(second_host.tcp_uri), prefix) if "volume" in n) == sorted(
            [f"volume {prefix}{instance.uuid}-root.qcow2", f"volume {prefix}{instance.uuid}-seed.iso"]
        )
        assert api.server_errors() == [] and api.errors_not_problems() == []
        assert staff.server_errors() == []
        print(
            f"\nlibvirtd killed: host down after {down_at - killed_at:.1f} s; daemon down {back_at - killed_at:.1f} s;"
            f" host up {up_at - back_at:.1f} s after it answered; an action done {works_at - back_at:.1f} s after"
        )
    finally:
        portal.stop()
        redis.stop()
        if killed:
            start_libvirtd(second_host)
        _remove_image_copies(second_host, [tiny, big])


def _remove_image_copies(second_host, images) -> None:
    """The images' copies in the second host's pools (named labcloud-image-<uuid>, not with the test's prefix)."""
    conn = libvirt.open(second_host.tcp_uri)
    try:
        for pool in conn.listAllStoragePools(0):
            for image in images:
                with contextlib.suppress(libvirt.libvirtError):
                    pool.storageVolLookupByName(volume_name(image)).delete(0)
    finally:
        conn.close()
