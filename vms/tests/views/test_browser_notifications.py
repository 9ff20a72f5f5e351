"""The notification bell in a real browser: operations end while a page is open, the bell's count follows live,
its menu lists them, "Mark all read" clears the count; the history page filters failures.

Same set-up as test_browser_instances.py (whose fixtures are reused): daphne serves the portal and the websocket
on 127.0.0.1 against this test's database. The operations are run and ended the worker's way
(``vms.operations``: create, begin, succeed or fail), which publishes through ``vms.realtime``.
"""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils.translation import gettext_noop

from portal.testing import sign_in
from vms import operations
from vms.tests.views.test_browser_instances import (  # noqa: F401 - fixtures
    PASSWORD,
    SHOTS,
    channel_layer,
    daphne,
    lab,
    publish,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def run(instance, *, kind: str, alice, error: str = "") -> None:
    """An operation of the instance, run and ended as the worker does."""

    def work():
        operation = operations.create_operation(kind=kind, target=instance, tenant=instance.tenant, user=alice)
        operation = operations.begin(operation_id=operation.pk)
        operations.progress(operation=operation, percent=50)
        if error:
            operations.fail(operation=operation, error=error)
        else:
            operations.succeed(operation=operation, message=gettext_noop("Instance is running."))

    publish(work)


def test_the_bell_counts_live_lists_and_clears(daphne, lab, browser_page):  # noqa: F811
    page, errors = browser_page
    from playwright.sync_api import expect

    alice, _physics, (web, db) = lab
    sign_in(page, daphne, "alice", PASSWORD)
    # A page with no live updates of its own: the bell listens by itself.
    page.goto(daphne + reverse("keypairs"))
    bell = page.locator("#lc-bell")
    count = page.locator("#lc-bell-count")
    expect(bell).to_have_attribute("data-lc-live-state", "live")
    expect(count).to_be_hidden()
    page.evaluate("window.lcNotReloaded = true")

    run(web, kind="instance.reboot", alice=alice)
    expect(count).to_be_visible()
    expect(count).to_have_text("1")
    run(
        db,
        kind="instance.snapshot_create",
        alice=alice,
        error=gettext_noop("The image of this instance is gone or no longer active."),
    )
    expect(count).to_have_text("2")

    # The menu, loaded when opened: newest first, both unread, the target linked, texts and state shown.
    page.locator("#lc-bell-button").click()
    items = page.locator("#lc-bell-items .lc-notification")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("Snapshot")
    expect(items.first).to_contain_text("Failed")
    expect(items.first).to_contain_text("The image of this instance is gone or no longer active.")
    expect(items.nth(1)).to_contain_text("Reboot")
    expect(items.nth(1)).to_contain_text("Instance is running.")
    expect(items.first).to_contain_text("just now")
    expect(items.nth(1).locator(".lc-op-target")).to_have_attribute("href", reverse("instance_detail", args=[web.pk]))
    expect(page.locator("#lc-bell-items .lc-unread")).to_have_count(2)
    page.screenshot(path=str(SHOTS / "labcloud-notifications-menu.png"))

    # While it is open, another one ends: the open menu shows it.
    run(web, kind="instance.stop", alice=alice)
    expect(items).to_have_count(3)
    expect(count).to_have_text("3")

    page.locator("#lc-bell-read").click()
    expect(count).to_be_hidden()
    expect(count).to_have_attribute("data-unread", "0")
    expect(page.locator("#lc-bell-items .lc-unread")).to_have_count(0)
    assert page.evaluate("window.lcNotReloaded") is True  # all of it without a reload

    # The server agrees; the history lists all three, and the failure alone when asked.
    page.goto(daphne + reverse("notifications"))
    expect(page.locator("#lc-bell-count")).to_be_hidden()
    expect(page.locator("#lc-history .lc-notification")).to_have_count(3)
    page.locator("#lc-history-failed").click()
    expect(page.locator("#lc-history .lc-notification")).to_have_count(1)
    expect(page.locator("#lc-history .lc-notification")).to_contain_text(
        "The image of this instance is gone or no longer active."
    )
    page.screenshot(path=str(SHOTS / "labcloud-notifications-history.png"), full_page=True)
    assert not errors, errors


def test_the_bell_catches_up_with_what_ended_before_its_socket_joined(daphne, lab, browser_page):  # noqa: F811
    """The page was rendered while a reboot ran, and the reboot ended before the page's sockets joined their
    groups (its event reached nobody here): once the bell's socket says it is ready, the bell asks the server
    and counts it, without a reload."""
    import re

    from vms import realtime
    from vms.models import Instance

    page, errors = browser_page
    from playwright.sync_api import expect

    alice, _physics, (web, _db) = lab
    operation = operations.begin(
        operation_id=operations.create_operation(kind="instance.reboot", target=web, tenant=web.tenant, user=alice).pk
    )
    Instance.objects.filter(pk=web.pk).update(task="reboot")
    sign_in(page, daphne, "alice", PASSWORD)
    ended = []

    def finished():
        Instance.objects.filter(pk=web.pk).update(task="")
        operations.succeed(operation=operation, message=gettext_noop("Instance is running."))
        realtime.flush()  # handed to the channel layer: sent before the page's sockets join

    def reboot_ends_before_the_sockets_join(socket):
        if not ended:
            ended.append(True)
            publish(finished)
        socket.connect_to_server()

    page.route_web_socket(re.compile(r"/ws/live/"), reboot_ends_before_the_sockets_join)
    response = page.goto(daphne + reverse("instances"))
    assert 'data-task="reboot"' in response.text()  # rendered mid-task
    page.evaluate("window.lcNotReloaded = true")
    expect(page.locator("#lc-bell")).to_have_attribute("data-lc-live-state", "live")
    expect(page.locator("#lc-bell-count")).to_have_text("1")
    assert page.evaluate("window.lcNotReloaded") is True
    assert not errors, errors
