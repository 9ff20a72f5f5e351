"""In a real browser: an adopted instance's page offers only what the service accepts, and live updates
enable and disable its buttons from the ``allowed_actions`` they carry (the action registry).

Served by daphne (websockets) as in test_browser_instances.py; the test publishes state changes through
``vms.realtime`` exactly as the worker and the watcher do.
"""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from portal.models import Membership
from portal.testing import sign_in
from vms import realtime
from vms.models import Flavor, Host, Instance
from vms.tests.views.test_browser_instances import PASSWORD, channel_layer, daphne, publish  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def adopted(settings, make_user, make_tenant):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    alice = make_user("alice", password=PASSWORD)
    tenant = make_tenant("Chemistry Lab")
    Membership.objects.create(user=alice, tenant=tenant, role=Membership.Role.MEMBER)
    host = Host.objects.create(
        name="node-1", uri="test:///default", state="up", cpus=8, memory_mib=16384, pool_capacity=10**11
    )
    flavor = Flavor.objects.create(name="m1.small", vcpus=1, ram_mib=1024, disk_gib=10)
    Flavor.objects.create(name="m1.large", vcpus=2, ram_mib=2048, disk_gib=20)
    return Instance.objects.create(
        tenant=tenant,
        owner=alice,
        name="legacy",
        flavor=flavor,
        host=host,
        vcpus=1,
        ram_mib=1024,
        disk_gib=10,
        adopted=True,
        domain_name="legacy-vm",
        state=Instance.State.SHUTOFF,
    )


def test_an_adopted_instance_offers_only_what_is_accepted_and_follows_live_updates(
    daphne,  # noqa: F811 - the fixture
    adopted,
    browser_page,
):
    page, errors = browser_page
    from playwright.sync_api import expect

    sign_in(page, daphne, "alice", PASSWORD)
    page.goto(daphne + reverse("instance_detail", args=[adopted.pk]))
    expect(page.locator("#lc-live-indicator")).to_have_attribute("data-lc-live-state", "live")

    # Its disks and devices are the host's: nothing that rebuilds them is on the page, and the page says why.
    for section in ("#lc-instance-resize", "#lc-instance-resources", "#lc-instance-disks", "#lc-instance-capture"):
        expect(page.locator(section)).to_have_count(0)
    note = page.locator("#lc-instance-not-offered")
    expect(note).to_contain_text("adopted")
    expect(note).to_contain_text("resize")
    expect(note).to_contain_text("capture to image")
    # What it can do is there, enabled as the state allows.
    expect(page.locator("#lc-action-start")).to_be_enabled()
    expect(page.locator("#lc-action-shutdown")).to_be_disabled()
    expect(page.locator('[data-lc-action="snapshot_create"]')).to_be_enabled()

    # The watcher sees it running: the buttons follow the allowed actions of the update, without a reload.
    page.evaluate("window.lcNotReloaded = true")

    def started():
        Instance.objects.filter(pk=adopted.pk).update(state=Instance.State.RUNNING)
        adopted.refresh_from_db()
        realtime.instance_changed(adopted)

    publish(started)
    expect(page.locator("#lc-action-start")).to_be_disabled()
    expect(page.locator("#lc-action-shutdown")).to_be_enabled()
    expect(page.locator("#lc-action-pause")).to_be_enabled()

    # A task starts: everything waits for it, delete included.
    def busy():
        Instance.objects.filter(pk=adopted.pk).update(task="reboot")
        adopted.refresh_from_db()
        realtime.instance_changed(adopted)

    publish(busy)
    expect(page.locator("#lc-action-shutdown")).to_be_disabled()
    expect(page.locator('[data-lc-action="delete"]')).to_be_disabled()
    expect(page.locator('[data-lc-action="snapshot_create"]')).to_be_disabled()

    # A task that changes what the page lists ends: the page redraws its sections from the server, and the
    # buttons it redraws and the ones it keeps (Delete in the header) follow what the instance accepts now.
    def snapshot_taken():
        Instance.objects.filter(pk=adopted.pk).update(task="snapshot_create")
        adopted.refresh_from_db()
        realtime.instance_changed(adopted)
        Instance.objects.filter(pk=adopted.pk).update(task="")
        adopted.refresh_from_db()
        realtime.instance_changed(adopted)

    publish(snapshot_taken)
    expect(page.locator("#lc-instance").first).to_have_attribute("data-refreshed", re.compile(r"\d+"))
    expect(page.locator('[data-lc-action="snapshot_create"]')).to_be_enabled()
    expect(page.locator('[data-lc-action="delete"]')).to_be_enabled()
    expect(page.locator("#lc-action-shutdown")).to_be_enabled()
    expect(page.locator("#lc-action-start")).to_be_disabled()
    assert page.evaluate("window.lcNotReloaded") is True
    assert not [e for e in errors if "metrics" not in e], errors
