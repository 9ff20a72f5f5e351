"""Instance metrics: driver stats, rates, the bounded history, the API, the page and the watcher.

The driver and watcher tests run against libvirt's ``test:///default`` (which reports domain
states but no counters); the end-to-end test boots ONE tiny guest on the real qemu:///system
(marked ``libvirt_guests``) and checks that the watcher stores CPU samples, publishes them live,
serves them on the API and the page, and keeps only ``METRICS_HISTORY`` points.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.backends.base import DomainStats
from portal.backends.libvirt.driver import _domain_stats
from portal.factories import make_host, make_instance
from portal.testing import assert_access_matrix, assert_constant_queries, count_queries
from vms import realtime
from vms.models import Flavor, Host, Instance, InstanceMetricSample
from vms.realtime import tenant_group
from vms.tests.conftest import TEST_URI, watcher_running
from vms.tests.watcher.test_loop import POOL, channel_layer, define, listen, receive  # noqa: F401 - channel_layer is a fixture
from vms.watcher import HostWatcher
from vms.watcher.metrics import Counters, compute_point, prune_samples, sample_host

# ---------------------------------------------------------------- driver


def test_domain_stats_lists_running_domains_with_one_call(test_driver):
    running = define(test_driver, start=True)
    stopped = define(test_driver)
    stats = {s.uuid: s for s in test_driver.domain_stats()}
    assert running in stats and stopped not in stats
    assert stats[running].state == "running"
    assert stats[running].name.startswith("lctest-")
    # test:///default reports the state group only: every counter is "not reported", never a made-up 0.
    assert stats[running].cpu_time_ns is None and stats[running].disk_read_bytes is None


def test_domain_stats_record_is_summed_over_disks_and_nics():
    record = {
        "state.state": 1,
        "cpu.time": 5_000_000_000,
        "vcpu.current": 2,
        "balloon.current": 262144,
        "balloon.rss": 100000,
        "block.count": 2,
        "block.0.rd.bytes": 100,
        "block.0.wr.bytes": 10,
        "block.1.rd.bytes": 50,
        "block.1.wr.bytes": 5,
        "net.count": 1,
        "net.0.rx.bytes": 7,
        "net.0.tx.bytes": 3,
    }
    stats = _domain_stats("u", "n", record)
    assert stats == DomainStats(
        uuid="u",
        name="n",
        state="running",
        vcpus=2,
        cpu_time_ns=5_000_000_000,
        memory_kib=262144,
        memory_rss_kib=100000,
        disk_read_bytes=150,
        disk_write_bytes=15,
        net_rx_bytes=7,
        net_tx_bytes=3,
    )
    assert _domain_stats("u", "n", {"state.state": 3}).net_rx_bytes is None  # group absent: unknown


# ---------------------------------------------------------------- rates


def reading(at: float, **values) -> Counters:
    return Counters(at=at, stats=DomainStats(uuid="u", name="n", state="running", **values))


def test_rates_come_from_two_readings():
    before = reading(
        100.0, vcpus=2, cpu_time_ns=10**9, disk_read_bytes=0, disk_write_bytes=0, net_rx_bytes=0, net_tx_bytes=0
    )
    after = reading(
        110.0,
        vcpus=2,
        cpu_time_ns=10**9 + 5 * 10**9,  # 5 s of CPU in 10 s on 2 vCPUs: 25 %
        memory_kib=1024 * 1024,
        memory_rss_kib=300 * 1024,
        disk_read_bytes=10_000,
        disk_write_bytes=2_000,
        net_rx_bytes=500,
        net_tx_bytes=100,
    )
    point = compute_point(previous=before, current=after)
    assert point["cpu_percent"] == 25.0
    assert point["interval"] == 10.0
    assert point["memory_used_mib"] == 300.0 and point["memory_available_mib"] == 1024.0  # host view (no guest stats)
    assert (point["disk_read_bps"], point["disk_write_bps"]) == (1000.0, 200.0)
    assert (point["net_rx_bps"], point["net_tx_bps"]) == (50.0, 10.0)


def test_guest_memory_stats_win_and_cpu_is_clamped():
    before = reading(0.0, vcpus=1, cpu_time_ns=0)
    after = reading(
        1.0, vcpus=1, cpu_time_ns=3 * 10**9, memory_available_kib=2048 * 1024, memory_unused_kib=1536 * 1024
    )
    point = compute_point(previous=before, current=after)
    assert point["cpu_percent"] == 100.0
    assert (point["memory_used_mib"], point["memory_available_mib"]) == (512.0, 2048.0)
    assert point["disk_read_bps"] is None  # not reported: no rate


def test_a_restart_or_no_time_gives_no_point():
    assert compute_point(previous=reading(0.0, cpu_time_ns=10**10), current=reading(5.0, cpu_time_ns=10**9)) is None
    assert compute_point(previous=reading(5.0, cpu_time_ns=0), current=reading(5.0, cpu_time_ns=10)) is None
    assert compute_point(previous=reading(0.0), current=reading(5.0)) is None


# ---------------------------------------------------------------- history


@pytest.fixture
def flavor(db):
    return Flavor.objects.create(name="lctest.metrics", vcpus=1, ram_mib=128, disk_gib=1)


def add_samples(instance: Instance, n: int, *, start=None) -> None:
    start = start or timezone.now() - timedelta(hours=1)
    existing = InstanceMetricSample.objects.filter(instance=instance).count()
    InstanceMetricSample.objects.bulk_create(
        InstanceMetricSample(
            instance=instance,
            at=start + timedelta(seconds=15 * (existing + i)),
            interval=15,
            cpu_percent=float(existing + i),
            vcpus=1,
            memory_used_mib=64.0,
            memory_available_mib=128.0,
            disk_read_bps=1.0,
            disk_write_bps=2.0,
            net_rx_bps=3.0,
            net_tx_bps=4.0,
        )
        for i in range(n)
    )


def test_prune_keeps_the_newest_points_of_each_instance(actors, flavor):
    first, second, untouched = (make_instance(actors.tenant, flavor) for _ in range(3))
    for instance in (first, second, untouched):
        add_samples(instance, 7)
    deleted = prune_samples(instance_ids=[first.pk, second.pk], keep=3)
    assert deleted == 8
    for instance in (first, second):
        kept = list(InstanceMetricSample.objects.filter(instance=instance).values_list("cpu_percent", flat=True))
        assert kept == [4.0, 5.0, 6.0]
    assert InstanceMetricSample.objects.filter(instance=untouched).count() == 7
    assert count_queries(lambda: prune_samples(instance_ids=[first.pk, second.pk], keep=3)) == 1  # nothing to delete


def test_sample_host_primes_counters_and_forgets_stopped_domains(actors, flavor, test_driver):
    host = Host.objects.create(name="lctest-metrics-host", uri=TEST_URI, storage_pool=POOL)
    running = define(test_driver, start=True)
    make_instance(actors.tenant, flavor, host, uuid_=running)
    counters = {"00000000-0000-0000-0000-000000000000": reading(0.0)}  # a domain that stopped meanwhile
    result = sample_host(host=host, counters=counters)
    assert running in counters and "00000000-0000-0000-0000-000000000000" not in counters
    assert result.domains == len(counters) >= 1
    assert result.primed == 1  # the instance's first reading: the watcher reads again soon for its point
    # test:///default has no CPU counters: no point, ever (a made-up 0 % would be a lie).
    again = sample_host(host=host, counters=counters)
    assert again.stored == 0 and again.primed == 0
    assert not InstanceMetricSample.objects.exists()


def test_metrics_events_reach_only_the_instance_group(transactional_db, actors, channel_layer):  # noqa: F811
    """One point per instance per interval: only the open pages of that instance get it, not every page."""
    instance_channel = listen(channel_layer, realtime.instance_group(42))
    tenant_channel = listen(channel_layer, tenant_group(actors.tenant.pk))
    staff_channel = listen(channel_layer, realtime.STAFF_GROUP)
    realtime.metrics_sampled(tenant_id=actors.tenant.pk, instance_id=42, point={"cpu_percent": 1.5})
    realtime.flush()
    message = receive(channel_layer, instance_channel)
    assert message["event"] == {
        "type": "metrics",
        "data": {"id": 42, "tenant_id": actors.tenant.pk, "point": {"cpu_percent": 1.5}},
    }
    assert receive(channel_layer, tenant_channel, timeout=0.3) is None
    assert receive(channel_layer, staff_channel, timeout=0.3) is None


# ---------------------------------------------------------------- API and page


def test_metrics_api_access_matrix(actors, flavor):
    instance = make_instance(actors.tenant, flavor)
    add_samples(instance, 3)
    assert_access_matrix(
        actors,
        method="GET",
        url=f"/api/v1/instances/{instance.pk}/metrics/",
        expected={"anonymous": 401, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )
    body = actors.client("member").get(f"/api/v1/instances/{instance.pk}/metrics/").json()
    assert [point["cpu_percent"] for point in body] == [0.0, 1.0, 2.0]  # oldest first
    assert set(body[0]) == {
        "at",
        "interval",
        "cpu_percent",
        "vcpus",
        "memory_used_mib",
        "memory_available_mib",
        "disk_read_bps",
        "disk_write_bps",
        "net_rx_bps",
        "net_tx_bps",
    }


def test_metrics_api_query_count_is_constant(actors, flavor):
    instance = make_instance(actors.tenant, flavor)
    client = actors.client("member")
    url = f"/api/v1/instances/{instance.pk}/metrics/"

    def request():
        assert client.get(url).status_code == 200

    assert_constant_queries(lambda n: add_samples(instance, n), request, budget=6)


def test_instance_page_has_the_metrics_card(actors, flavor):
    instance = make_instance(actors.tenant, flavor, make_host())  # metrics are what a libvirt host offers
    add_samples(instance, 2)
    client = actors.client("member", api=False)
    html = client.get(f"/instances/{instance.pk}/").content.decode()
    assert 'id="lc-instance-metrics"' in html
    assert 'id="lc-metrics-data"' in html and "memory_used_mib" in html
    assert "vms/metrics.js" in html and "vendor/chartjs/chart.umd.min.js" in html
    assert client.get(f"/instances/{make_instance(actors.other_tenant, flavor).pk}/").status_code == 404


# ---------------------------------------------------------------- real guest, real watcher


@pytest.mark.libvirt_guests
@pytest.mark.django_db(transaction=True)
def test_watcher_samples_a_running_guest(portal_host, guest_media, actors, channel_layer, settings):  # noqa: F811
    from portal.celery import app as celery_app
    from vms import lifecycle
    from vms.tests.conftest import active_image

    settings.METRICS_HISTORY = 3
    tenant, member = actors.tenant, actors.member
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny", virtual_size=20 * 1024**2)
    flavor = Flavor.objects.create(name="lctest.metrics", vcpus=1, ram_mib=160, disk_gib=1)
    previous, celery_app.conf.task_always_eager = celery_app.conf.task_always_eager, True
    try:
        launch = lifecycle.launch_instances(actor=member, tenant=tenant, name="metrics", flavor=flavor, image=image)
    finally:
        celery_app.conf.task_always_eager = previous
    instance = Instance.objects.get(pk=launch.instances[0].pk)
    assert instance.state == Instance.State.RUNNING, instance.state

    live = listen(channel_layer, realtime.instance_group(instance.pk))

    # A new instance's first point comes after a short second reading, not a whole interval (60 s here).
    slow = HostWatcher(host_names=[portal_host.name], reconcile_seconds=30, capacity_seconds=60, metrics_seconds=60)
    with watcher_running(slow, name="lctest-metrics-first", join_timeout=15):
        started = time.monotonic()
        while not InstanceMetricSample.objects.filter(instance=instance).exists() and time.monotonic() - started < 20:
            time.sleep(0.2)
        first_point = time.monotonic() - started
    assert InstanceMetricSample.objects.filter(instance=instance).count() == 1, f"no first point in {first_point:.1f} s"
    assert slow.metric_rounds == 2

    watcher = HostWatcher(host_names=[portal_host.name], reconcile_seconds=30, capacity_seconds=60, metrics_seconds=1)

    with watcher_running(watcher, name="lctest-metrics-watcher", join_timeout=15):
        deadline = time.monotonic() + 30
        while watcher.metric_rounds < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert watcher.metric_rounds >= 6, "the watcher did not sample six rounds in 30 s"

    samples = list(InstanceMetricSample.objects.filter(instance=instance))
    assert len(samples) == 3, "pruned to METRICS_HISTORY points"
    assert all(s.cpu_percent > 0 for s in samples), [s.cpu_percent for s in samples]  # TCG: a booting guest burns CPU
    assert all(s.memory_used_mib and s.memory_used_mib > 0 for s in samples)
    assert all(0.5 < s.interval < 5 for s in samples)

    realtime.flush()
    events = []
    while (message := receive(channel_layer, live, timeout=1)) is not None:
        events.append(message["event"])
    points = [e["data"] for e in events if e["type"] == "metrics"]
    assert points and all(p["id"] == instance.pk and p["tenant_id"] == tenant.pk for p in points)
    assert points[-1]["point"]["cpu_percent"] > 0

    body = actors.client("member").get(f"/api/v1/instances/{instance.pk}/metrics/").json()
    assert len(body) == 3 and body[-1]["cpu_percent"] == samples[-1].cpu_percent
