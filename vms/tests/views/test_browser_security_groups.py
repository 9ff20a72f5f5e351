"""Security groups in a real browser: a group made, a rule added and removed, the group ticked at launch."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.testing import sign_in, without_live_socket_errors
from portal.tests.test_browser import PASSWORD, lab  # noqa: F401 - fixture
from vms.models import SecurityGroup

pytestmark = pytest.mark.browser


def test_a_member_opens_a_port_in_a_new_group(live_server, lab, browser_page):  # noqa: F811
    from playwright.sync_api import expect

    page, errors = browser_page
    _alice, _physics, _chemistry = lab
    sign_in(page, live_server.url, "alice", PASSWORD)
    page.goto(live_server.url + reverse("overview"))
    page.click("#lc-sidebar >> text=Security groups")
    expect(page.locator('#lc-security-groups tr[data-group="default"]')).to_be_visible()
    page.fill("#lc-security-group-create [name=name]", "web")
    page.fill("#lc-security-group-create [name=description]", "HTTP for the class")
    page.click("#lc-security-group-create button[type=submit]")
    expect(page.locator("h1")).to_contain_text("web")
    expect(page.locator("#lc-security-group-rules tbody tr")).to_have_count(1)  # all egress

    page.select_option("#lc-rule-add [name=direction]", "ingress")
    page.select_option("#lc-rule-add [name=protocol]", "tcp")
    page.fill("#lc-rule-add [name=port_min]", "8080")
    page.fill("#lc-rule-add [name=port_max]", "8000")  # before the first: refused, nothing added
    page.click("#lc-rule-add button[type=submit]")
    expect(page.locator("#lc-rule-add .invalid-feedback, #lc-rule-add .alert-danger").first).to_be_visible()
    page.fill("#lc-rule-add [name=port_max]", "8081")
    page.fill("#lc-rule-add [name=remote_cidr]", "10.0.0.0/8")
    page.click("#lc-rule-add button[type=submit]")
    row = page.locator("#lc-security-group-rules tbody tr", has_text="8080–8081")
    expect(row).to_contain_text("10.0.0.0/8")
    group = SecurityGroup.objects.get(name="web")  # of the active tenant
    assert group.rules.filter(port_min=8080, port_max=8081, remote_cidr="10.0.0.0/8").exists()

    page.on("dialog", lambda dialog: dialog.accept())
    row.locator("button[type=submit]").click()
    expect(page.locator("#lc-security-group-rules tbody tr", has_text="8080")).to_have_count(0)

    page.goto(live_server.url + reverse("instance_launch"))
    fieldset = page.locator("#lc-launch-security-groups")
    expect(fieldset.get_by_label("default")).to_be_checked()
    expect(fieldset.get_by_label("web")).not_to_be_checked()
    assert without_live_socket_errors(errors) == []
