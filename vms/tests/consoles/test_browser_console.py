"""The instance console in a real browser: noVNC and xterm.js, end to end.

Everything is real: Debian's Chromium (Playwright), daphne serving the portal (pages, the ticket
endpoint and the serial-console websocket), ``manage.py consoleproxy`` (websockify with the token
plugin), a Celery worker for the launch and finish-install tasks, and TCG guests on qemu:///system.
All of them listen on 127.0.0.1 and run against this test's database; they are stopped by PID.

Two journeys, one guest each:
- the GRUB rescue ISO: connect, the canvas shows the guest's screen, commands typed through the
  canvas run (GRUB copies its output to the serial port, so its log proves the typing), and the
  toolbar's reconnect asks for a fresh ticket;
- the tiny installer ISO, launched from the launch form: the installer runs and powers off,
  "Finish install" boots the installed system from its disk, its screen is in the console, text
  pasted as keystrokes runs at its shell (output in the serial log), and the serial tab types and
  reads through xterm.js.

Playwright's ``keyboard.type`` would send capitals without a Shift key-down, which QEMU's VNC
server types in lower case: ``press_keys`` holds Shift explicitly; the paste button does the same.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.urls import reverse

from portal.factories import make_instance
from portal.models import AuditEvent, Membership
from portal.testing import child_process, database_url_of_this_test, free_port, sign_in
from portal.tests.test_browser import SCREENSHOT
from vms.models import ConsoleSession, Flavor, Instance
from vms.tests.compute.test_libvirt_guests import BOOTED, INSTALL_DONE
from vms.tests.conftest import active_image
from vms.tests.consoles.test_tokens import start_console_domain

pytestmark = [pytest.mark.browser, pytest.mark.libvirt_guests, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-Console-123"
REDIS_BASE = settings.REDIS_URL.rsplit("/", 1)[0]
CHANNELS_REDIS = f"{REDIS_BASE}/13"  # the live/serial channel layer of this test's daphne
BROKER = f"{REDIS_BASE}/12"  # this test's Celery broker: no other worker takes its tasks
SHOTS = SCREENSHOT.parent
GUEST_TIMEOUT = 240  # seconds: a busy 2-core machine slows TCG down a lot


@pytest.fixture
def stack(portal_host, tmp_path, settings):
    """daphne + console proxy + Celery worker on 127.0.0.1, sharing this test's database."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]  # what daphne checks
    web_port, proxy_port = free_port(), free_port()
    web = f"http://127.0.0.1:{web_port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": database_url_of_this_test(),
        "REDIS_URL": CHANNELS_REDIS,
        "CELERY_BROKER_URL": BROKER,
        "ALLOWED_HOSTS": "127.0.0.1",
        "LABCLOUD_DOMAIN_PREFIX": settings.LABCLOUD_DOMAIN_PREFIX,
        "LABCLOUD_SERIAL_LOG_DIR": settings.LABCLOUD_SERIAL_LOG_DIR,
        "LABCLOUD_IMAGE_STORE": str(settings.LABCLOUD_IMAGE_STORE),
        "CONSOLE_PUBLIC_URL": f"ws://127.0.0.1:{proxy_port}/websockify",
        "CONSOLE_ALLOWED_ORIGINS": web,
        "CONSOLE_RECHECK_SECONDS": "1",
    }
    python = sys.executable
    # A queue and channel-layer prefix of this run's own: concurrent runs on the same Redis stay apart.
    queue = f"lctest-console-{uuid.uuid4().hex[:10]}"
    env["CELERY_QUEUE"] = queue
    env["CHANNEL_LAYER_PREFIX"] = queue
    try:
        with (
            child_process(
                [python, "manage.py", "consoleproxy", "--host", "127.0.0.1", "--port", str(proxy_port)],
                env=env,
                log=tmp_path / "consoleproxy.log",
                port=proxy_port,
            ),
            child_process(
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "portal",
                    "worker",
                    "-Q",
                    queue,
                    "--pool",
                    "solo",
                    "-n",
                    f"lctest-console-{web_port}@localhost",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel",
                    "INFO",
                ],
                env=env,
                log=tmp_path / "worker.log",
            ),
            child_process(
                [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port), "portal.asgi:application"],
                env=env,
                log=tmp_path / "daphne.log",
                port=web_port,
            ),
        ):
            yield web
    finally:
        for url in (BROKER, CHANNELS_REDIS):
            client = redis.Redis.from_url(url)
            keys = client.keys(f"*{queue}*")
            if keys:
                client.delete(*keys)


def canvas_colours(page) -> int:
    """How many distinct colours the noVNC canvas shows (1 = blank)."""
    return page.evaluate(
        """() => {
            const canvas = document.querySelector('#lc-vnc-screen canvas');
            if (!canvas || !canvas.width) return 0;
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            const seen = new Set();
            for (let i = 0; i < data.length && seen.size < 50; i += 16) {
                seen.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
            }
            return seen.size;
        }"""
    )


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def log_has(path: Path, needle: str) -> bool:
    return path.exists() and needle in path.read_text(errors="replace")


SHIFTED = {"_": "Minus", "$": "Digit4", "(": "Digit9", ")": "Digit0", "*": "Digit8", ">": "Period"}


def press_keys(page, text: str) -> None:
    """Type ``text`` into the focused canvas key by key, holding Shift for capitals and shifted symbols."""
    for char in text:
        if char == "\n":
            page.keyboard.press("Enter")
        elif char.isupper() or char in SHIFTED:
            page.keyboard.down("Shift")
            page.keyboard.press(SHIFTED.get(char) or f"Key{char}")
            page.keyboard.up("Shift")
        elif char == " ":
            page.keyboard.press("Space")
        else:
            page.keyboard.press(char)
        time.sleep(0.03)  # GRUB polls the keyboard: keep it from dropping keys under TCG


def connect_vnc(page) -> None:
    from playwright.sync_api import expect

    page.click("#lc-vnc-connect")
    expect(page.locator("#lc-vnc-status")).to_have_attribute("data-state", "connected", timeout=20_000)
    wait_until(lambda: canvas_colours(page) > 1, timeout=20, what="the guest's screen on the canvas")


def test_grub_console_in_the_browser(stack, portal_host, guest_media, actors, browser_page):
    from playwright.sync_api import expect

    page, errors = browser_page
    member = actors.member
    member.set_password(PASSWORD)
    member.save()
    instance = make_instance(actors.tenant, host=portal_host, name="grub")
    serial = Path(settings.LABCLOUD_SERIAL_LOG_DIR) / f"grub-{instance.pk}.serial.log"
    start_console_domain(portal_host, guest_media, instance, serial_log=str(serial))

    sign_in(page, stack, member.username, PASSWORD)
    page.goto(stack + reverse("instance_detail", args=[instance.pk]))
    expect(page.locator("#lc-console")).to_have_attribute("data-ready", "true")
    expect(page.locator("#lc-vnc-status")).to_have_attribute("data-state", "idle")
    t0 = time.monotonic()
    connect_vnc(page)
    print(f"\nclick → connected with a non-blank screen: {time.monotonic() - t0:.2f} s")
    assert page.locator("#lc-vnc-cad").is_enabled()

    # Commands typed on the canvas run at the grub> prompt; GRUB copies its output to the serial port.
    # The screen turns non-blank with the firmware, before GRUB reads the keyboard, and nothing tells
    # from outside when its prompt is up: keys typed before are lost. So the lines are typed again
    # (Ctrl-U clears a half-typed one) until the serial port shows the output, the event the test needs.
    page.locator("#lc-vnc-screen canvas").click()
    for attempt in range(1, 9):
        # The rescue ISO may show its menu first: "c" opens the command line there, Ctrl-U clears the line.
        press_keys(page, "c")
        page.keyboard.press("Control+KeyU")
        press_keys(page, "serial --unit=0 --speed=115200\n")
        press_keys(page, "terminal_output --append serial\n")
        press_keys(page, "echo LCtest GRUB OK\n")
        try:
            wait_until(lambda: log_has(serial, "LCtest GRUB OK"), timeout=15, what="the typed command's output")
            break
        except pytest.fail.Exception:
            if attempt == 8:
                page.screenshot(path=str(SHOTS / "console-grub.png"))
                raise
    print(f"GRUB ran the typed command (attempt {attempt})")
    page.screenshot(path=str(SHOTS / "console-grub.png"))

    # Reconnect gets a fresh one-time ticket; the first session ended.
    page.click("#lc-vnc-connect")
    expect(page.locator("#lc-vnc-status")).to_have_attribute("data-state", "connected", timeout=20_000)
    wait_until(lambda: canvas_colours(page) > 1, timeout=20, what="the screen after reconnecting")
    sessions = ConsoleSession.objects.filter(instance=instance).order_by("pk")
    wait_until(lambda: sessions.count() == 2 and sessions.first().ended_at, timeout=10, what="the first session's end")
    assert all(s.used_at and s.user_id == member.pk for s in sessions)

    # Access ends (membership removed): the proxy cuts the live session, the page says why.
    Membership.objects.filter(user=member, tenant=actors.tenant).delete()
    expect(page.locator("#lc-vnc-status")).to_have_attribute("data-state", "disconnected", timeout=15_000)
    expect(page.locator("#lc-vnc-status")).to_contain_text("your access ended")
    assert AuditEvent.objects.filter(action="console.start", target_id=str(instance.pk)).count() == 2
    assert AuditEvent.objects.filter(action="console.end", target_id=str(instance.pk)).count() == 2
    assert not [e for e in errors if "WebSocket" not in e], errors


def test_iso_install_through_the_browser(stack, portal_host, guest_media, actors, browser_page):
    from playwright.sync_api import expect

    page, errors = browser_page
    member, tenant = actors.member, actors.tenant
    member.set_password(PASSWORD)
    member.save()
    iso = active_image(
        tenant=tenant, source=guest_media["installer.iso"], name="Tiny installer", kind="iso", disk_format="iso"
    )
    flavor = Flavor.objects.create(name="lctest.browser-install", vcpus=1, ram_mib=160, disk_gib=1)

    # Launch from the ISO with the launch form.
    sign_in(page, stack, member.username, PASSWORD)
    page.goto(stack + reverse("instance_launch"))
    page.fill("#id_name", "installed")
    page.click(f"label[for=lc-source-{iso.pk}]")  # the source picker: cards over radio buttons
    page.check(f"#lc-flavor-{flavor.pk}")
    page.click("#lc-launch-submit")
    page.wait_for_url(re.compile(r"/instances/\d+/$"))
    instance = Instance.objects.get(tenant=tenant, name="installed")
    serial = Path(settings.LABCLOUD_SERIAL_LOG_DIR) / f"{instance.domain_name}.serial.log"
    expect(page.locator("#lc-instance-badges")).to_contain_text("Running", timeout=GUEST_TIMEOUT * 1000)

    # The installer's screen in the console while it installs; it powers off when done.
    connect_vnc(page)
    wait_until(lambda: log_has(serial, INSTALL_DONE), timeout=GUEST_TIMEOUT, what="the installer to finish")
    expect(page.locator("#lc-vnc-status")).to_have_attribute("data-state", "disconnected", timeout=60_000)
    domain = portal_host.lctest.driver.conn.lookupByUUIDString(str(instance.uuid))
    wait_until(lambda: not domain.isActive(), timeout=60, what="the installer to power off")

    # Finish install in the page: the ISO is ejected and the installed system boots from its disk.
    page.reload()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#lc-action-finish_install")
    wait_until(
        lambda: not Instance.objects.get(pk=instance.pk).installing, timeout=GUEST_TIMEOUT, what="finish install"
    )
    wait_until(lambda: log_has(serial, BOOTED), timeout=GUEST_TIMEOUT, what="the installed system to boot")
    page.goto(stack + reverse("instance_detail", args=[instance.pk]))
    connect_vnc(page)
    page.screenshot(path=str(SHOTS / "console-installed.png"))

    # Paste as keystrokes: the command runs at the installed system's shell on tty1.
    page.click("#lc-vnc-paste-toggle")
    page.fill("#lc-vnc-paste-text", "echo LC-PASTE-$((6*7)) >/dev/ttyS0\n")
    page.click("#lc-vnc-paste-send")
    expect(page.locator("#lc-vnc-paste-feedback")).to_contain_text("Typed 35 characters")
    wait_until(lambda: log_has(serial, "LC-PASTE-42"), timeout=60, what="the pasted command's output")

    # The serial console: xterm.js over the channels websocket, typing and reading.
    page.click("#lc-console-tab-serial")
    expect(page.locator("#lc-serial-status")).to_have_attribute("data-state", "connected", timeout=20_000)
    page.locator("#lc-serial-terminal .xterm-helper-textarea").focus()
    page.keyboard.type("echo lc$((40+2))-serial\r")
    expect(page.locator("#lc-serial-terminal .xterm-rows")).to_contain_text("lc42-serial", timeout=30_000)
    page.screenshot(path=str(SHOTS / "console-serial.png"))

    # The console window: its own page connects at once.
    popup_page = page.context.new_page()
    popup_page.goto(stack + reverse("instance_console", args=[instance.pk]))
    expect(popup_page.locator("#lc-vnc-status")).to_have_attribute("data-state", "connected", timeout=20_000)
    popup_page.close()

    # Ctrl-Alt-Del from the toolbar: the installed system's init powers off on it.
    page.click("#lc-console-tab-vnc")
    page.click("#lc-vnc-cad")
    wait_until(lambda: not domain.isActive(), timeout=GUEST_TIMEOUT, what="Ctrl-Alt-Del to power the guest off")
    expect(page.locator("#lc-vnc-status")).to_have_attribute("data-state", "disconnected", timeout=20_000)
    assert AuditEvent.objects.filter(action="console.serial.start", target_id=str(instance.pk)).exists()
    assert not [e for e in errors if "WebSocket" not in e], errors
