"""Dark mode in a real browser: the system's setting by default, the user's choice kept across pages."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.testing import BROWSER_TIMEOUT_MS, CHROMIUM, CHROMIUM_ARGS, sign_in
from portal.tests.test_browser import PASSWORD, SCREENSHOT, lab  # noqa: F401 - fixture

pytestmark = pytest.mark.browser

# What shows behind the page, the sidebar and a card, as relative luminance (0 black, 1 white): the first
# background of the element or its ancestors that is not transparent.
LUMINANCE = """() => {
    const lum = (el) => {
        for (; el; el = el.parentElement) {
            const parts = getComputedStyle(el).backgroundColor.match(/[\\d.]+/g).map(Number);
            if (parts.length === 4 && parts[3] === 0) continue;
            const [r, g, b] = parts.slice(0, 3)
                .map((c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b;
        }
        return 1;  // the canvas: white
    };
    return {page: lum(document.body), sidebar: lum(document.querySelector('.lc-sidebar')),
            card: lum(document.querySelector('main .card')),
            theme: document.documentElement.getAttribute('data-bs-theme')};
}"""


@pytest.fixture
def dark_system_page(monkeypatch):
    """A Chromium page whose system asks for dark colours."""
    from playwright import sync_api

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark", locale="en-US")
        context.set_default_timeout(BROWSER_TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def test_dark_follows_the_system_and_the_choice_is_kept(live_server, lab, dark_system_page):  # noqa: F811
    page = dark_system_page
    sign_in(page, live_server.url, "alice", PASSWORD)
    page.goto(live_server.url + reverse("overview"))
    dark = page.evaluate(LUMINANCE)
    assert dark["theme"] == "dark" and max(dark["page"], dark["sidebar"], dark["card"]) < 0.05, dark
    page.screenshot(path=str(SCREENSHOT.parent / "labcloud-overview-dark.png"), full_page=True)

    page.click("#lc-user-menu")
    page.click('[data-lc-theme-value="light"]')
    light = page.evaluate(LUMINANCE)
    assert light["theme"] == "light" and min(light["page"], light["sidebar"], light["card"]) > 0.8, light
    page.goto(live_server.url + reverse("instances"))  # kept on the next page, whatever the system says
    assert page.evaluate(LUMINANCE)["theme"] == "light"
    assert page.get_attribute('[data-lc-theme-value="light"]', "aria-pressed") == "true"

    page.click("#lc-user-menu")
    page.click('[data-lc-theme-value="auto"]')  # back to the system's: dark
    assert page.evaluate(LUMINANCE)["theme"] == "dark"
    page.emulate_media(color_scheme="light")  # the system changes while the page is open
    page.wait_for_function("document.documentElement.getAttribute('data-bs-theme') === 'light'")
