"""The metrics range selector in a real browser: the instance page and the host page redraw per range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from portal.testing import sign_in
from vms import realtime
from vms.metric_ranges import bucket_start
from vms.models import HostMetricSample, InstanceMetricRollup
from vms.tests.views.test_browser_instances import PASSWORD, channel_layer, daphne, lab, publish  # noqa: F401 - fixtures
from vms.tests.watcher.test_metrics import add_samples

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def add_buckets(instance, tier: int, count: int) -> datetime:
    """``count`` roll-up buckets of ``tier`` seconds ending with the current one; the newest bucket's start."""
    newest = bucket_start(datetime.now(tz=UTC), tier)
    InstanceMetricRollup.objects.bulk_create(
        InstanceMetricRollup(
            instance=instance,
            tier=tier,
            bucket=newest - timedelta(seconds=tier * k),
            samples=1 if k == 0 else 20,
            cpu_percent=10.0,
            cpu_max_percent=10.0 if k == 0 else 40.0,
            vcpus=1,
            memory_used_mib=64.0,
            memory_available_mib=128.0,
            disk_read_bps=1.0,
            disk_write_bps=2.0,
            net_rx_bps=3.0,
            net_tx_bps=4.0,
        )
        for k in range(count)
    )
    return newest


def test_instance_page_switches_range(daphne, lab, browser_page):  # noqa: F811
    page, errors = browser_page
    from playwright.sync_api import expect

    _alice, physics, (web, _db) = lab
    add_samples(web, 3)
    newest = add_buckets(web, 300, 288)
    add_buckets(web, 1800, 5)
    add_buckets(web, 7200, 100)  # 100 buckets of 2 h: eight days
    sign_in(page, daphne, "alice", PASSWORD)
    page.goto(daphne + reverse("instance_detail", args=[web.pk]))
    card = page.locator("#lc-instance-metrics")
    expect(card).to_have_attribute("data-lc-metrics-points", "3")
    expect(page.locator("#lc-live-indicator")).to_have_attribute("data-lc-live-state", "live")

    card.locator("[data-lc-range='1d']").click()
    expect(card).to_have_attribute("data-lc-metrics-range", "1d")
    expect(card).to_have_attribute("data-lc-metrics-points", "288")
    expect(card.locator("[data-lc-range='1d']")).to_have_attribute("aria-pressed", "true")
    expect(page).to_have_url(f"{daphne}/instances/{web.pk}/?range=1d")
    assert page.evaluate("window.lcMetricsCharts[0].data.labels.length") == 288
    # the CPU graph shows the buckets' peak beside their average on the longer ranges
    assert page.evaluate("window.lcMetricsCharts[0].data.datasets.map((d) => d.field)") == [
        "cpu_percent",
        "cpu_max_percent",
    ]
    # a day's ticks read hours and minutes, none twice
    times = page.evaluate("window.lcMetricsCharts[0].scales.x.ticks.map((t) => t.label)")
    assert len(set(times)) == len(times) > 1 and all(":" in t for t in times), times

    # A live point on a longer range is folded into the last bucket (running average, peak), not appended.
    point = {
        "at": (newest + timedelta(seconds=20)).isoformat(),
        "interval": 15,
        "cpu_percent": 30.0,
        "vcpus": 1,
        "memory_used_mib": 64.0,
        "memory_available_mib": 128.0,
        "disk_read_bps": 1.0,
        "disk_write_bps": 2.0,
        "net_rx_bps": 3.0,
        "net_tx_bps": 4.0,
    }

    def sampled():
        realtime.metrics_sampled(tenant_id=physics.pk, instance_id=web.pk, point=point)
        realtime.flush()

    publish(sampled)
    page.wait_for_function("window.lcMetricsCharts[0].data.datasets[0].data[287] === 20")
    assert page.evaluate("window.lcMetricsCharts[0].data.datasets[1].data[287]") == 30
    assert page.evaluate("window.lcMetricsCharts[0].data.labels.length") == 288

    # The choice is in the URL: a reload draws the same range from the page itself.
    page.reload()
    expect(card).to_have_attribute("data-lc-metrics-range", "1d")
    expect(card).to_have_attribute("data-lc-metrics-points", "288")

    card.locator("[data-lc-range='1w']").click()
    expect(card).to_have_attribute("data-lc-metrics-points", "5")
    times = page.evaluate("window.lcMetricsCharts[0].scales.x.ticks.map((t) => t.label)")
    assert len(set(times)) == len(times) > 1 and all(":" in t for t in times), times  # 2.5 hours: times of day
    card.locator("[data-lc-range='1mo']").click()
    expect(card).to_have_attribute("data-lc-metrics-range", "1mo")
    expect(card).to_have_attribute("data-lc-metrics-points", "100")
    times = page.evaluate("window.lcMetricsCharts[0].scales.x.ticks.map((t) => t.label)")
    assert len(set(times)) == len(times) > 1 and not any(":" in t for t in times), times  # eight days: dates
    InstanceMetricRollup.objects.filter(tier=7200).delete()
    card.locator("[data-lc-range='1d']").click()
    expect(card).to_have_attribute("data-lc-metrics-range", "1d")
    card.locator("[data-lc-range='1mo']").click()
    expect(card).to_have_attribute("data-lc-metrics-points", "0")
    expect(page.locator("#lc-metrics-empty")).to_be_visible()
    card.locator("[data-lc-range='1h']").click()
    expect(card).to_have_attribute("data-lc-metrics-points", "3")
    assert page.evaluate("window.lcMetricsCharts[0].data.datasets.length") == 1
    assert errors == []


def test_host_page_graphs_and_instances(daphne, lab, browser_page, make_user):  # noqa: F811
    page, errors = browser_page
    from playwright.sync_api import expect

    _alice, physics, (web, _db) = lab
    make_user("root", staff=True, password=PASSWORD)
    host = web.host
    start = datetime.now(tz=UTC) - timedelta(minutes=10)
    HostMetricSample.objects.bulk_create(
        HostMetricSample(
            host=host,
            at=start + timedelta(seconds=15 * i),
            interval=15,
            cpu_percent=5.0 + i,
            memory_used_mib=4096.0,
            memory_total_mib=16384.0,
            instances=2,
        )
        for i in range(12)
    )
    sign_in(page, daphne, "root", PASSWORD)
    page.goto(daphne + reverse("hosts"))
    page.locator(".lc-host-link", has_text=host.name).click()
    expect(page).to_have_url(f"{daphne}/hosts/{host.pk}/")
    card = page.locator("#lc-host-metrics")
    expect(card.locator("canvas")).to_have_count(3)
    expect(card).to_have_attribute("data-lc-metrics-points", "12")
    assert page.evaluate("window.lcMetricsCharts.length") == 3
    assert page.evaluate("window.lcMetricsCharts[2].data.datasets[0].data") == [2] * 12
    assert page.evaluate("window.lcMetricsCharts[1].data.datasets[1].data[0]") == 16384

    rows = page.locator("#lc-host-instance-list tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("db")
    expect(rows.first).to_contain_text(physics.name)
    expect(rows.nth(1)).to_contain_text("web")
    card.locator("[data-lc-range='1d']").click()
    expect(card).to_have_attribute("data-lc-metrics-range", "1d")
    expect(card).to_have_attribute("data-lc-metrics-points", "0")
    rows.nth(1).get_by_role("link", name="web").click()
    expect(page).to_have_url(f"{daphne}/instances/{web.pk}/")
    assert errors == []
