"""Layout and keyboard access of the dashboard in a real browser (Chromium through Playwright).

Every page of a tenant member must be readable at 1280 px and on a phone-width screen (390 px):
nothing wider than the viewport (wide tables scroll inside their own box), and every button and link
has a name a screen reader can read. The main actions are reachable with the keyboard alone.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.testing import sign_in
from portal.tests.test_browser import PASSWORD, SCREENSHOT, lab  # noqa: F401 - fixture
from vms.models import Instance, SecurityGroup

pytestmark = pytest.mark.browser

PAGES = [
    ("overview", []),
    ("instances", []),
    ("instance_launch", []),
    ("flavors", []),
    ("images", []),
    ("keypairs", []),
    ("networks", []),
    ("security_groups", []),
    ("members", []),
    ("tokens", []),
]
WIDTHS = {"desktop": 1280, "phone": 390}

# Overflow and unnamed controls, as the page sees them.
CHECK = """() => {
    const overflow = document.documentElement.scrollWidth - window.innerWidth;
    const unnamed = [];
    for (const el of document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea')) {
        if (el.closest('[hidden], .d-none') || el.offsetParent === null) continue;
        const labelled = el.labels && [...el.labels].some((l) => l.textContent.trim());
        const name = (el.getAttribute('aria-label') || el.getAttribute('title') || el.textContent || '').trim();
        const labelledBy = el.getAttribute('aria-labelledby');
        if (!name && !labelled && !labelledBy && !el.placeholder && el.type !== 'radio' && el.type !== 'checkbox') {
            unnamed.push(el.outerHTML.slice(0, 120));
        }
    }
    return {overflow, unnamed};
}"""


@pytest.mark.parametrize("width", WIDTHS)
def test_pages_fit_the_screen_and_name_their_controls(live_server, lab, browser_page, width):  # noqa: F811
    page, _errors = browser_page
    page.set_viewport_size({"width": WIDTHS[width], "height": 900})
    sign_in(page, live_server.url, "alice", PASSWORD)
    instance = Instance.objects.filter(tenant=lab[1]).first()
    urls = [reverse(name, args=args) for name, args in PAGES]
    urls.append(reverse("instance_detail", args=[instance.pk]))
    default = SecurityGroup.objects.get(tenant=lab[1], name="default")
    urls.append(reverse("security_group_detail", args=[default.pk]))
    problems = {}
    for url in urls:
        page.goto(live_server.url + url)
        result = page.evaluate(CHECK)
        if result["overflow"] > 1 or result["unnamed"]:
            problems[url] = result
    page.goto(live_server.url + reverse("instance_detail", args=[instance.pk]))
    page.screenshot(path=str(SCREENSHOT.parent / f"layout-instance-{width}.png"), full_page=True)
    assert problems == {}


def test_main_actions_are_reachable_with_the_keyboard(live_server, lab, browser_page):  # noqa: F811
    """From the instance list, Tab reaches "Launch" and Enter opens the launch form; its fields follow."""
    page, _errors = browser_page
    sign_in(page, live_server.url, "alice", PASSWORD)
    page.goto(live_server.url + reverse("instances"))
    launch = reverse("instance_launch")
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement && document.activeElement.getAttribute('href')") == launch:
            break
    else:
        pytest.fail("Tab never reached the Launch link")
    page.keyboard.press("Enter")
    page.wait_for_url(live_server.url + launch)
    # The launch form's fields are reachable in order: name first.
    page.focus("#id_name")
    page.keyboard.type("kbd-{n}")
    page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement.id")
    assert focused == "id_count"
    # Focus is visible: the focused element gets an outline or a box shadow.
    visible = page.evaluate(
        """() => { const s = getComputedStyle(document.activeElement);
                   return (s.outlineStyle !== 'none' && s.outlineWidth !== '0px') || s.boxShadow !== 'none'; }"""
    )
    assert visible
