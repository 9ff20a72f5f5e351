"""The live-updates websocket (``ws/live/``) through the real ASGI application and the Redis channel layer.

Each test runs one async scenario with ``async_to_sync`` (no pytest-asyncio needed) against a
transactional database, so the consumer's database threads see the rows the test made. The
channel layer gets a prefix of its own per test (fixture ``channel_layer``): other test runs on
the same Redis cannot reach these groups.
"""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import reverse

from portal.models import Membership
from vms import realtime
from vms.consumers import LiveConsumer
from vms.models import Flavor, Instance
from vms.tests.watcher.test_loop import channel_layer  # noqa: F401 - fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("channel_layer")]


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


READY = {"type": "ready", "data": {}}


async def connect(user=None, query: str = "", *, read_ready: bool = True) -> WebsocketCommunicator:
    """A socket as a page opens it; past its "ready" (the first thing an accepted socket says) unless
    ``read_ready`` is False (a socket the test expects refused: its close comes first)."""
    from portal.asgi import application

    headers = [(b"origin", b"http://127.0.0.1")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, f"/ws/live/{query}", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    if read_ready:
        assert await communicator.receive_json_from(timeout=3) == READY
    return communicator


async def closed_with(communicator: WebsocketCommunicator) -> int | None:
    output = await communicator.receive_output(timeout=3)
    assert output["type"] == "websocket.close", output
    return output.get("code")


@pytest.fixture
def instances(actors):
    """One instance in each of the two tenants of ``actors``."""
    flavor = Flavor.objects.create(name="lctest.ws", vcpus=1, ram_mib=128, disk_gib=1)

    def make(tenant, name):
        return Instance.objects.create(
            tenant=tenant, name=name, flavor=flavor, vcpus=1, ram_mib=128, disk_gib=1, state=Instance.State.RUNNING
        )

    return make(actors.tenant, "mine"), make(actors.other_tenant, "theirs")


publish = sync_to_async(realtime.instance_changed)


async def next_event(communicator: WebsocketCommunicator) -> dict:
    return await communicator.receive_json_from(timeout=3)


def test_an_accepted_socket_says_ready_first_and_a_refused_one_never(actors, instances):
    """The page acts on "ready" (it listens from then on), not on the socket's opening: a refused socket is
    opened too, then closed, and must not make the page fetch what its user may no longer see."""

    async def scenario():
        member = await connect(actors.member, read_ready=False)  # reads "ready" itself
        assert await member.receive_json_from(timeout=3) == READY
        await member.disconnect()
        refused = await connect(actors.member, f"?tenant={actors.other_tenant.pk}", read_ready=False)
        output = await refused.receive_output(timeout=3)
        assert (output["type"], output.get("code")) == ("websocket.close", 4403)

    async_to_sync(scenario)()


def test_anonymous_is_refused(db):
    async def scenario():
        communicator = await connect(None, read_ready=False)
        assert await closed_with(communicator) == 4401

    async_to_sync(scenario)()


def test_member_gets_its_tenant_events_only(actors, instances):
    mine, theirs = instances

    async def scenario():
        communicator = await connect(actors.member)
        await publish(theirs)
        await publish(mine)
        event = await next_event(communicator)
        assert event["type"] == "instance" and event["data"]["id"] == mine.pk
        assert event["data"]["tenant_id"] == actors.tenant.pk and "user_data" not in event["data"]
        assert await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()

    async_to_sync(scenario)()


def test_outsider_does_not_see_the_other_tenant(actors, instances):
    mine, theirs = instances

    async def scenario():
        communicator = await connect(actors.outsider)  # admin of the other tenant
        await publish(mine)
        await publish(theirs)
        event = await next_event(communicator)
        assert event["data"]["id"] == theirs.pk
        assert await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()

    async_to_sync(scenario)()


def test_staff_gets_every_tenant(actors, instances):
    mine, theirs = instances

    async def scenario():
        communicator = await connect(actors.cloud_admin)
        await publish(mine)
        await publish(theirs)
        ids = {(await next_event(communicator))["data"]["id"], (await next_event(communicator))["data"]["id"]}
        assert ids == {mine.pk, theirs.pk}
        assert await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()

    async_to_sync(scenario)()


def test_tenant_filter(actors, instances):
    mine, theirs = instances

    async def scenario():
        staff = await connect(actors.cloud_admin, f"?tenant={actors.other_tenant.pk}")
        await publish(mine)
        await publish(theirs)
        assert (await next_event(staff))["data"]["id"] == theirs.pk
        assert await staff.receive_nothing(timeout=0.5)
        await staff.disconnect()

        # not a member there
        member = await connect(actors.member, f"?tenant={actors.other_tenant.pk}", read_ready=False)
        assert await closed_with(member) == 4403
        bad = await connect(actors.member, "?tenant=abc", read_ready=False)
        assert await closed_with(bad) == 4400

    async_to_sync(scenario)()


def test_instance_metrics_reach_only_the_pages_of_that_instance(actors, instances):
    """Metrics points go to ``instance-<id>``: joined with ?instance=<id> only when the user may see it."""
    mine, theirs = instances
    send_point = sync_to_async(realtime.metrics_sampled)

    async def scenario():
        page = await connect(actors.member, f"?tenant={actors.tenant.pk}&instance={mine.pk}")
        overview = await connect(actors.member, f"?tenant={actors.tenant.pk}")
        snooper = await connect(actors.member, f"?tenant={actors.tenant.pk}&instance={theirs.pk}")
        await send_point(tenant_id=theirs.tenant_id, instance_id=theirs.pk, point={"cpu_percent": 9.0})
        await send_point(tenant_id=mine.tenant_id, instance_id=mine.pk, point={"cpu_percent": 1.5})
        event = await next_event(page)
        assert event == {
            "type": "metrics",
            "data": {"id": mine.pk, "tenant_id": actors.tenant.pk, "point": {"cpu_percent": 1.5}},
        }
        for communicator in (page, overview, snooper):
            assert await communicator.receive_nothing(timeout=0.3)
            await communicator.disconnect()
        bad = await connect(actors.member, "?instance=abc", read_ready=False)
        assert await closed_with(bad) == 4400

    async_to_sync(scenario)()


def test_removed_member_stops_receiving(actors, instances, monkeypatch):
    monkeypatch.setattr(LiveConsumer, "recheck_seconds", 0.0)  # re-check on every event
    mine, theirs = instances
    Membership.objects.create(user=actors.member, tenant=actors.other_tenant, role=Membership.Role.MEMBER)

    async def scenario():
        communicator = await connect(actors.member)
        await publish(mine)
        assert (await next_event(communicator))["data"]["id"] == mine.pk

        # Removed from the first tenant: its events stop, the other tenant's still come.
        await sync_to_async(Membership.objects.filter(user=actors.member, tenant=actors.tenant).delete)()
        await publish(mine)
        await publish(theirs)
        assert (await next_event(communicator))["data"]["id"] == theirs.pk
        assert await communicator.receive_nothing(timeout=0.5)

        # Removed from the last one: the socket is closed.
        await sync_to_async(Membership.objects.filter(user=actors.member).delete)()
        await publish(theirs)
        assert await closed_with(communicator) == 4403

    async_to_sync(scenario)()


def test_deactivated_user_is_disconnected(actors, instances, monkeypatch):
    monkeypatch.setattr(LiveConsumer, "recheck_seconds", 0.0)
    mine, _theirs = instances

    async def scenario():
        communicator = await connect(actors.member)
        await sync_to_async(type(actors.member).objects.filter(pk=actors.member.pk).update)(is_active=False)
        await publish(mine)
        assert await closed_with(communicator) == 4401

    async_to_sync(scenario)()


# ---------------------------------------------------------------- signing out (issue #17, item 7b)


def signed_in_browser(user) -> tuple[Client, bytes]:
    """A browser signed in as ``user`` through the real session machinery, and its Cookie header."""
    browser = Client()
    browser.force_login(user)
    return browser, f"sessionid={browser.cookies['sessionid'].value}".encode()


async def connect_with_cookie(cookie: bytes, query: str = "") -> WebsocketCommunicator:
    from portal.asgi import application

    headers = [(b"origin", b"http://127.0.0.1"), (b"cookie", cookie)]
    communicator = WebsocketCommunicator(application, f"/ws/live/{query}", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert await communicator.receive_json_from(timeout=3) == READY
    return communicator


def test_signing_out_in_another_tab_closes_the_live_socket(actors, instances):
    """The socket was opened with the browser's session; signing out (another request) ends it at once:
    the next event is not relayed, the socket is closed with 4401."""
    mine, _theirs = instances
    browser, cookie = signed_in_browser(actors.member)

    async def scenario():
        communicator = await connect_with_cookie(cookie)
        await publish(mine)
        assert (await next_event(communicator))["data"]["id"] == mine.pk

        response = await sync_to_async(browser.post)(reverse("logout"))
        assert response.status_code == 302
        await publish(mine)
        assert await closed_with(communicator) == 4401  # closed, and the event did not come first

    async_to_sync(scenario)()


def test_signing_out_closes_an_idle_live_socket(actors, instances, monkeypatch):
    """No event at all after signing out: the consumer's own timer notices and closes the socket."""
    monkeypatch.setattr(LiveConsumer, "idle_recheck_seconds", 0.2, raising=False)
    browser, cookie = signed_in_browser(actors.member)

    async def scenario():
        communicator = await connect_with_cookie(cookie)
        assert await communicator.receive_nothing(timeout=0.5)  # signed in: the socket stays open
        await sync_to_async(browser.post)(reverse("logout"))
        assert await closed_with(communicator) == 4401

    async_to_sync(scenario)()


def test_signing_in_again_as_someone_else_closes_the_live_socket(actors, instances):
    """The browser's session now belongs to another user (sign-out, then sign-in in the same browser):
    the socket opened for the first user must not go on relaying that user's tenants."""
    mine, _theirs = instances
    browser, cookie = signed_in_browser(actors.member)

    async def scenario():
        communicator = await connect_with_cookie(cookie)
        await sync_to_async(browser.post)(reverse("logout"))
        await sync_to_async(browser.force_login)(actors.outsider)
        await publish(mine)
        assert await closed_with(communicator) == 4401

    async_to_sync(scenario)()


def test_operation_messages_arrive_in_the_language_of_the_page(actors, instances):
    """The worker stores its messages untranslated (a msgid, or one with parameters); each page's socket gives
    them in that page's language (#19: "Instance is running." stayed English on the Chinese pages)."""
    from vms.models import Operation

    mine, _theirs = instances
    operation = Operation.objects.create(
        kind="instance.start",
        tenant=actors.tenant,
        target_type="vms.instance",
        target_id=str(mine.pk),
        state=Operation.State.FAILED,
        message="Instance is running.",
        error="The worker running this operation stopped %(n)d times.",
        error_args={"n": 3},
    )

    async def scenario():
        chinese = await connect(actors.member, "?lang=zh-hans")
        english = await connect(actors.member, "?lang=en")
        unknown = await connect(actors.member, "?lang=xx")  # the portal's default
        await sync_to_async(realtime.operation_changed)(operation)
        for communicator, message, error in (
            (chinese, "实例正在运行。", "执行此操作的后台任务已停止 3 次。"),
            (english, "Instance is running.", "The worker running this operation stopped 3 times."),
            (unknown, "Instance is running.", "The worker running this operation stopped 3 times."),
        ):
            event = await next_event(communicator)
            assert event["type"] == "operation"
            assert (event["data"]["message"], event["data"]["error"]) == (message, error)
            assert "error_args" not in event["data"] and "message_args" not in event["data"]
            await communicator.disconnect()

    async_to_sync(scenario)()


def test_pages_ask_their_socket_for_their_language(actors, client):
    from django.utils import translation

    from vms.dashboard import live_socket

    with translation.override("zh-hans"):
        assert live_socket(tenant=7, instance=None) == "/ws/live/?tenant=7&lang=zh-hans"
    client.force_login(actors.member)
    client.cookies["django_language"] = "zh-hans"
    page = client.get(reverse("instances")).content.decode()
    assert "lang=zh-hans" in page


def test_an_idle_socket_stays_open_and_still_gets_events(actors, instances):
    """A page left open with nothing happening keeps its socket. redis-py 8 reads with a 5 s socket timeout by
    default, as long as the channel layer's blocking pop waits for a message on the server (5 s): the read
    lost that race, the consumer died with "Timeout reading from …" and the page saw a 1011 close every
    few seconds of quiet. The layer's connections now wait longer than its pops (``portal.settings``)."""
    from channels_redis.core import RedisChannelLayer

    mine, _theirs = instances
    quiet = RedisChannelLayer.brpop_timeout + 5  # one blocking pop and the old client timeout, all idle

    async def scenario():
        communicator = await connect(actors.member)
        assert await communicator.receive_nothing(timeout=quiet, interval=0.5)
        await publish(mine)
        event = await next_event(communicator)
        assert event["type"] == "instance" and event["data"]["id"] == mine.pk
        await communicator.disconnect()

    async_to_sync(scenario)()
