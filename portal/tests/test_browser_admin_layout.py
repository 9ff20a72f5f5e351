"""The Django admin's lists in a real browser at a laptop's 1366 px: every column readable."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.models import AuditEvent
from portal.testing import sign_in
from portal.tests.test_browser import PASSWORD, SCREENSHOT, lab  # noqa: F401 - fixture

pytestmark = pytest.mark.browser

LISTS = ["admin:portal_tenant_changelist", "admin:vms_flavor_changelist", "admin:portal_auditevent_changelist"]

# Cells whose content is cut (wider than the cell, or than what shows of the table), as the page sees them.
CLIPPED = """() => {
    const table = document.querySelector('#result_list');
    const box = table.closest('.results') || table.parentElement;
    const visible = box.getBoundingClientRect();
    const cut = [];
    for (const cell of table.querySelectorAll('th, td')) {
        const r = cell.getBoundingClientRect();
        const text = cell.textContent.trim().slice(0, 40);
        if (cell.scrollWidth > cell.clientWidth + 1) cut.push(['wider than its cell', text]);
        else if (r.right > Math.min(visible.right, window.innerWidth) + 1) cut.push(['past the edge', text]);
    }
    return {cut: cut.slice(0, 12), page: document.documentElement.scrollWidth - window.innerWidth};
}"""


def test_admin_lists_show_every_column_at_1366_px(live_server, lab, browser_page):  # noqa: F811
    page, _errors = browser_page
    page.set_viewport_size({"width": 1366, "height": 768})
    for n in range(3):
        AuditEvent.objects.create(
            tenant=lab[1], username="alice", action="instance.migrate", target_repr=f"a-long-instance-name-{n}"
        )
    sign_in(page, live_server.url, "root", PASSWORD)
    problems = {}
    for name in LISTS:
        page.goto(live_server.url + reverse(name))
        result = page.evaluate(CLIPPED)
        page.screenshot(path=str(SCREENSHOT.parent / f"admin-{name.split(':')[1]}-1366.png"), full_page=True)
        if result["cut"] or result["page"] > 1:
            problems[name] = result
    assert problems == {}
