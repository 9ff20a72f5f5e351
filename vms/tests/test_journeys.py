"""User journeys in a real browser (issue #6), with screenshots for the user and operator guides.

Real parts only: Debian's Chromium through Playwright, daphne serving the portal (pages and the
live websocket), and for the one journey that boots a guest the console proxy, a Celery worker
and a TCG guest on qemu:///system (the ``stack`` fixture of test_browser_console). Everything
listens on 127.0.0.1 and uses this test's database.

- the member's journey (one guest, the only one of this module): sign in, launch from the tiny
  disk image with the launch form, watch it reach Running without a reload, open the graphical
  console, take a snapshot, delete the instance;
- a member hits the instances quota: the launch form says so, nothing is created;
- a tenant admin adds a member;
- a cloud admin edits the tenant's quota and a flavor in the admin site; the member's launch form
  shows the new limit and the new flavor size;
- the same member (and tenant admin) pages in Simplified Chinese, switched with the language menu.

Screenshots go next to the other browser tests' (``SCREENSHOT.parent``, ``journey-*.png``) and,
when ``LABCLOUD_DOCS_SCREENSHOTS`` names a folder, also there under their short names: the guides'
pictures in docs/img/ are made with
``LABCLOUD_DOCS_SCREENSHOTS=docs/img .venv/bin/python -m pytest vms/tests/test_journeys.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from django.urls import reverse

from images.models import Image
from portal.models import Membership, Quota
from portal.testing import console_error, sign_in
from portal.tests.test_browser import SCREENSHOT
from portal.tests.test_i18n import ensure_compiled_messages
from vms.models import Flavor, Host, Instance, Snapshot
from vms.tests.compute.test_libvirt_guests import BOOTED
from vms.tests.conftest import active_image
from vms.tests.consoles import test_browser_console
from vms.tests.consoles.test_browser_console import (
    GUEST_TIMEOUT,
    PASSWORD,
    canvas_colours,
    connect_vnc,
    log_has,
    wait_until,
)
from vms.tests.views import test_browser_instances


def scroll_to(locator) -> None:
    """Scroll to an element of a live page: a redraw may replace its node meanwhile, then it is looked up again."""
    from playwright.sync_api import Error as PlaywrightError

    for _attempt in range(5):
        try:
            locator.scroll_into_view_if_needed()
            return
        except PlaywrightError as exc:
            if "not attached" not in str(exc):
                raise
            time.sleep(0.2)
    locator.scroll_into_view_if_needed()


pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = SCREENSHOT.parent

# Fixtures of the other browser tests: daphne + console proxy + Celery worker (``stack``), daphne alone.
stack = test_browser_console.stack
daphne = test_browser_instances.daphne
channel_layer = test_browser_instances.channel_layer
BROKER_DB, CHANNELS_DB = 10, 11  # Redis databases of these journeys only (the other browser tests use 12-14)


@pytest.fixture(autouse=True)
def _redis_of_our_own(monkeypatch):
    """Give this module's daphne and worker Redis databases of their own.

    Other runs of the browser tests on the same Redis (another checkout, a second pytest) must
    neither take these journeys' tasks nor send them live events: the channel layer's groups are
    named by row ids, which repeat in every test database. Autouse, so it runs before ``stack`` and
    ``daphne`` read the module constants.
    """
    monkeypatch.setattr(test_browser_console, "BROKER", f"{test_browser_console.REDIS_BASE}/{BROKER_DB}")
    monkeypatch.setattr(test_browser_console, "CHANNELS_REDIS", f"{test_browser_console.REDIS_BASE}/{CHANNELS_DB}")
    monkeypatch.setattr(test_browser_instances, "REDIS_DB", CHANNELS_DB)


VIEWPORT = {"width": 1280, "height": 800}


def shot(page, name: str) -> None:
    """Save the viewport as journey-<name>.png with the other screenshots, and as <name>.png for the docs."""
    path = SHOTS / f"journey-{name}.png"
    page.screenshot(path=str(path))
    docs = os.environ.get("LABCLOUD_DOCS_SCREENSHOTS")
    if docs:
        folder = Path(docs)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / f"{name}.png")


def with_passwords(settings, *users) -> None:
    """daphne checks passwords with Django's default hashers, not the fast one of the tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    for user in users:
        user.set_password(PASSWORD)
        user.save()


def sign_out(page) -> None:
    page.click("#lc-user-menu")
    page.click("#lc-logout")
    page.wait_for_url(re.compile(r"/login/$"))


def choose_source(page, image) -> None:
    """Pick the launch source: a select, or the source cards (radio buttons styled as cards)."""
    from playwright.sync_api import expect

    select = page.locator("#id_image")
    if select.count():
        select.select_option(str(image.pk))
        return
    page.locator(".lc-source-card", has_text=image.name).click()
    expect(page.locator(f'input[name="image"][value="{image.pk}"]')).to_be_checked()


def nonbrowser_errors(errors: list[str]) -> list[str]:
    return [e for e in errors if "WebSocket" not in e]


@pytest.fixture
def catalogue(actors):
    """What the pages without a guest need: a host row (never contacted), a flavor and an image."""
    host = Host.objects.create(
        name="lab-node-1",
        uri="test:///default",
        state=Host.State.UP,
        cpus=16,
        memory_mib=65536,
        pool_capacity=500 * 1024**3,
        pool_available=400 * 1024**3,
    )
    flavor = Flavor.objects.create(name="m1.small", vcpus=1, ram_mib=2048, disk_gib=20, description="General use")
    image = Image.objects.create(
        name="Debian 12",
        tenant=actors.tenant,
        disk_format="qcow2",
        stored_format="qcow2",
        status=Image.Status.ACTIVE,
        size=345 * 1024**2,  # shown on the launch form (no file: nothing is launched from it)
    )
    return host, flavor, image


def existing_instance(actors, catalogue, name: str) -> Instance:
    """An instance row as a finished launch leaves it (no guest behind it: the pages never ask the host)."""
    host, flavor, image = catalogue
    return Instance.objects.create(
        tenant=actors.tenant,
        owner=actors.member,
        name=name,
        flavor=flavor,
        image=image,
        host=host,
        vcpus=flavor.vcpus,
        ram_mib=flavor.ram_mib,
        disk_gib=flavor.disk_gib,
        state=Instance.State.RUNNING,
        addresses=["192.168.150.11"],
    )


@pytest.mark.libvirt_guests
def test_member_journey_launch_console_snapshot_delete(stack, portal_host, guest_media, actors, browser_page, settings):
    from playwright.sync_api import expect

    page, errors = browser_page
    page.set_viewport_size(VIEWPORT)
    member, tenant = actors.member, actors.tenant
    with_passwords(settings, member)
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="Tiny Linux")
    flavor = Flavor.objects.create(
        name="lctest.journey", vcpus=1, ram_mib=128, disk_gib=1, description="Tiny test guests"
    )

    # Sign in: the overview of the tenant.
    sign_in(page, stack, member.username, PASSWORD)
    expect(page.locator("#lc-tenant-title")).to_have_text(tenant.name)
    shot(page, "overview")

    # Launch from the disk image with the launch form.
    page.locator(".lc-sidebar").get_by_role("link", name="Instances").click()
    page.click("#lc-instance-launch")
    expect(page).to_have_url(re.compile(r"/instances/launch/"))
    page.fill("#id_name", "journey")
    choose_source(page, image)
    page.check(f"#lc-flavor-{flavor.pk}")
    expect(page.locator('#lc-quota-impact [data-resource="instances"] .lc-add')).to_have_text("1")
    shot(page, "launch-form")
    page.click("#lc-launch-submit")
    page.wait_for_url(re.compile(r"/instances/\d+/$"))
    instance = Instance.objects.get(tenant=tenant, name="journey")
    expect(page.locator("body")).to_contain_text("Launching journey.")

    # The badge follows the worker over the websocket: Running without a reload.
    t0 = time.monotonic()
    page.evaluate("window.lcNotReloaded = true")
    expect(page.locator("#lc-live-indicator")).to_have_attribute("data-lc-live-state", "live")
    shot(page, "instance-building")
    expect(page.locator("#lc-instance-badges")).to_contain_text("Running", timeout=GUEST_TIMEOUT * 1000)
    assert page.evaluate("window.lcNotReloaded") is True
    print(f"\nlaunch → Running: {time.monotonic() - t0:.1f} s")

    # The graphical console: connected, the guest's screen on the canvas.
    serial = Path(settings.LABCLOUD_SERIAL_LOG_DIR) / f"{instance.domain_name}.serial.log"
    wait_until(lambda: log_has(serial, BOOTED), timeout=GUEST_TIMEOUT, what="the guest to boot")
    print(f"launch → booted: {time.monotonic() - t0:.1f} s")
    connect_vnc(page)
    assert canvas_colours(page) > 1
    page.locator("#lc-instance-console").scroll_into_view_if_needed()
    shot(page, "instance-console")

    # Take a snapshot with the form on the instance page; it is listed, then available.
    form = page.locator("#lc-snapshot-form")
    form.locator('input[name="snapshot-name"]').fill("before-upgrade")
    form.locator('input[name="snapshot-description"]').fill("Fresh from the image")
    form.get_by_role("button", name="Take snapshot").click()
    expect(page.locator("body")).to_contain_text("Taking snapshot “before-upgrade”.")
    row = page.locator('#lc-instance-snapshots tr[data-snapshot="before-upgrade"]')
    expect(row).to_be_visible()
    page.evaluate("window.lcNotReloaded = true")
    snapshot = Snapshot.objects.get(instance=instance, name="before-upgrade")
    wait_until(
        lambda: Snapshot.objects.get(pk=snapshot.pk).state != Snapshot.State.CREATING,
        timeout=GUEST_TIMEOUT,
        what="the snapshot",
    )
    print(f"launch → snapshot done: {time.monotonic() - t0:.1f} s")
    expect(row).to_contain_text("Available")  # the page redraws its snapshots when the task ends
    assert page.evaluate("window.lcNotReloaded") is True
    scroll_to(row)
    shot(page, "instance-snapshot")

    # Delete, accepting the confirmation: the row leaves the list by itself.
    dialogs: list[str] = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.locator("#lc-instance-delete").get_by_role("button", name="Delete").click()
    page.wait_for_url(re.compile(r"/instances/$"))
    assert dialogs and "journey" in dialogs[0]
    expect(page.locator("body")).to_contain_text("Instance “journey” is being deleted.")
    expect(page.locator(f'#lc-instances tr[data-instance="{instance.pk}"]')).to_have_count(
        0, timeout=GUEST_TIMEOUT * 1000
    )
    wait_until(lambda: not Instance.objects.filter(pk=instance.pk).exists(), timeout=60, what="the instance row")
    print(f"launch → deleted: {time.monotonic() - t0:.1f} s")
    shot(page, "instances-after-delete")
    assert not nonbrowser_errors(errors), errors


def test_member_hits_the_instances_quota(daphne, actors, catalogue, browser_page, settings):
    from playwright.sync_api import expect

    page, errors = browser_page
    page.set_viewport_size(VIEWPORT)
    with_passwords(settings, actors.member)
    Quota.objects.filter(tenant=actors.tenant).update(instances=1)
    existing_instance(actors, catalogue, "web")
    _host, flavor, image = catalogue

    sign_in(page, daphne, actors.member.username, PASSWORD)
    page.goto(daphne + reverse("instance_launch"))
    page.fill("#id_name", "second")
    choose_source(page, image)
    page.check(f"#lc-flavor-{flavor.pk}")
    line = page.locator('#lc-quota-impact [data-resource="instances"]')
    expect(line).to_have_class(re.compile(r"\blc-over\b"))
    expect(line.locator(".lc-over-note")).to_be_visible()
    expect(page.locator("#lc-launch-submit")).to_be_disabled()  # what would be refused is not offered (#19)
    page.fill("#id_count", "2")  # still over: still not offered
    expect(page.locator("#lc-launch-submit")).to_be_disabled()
    page.fill("#id_count", "1")

    # a request sent anyway (an old tab, a script) is refused by the service
    page.eval_on_selector("#lc-launch-form", "form => form.requestSubmit()")

    alert = page.locator("#lc-launch-form .alert-danger")
    expect(alert).to_contain_text("Quota exceeded for instances: requested 1, limit 1, currently in use 1.")
    assert list(Instance.objects.filter(tenant=actors.tenant).values_list("name", flat=True)) == ["web"]
    shot(page, "launch-quota-exceeded")
    assert not nonbrowser_errors(errors), errors


def test_tenant_admin_adds_a_member(daphne, actors, make_user, browser_page, settings):
    from playwright.sync_api import expect

    page, errors = browser_page
    page.set_viewport_size(VIEWPORT)
    with_passwords(settings, actors.tenant_admin)
    make_user("dana")

    sign_in(page, daphne, actors.tenant_admin.username, PASSWORD)
    page.locator(".lc-sidebar").get_by_role("link", name="Members").click()
    expect(page.locator("#lc-members tbody tr")).to_have_count(2)
    form = page.locator("#lc-add-member")
    form.get_by_label("Username").fill("dana")
    form.get_by_label("Role").select_option("member")
    form.get_by_role("button", name="Add member").click()

    expect(page.locator("body")).to_contain_text("dana has been added to Tenant A as Member.")
    expect(page.locator('#lc-members tr[data-member="dana"]')).to_be_visible()
    assert Membership.objects.filter(tenant=actors.tenant, user__username="dana", role="member").exists()
    shot(page, "members-added")
    assert not nonbrowser_errors(errors), errors


def test_cloud_admin_edits_quota_and_flavor_the_member_sees_it(daphne, actors, catalogue, browser_page, settings):
    from playwright.sync_api import expect

    page, errors = browser_page
    page.set_viewport_size(VIEWPORT)
    with_passwords(settings, actors.member, actors.cloud_admin)
    # The admin site's pages name no icon: Chromium's own request for /favicon.ico gets a 404 there.
    favicon_misses: list[str] = []
    page.on(
        "console",
        lambda msg: (
            favicon_misses.append(console_error(msg))  # as browser_page records it
            if msg.type == "error" and msg.location.get("url", "").endswith("/favicon.ico")
            else None
        ),
    )
    Quota.objects.filter(tenant=actors.tenant).update(vcpus=4)
    _host, flavor, _image = catalogue
    quota = Quota.objects.get(tenant=actors.tenant)

    # Before: the member's launch form with the old limit and the old flavor size.
    sign_in(page, daphne, actors.member.username, PASSWORD)
    page.goto(daphne + reverse("instance_launch"))
    vcpus_line = page.locator('#lc-quota-impact [data-resource="vcpus"]')
    expect(vcpus_line.locator(".lc-limit")).to_have_text("4")
    flavor_row = page.locator(f'#lc-launch-flavors tr[data-flavor="{flavor.pk}"]')
    expect(flavor_row.locator("td").nth(2)).to_have_text("1")
    sign_out(page)

    # The cloud admin edits the quota and the flavor in the admin site.
    sign_in(page, daphne, actors.cloud_admin.username, PASSWORD)
    page.goto(daphne + reverse("admin:portal_quota_change", args=[quota.pk]))
    page.fill("#id_vcpus", "12")
    page.fill("#id_instances", "5")
    shot(page, "admin-quota")
    page.locator('input[name="_save"]').click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")

    page.goto(daphne + reverse("admin:vms_flavor_change", args=[flavor.pk]))
    page.fill("#id_vcpus", "2")
    page.fill("#id_description", "Two vCPUs since the upgrade")
    shot(page, "admin-flavor")
    page.locator('input[name="_save"]').click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    quota.refresh_from_db()
    flavor.refresh_from_db()
    assert (quota.vcpus, quota.instances, flavor.vcpus) == (12, 5, 2)
    page.goto(daphne + reverse("overview"))
    sign_out(page)

    # After: the member sees the new limit and the new flavor.
    sign_in(page, daphne, actors.member.username, PASSWORD)
    page.goto(daphne + reverse("instance_launch"))
    expect(vcpus_line.locator(".lc-limit")).to_have_text("12")
    expect(page.locator('#lc-quota-impact [data-resource="instances"] .lc-limit')).to_have_text("5")
    expect(flavor_row.locator("td").nth(2)).to_have_text("2")
    expect(flavor_row).to_contain_text("Two vCPUs since the upgrade")
    page.check(f"#lc-flavor-{flavor.pk}")
    expect(vcpus_line.locator(".lc-add")).to_have_text("2")
    shot(page, "launch-after-admin-edit")
    unexpected = nonbrowser_errors(errors)
    for miss in favicon_misses:
        unexpected.remove(miss)
    assert not unexpected, errors


def test_journey_in_simplified_chinese(daphne, actors, catalogue, make_user, browser_page, settings):
    from playwright.sync_api import expect

    ensure_compiled_messages()
    page, errors = browser_page
    page.set_viewport_size(VIEWPORT)
    with_passwords(settings, actors.member, actors.tenant_admin)
    make_user("erin")
    Quota.objects.filter(tenant=actors.tenant).update(instances=1)
    instance = existing_instance(actors, catalogue, "web")
    Snapshot.objects.create(
        tenant=actors.tenant, instance=instance, name="before-upgrade", state=Snapshot.State.AVAILABLE
    )
    _host, flavor, image = catalogue

    # The member switches the language with the menu in the top bar.
    sign_in(page, daphne, actors.member.username, PASSWORD)
    page.click("#lc-language-menu")
    page.locator('button[name="language"][value="zh-hans"]').click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.locator(".lc-sidebar")).to_contain_text("概览")
    expect(page.locator("#lc-role")).to_have_text("成员")
    shot(page, "overview-zh")

    # The instance list and page: state, snapshots.
    page.locator(".lc-sidebar").get_by_role("link", name="实例").click()
    row = page.locator(f'#lc-instances tr[data-instance="{instance.pk}"]')
    expect(row.locator(".lc-vm-state")).to_have_text("运行中")
    expect(page.locator("#lc-live-indicator")).to_have_attribute("data-lc-live-state", "live")
    page.goto(daphne + reverse("instance_detail", args=[instance.pk]))
    expect(page.locator("#lc-instance-badges")).to_contain_text("运行中")
    snapshots = page.locator("#lc-instance-snapshots")
    expect(snapshots.locator('tr[data-snapshot="before-upgrade"]')).to_contain_text("可用")
    expect(snapshots.get_by_role("button", name="创建快照")).to_be_visible()
    shot(page, "instance-zh")

    # Over the instances quota: the launch form refuses in Chinese, nothing is created.
    page.goto(daphne + reverse("instance_launch"))
    expect(page.locator("h1, .h3").first).to_contain_text("创建")
    expect(page.locator("#lc-quota-impact")).to_contain_text("本次创建后的配额")
    page.fill("#id_name", "second")
    choose_source(page, image)
    page.check(f"#lc-flavor-{flavor.pk}")
    expect(page.locator('#lc-quota-impact [data-resource="instances"] .lc-over-note')).to_be_visible()
    expect(page.locator("#lc-launch-submit")).to_be_disabled()  # not offered over the quota
    page.eval_on_selector("#lc-launch-form", "form => form.requestSubmit()")  # sent anyway
    expect(page.locator("#lc-launch-form .alert-danger")).to_contain_text("超出配额")
    expect(page.locator("#lc-launch-form .alert-danger")).to_contain_text("限额 1，当前已用 1")
    assert Instance.objects.filter(tenant=actors.tenant).count() == 1
    shot(page, "launch-quota-exceeded-zh")
    sign_out(page)

    # The tenant admin, still in Chinese (the language is a cookie of the browser), adds a member.
    sign_in(page, daphne, actors.tenant_admin.username, PASSWORD)
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    page.locator(".lc-sidebar").get_by_role("link", name="成员").click()
    form = page.locator("#lc-add-member")
    expect(form).to_contain_text("添加成员")
    form.locator('input[name="username"]').fill("erin")
    form.get_by_role("button", name="添加成员").click()
    expect(page.locator("body")).to_contain_text("已将 erin 以成员身份添加到 Tenant A。")
    expect(page.locator('#lc-members tr[data-member="erin"]')).to_be_visible()
    shot(page, "members-zh")
    assert not nonbrowser_errors(errors), errors
