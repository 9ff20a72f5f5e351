"""The overview in a real browser: charts drawn, and operation events turn into toasts and list entries live.

Same set-up as vms/tests/views/test_browser_instances.py (whose fixtures are reused): daphne serves the
portal and the websocket on 127.0.0.1 against this test's database; the test publishes through
``vms.realtime`` as the worker does, and the page changes without a reload.
"""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from portal.testing import sign_in
from vms import realtime
from vms.models import Instance, Operation
from vms.tests.views.test_browser_instances import (  # noqa: F401 - fixtures
    PASSWORD,
    SHOTS,
    channel_layer,
    daphne,
    lab,
    publish,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_overview_charts_toasts_and_live_operations(daphne, lab, browser_page):  # noqa: F811
    page, errors = browser_page
    from playwright.sync_api import expect

    _alice, physics, (web, db) = lab
    sign_in(page, daphne, "alice", PASSWORD)

    # Both charts are drawn; the counts say two running instances; nothing has happened yet.
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('lc-quota-chart'))"
        " && Chart.getChart(document.getElementById('lc-state-chart'))"
    )
    expect(page.locator("#lc-live-indicator")).to_have_attribute("data-lc-live-state", "live")
    expect(page.locator('#lc-state-counts [data-state="running"] .lc-state-count')).to_have_text("2")
    expect(page.locator("#lc-instance-total")).to_have_text("2")
    expect(page.locator("#lc-recent-none")).to_be_visible()
    page.evaluate("window.lcNotReloaded = true")

    # A snapshot runs and finishes: the list shows it, then a success toast (polite status) appears.
    snapshot = Operation(
        kind="instance.snapshot_create",
        tenant=physics,
        target_type="vms.instance",
        target_id=str(web.pk),
        target_repr=web.name,
        state=Operation.State.RUNNING,
        progress=30,
        message="Saving the disk",
    )

    def snapshot_running():
        snapshot.save()
        realtime.operation_changed(snapshot)

    publish(snapshot_running)
    item = page.locator(f'#lc-recent-operations [data-operation="{snapshot.pk}"]')
    expect(item).to_contain_text("Snapshot")
    expect(item).to_contain_text("30% · Saving the disk")
    expect(item.locator(".lc-op-target")).to_have_attribute("href", reverse("instance_detail", args=[web.pk]))
    expect(page.locator("#lc-recent-none")).to_be_hidden()
    expect(page.locator(".lc-toast")).to_have_count(0)  # running: no toast yet

    def snapshot_done():
        Operation.objects.filter(pk=snapshot.pk).update(state=Operation.State.SUCCEEDED, progress=100, message="")
        snapshot.refresh_from_db()
        realtime.operation_changed(snapshot)

    publish(snapshot_done)
    toast = page.locator(f'#lc-toasts-status .lc-toast[data-operation="{snapshot.pk}"]')
    expect(toast).to_be_visible()
    expect(toast).to_have_attribute("role", "status")
    expect(toast).to_contain_text("Snapshot of web finished")
    expect(item.locator(".lc-op-state")).to_have_text("Succeeded")

    # A launch fails: a sticky alert toast with the error, and the instance counts follow the state change.
    def launch_failed():
        Instance.objects.filter(pk=db.pk).update(state=Instance.State.ERROR)
        db.refresh_from_db()
        realtime.instance_changed(db)
        launch = Operation.objects.create(
            kind="instance.launch",
            tenant=physics,
            target_type="vms.instance",
            target_id=str(db.pk),
            target_repr=db.name,
            state=Operation.State.FAILED,
            error="no valid host",
        )
        realtime.operation_changed(launch)

    publish(launch_failed)
    failure = page.locator("#lc-toasts-alert .lc-toast")
    expect(failure).to_be_visible()
    expect(failure).to_have_attribute("role", "alert")
    expect(failure).to_contain_text("Launch of db failed: no valid host")
    expect(page.locator("#lc-recent-operations > li")).to_have_count(2)
    expect(page.locator("#lc-recent-operations > li").first).to_contain_text("no valid host")
    expect(page.locator('#lc-state-counts [data-state="running"] .lc-state-count')).to_have_text("1")
    expect(page.locator('#lc-state-counts [data-state="error"] .lc-state-count')).to_have_text("1")
    doughnut = page.evaluate("Chart.getChart(document.getElementById('lc-state-chart')).data.datasets[0].data")
    assert sorted(doughnut) == [0] * (len(doughnut) - 2) + [1, 1]  # one running, one in error

    page.wait_for_timeout(600)  # chart animations, before the screenshot
    page.screenshot(path=str(SHOTS / "labcloud-overview-live.png"), full_page=True)

    # The success toast hides on its own; the failure stays until closed.
    expect(toast).to_have_count(0, timeout=12_000)
    expect(failure).to_be_visible()
    failure.get_by_role("button").click()
    expect(page.locator("#lc-toasts-alert .lc-toast")).to_have_count(0)
    assert page.evaluate("window.lcNotReloaded") is True  # all of it without a reload
    assert not re.search(r"\{(what|target|error)\}", page.locator("body").inner_text())  # placeholders all filled
    assert not errors, errors
