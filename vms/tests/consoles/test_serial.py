"""The web serial console (``ws/instances/<pk>/serial/``) through the real ASGI application.

The refusals run without a hypervisor. The end-to-end test boots ONE tiny guest on the real
qemu:///system (marked ``libvirt_guests``) and does every check against it: refusals, typing a
command and reading its output, the newest session taking over, access re-check after a removed
membership, the end of the stream when the guest stops, and the audit trail.
"""

from __future__ import annotations

import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session

from portal.factories import make_instance
from portal.models import AuditEvent, Membership
from vms import lifecycle
from vms.consoles.serial import SerialConsumer
from vms.models import Flavor, Instance
from vms.tests.compute.test_libvirt_guests import BOOTED, wait_for_marker
from vms.tests.conftest import active_image
from vms.tests.test_consumers import session_cookie
from vms.tests.watcher.test_loop import channel_layer  # noqa: F401 - fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("channel_layer")]


async def open_serial(pk: int, user=None) -> WebsocketCommunicator:
    from portal.asgi import application

    headers = [(b"origin", b"http://127.0.0.1")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, f"/ws/instances/{pk}/serial/", headers=headers)
    communicator.scope["client"] = ("192.0.2.7", 50000)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    return communicator


async def closed_with(communicator: WebsocketCommunicator, timeout: float = 20) -> int | None:
    """The close code, skipping guest output still in flight. Waited for as an event: the bound only has to
    outlast a loaded machine (a takeover goes through libvirt's forced console and the old stream's end; it
    took over 5 s once when another test run shared the two cores)."""
    deadline = time.monotonic() + timeout
    while True:
        output = await communicator.receive_output(timeout=max(0.1, deadline - time.monotonic()))
        if output["type"] == "websocket.close":
            return output.get("code")
        assert output["type"] == "websocket.send", output


async def read_until(communicator: WebsocketCommunicator, needle: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {needle!r} on the serial console; got {seen[-300:]!r}")
        try:
            output = await communicator.receive_output(timeout=remaining)
        except TimeoutError:
            continue
        assert output["type"] == "websocket.send", output
        assert output.get("bytes") is not None, "guest output comes as binary frames"
        seen += output["bytes"]
    return seen


def test_anonymous_outsider_and_stopped_are_refused(actors):
    running_nowhere = make_instance(actors.tenant, name="nowhere", state=Instance.State.RUNNING)  # no host
    stopped = make_instance(actors.tenant, name="stopped", state=Instance.State.SHUTOFF)

    async def scenario():
        assert await closed_with(await open_serial(stopped.pk)) == 4401
        assert await closed_with(await open_serial(stopped.pk, actors.outsider)) == 4403
        assert await closed_with(await open_serial(999999, actors.member)) == 4403
        assert await closed_with(await open_serial(stopped.pk, actors.member)) == 4409
        assert await closed_with(await open_serial(running_nowhere.pk, actors.member)) == 4409

    async_to_sync(scenario)()
    denied = AuditEvent.objects.filter(action="console.serial.start", outcome=AuditEvent.Outcome.DENIED)
    assert denied.count() == 4  # the anonymous attempt is not audited (no user, nothing learned)


@pytest.mark.libvirt_guests
def test_serial_console_end_to_end(portal_host, guest_media, actors, monkeypatch, settings):
    from portal.celery import app as celery_app

    monkeypatch.setattr(SerialConsumer, "recheck_seconds", 0.5)
    tenant, member, second = actors.tenant, actors.member, actors.tenant_admin
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny", virtual_size=20 * 1024**2)
    flavor = Flavor.objects.create(name="lctest.serial", vcpus=1, ram_mib=160, disk_gib=1)
    # Transactional test: the launch task runs (eagerly) as soon as the request's transaction commits.
    previous, celery_app.conf.task_always_eager = celery_app.conf.task_always_eager, True
    try:
        launch = lifecycle.launch_instances(actor=member, tenant=tenant, name="serial", flavor=flavor, image=image)
    finally:
        celery_app.conf.task_always_eager = previous
    instance = Instance.objects.get(pk=launch.instances[0].pk)
    assert instance.state == Instance.State.RUNNING, instance.state
    assert instance.domain_name.startswith(portal_host.lctest.prefix)
    wait_for_marker(portal_host.lctest.work / f"{instance.domain_name}.serial.log", BOOTED)

    async def scenario():
        # Refusals against a real running guest.
        assert await closed_with(await open_serial(instance.pk)) == 4401
        assert await closed_with(await open_serial(instance.pk, actors.outsider)) == 4403

        # A member types a command and reads its output.
        first = await open_serial(instance.pk, member)
        await first.send_to(text_data="\r")
        await first.send_to(text_data="echo lc$((40+2))\r")
        await read_until(first, b"lc42")

        # The newest session takes over; the first one is told so.
        taker = await open_serial(instance.pk, second)
        assert await closed_with(first) == 4410
        await taker.send_to(bytes_data=b"echo lc$((50+2))\r")
        await read_until(taker, b"lc52")

        # Access is re-checked: a removed membership closes the session.
        await sync_to_async(Membership.objects.filter(user=second, tenant=tenant).delete)()
        assert await closed_with(taker) == 4403

        # Signing out of the portal session the socket was opened with ends it.
        signed = await open_serial(instance.pk, member)
        await signed.send_to(text_data="echo lc$((55+2))\r")
        await read_until(signed, b"lc57")
        await sync_to_async(Session.objects.all().delete)()
        assert await closed_with(signed) == 4401

        # A session lasts at most CONSOLE_MAX_SESSION_SECONDS.
        settings.CONSOLE_MAX_SESSION_SECONDS = 1
        capped = await open_serial(instance.pk, member)
        assert await closed_with(capped) == 4408
        settings.CONSOLE_MAX_SESSION_SECONDS = 3600

        # The guest stops: the stream ends and the socket closes normally.
        last = await open_serial(instance.pk, member)
        await last.send_to(text_data="echo lc$((60+2))\r")
        await read_until(last, b"lc62")
        dom = await sync_to_async(portal_host.lctest.driver.conn.lookupByUUIDString)(str(instance.uuid))
        await sync_to_async(dom.destroy)()
        assert await closed_with(last, timeout=30) == 1000

    async_to_sync(scenario)()

    starts = AuditEvent.objects.filter(action="console.serial.start", target_id=str(instance.pk))
    ends = AuditEvent.objects.filter(action="console.serial.end", target_id=str(instance.pk))
    assert starts.filter(outcome=AuditEvent.Outcome.SUCCESS).count() == 5
    assert starts.filter(outcome=AuditEvent.Outcome.DENIED).count() == 1  # the outsider
    assert sorted(e.detail["reason"] for e in ends) == ["access", "access", "maximum length", "stopped", "taken_over"]
    assert {e.ip for e in starts} | {e.ip for e in ends} == {"192.0.2.7"}
    assert {e.user_id for e in ends} == {member.pk, second.pk}
