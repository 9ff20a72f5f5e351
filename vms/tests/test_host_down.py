"""An instance whose host is down accepts no action: refused up front, buttons and API field follow.

The watcher marks a host *down* when its libvirtd stops answering (docs/watcher.md). Before this
rule a reboot requested then was accepted (202), queued, and failed in the worker with libvirt's own
words and the host's URI. Now the action registry refuses it (409 ``host_unavailable``, in the
user's language), ``allowed_actions`` (API field and live payload) leaves it out, nothing is queued,
and the instances of a host that goes down or comes back are published again so open pages redraw
their buttons. The real host going down is in vms/tests/test_fault_libvirtd.py.
"""

from __future__ import annotations

import pytest
from django.core.cache import cache

from portal import factories
from portal.testing import assert_problem
from vms import actions, realtime
from vms.compute import state as observed_state
from vms.models import Flavor, Host, Instance, Operation
from vms.tests.watcher.test_loop import channel_layer, listen, receive  # noqa: F401 - fixture

URL = "/api/v1/instances/"
HOST_ACTIONS = ("shutdown", "stop", "reboot", "reset", "pause", "delete")


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()


@pytest.fixture
def host(db):
    return Host.objects.create(name="node-down", uri="qemu+ssh://root@node-down.invalid/system", state=Host.State.UP)


@pytest.fixture
def instance(actors, host):
    flavor = Flavor.objects.create(name="lctest.down", vcpus=1, ram_mib=256, disk_gib=1)
    return factories.make_instance(actors.tenant, flavor, host, name="web-1", state=Instance.State.RUNNING)


def _down(host: Host) -> None:
    observed_state.mark_host_down(host=host, reason="cannot connect to qemu+ssh://root@node-down.invalid/system")


def test_actions_on_a_down_host_are_refused_up_front(actors, host, instance):
    client = actors.client("member")
    before = set(client.get(f"{URL}{instance.pk}/").json()["allowed_actions"])
    assert set(HOST_ACTIONS) <= before
    _down(host)

    assert client.get(f"{URL}{instance.pk}/").json()["allowed_actions"] == []
    instance = Instance.objects.select_related("host").get(pk=instance.pk)
    assert realtime.instance_payload(instance)["allowed_actions"] == []
    for name in HOST_ACTIONS:
        problem = actions.refusal(instance, name)
        assert isinstance(problem, actions.HostUnavailable), name

    body = assert_problem(client.post(f"{URL}{instance.pk}/reboot/"), 409, "host_unavailable")
    assert body["title"] == "Host unavailable"
    assert "web-1" in body["detail"] and "unavailable" in body["detail"]
    assert "node-down" not in str(body)  # neither the host's URI nor the backend's words reach a member
    assert_problem(client.delete(f"{URL}{instance.pk}/"), 409, "host_unavailable")
    instance.refresh_from_db()
    assert instance.task == "" and instance.state == Instance.State.RUNNING
    assert not Operation.objects.exists()

    Host.objects.filter(pk=host.pk).update(state=Host.State.UP, state_reason="")
    assert client.post(f"{URL}{instance.pk}/reboot/").status_code == 202


def test_the_refusal_speaks_the_users_language(actors, host, instance):
    _down(host)
    response = actors.client("member").post(f"{URL}{instance.pk}/reboot/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    body = assert_problem(response, 409, "host_unavailable")
    assert body["title"] == "主机不可用"
    assert "web-1" in body["detail"] and "主机" in body["detail"]


def test_a_host_going_down_and_back_republishes_its_instances(transactional_db, actors, channel_layer):  # noqa: F811
    """Open pages redraw their buttons: each transition publishes the host's instances (and only a transition)."""
    host = Host.objects.create(name="node-flip", uri="qemu+ssh://root@node-flip.invalid/system", state=Host.State.UP)
    flavor = Flavor.objects.create(name="lctest.flip", vcpus=1, ram_mib=256, disk_gib=1)
    instance = factories.make_instance(actors.tenant, flavor, host, name="web-2", state=Instance.State.RUNNING)
    channel = listen(channel_layer, realtime.tenant_group(actors.tenant.pk))

    _down(host)
    realtime.flush()
    message = receive(channel_layer, channel)
    assert message["event"]["type"] == "instance"
    assert (message["event"]["data"]["id"], message["event"]["data"]["allowed_actions"]) == (instance.pk, [])
    # A channel is read from one event loop only (channels_redis): a fresh one for each step.
    channel = listen(channel_layer, realtime.tenant_group(actors.tenant.pk))
    _down(Host.objects.get(pk=host.pk))  # still down: no news
    realtime.flush()
    assert receive(channel_layer, channel, timeout=0.3) is None

    channel = listen(channel_layer, realtime.tenant_group(actors.tenant.pk))
    observed_state.mark_host_answered(host=Host.objects.get(pk=host.pk))
    realtime.flush()
    message = receive(channel_layer, channel)
    assert message["event"]["data"]["id"] == instance.pk
    assert "reboot" in message["event"]["data"]["allowed_actions"]


def test_the_instance_page_says_its_host_is_unavailable(actors, host, instance):
    page = actors.client("member", api=False)
    assert "lc-host-unavailable" not in page.get(f"/instances/{instance.pk}/").content.decode()
    _down(host)
    body = page.get(f"/instances/{instance.pk}/").content.decode()
    assert "lc-host-unavailable" in body and "does not answer" in body and "node-down" not in body


def test_the_consoles_of_an_instance_on_a_down_host_answer_at_once(actors, host, instance):
    """Both consoles say the host is unavailable instead of trying to reach it."""
    from vms.consoles.serial import CLOSE_HOST_DOWN, serial_access

    _down(host)
    response = actors.client("member", api=False).post(f"/instances/{instance.pk}/console/ticket/")
    assert response.status_code == 409, response.content
    assert "unavailable" in response.content.decode() and "node-down" not in response.content.decode()
    assert serial_access(actors.member.pk, instance.pk) == CLOSE_HOST_DOWN
