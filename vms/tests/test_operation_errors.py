"""A failed operation shows members a translated, generic reason; cloud admins see what the backend said.

The real failure: an instance on a host that has not been noticed down yet (its row still says *up*),
whose libvirt does not answer — a TCP port on 127.0.0.1 where nothing listens. The member's stop is
accepted, the worker's task (run eagerly here, after the request's commit) fails with libvirt's
"cannot connect to qemu+tcp://127.0.0.1:…" and the operation fails. Before, that text went as it is
to the member's API, page, live updates and toasts. Now members get "The host did not answer…"
in their language and cloud admins ``error_detail``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.utils import timezone

from portal import factories
from portal.celery import app as celery_app
from portal.testing import free_port
from vms import realtime
from vms.models import Flavor, Host, Instance, Operation
from vms.operations import HOST_DID_NOT_ANSWER
from vms.tests.watcher.test_loop import channel_layer, listen  # noqa: F401 - fixture

URL = "/api/v1/instances/"


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()


@pytest.fixture
def eager_tasks():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


def test_members_see_a_generic_reason_and_admins_the_detail(
    transactional_db,
    actors,
    eager_tasks,
    channel_layer,  # noqa: F811
):
    port = free_port()  # nothing listens there: libvirt's connect is refused
    uri = f"qemu+tcp://127.0.0.1:{port}/system"
    host = Host.objects.create(name="silent", uri=uri, state=Host.State.UP)
    flavor = Flavor.objects.create(name="lctest.err", vcpus=1, ram_mib=256, disk_gib=1)
    instance = factories.make_instance(actors.tenant, flavor, host, name="web-1", state=Instance.State.RUNNING)
    tenant_channel = listen(channel_layer, realtime.tenant_group(actors.tenant.pk))
    staff_channel = listen(channel_layer, realtime.STAFF_GROUP)

    member = actors.client("member")
    response = member.post(f"{URL}{instance.pk}/stop/")
    assert response.status_code == 202, response.content
    operation = Operation.objects.get(pk=response.json()["id"])
    assert operation.state == Operation.State.FAILED
    assert uri in operation.error_detail  # kept for the admins
    instance.refresh_from_db()
    assert instance.task == "" and instance.state == Instance.State.RUNNING

    seen = member.get(f"/api/v1/operations/{operation.pk}/").json()
    assert seen["error"] == "The host did not answer; the action was not carried out. Try again later."
    assert seen["error_detail"] is None  # the backend's words are for cloud admins
    chinese = member.get(f"/api/v1/operations/{operation.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").json()
    assert chinese["error"] == "主机没有应答，操作未执行。请稍后再试。"
    admin = actors.client("cloud_admin").get(f"/api/v1/operations/{operation.pk}/").json()
    assert uri in admin["error_detail"] and "127.0.0.1" not in admin["error"]

    page = actors.client("member", api=False).get(f"/instances/{instance.pk}/")
    assert page.status_code == 200
    assert "The host did not answer" in page.content.decode() and str(port) not in page.content.decode()
    admin_page = actors.client("cloud_admin", api=False).get(f"/instances/{instance.pk}/").content.decode()
    assert uri in admin_page

    realtime.flush()
    member_events = _operation_events(channel_layer, tenant_channel)
    assert member_events and all("127.0.0.1" not in str(event) for event in member_events)
    assert member_events[-1]["data"]["state"] == "failed"
    staff_events = _operation_events(channel_layer, staff_channel)
    assert uri in staff_events[-1]["data"]["error_detail"]


def _operation_events(layer, channel) -> list[dict]:
    """Every operation event waiting on ``channel``, read in one event loop (channels_redis binds a channel to one)."""

    async def drain() -> list[dict]:
        events = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 0.5)
            except TimeoutError:
                return events
            if message["event"]["type"] == "operation":
                events.append(message["event"])

    return async_to_sync(drain)()


def test_a_failed_launchs_reason_is_in_the_readers_language(actors):
    host = Host.objects.create(name="silent-2", uri="qemu:///system", state=Host.State.UP)
    flavor = Flavor.objects.create(name="lctest.err2", vcpus=1, ram_mib=256, disk_gib=1)
    instance = factories.make_instance(
        actors.tenant, flavor, host, name="web-2", state=Instance.State.ERROR, state_reason=HOST_DID_NOT_ANSWER
    )
    member = actors.client("member")
    assert member.get(f"{URL}{instance.pk}/").json()["state_reason"] == HOST_DID_NOT_ANSWER
    chinese = member.get(f"{URL}{instance.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").json()
    assert chinese["state_reason"] == "主机没有应答，操作未执行。请稍后再试。"
    page = actors.client("member", api=False).get(f"/instances/{instance.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "主机没有应答" in page.content.decode()


def test_stored_messages_with_parameters_are_formatted_in_the_readers_language():
    """``said``: a msgid and its parameters, checked when the worker stores them; ``translated`` never raises on a
    reader's page, whatever the stored text became (cut at its field's length, say)."""
    from django.utils import translation

    from vms.execution import STOPPED_TIMES
    from vms.models.operations import said, translated

    stored = said(STOPPED_TIMES, n=3)
    with translation.override("zh-hans"):
        assert translated(stored.text, stored.args) == "执行此操作的后台任务已停止 3 次。"
    assert translated(stored.text, stored.args) == "The worker running this operation stopped 3 times."
    assert str(stored) == "The worker running this operation stopped 3 times."
    with pytest.raises(KeyError):
        said(STOPPED_TIMES, times=3)
    assert translated("The worker stopped %(n", {"n": 3}) == "The worker stopped %(n"
    assert translated("50% done", {}) == "50% done"  # a backend's words, no parameters: as they are


def test_a_refusal_in_the_worker_is_stored_as_its_msgid_and_read_in_each_language(actors):
    """A service refusal made from ``said`` that ends an operation in the worker is stored untranslated with
    its parameters: each reader gets it in their language (before, the worker's English was stored)."""
    from vms import execution

    host = Host.objects.create(name="node-r", uri="test:///default", state=Host.State.UP)
    flavor = Flavor.objects.create(name="lctest.err3", vcpus=1, ram_mib=256, disk_gib=1)
    instance = factories.make_instance(actors.tenant, flavor, host, name="web-3", state=Instance.State.RUNNING)
    operation = Operation.objects.create(
        kind="instance.bogus",
        tenant=actors.tenant,
        target_type="vms.instance",
        target_id=str(instance.pk),
        target_repr=instance.name,
    )
    execution.execute(operation_id=operation.pk)
    operation.refresh_from_db()
    assert (operation.state, operation.error, operation.error_args) == (
        Operation.State.FAILED,
        "Unknown operation %(kind)s.",
        {"kind": "instance.bogus"},
    )
    member = actors.client("member")
    assert member.get(f"/api/v1/operations/{operation.pk}/").json()["error"] == "Unknown operation instance.bogus."
    chinese = member.get(f"/api/v1/operations/{operation.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").json()
    assert chinese["error"] == "未知操作 instance.bogus。"


def test_a_lazily_translated_parameter_is_translated_with_its_text():
    from django.utils import translation
    from django.utils.translation import gettext_lazy

    from portal.texts import said, translated

    stored = said(
        "Cannot %(action)s instance “%(name)s” while it is %(state)s.",
        action=gettext_lazy("start"),
        name="web",
        state="running",
    )
    with translation.override("zh-hans"):
        chinese = translated(stored.text, stored.args)
    assert "启动" in chinese and "web" in chinese, chinese
    assert translated(stored.text, stored.args) == "Cannot start instance “web” while it is running."


def test_a_failed_launchs_reason_with_parameters_is_in_each_readers_language(
    actors, django_capture_on_commit_callbacks
):
    """A launch that fails with a parametrised message (its worker died three times: the stale-operation sweep
    gives up on it) keeps the msgid and its parameters as the instance's state reason: the API, the page, the
    admin and the live updates give it in each reader's language. Before, the worker's English was stored, and
    a reader in Chinese got it in English."""
    from django.utils import translation

    from images.models import Image
    from vms import execution
    from vms.consumers import LiveConsumer

    Host.objects.create(
        name="node-l",
        uri="test:///default",
        state=Host.State.UP,
        cpus=8,
        memory_mib=16384,
        pool_capacity=100 << 30,
        pool_available=90 << 30,
    )
    flavor = Flavor.objects.create(name="lctest.err4", vcpus=1, ram_mib=256, disk_gib=1)
    image = Image.objects.create(
        name="bookworm",
        tenant=actors.tenant,
        owner=actors.member,
        disk_format="qcow2",
        stored_format="qcow2",
        size=1024,
        virtual_size=1 << 30,
        status=Image.Status.ACTIVE,
    )
    member = actors.client("member")
    with django_capture_on_commit_callbacks(execute=False):  # no worker takes it: it "dies" below
        response = member.post(
            URL,
            {"tenant": actors.tenant.pk, "name": "web-4", "flavor": flavor.pk, "image": image.pk},
            format="json",
        )
    assert response.status_code == 202, response.content
    operation = Operation.objects.get(pk=response.json()["operations"][0]["id"])
    long_ago = timezone.now() - timedelta(hours=1)
    Operation.objects.filter(pk=operation.pk).update(
        state=Operation.State.RUNNING, started_at=long_ago, heartbeat_at=long_ago, params={"attempts": 3}
    )
    execution.recover_stale_operations(stale_after=timedelta(minutes=5), max_attempts=3)
    assert Operation.objects.get(pk=operation.pk).state == Operation.State.FAILED

    instance = Instance.objects.get(name="web-4")
    assert instance.state == Instance.State.ERROR
    assert (instance.state_reason, instance.state_reason_args) == (execution.STOPPED_TIMES, {"n": 3})
    english = "The worker running this operation stopped 3 times."
    chinese = "执行此操作的后台任务已停止 3 次。"
    assert member.get(f"{URL}{instance.pk}/").json()["state_reason"] == english
    assert member.get(f"{URL}{instance.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").json()["state_reason"] == chinese
    listed = member.get(URL, HTTP_ACCEPT_LANGUAGE="zh-hans").json()["results"]
    assert [row["state_reason"] for row in listed if row["id"] == instance.pk] == [chinese]
    page = actors.client("member", api=False).get(f"/instances/{instance.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert chinese in page.content.decode() and "%(n)d" not in page.content.decode()
    admin_page = actors.client("cloud_admin", api=False).get(f"/admin/vms/instance/{instance.pk}/change/")
    assert english in admin_page.content.decode()

    event = {"type": "instance", "data": realtime.instance_payload(instance)}
    consumer = LiveConsumer()
    for language, expected in (("en", english), ("zh-hans", chinese)):
        consumer.language = language
        assert consumer._in_language(event)["data"]["state_reason"] == expected
        assert "state_reason_args" not in consumer._in_language(event)["data"]
    with translation.override("zh-hans"):
        assert instance.reason == chinese
