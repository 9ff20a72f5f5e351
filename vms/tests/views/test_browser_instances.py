"""The instance list in a real browser, updated live over the websocket without a reload.

Django's live_server speaks WSGI only, so this test starts daphne (the ASGI server that also serves
the websocket at /ws/live/) on a free port on 127.0.0.1, against the test's own SQLite database
file and a Redis database of its own for the channel layer; the test process publishes through
``vms.realtime`` exactly as the worker and the watcher do, and the browser shows the change.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from images.models import Image
from portal.models import Membership
from portal.testing import child_process, database_url_of_this_test, free_port, sign_in
from portal.tests.test_browser import SCREENSHOT
from vms import realtime
from vms.models import Flavor, Host, Instance, Operation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-Secret-123"
REDIS_DB = 13  # a Redis database of this test's own, so other test runs' events do not mix in
ROOT = Path(django_settings.BASE_DIR)
SHOTS = SCREENSHOT.parent  # next to the other browser tests' screenshots


def _redis_url() -> str:
    base = django_settings.REDIS_URL.rsplit("/", 1)[0]
    return f"{base}/{REDIS_DB}"


@pytest.fixture
def channel_layer(settings):
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [_redis_url()]}}
    }


@pytest.fixture
def daphne(transactional_db, channel_layer, tmp_path):
    """daphne serving portal.asgi on 127.0.0.1:<free port> with the test database; stopped by PID."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_this_test(),
        "REDIS_URL": _redis_url(),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"]
    with child_process(args, env=env, log=tmp_path / "daphne.log", port=port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def lab(settings, make_user, make_tenant):
    # daphne checks the password with Django's default hashers, not the fast test one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    alice = make_user("alice", password=PASSWORD)
    physics = make_tenant("Physics Lab")
    Membership.objects.create(user=alice, tenant=physics, role=Membership.Role.MEMBER)
    host = Host.objects.create(
        name="node-1",
        uri="test:///default",
        state="up",
        cpus=8,
        memory_mib=16384,
        pool_capacity=100 * 1024**3,
        pool_available=90 * 1024**3,
    )
    flavor = Flavor.objects.create(name="m1.small", vcpus=1, ram_mib=1024, disk_gib=10)
    image = Image.objects.create(
        name="Debian 13", tenant=physics, disk_format="qcow2", stored_format="qcow2", status="active", size=1
    )
    # Rows as a finished launch leaves them (the services would queue real Celery tasks on commit here).
    instances = [
        Instance.objects.create(
            tenant=physics,
            owner=alice,
            name=name,
            flavor=flavor,
            image=image,
            host=host,
            vcpus=1,
            ram_mib=1024,
            disk_gib=10,
            state=Instance.State.RUNNING,
            addresses=["192.168.150.11"] if name == "web" else [],
        )
        for name in ("web", "db")
    ]
    return alice, physics, instances


def publish(func) -> None:
    """Run a publishing call in a thread of its own: Playwright's event loop runs in this one."""
    failure: list[BaseException] = []

    def run():
        try:
            func()
        except BaseException as exc:  # pragma: no cover - reported below
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not failure, failure


def test_instance_list_follows_the_websocket(daphne, lab, browser_page):
    page, errors = browser_page
    from playwright.sync_api import expect

    _alice, physics, (web, db) = lab
    sign_in(page, daphne, "alice", PASSWORD)

    page.locator(".lc-sidebar").get_by_role("link", name="Instances").click()
    expect(page).to_have_url(re.compile(r"/instances/$"))
    expect(page.locator("#lc-instances tbody tr")).to_have_count(2)
    expect(page.locator("#lc-live-indicator")).to_have_attribute("data-lc-live-state", "live")
    row = page.locator(f'tr[data-instance="{web.pk}"]')
    expect(row.locator(".lc-vm-state")).to_have_text("Running")
    page.evaluate("window.lcNotReloaded = true")

    # The worker starts a shutdown: the row shows the task and its progress.
    def shutting_down():
        Instance.objects.filter(pk=web.pk).update(task="shutdown")
        web.refresh_from_db()
        realtime.instance_changed(web)
        operation = Operation.objects.create(
            kind="instance.shutdown",
            tenant=physics,
            target_type="vms.instance",
            target_id=str(web.pk),
            target_repr=web.name,
            state=Operation.State.RUNNING,
            progress=60,
            message="Waiting for the guest",
        )
        realtime.operation_changed(operation)

    publish(shutting_down)
    task = row.locator('[data-lc-field="task"]')
    expect(task).to_be_visible()
    expect(task).to_contain_text("Shutting down")
    expect(task.locator(".lc-vm-task-percent")).to_have_text("60%")
    expect(task).to_contain_text("Waiting for the guest")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(SHOTS / "labcloud-instances-live.png"), full_page=True)

    # The watcher sees the domain shut off: the badge changes, the task goes away.
    def shut_off():
        Instance.objects.filter(pk=web.pk).update(state=Instance.State.SHUTOFF, task="")
        web.refresh_from_db()
        realtime.instance_changed(web)

    publish(shut_off)
    expect(row.locator(".lc-vm-state")).to_have_text("Shut off")
    expect(row.locator(".lc-vm-state")).to_have_attribute("data-state", "shutoff")
    expect(task).to_be_hidden()

    # Deleted elsewhere: the row disappears. Launched elsewhere: the page offers a refresh.
    def deleted_and_new():
        realtime.instance_deleted(tenant_id=physics.pk, instance_id=db.pk)
        Instance.objects.filter(pk=db.pk).delete()
        new = Instance.objects.create(
            tenant=physics,
            name="new",
            flavor=web.flavor,
            vcpus=1,
            ram_mib=1024,
            disk_gib=10,
            host=web.host,
            task="launch",
        )
        realtime.instance_changed(new)

    publish(deleted_and_new)
    expect(page.locator("#lc-instances tbody tr")).to_have_count(1)
    expect(page.locator("#lc-new-instances")).to_be_visible()
    assert page.evaluate("window.lcNotReloaded") is True  # all of it without a reload

    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "labcloud-instances-phone.png"), full_page=True)
    assert not errors, errors


def test_a_list_loaded_mid_task_catches_up(daphne, lab, browser_page):
    """The list was rendered while a delete ran, and the delete ended before the page's socket joined its
    groups (its events lost to this page): once the socket says it is ready, the page fetches itself again
    and the row goes, without a reload."""
    page, errors = browser_page
    from playwright.sync_api import expect

    _alice, physics, (web, db) = lab
    Instance.objects.filter(pk=web.pk).update(task="delete", state=Instance.State.DELETING)
    operation = Operation.objects.create(
        kind="instance.delete",
        tenant=physics,
        target_type="vms.instance",
        target_id=str(web.pk),
        target_repr=web.name,
        state=Operation.State.RUNNING,
        progress=20,
    )
    sign_in(page, daphne, "alice", PASSWORD)

    def finished():
        Operation.objects.filter(pk=operation.pk).update(state=Operation.State.SUCCEEDED, progress=100)
        realtime.instance_deleted(tenant_id=physics.pk, instance_id=web.pk)
        Instance.objects.filter(pk=web.pk).delete()
        realtime.flush()  # handed to the channel layer: sent before the page's socket joins

    def delete_ends_before_the_socket_joins(socket):
        # The page has rendered the row and opens its socket: the delete ends now, then the socket goes through.
        publish(finished)
        socket.connect_to_server()

    page.route_web_socket(re.compile(r"/ws/live/"), delete_ends_before_the_socket_joins)
    response = page.goto(f"{daphne}{reverse('instances')}")
    assert 'data-task="delete"' in response.text()  # rendered mid-task
    page.evaluate("window.lcNotReloaded = true")
    expect(page.locator("#lc-live-indicator")).to_have_attribute("data-lc-live-state", "live")
    expect(page.locator(f'tr[data-instance="{web.pk}"]')).to_have_count(0)
    expect(page.locator(f'tr[data-instance="{db.pk}"] .lc-vm-state')).to_have_text("Running")
    assert page.evaluate("window.lcNotReloaded") is True
    assert not errors, errors


def test_detail_page_redraws_its_sections_after_a_task(daphne, lab, browser_page):
    """A snapshot taken elsewhere: when its task ends, the page shows it without a reload."""
    page, errors = browser_page
    from playwright.sync_api import expect

    from vms.models import Snapshot

    _alice, _physics, (web, _db) = lab
    sign_in(page, daphne, "alice", PASSWORD)
    page.goto(daphne + reverse("instance_detail", args=[web.pk]))
    expect(page.locator("#lc-live-indicator")).to_have_attribute("data-lc-live-state", "live")
    expect(page.locator("#lc-instance-snapshots")).not_to_contain_text("before-upgrade")
    page.evaluate("window.lcNotReloaded = true")

    def snapshot_started():
        Instance.objects.filter(pk=web.pk).update(task="snapshot_create")
        web.refresh_from_db()
        realtime.instance_changed(web)

    publish(snapshot_started)
    expect(page.locator("#lc-instance").first).to_have_attribute("data-task", "snapshot_create")

    def snapshot_done():
        Snapshot.objects.create(instance=web, tenant=web.tenant, name="before-upgrade", state="available")
        Instance.objects.filter(pk=web.pk).update(task="")
        web.refresh_from_db()
        realtime.instance_changed(web)

    # Someone is typing in the snapshot form while the section is redrawn: the text stays.
    name_field = page.locator('#lc-instance-snapshots input[name="snapshot-name"]')
    name_field.fill("half-typed")
    publish(snapshot_done)
    expect(page.locator("#lc-instance-snapshots")).to_contain_text("before-upgrade")
    expect(name_field).to_have_value("half-typed")
    expect(page.locator("#lc-instance-changed")).to_be_hidden()
    assert page.evaluate("window.lcNotReloaded") is True
    assert not [e for e in errors if "metrics" not in e], errors


# Decodes two PNG screenshots in the page itself and counts the pixels that differ clearly.
PIXELS_APART = """async ([first, second]) => {
  const load = (data) => new Promise((ok, bad) => {
    const image = new Image();
    image.onload = () => ok(image);
    image.onerror = bad;
    image.src = "data:image/png;base64," + data;
  });
  const pixels = (image) => {
    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    return context.getImageData(0, 0, image.width, image.height).data;
  };
  const [a, b] = (await Promise.all([load(first), load(second)])).map(pixels);
  let apart = 0;
  for (let k = 0; k < Math.min(a.length, b.length); k += 4) {
    if (Math.abs(a[k] - b[k]) + Math.abs(a[k + 1] - b[k + 1]) + Math.abs(a[k + 2] - b[k + 2]) > 60) apart++;
  }
  return apart;
}"""


def pixel_box(locator) -> dict:
    """The whole device pixels an element touches (an element's own screenshot rounds a fractional edge)."""
    box = locator.bounding_box()
    top, bottom = math.floor(box["y"]), math.ceil(box["y"] + box["height"])
    return {"x": math.floor(box["x"]), "y": top, "width": math.ceil(box["width"]), "height": bottom - top}


def test_the_serial_console_shows_underscores(daphne, lab, browser_page):
    """At a pixel ratio of 1 the terminal's rows were shorter than the font's glyphs and an underscore fell
    outside its row ("x86 64", "PREEMPT DYNAMIC"): the same line with underscores and with spaces must
    render differently."""
    import base64

    page, _errors = browser_page  # no guest here: the serial socket's failure is not this test's subject
    from playwright.sync_api import expect

    _alice, _physics, (web, _db) = lab
    sign_in(page, daphne, "alice", PASSWORD)
    page.goto(f"{daphne}{reverse('instance_detail', args=[web.pk])}")
    page.click("#lc-console-tab-serial")
    page.click("#lc-serial-connect")  # makes the terminal, whatever the socket then does
    expect(page.locator("#lc-serial-terminal .xterm-rows")).to_be_attached()
    # Nothing else writes to the terminal once its socket has given up (no guest on a test:///default host).
    expect(page.locator("#lc-serial-status")).to_have_attribute("data-state", re.compile("^(error|disconnected)$"))
    page.evaluate(
        "() => new Promise((done) => window.lcConsole.terminal.write("
        "'\\x1b[2J\\x1b[Hx86_64 PREEMPT_DYNAMIC\\r\\nx86 64 PREEMPT DYNAMIC\\r\\n', done))"
    )
    rows = page.locator("#lc-serial-terminal .xterm-rows > div")
    expect(rows.nth(0)).to_have_text(re.compile(r"^x86_64\sPREEMPT_DYNAMIC\s*$"))  # both drawn before the shots
    expect(rows.nth(1)).to_have_text(re.compile(r"^x86\s64\sPREEMPT\sDYNAMIC\s*$"))
    hidden = []
    for offset in (0, 0.25, 0.5, 0.75):  # where the rows fall between device pixels changed what was clipped
        page.evaluate(
            "(offset) => new Promise((done) => {"
            " document.getElementById('lc-serial-terminal').style.marginTop = offset + 'px';"
            " requestAnimationFrame(() => requestAnimationFrame(done)); })",
            offset,
        )
        shots = [base64.b64encode(page.screenshot(clip=pixel_box(rows.nth(n)))).decode() for n in (0, 1)]
        if page.evaluate(PIXELS_APART, shots) < 10:  # two underscores: a line of pixels about a cell wide each
            hidden.append(offset)
    assert not hidden, f"the underscores are not drawn with the rows {hidden} px lower"


def test_the_serial_console_goes_full_screen_and_to_a_window_of_its_own(daphne, lab, browser_page):
    """Full screen gives the serial pane the whole screen and the terminal the room below its toolbar; "Open in
    a separate window" opens the console page on its serial tab, connecting the serial console, not the screen."""
    page, _errors = browser_page  # no guest here: the sockets' failures are not this test's subject
    from playwright.sync_api import expect

    _alice, _physics, (web, _db) = lab
    sign_in(page, daphne, "alice", PASSWORD)
    page.goto(f"{daphne}{reverse('instance_detail', args=[web.pk])}")
    page.click("#lc-console-tab-serial")
    terminal = page.locator("#lc-serial-terminal")
    expect(terminal.locator(".xterm-rows")).to_be_attached()
    small = terminal.bounding_box()["height"]
    page.click("#lc-serial-fullscreen")
    page.wait_for_function("document.fullscreenElement && document.fullscreenElement.id === 'lc-console-serial-pane'")
    page.wait_for_function(f"document.getElementById('lc-serial-terminal').getBoundingClientRect().height > {small}")
    page.evaluate("() => document.exitFullscreen()")
    page.wait_for_function("document.fullscreenElement === null")

    link = page.locator("#lc-serial-window")
    assert link.get_attribute("href") == reverse("instance_console", args=[web.pk]) + "?tab=serial"
    with page.context.expect_page() as opened:
        link.click()
    window = opened.value
    window.wait_for_load_state()
    expect(window.locator("#lc-console-tab-serial")).to_have_attribute("aria-selected", "true")
    expect(window.locator("#lc-serial-status")).not_to_have_attribute("data-state", "idle")  # it connects
    expect(window.locator("#lc-vnc-status")).to_have_attribute("data-state", "idle")  # the screen does not


@pytest.mark.parametrize("reader", ["alice", "root"])
def test_the_instance_table_at_phone_width(daphne, lab, browser_page, make_user, reader):
    """At 390 px the instance table shows what a member acts on (select, name with its size, state with its
    task, addresses) without scrolling sideways; the flavor (its size is under the name), the image, the creation
    date and, for cloud admins, the tenant and the host wait for a wider screen, where every column shows."""
    page, errors = browser_page
    from playwright.sync_api import expect

    make_user("root", staff=True, password=PASSWORD)
    _alice, _physics, (web, db) = lab
    Instance.objects.filter(pk=web.pk).update(addresses=["192.168.150.11", "fd00:150::11"])
    # A long name without a break, and a task in progress: neither may push the table wider.
    Instance.objects.filter(pk=db.pk).update(name="postgresql-primary-replica-01", task="reboot")
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, daphne, reader, PASSWORD)
    page.goto(f"{daphne}{reverse('instances')}")
    headers = page.locator("#lc-instances thead th")
    expect(headers.first).to_be_visible()

    def shown() -> list[str]:
        return [
            text.strip()
            for text in page.locator("#lc-instances thead th").evaluate_all(
                "cells => cells.filter(c => c.offsetParent !== null).map(c => c.innerText)"
            )
        ]

    always = ["", "Name", "State", "Addresses"]
    assert shown() == always
    scroller = page.locator("#lc-instances").locator("xpath=..")
    assert scroller.evaluate("el => el.scrollWidth <= el.clientWidth"), "the table scrolls sideways at 390 px"
    row = page.locator(f'tr[data-instance="{web.pk}"]')
    expect(row.locator(".lc-instance-name a")).to_be_in_viewport()
    expect(row.locator(".lc-vm-state")).to_be_in_viewport()
    expect(row.locator('[data-lc-field="addresses"]')).to_contain_text("192.168.150.11")
    expect(row.locator('[data-lc-field="addresses"]')).to_be_in_viewport()
    assert "1 vCPU" in row.locator(".lc-instance-name").inner_text()  # the size, with the flavor hidden
    expect(page.locator(f'tr[data-instance="{db.pk}"] [data-lc-field="task"]')).to_be_in_viewport()
    page.screenshot(path=str(SHOTS / f"labcloud-instances-phone-{reader}.png"), full_page=True)

    page.set_viewport_size({"width": 1280, "height": 900})
    wide = ["", "Name"] + (["Tenant"] if reader == "root" else []) + ["State", "Flavor", "Image", "Addresses"]
    wide += (["Host"] if reader == "root" else []) + ["Created"]
    expect(headers.filter(has_text="Created")).to_be_visible()
    assert shown() == wide
    assert not errors, errors
