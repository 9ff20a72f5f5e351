"""Host services and the watcher against libvirt's test:///default driver (fast, in-process).

The event test runs the real watcher loop in a thread: a domain started through the same
connection emits a lifecycle event, the watcher applies it and the change arrives on the
(real, Redis) channel layer within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command

from portal.backends.base import InstanceSpec
from portal.factories import make_instance
from portal.models import AuditEvent
from portal.selectors import tenant_usage
from portal.services import QuotaExceeded, ServiceError
from vms import hosts
from vms.compute import compute_for
from vms.compute import libvirt as libvirt_compute
from vms.compute.openstack import login
from vms.compute.state import Observed, record_observed
from vms.models import Flavor, Host, Instance, UnmanagedDomain
from vms.tests.conftest import PREFIX, TEST_URI, watcher_running
from vms.watcher import HostWatcher

POOL = "default-pool"  # test:///default's pool


@pytest.fixture
def channel_layer(settings):
    """The real Redis channel layer under a prefix of this test: other test runs on the same Redis stay out."""
    from channels.layers import get_channel_layer

    layer_settings = {**settings.CHANNEL_LAYERS["default"]}
    layer_settings["CONFIG"] = {**layer_settings["CONFIG"], "prefix": f"lctest-{secrets.token_hex(4)}"}
    settings.CHANNEL_LAYERS = {"default": layer_settings}
    return get_channel_layer()


def listen(layer, group: str) -> str:
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    return channel


def receive(layer, channel: str, timeout: float = 2.0) -> dict | None:
    async def get():
        try:
            return await asyncio.wait_for(layer.receive(channel), timeout)
        except TimeoutError:
            return None

    return async_to_sync(get)()


def define(driver, *, name: str | None = None, start: bool = False) -> str:
    spec = InstanceSpec(uuid=str(uuid.uuid4()), name=name or f"{PREFIX}{secrets.token_hex(4)}", virt_type="qemu")
    driver.define(spec)
    if start:
        driver.start(spec.uuid)
    return spec.uuid


@pytest.fixture
def flavor(db):
    return Flavor.objects.create(name="lctest.small", vcpus=1, ram_mib=128, disk_gib=1)


@pytest.fixture
def host(db):
    return Host.objects.create(name="lctest-host", uri=TEST_URI, storage_pool=POOL)


# ---------------------------------------------------------------- refresh_host


def test_refresh_host_stores_capacity(host, test_driver):
    compute_for(host).check_host(host)
    host.refresh_from_db()
    assert host.state == Host.State.UP and host.state_reason == ""
    assert host.cpus > 0 and host.memory_mib > 0 and host.free_memory_mib is not None
    assert host.pool_capacity > 0 and host.pool_available is not None
    assert host.backend_version.count(".") == 2 and host.last_seen is not None


def test_refresh_of_a_disabled_host_keeps_it_disabled(host, test_driver):
    host.enabled = False
    host.save()
    compute_for(host).check_host(host)
    host.refresh_from_db()
    assert host.state == Host.State.DISABLED and host.cpus > 0


@pytest.mark.parametrize("uri", ["qemu+tcp://127.0.0.1:1/system", "test:///nonexistent-lctest.xml"])
def test_refresh_of_an_unreachable_host_marks_it_down(db, uri):
    host = Host.objects.create(name="lctest-gone", uri=uri, cpus=4, state=Host.State.UP)
    compute_for(host).check_host(host)
    host.refresh_from_db()
    assert host.state == Host.State.DOWN
    assert "cannot connect" in host.state_reason and host.cpus == 4  # the last known capacity stays


def test_refresh_with_a_missing_pool_marks_the_host_down(db, test_driver):
    host = Host.objects.create(name="lctest-nopool", uri=TEST_URI, storage_pool="lctest-no-such-pool")
    compute_for(host).check_host(host)
    host.refresh_from_db()
    assert host.state == Host.State.DOWN and "lctest-no-such-pool" in host.state_reason


# ---------------------------------------------------------------- apply_observed_state


def test_apply_observed_state(actors, flavor, host):
    instance = make_instance(actors.tenant, flavor, host, state=Instance.State.SHUTOFF)
    before = instance.updated_at
    assert record_observed(instance, Observed(state="running")) is True
    instance.refresh_from_db()
    assert instance.state == Instance.State.RUNNING and instance.updated_at > before
    assert record_observed(instance, Observed(state="running")) is False  # no change, no write
    assert record_observed(instance, Observed(state="unknown")) is False
    assert record_observed(instance, Observed(state="crashed", reason="panicked")) is True
    instance.refresh_from_db()
    assert (instance.state, instance.state_reason) == (Instance.State.CRASHED, "panicked")


@pytest.mark.parametrize(
    ("state", "task"),
    [(Instance.State.DELETING, ""), (Instance.State.DELETING, "delete"), (Instance.State.BUILDING, "launch")],
)
def test_rows_owned_by_a_task_are_left_alone(actors, flavor, host, state, task):
    instance = make_instance(actors.tenant, flavor, host, state=state, task=task)
    assert record_observed(instance, Observed(state="running")) is False
    assert libvirt_compute.mark_vanished(instance=instance) is False
    instance.refresh_from_db()
    assert instance.state == state


def test_a_stale_row_does_not_overwrite_a_task_change(actors, flavor, host):
    instance = make_instance(actors.tenant, flavor, host, state=Instance.State.RUNNING)
    Instance.objects.filter(pk=instance.pk).update(state=Instance.State.DELETING, task="delete")  # a task, meanwhile
    assert record_observed(instance, Observed(state="shutoff")) is False
    instance.refresh_from_db()
    assert instance.state == Instance.State.DELETING


# ---------------------------------------------------------------- reconcile_host


def test_reconcile_applies_states_finds_vanished_and_unmanaged_domains(actors, flavor, host, test_driver):
    running = define(test_driver, start=True)
    stopped = define(test_driver)
    stray = define(test_driver)
    a = make_instance(actors.tenant, flavor, host, uuid_=running, state=Instance.State.SHUTOFF)
    b = make_instance(actors.tenant, flavor, host, uuid_=stopped, state=Instance.State.RUNNING)
    gone = make_instance(actors.tenant, flavor, host, state=Instance.State.RUNNING)
    building = make_instance(actors.tenant, flavor, host, state=Instance.State.BUILDING, task="launch")
    deleting = make_instance(actors.tenant, flavor, host, state=Instance.State.DELETING)

    counts = compute_for(host).reconcile(host)
    assert counts["changed"] == 2 and counts["vanished"] == 1 and counts["domains"] >= 3

    states = dict(Instance.objects.values_list("pk", "state"))
    assert states[a.pk] == Instance.State.RUNNING
    assert states[b.pk] == Instance.State.SHUTOFF
    assert states[gone.pk] == Instance.State.ERROR
    assert states[building.pk] == Instance.State.BUILDING and states[deleting.pk] == Instance.State.DELETING
    gone.refresh_from_db()
    assert gone.state_reason == "The domain vanished from the host."

    unmanaged = {str(u.uuid): u for u in UnmanagedDomain.objects.filter(host=host)}
    assert stray in unmanaged and running not in unmanaged and stopped not in unmanaged
    row = unmanaged[stray]
    assert row.name.startswith(PREFIX) and row.state == "shutoff" and row.memory_mib == 512 and row.vcpus == 1

    # Nothing changed: the second pass writes no instance; a domain that went away drops its row.
    test_driver.undefine(stray)
    again = compute_for(host).reconcile(host)
    assert again["changed"] == 0 and again["vanished"] == 0 and again["unmanaged_removed"] == 1
    assert not UnmanagedDomain.objects.filter(host=host, uuid=stray).exists()


def test_reconcile_queries_do_not_grow_with_unchanged_instances(actors, flavor, host, test_driver):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            compute_for(host).reconcile(host)
        return len(ctx.captured_queries)

    make_instance(actors.tenant, flavor, host, uuid_=define(test_driver, start=True), state=Instance.State.RUNNING)
    compute_for(host).reconcile(host)
    few = queries()
    for _ in range(5):
        uuid_ = define(test_driver, start=True)
        make_instance(actors.tenant, flavor, host, uuid_=uuid_, state=Instance.State.RUNNING)
    assert queries() == few


def test_reconcile_of_an_unreachable_host_marks_it_down(db):
    from portal.backends.base import HostUnreachable

    host = Host.objects.create(name="lctest-gone", uri="test:///nonexistent-lctest.xml", state=Host.State.UP)
    with pytest.raises(HostUnreachable):
        compute_for(host).reconcile(host)
    host.refresh_from_db()
    assert host.state == Host.State.DOWN and "cannot connect" in host.state_reason


# ---------------------------------------------------------------- adopt_domain


@pytest.fixture
def unmanaged(host, test_driver):
    domain = define(test_driver, start=True)
    compute_for(host).reconcile(host)
    return UnmanagedDomain.objects.get(host=host, uuid=domain)


def test_adopt_domain(actors, flavor, unmanaged):
    instance = hosts.adopt_domain(actor=actors.cloud_admin, unmanaged=unmanaged, tenant=actors.tenant, flavor=flavor)
    assert instance.uuid == unmanaged.uuid and instance.host_id == unmanaged.host_id
    assert instance.name == unmanaged.name and instance.domain_name == unmanaged.name
    # The domain has 512 MiB, more than the flavor's 128: its quota counts what the guest can use.
    assert instance.state == Instance.State.RUNNING and (instance.vcpus, instance.ram_mib) == (1, 512)
    assert not UnmanagedDomain.objects.filter(pk=unmanaged.pk).exists()
    usage = tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]
    assert (usage["instances"], usage["vcpus"], usage["ram_mib"], usage["disk_gib"]) == (1, 1, 512, 1)
    event = AuditEvent.objects.get(action="instance.adopt")
    assert event.tenant == actors.tenant and event.detail["domain"] == unmanaged.name
    # The next reconcile treats it as an instance, not as unmanaged.
    counts = compute_for(unmanaged.host).reconcile(unmanaged.host)
    assert not UnmanagedDomain.objects.filter(uuid=unmanaged.uuid).exists() and counts["changed"] == 0


def test_adopt_over_quota_changes_nothing(actors, unmanaged):
    big = Flavor.objects.create(name="lctest.huge", vcpus=64, ram_mib=1024, disk_gib=1)
    with pytest.raises(QuotaExceeded):
        hosts.adopt_domain(actor=actors.cloud_admin, unmanaged=unmanaged, tenant=actors.tenant, flavor=big)
    assert not Instance.objects.exists() and UnmanagedDomain.objects.filter(pk=unmanaged.pk).exists()
    assert not AuditEvent.objects.filter(action="instance.adopt").exists()


@pytest.mark.parametrize("role", ["tenant_admin", "member", "outsider"])
def test_only_cloud_admins_adopt(actors, flavor, unmanaged, role):
    with pytest.raises(ServiceError):
        hosts.adopt_domain(actor=actors.user(role), unmanaged=unmanaged, tenant=actors.tenant, flavor=flavor)
    assert not Instance.objects.exists() and UnmanagedDomain.objects.filter(pk=unmanaged.pk).exists()


def test_adopt_refuses_a_taken_name(actors, flavor, host, unmanaged):
    make_instance(actors.tenant, flavor, host, name="taken", state=Instance.State.SHUTOFF)
    with pytest.raises(ServiceError, match="taken"):
        hosts.adopt_domain(
            actor=actors.cloud_admin, unmanaged=unmanaged, tenant=actors.tenant, flavor=flavor, name="taken"
        )
    assert UnmanagedDomain.objects.filter(pk=unmanaged.pk).exists()
    assert Instance.objects.count() == 1


# ---------------------------------------------------------------- the watcher


def test_watch_hosts_once(actors, flavor, host, test_driver):
    domain = define(test_driver, start=True)
    instance = make_instance(actors.tenant, flavor, host, uuid_=domain, state=Instance.State.SHUTOFF)
    down = Host.objects.create(name="lctest-down", uri="test:///nonexistent-lctest.xml")
    call_command("watch_hosts", "--once", "--host", host.name, "--host", down.name)
    instance.refresh_from_db()
    host.refresh_from_db()
    down.refresh_from_db()
    assert instance.state == Instance.State.RUNNING
    assert host.state == Host.State.UP and host.cpus > 0
    assert down.state == Host.State.DOWN
    with pytest.raises(CommandError, match="lctest-nope"):
        call_command("watch_hosts", "--once", "--host", "lctest-nope")


@pytest.fixture
def running_watcher(transactional_db):
    """Start a watcher loop (in a thread) for the given host names; stopped and joined at teardown."""
    with contextlib.ExitStack() as started:

        def start(*names: str) -> HostWatcher:
            watcher = HostWatcher(host_names=names, reconcile_seconds=30, capacity_seconds=60)
            started.enter_context(watcher_running(watcher))
            assert watcher.ready.wait(10), "the watcher did not finish its first round"
            assert watcher.watches and all(w.connected for w in watcher.watches.values())
            return watcher

        yield start


def test_an_event_updates_the_row_and_is_published_within_a_second(
    actors, flavor, test_driver, channel_layer, running_watcher
):
    host = Host.objects.create(name="lctest-host", uri=TEST_URI, storage_pool=POOL)
    domain = define(test_driver)
    instance = make_instance(actors.tenant, flavor, host, uuid_=domain, state=Instance.State.SHUTOFF)
    watcher = running_watcher(host.name)
    channel = listen(channel_layer, f"tenant-{actors.tenant.pk}")

    t0 = time.monotonic()
    test_driver.start(domain)
    message = receive(channel_layer, channel)
    elapsed = time.monotonic() - t0
    assert message is not None, "no live event within 2 s"
    assert message["type"] == "live.event"
    event = message["event"]
    assert event["type"] == "instance" and event["data"]["uuid"] == domain and event["data"]["state"] == "running"
    assert elapsed < 1.0
    instance.refresh_from_db()
    assert instance.state == Instance.State.RUNNING

    test_driver.power_off(domain)
    message = receive(channel_layer, channel)
    assert message is not None and message["event"]["data"]["state"] == "shutoff"
    instance.refresh_from_db()
    assert (instance.state, instance.state_reason) == (Instance.State.SHUTOFF, "destroyed")

    test_driver.undefine(domain)
    message = receive(channel_layer, channel)
    assert message is not None and message["event"]["data"]["state"] == "error"
    instance.refresh_from_db()
    assert instance.state == Instance.State.ERROR
    assert watcher.handled >= 3


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a cloud that hangs."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list = []
        self.thread = threading.Thread(target=self._accept, name="lctest-silent-cloud", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.accepted:
            conn.close()
        self.thread.join(timeout=5)


def test_a_hanging_cloud_does_not_hold_up_libvirt_events(
    actors, flavor, test_driver, channel_layer, running_watcher, settings
):
    settings.LABCLOUD_CLOUD_TIMEOUT = 8
    silent = SilentServer()
    try:
        hung = Host(name="lctest-hung-cloud", kind=Host.Kind.OPENSTACK, auth_url=f"http://127.0.0.1:{silent.port}/v3")
        hung.credentials = login.encrypt_credentials({"username": "u", "password": "p", "project_name": "admin"})
        hung.save()
        host = Host.objects.create(name="lctest-host", uri=TEST_URI, storage_pool=POOL)
        domain = define(test_driver)
        instance = make_instance(actors.tenant, flavor, host, uuid_=domain, state=Instance.State.SHUTOFF)
        watcher = running_watcher(host.name, hung.name)
        channel = listen(channel_layer, f"tenant-{actors.tenant.pk}")
        deadline = time.monotonic() + 5
        while not silent.accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert silent.accepted, "the watcher never asked the cloud"
        assert watcher.cloud_round_running  # the cloud round hangs on Keystone ...

        t0 = time.monotonic()
        test_driver.start(domain)
        message = receive(channel_layer, channel)
        elapsed = time.monotonic() - t0
        # ... while the libvirt event is applied and published as quickly as without a cloud
        assert message is not None and message["event"]["data"]["state"] == "running"
        assert elapsed < 1.0
        assert watcher.cloud_round_running
        instance.refresh_from_db()
        assert instance.state == Instance.State.RUNNING
    finally:
        silent.close()  # the round's requests fail at once now, so the watcher stops quickly


def test_watcher_reconnects_a_host_that_comes_back(db, test_driver, monkeypatch):
    """A host that is down at first is retried with backoff; once it answers, its events are registered."""
    from portal.backends.libvirt.connection import start_event_loop
    from vms.watcher import loop as watcher_module

    start_event_loop()

    monkeypatch.setattr(watcher_module, "BACKOFF_MIN", 0.1)
    good = Host.objects.create(name="lctest-good", uri=TEST_URI, storage_pool=POOL)
    bad = Host.objects.create(name="lctest-bad", uri="test:///nonexistent-lctest.xml")
    watcher = HostWatcher(host_names=[good.name, bad.name], reconcile_seconds=30, capacity_seconds=60)
    watcher.sync_watches()
    watcher.connect_watches()
    assert watcher.watches[good.pk].connected and not watcher.watches[bad.pk].connected
    bad.refresh_from_db()
    assert bad.state == Host.State.DOWN and watcher.watches[bad.pk].failures == 1
    # It "comes back" (here: its URI now points somewhere that answers).
    Host.objects.filter(pk=bad.pk).update(uri=TEST_URI)
    watcher.watches[bad.pk].uri = TEST_URI
    time.sleep(0.15)
    watcher.connect_watches()
    assert watcher.watches[bad.pk].connected and watcher.watches[bad.pk].failures == 0
    bad.refresh_from_db()
    assert bad.state == Host.State.UP
    # Disabled hosts are dropped at the next sync.
    Host.objects.filter(pk=bad.pk).update(enabled=False)
    watcher.sync_watches()
    assert bad.pk not in watcher.watches
    for watch in watcher.watches.values():
        watcher._unregister(watch)


def test_reconcile_stores_addresses_from_dhcp_leases(actors, flavor, host, test_driver):
    """libvirt's test driver reports a lease for its built-in running domain "test"; addresses follow it."""
    from portal.backends.libvirt.connection import connect

    builtin = connect(host.uri).lookupByName("test")
    instance = make_instance(actors.tenant, flavor, host, uuid_=builtin.UUIDString(), state=Instance.State.RUNNING)
    Instance.objects.filter(pk=instance.pk).update(mac_address="aa:bb:cc:dd:ee:ff")
    assert compute_for(host).reconcile(host)["addresses"] == 1
    instance.refresh_from_db()
    assert instance.addresses == ["192.168.122.3"]
    assert compute_for(host).reconcile(host)["addresses"] == 0  # unchanged: nothing written
