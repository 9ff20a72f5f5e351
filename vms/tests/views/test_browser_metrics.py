"""The instance page's metrics graphs in a real browser: the history from the page, live points over ws/live/."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.testing import sign_in
from vms import realtime
from vms.tests.views.test_browser_instances import PASSWORD, channel_layer, daphne, lab, publish  # noqa: F401 - fixtures
from vms.tests.watcher.test_metrics import add_samples

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_metrics_graphs_follow_the_websocket(daphne, lab, browser_page):  # noqa: F811
    page, errors = browser_page
    from playwright.sync_api import expect

    _alice, physics, (web, _db) = lab
    add_samples(web, 3)
    sign_in(page, daphne, "alice", PASSWORD)

    page.goto(daphne + reverse("instance_detail", args=[web.pk]))
    expect(page.locator("#lc-instance-metrics canvas")).to_have_count(4)
    expect(page.locator("#lc-live-indicator")).to_have_attribute("data-lc-live-state", "live")
    assert page.evaluate("window.lcMetricsCharts.length") == 4
    assert page.evaluate("window.lcMetricsCharts[0].data.datasets[0].data") == [0, 1, 2]

    point = {
        "at": "2030-01-01T12:00:00+00:00",
        "interval": 15,
        "cpu_percent": 42.5,
        "vcpus": 1,
        "memory_used_mib": 70.0,
        "memory_available_mib": 128.0,
        "disk_read_bps": 1024.0,
        "disk_write_bps": 0.0,
        "net_rx_bps": 10.0,
        "net_tx_bps": 5.0,
    }

    def sampled():
        realtime.metrics_sampled(tenant_id=physics.pk, instance_id=web.pk, point=point)
        realtime.flush()

    publish(sampled)
    page.wait_for_function("window.lcMetricsCharts[0].data.datasets[0].data.length === 4")
    assert page.evaluate("window.lcMetricsCharts[0].data.datasets[0].data[3]") == 42.5
    assert page.evaluate("window.lcMetricsCharts[1].data.datasets[0].data[3]") == 70

    # Each value axis reads in one unit, and no two of its ticks read the same (the disk's now goes up to
    # 1 KiB/s: before, "1000 B/s" stood beside "1.0 KiB/s"; tiny rates read "1 B/s" on every tick).
    axes = page.evaluate("window.lcMetricsCharts.map((c) => c.scales.y.ticks.map((t) => t.label))")
    for axis in axes:
        assert len(set(axis)) == len(axis) > 1, axes
        assert len({label.split(" ", 1)[1] for label in axis if " " in label}) <= 1, axes
    # The time axis: a few short labels, none twice; the tooltip gives the full date and time.
    times = page.evaluate("window.lcMetricsCharts[0].scales.x.ticks.map((t) => t.label)")
    assert 1 < len(times) <= 6 and len(set(times)) == len(times) and all(len(t) <= 11 for t in times), times
    assert errors == []
