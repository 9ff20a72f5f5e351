"""The dashboard in a real browser: Playwright driving Debian's Chromium against pytest-django's live server.

Run only these with ``pytest -m browser``. Chromium comes from Debian (``apt-get install chromium``,
done by ``scripts/bootstrap.sh --test``); Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from django.urls import reverse

from portal.models import QUOTA_RESOURCES, Membership
from portal.testing import without_live_socket_errors
from portal.tests.test_i18n import ensure_compiled_messages
from vms.services import create_flavor, reserve_instances

pytestmark = pytest.mark.browser

SCREENSHOT = Path(os.environ.get("LABCLOUD_SCREENSHOT") or Path(tempfile.gettempdir()) / "labcloud-overview.png")
PASSWORD = "pw-Secret-123"


@pytest.fixture
def lab(make_user, make_tenant):
    ensure_compiled_messages()
    alice = make_user("alice", password=PASSWORD)
    alice.first_name, alice.last_name = "Alice", "Martin"
    alice.save()
    admin = make_user("root", staff=True)
    physics = make_tenant("Physics Lab", instances=10, vcpus=16, ram_mib=32768, disk_gib=500, snapshots=-1)
    physics.description = "Lasers, optics and the cluster of the third floor."
    physics.save()
    chemistry = make_tenant("Chemistry Lab")
    Membership.objects.create(user=alice, tenant=physics, role=Membership.Role.ADMIN)
    Membership.objects.create(user=alice, tenant=chemistry, role=Membership.Role.MEMBER)
    for name in ["bob", "carol"]:
        Membership.objects.create(user=make_user(name), tenant=physics)
    large = create_flavor(actor=admin, name="m1.large", vcpus=4, ram_mib=8192, disk_gib=80)
    small = create_flavor(actor=admin, name="m1.small", vcpus=1, ram_mib=2048, disk_gib=20)
    reserve_instances(actor=alice, tenant=physics, flavor=large, names=["laser-1", "laser-2", "laser-3"])
    reserve_instances(actor=alice, tenant=physics, flavor=small, names=["optics"])
    return alice, physics, chemistry


def test_dashboard_in_a_real_browser(live_server, lab, browser_page):
    page, errors = browser_page
    from playwright.sync_api import expect

    base = live_server.url

    # Not signed in: the overview sends us to the login form.
    page.goto(base + reverse("overview"))
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("#lc-login-submit")

    # The overview of the first tenant by name.
    expect(page.locator("#lc-tenant-title")).to_have_text("Chemistry Lab")
    expect(page.locator("#lc-role")).to_have_text("Member")

    # Switch to the other tenant through the navbar dropdown.
    page.click("#lc-tenant-switcher")
    page.locator(".lc-tenant-menu button", has_text="Physics Lab").click()
    expect(page.locator(".alert-success")).to_contain_text("You are now working in Physics Lab.")
    expect(page.locator("#lc-tenant-switcher")).to_contain_text("Physics Lab")

    # Its overview: one bar per quota resource, coloured by usage, and the chart drawn.
    expect(page.locator("#lc-tenant-title")).to_have_text("Physics Lab")
    expect(page.locator("#lc-role")).to_have_text("Tenant admin")
    expect(page.locator("#lc-member-count")).to_have_text("3")
    expect(page.locator("#lc-quota-cards .progress")).to_have_count(len(QUOTA_RESOURCES))  # 8, snapshot storage too
    vcpus = page.locator('[data-resource="vcpus"]')
    expect(vcpus).to_contain_text("13")
    expect(vcpus).to_contain_text("/ 16")
    expect(vcpus.locator(".progress-bar")).to_have_class(re.compile(r"bg-warning"))  # 13 of 16 = 81 %
    expect(page.locator('[data-resource="instances"] .progress-bar')).to_have_class(re.compile(r"bg-success"))
    expect(page.locator('[data-resource="snapshots"]')).to_contain_text("unlimited")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('lc-quota-chart')) !== undefined"
    )
    page.wait_for_timeout(600)  # let the chart's entry animation finish before the screenshot
    assert page.evaluate("getComputedStyle(document.querySelector('.lc-sidebar')).display") != "none"
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Create an API token: the secret is shown once, with a copy button; afterwards only its prefix.
    page.locator(".lc-sidebar").get_by_role("link", name="API tokens").click()
    expect(page).to_have_url(re.compile(r"/tokens/$"))
    page.fill("#id_name", "Backup job")
    page.select_option("#id_scope", "write")
    page.click("#lc-token-form button[type=submit]")
    raw_input = page.locator("#lc-raw-token")
    expect(raw_input).to_have_value(re.compile(r"^lc_[A-Za-z0-9_-]{40,}$"))
    raw = raw_input.input_value()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page.click("#lc-copy-token")
    expect(page.locator("#lc-copy-token")).to_contain_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == raw

    page.goto(base + reverse("tokens"))
    expect(page.locator("#lc-raw-token")).to_have_count(0)
    assert raw not in page.content()
    row = page.locator("#lc-tokens tbody tr", has_text="Backup job")
    expect(row).to_contain_text(raw[:10] + "…")
    expect(row).to_contain_text("active")

    # Revoke it, accepting the confirmation dialog.
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator(".alert-success")).to_contain_text("has been revoked")
    expect(page.locator("#lc-tokens tbody tr", has_text="Backup job")).to_contain_text("revoked")

    # Switch the language to Simplified Chinese.
    page.goto(base + reverse("overview"))
    page.click("#lc-language-menu")
    page.locator('button[name="language"][value="zh-hans"]').click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.locator(".lc-sidebar")).to_contain_text("概览")
    expect(page.locator(".lc-sidebar")).to_contain_text("API 令牌")
    expect(page.locator("#lc-role")).to_have_text("租户管理员")
    page.screenshot(path=str(SCREENSHOT.with_name(SCREENSHOT.stem + "-zh.png")), full_page=True)

    # Log out through the user menu (a POST form).
    page.click("#lc-user-menu")
    page.click("#lc-logout")
    expect(page).to_have_url(re.compile(r"/login/$"))
    expect(page.locator("#lc-login-submit")).to_be_visible()

    # The page shows "Offline" here: live_server has no websocket (the socket is tested against daphne).
    errors = without_live_socket_errors(errors)
    assert not errors, f"browser errors: {errors}"
