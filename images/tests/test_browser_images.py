"""The image pages in a real browser: Playwright driving Debian's Chromium against the live server.

A real qcow2 goes through static/images/upload.js: created through the REST API, sent in several
chunks with Content-Range (one of them dropped once and retried), processed by the Celery task
(eager: live_server's transactional database runs the on-commit hooks for real), and the browser
lands on the detail page of the active image. Screenshots go next to portal/tests/test_browser.py's.
"""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.urls import reverse

from images.models import Image
from portal.models import Membership
from portal.testing import sign_in, without_live_socket_errors
from portal.tests.test_browser import PASSWORD, SCREENSHOT
from portal.tests.test_i18n import ensure_compiled_messages
from vms.models import Operation

pytestmark = pytest.mark.browser

CHUNK = 128 * 1024  # the 512 KiB test qcow2 in four chunks
SHOTS = SCREENSHOT.parent


@pytest.fixture
def lab(make_user, make_tenant):
    ensure_compiled_messages()
    alice = make_user("alice", password=PASSWORD)
    physics = make_tenant("Physics Lab")
    Membership.objects.create(user=alice, tenant=physics, role=Membership.Role.ADMIN)
    Image.objects.create(
        name="Debian 13 (cloud)",
        tenant=None,
        visibility=Image.Visibility.PUBLIC,
        disk_format="qcow2",
        stored_format="qcow2",
        status=Image.Status.ACTIVE,
        size=345 * 1024 * 1024,
        cloud_init=True,
        description="Generic cloud image of the Debian project",
    )
    Image.objects.create(
        name="Windows Server 2025 installer",
        tenant=physics,
        kind=Image.Kind.ISO,
        disk_format="iso",
        status=Image.Status.FAILED,
        os_type="windows",
        failure_reason="The image format could not be determined safely.",
    )
    return alice, physics


def test_upload_a_real_qcow2_in_chunks(live_server, lab, media, eager_tasks, browser_page):
    page, errors = browser_page
    from playwright.sync_api import expect

    _alice, physics = lab
    base = live_server.url
    sign_in(page, base, "alice", PASSWORD)

    # The sidebar leads to the list: the public cloud image and the tenant's failed ISO.
    page.locator(".lc-sidebar").get_by_role("link", name="Images").click()
    expect(page).to_have_url(re.compile(r"/images/$"))
    expect(page.locator(".lc-sidebar .nav-link.active")).to_have_text("Images")
    expect(page.locator("#lc-images tbody tr")).to_have_count(2)
    page.screenshot(path=str(SHOTS / "labcloud-images-list.png"), full_page=True)

    page.click("#lc-image-upload")
    expect(page).to_have_url(re.compile(r"/images/upload/$"))

    # Record what the browser sends, drop the second chunk once (the uploader retries it), and slow
    # the uploads down so the progress bar is seen moving within chunks.
    puts: list[str] = []
    dropped: list[str] = []

    def on_upload(route, request):
        if request.method == "PUT":
            content_range = request.headers.get("content-range", "")
            puts.append(content_range)
            if content_range.startswith(f"bytes {CHUNK}-") and not dropped:
                dropped.append(content_range)
                route.abort("connectionreset")
                return
        route.continue_()

    page.route(re.compile(r"/api/v1/images/\d+/file/$"), on_upload)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 20, "downloadThroughput": -1, "uploadThroughput": 256 * 1024},
    )

    page.evaluate(f"document.getElementById('lc-upload-form').setAttribute('data-chunk-size', '{CHUNK}')")
    page.set_input_files("#id_file", str(media["qcow2"]))
    expect(page.locator("#id_name")).to_have_value("disk")  # prefilled from the file name
    expect(page.locator("#id_disk_format")).to_have_value("qcow2")  # guessed from the extension
    page.fill("#id_name", "Physics workstation")
    page.select_option("#id_os_type", "linux")
    page.check("#id_cloud_init")
    page.fill("#id_description", "Uploaded by the browser test")
    seen: list[float] = []  # the bar's width in percent, each time it changes
    page.expose_function("lcRecordProgress", lambda value: seen.append(value))
    page.evaluate(
        """() => {
            const fill = document.querySelector('#lc-upload-bar .progress-bar');
            new MutationObserver(() => window.lcRecordProgress(parseFloat(fill.style.width)))
                .observe(fill, {attributes: true, attributeFilter: ['style']});
        }"""
    )
    page.click("#lc-upload-submit")

    expect(page.locator("#lc-upload-progress")).to_be_visible()
    page.wait_for_function("Number(document.getElementById('lc-upload-bar').getAttribute('aria-valuenow')) >= 40")
    expect(page.locator("#lc-upload-bytes")).to_contain_text("of 512.0")
    page.screenshot(path=str(SHOTS / "labcloud-image-upload.png"), full_page=True)

    # Done: the detail page of the processed image.
    page.wait_for_url(re.compile(r"/images/\d+/$"), timeout=30_000)
    image = Image.objects.get(name="Physics workstation")
    assert page.url == base + reverse("image_detail", args=[image.pk])
    expect(page.locator("#lc-image-badges .lc-status")).to_have_text("Active")
    expect(page.locator("#lc-image-facts")).to_contain_text(image.sha256)
    expect(page.locator("#lc-image-facts")).to_contain_text("Uploaded by the browser test")
    expect(page.locator("#lc-image-operations")).to_contain_text("Check and convert")
    expect(page.locator("#lc-image-operations")).to_contain_text("Succeeded")
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOTS / "labcloud-image-detail.png"), full_page=True)

    # What happened on the wire and in the database.
    size = media["qcow2"].stat().st_size
    assert size == 4 * CHUNK
    assert dropped == [f"bytes {CHUNK}-{2 * CHUNK - 1}/{size}"]
    assert puts == [
        f"bytes 0-{CHUNK - 1}/{size}",
        f"bytes {CHUNK}-{2 * CHUNK - 1}/{size}",  # dropped
        f"bytes {CHUNK}-{2 * CHUNK - 1}/{size}",  # retried
        f"bytes {2 * CHUNK}-{3 * CHUNK - 1}/{size}",
        f"bytes {3 * CHUNK}-{size - 1}/{size}",
    ]
    # The bar moved smoothly: many distinct values, also inside chunks (not only at their 25 % boundaries).
    moving = sorted({round(value, 1) for value in seen if 0 < value < 100})
    assert len(moving) >= 6, seen
    assert any(value % 25 for value in moving), seen
    assert seen[-1] == 100
    assert image.status == Image.Status.ACTIVE and image.tenant == physics and image.cloud_init
    assert image.path.read_bytes() == media["qcow2"].read_bytes()
    assert Operation.objects.get(kind="image.process").state == Operation.State.SUCCEEDED
    errors = without_live_socket_errors(errors)
    assert not errors or all("net::ERR_CONNECTION_RESET" in e or "Failed to load resource" in e for e in errors), errors


def test_status_and_progress_update_without_reload(live_server, lab, browser_page):
    page, errors = browser_page
    from playwright.sync_api import expect

    _alice, physics = lab
    base = live_server.url
    image = Image.objects.create(
        name="Rocky 10", tenant=physics, disk_format="vmdk", status=Image.Status.CONVERTING, size=900 * 1024 * 1024
    )
    operation = Operation.objects.create(
        kind="image.process",
        tenant=physics,
        target_type="images.image",
        target_id=str(image.pk),
        target_repr=image.name,
        state=Operation.State.RUNNING,
        progress=30,
        message="Converting to qcow2",
    )
    sign_in(page, base, "alice", PASSWORD)

    # The list polls while an image is in progress; the row changes in place (no reload: the marker stays).
    page.goto(base + reverse("images"))
    row = page.locator(f'#lc-images tr[data-image="{image.pk}"]')
    expect(row.locator(".lc-status")).to_have_text("Converting")
    page.evaluate("window.lcMarker = 'still here'")
    Image.objects.filter(pk=image.pk).update(status=Image.Status.INSPECTING)
    expect(row.locator(".lc-status")).to_have_text("Inspecting", timeout=6_000)
    assert page.evaluate("window.lcMarker") == "still here"

    # The detail page shows the operation's progress and follows it.
    page.goto(base + reverse("image_detail", args=[image.pk]))
    bar = page.locator(f"#lc-op-{operation.pk}-bar")
    expect(bar).to_have_attribute("style", "width: 30%")
    expect(page.locator("#lc-image-operations")).to_contain_text("30% · Converting to qcow2")
    Operation.objects.filter(pk=operation.pk).update(progress=70)
    expect(bar).to_have_attribute("style", "width: 70%", timeout=6_000)
    expect(page.locator("#lc-image-operations")).to_contain_text("70% · Converting to qcow2")
    page.wait_for_timeout(700)  # the bar's CSS transition
    page.screenshot(path=str(SHOTS / "labcloud-image-progress.png"), full_page=True)

    # Finished: the page reloads itself once and stops polling.
    Operation.objects.filter(pk=operation.pk).update(state=Operation.State.SUCCEEDED, progress=100)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.ACTIVE, stored_format="qcow2", sha256="c" * 64)
    expect(page.locator("#lc-image-badges .lc-status")).to_have_text("Active", timeout=6_000)
    expect(page.locator("#lc-image-facts")).to_contain_text("c" * 64)
    expect(page.locator("[data-lc-live]")).to_have_count(0)

    # A failed image explains why.
    failed = Image.objects.get(name="Windows Server 2025 installer")
    page.goto(base + reverse("image_detail", args=[failed.pk]))
    expect(page.locator("#lc-image-failure")).to_contain_text("The image format could not be determined safely.")
    page.screenshot(path=str(SHOTS / "labcloud-image-failed.png"), full_page=True)

    # Deleting a protected image: the refusal is shown and the image stays.
    Image.objects.filter(pk=failed.pk).update(protected=True)
    page.reload()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#lc-image-delete button").click()
    expect(page.locator(".lc-messages .alert-danger")).to_contain_text("is protected; unprotect it first.")
    assert Image.objects.filter(pk=failed.pk).exists()

    # In Simplified Chinese.
    page.context.add_cookies([{"name": settings.LANGUAGE_COOKIE_NAME, "value": "zh-hans", "url": base}])
    page.goto(base + reverse("images"))
    expect(page.locator(".lc-sidebar .nav-link.active")).to_have_text("镜像")
    expect(page.locator("#lc-image-upload")).to_have_text("上传镜像")
    expect(page.locator(f'#lc-images tr[data-image="{failed.pk}"] .lc-status')).to_have_text("失败")
    page.screenshot(path=str(SHOTS / "labcloud-images-zh.png"), full_page=True)
    page.goto(base + reverse("image_upload"))
    page.screenshot(path=str(SHOTS / "labcloud-image-upload-zh.png"), full_page=True)
    errors = without_live_socket_errors(errors)
    assert not errors, errors


def test_cancel_deletes_the_half_uploaded_image(live_server, lab, media, image_store, browser_page):
    page, errors = browser_page
    from playwright.sync_api import expect

    base = live_server.url
    sign_in(page, base, "alice", PASSWORD)
    page.goto(base + reverse("image_upload"))
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 20, "downloadThroughput": -1, "uploadThroughput": 32 * 1024},
    )
    page.evaluate(f"document.getElementById('lc-upload-form').setAttribute('data-chunk-size', '{CHUNK}')")
    page.set_input_files("#id_file", str(media["qcow2"]))
    page.click("#lc-upload-submit")
    page.wait_for_function("Number(document.getElementById('lc-upload-bar').getAttribute('aria-valuenow')) >= 30")
    assert Image.objects.filter(name="disk", status=Image.Status.UPLOADING).exists()

    page.click("#lc-upload-cancel")
    expect(page.locator("#lc-upload-notice")).to_have_text("The upload was cancelled and the image deleted.")
    expect(page.locator("#lc-upload-progress")).to_be_hidden()
    expect(page.locator("#lc-upload-submit")).to_be_enabled()
    assert not Image.objects.filter(name="disk").exists()
    assert not list(image_store.glob("incoming/*.part"))
    errors = without_live_socket_errors(errors)
    assert all("ERR_" in e or "Failed to load resource" in e for e in errors), errors


def test_a_tenant_admin_accepts_a_shared_image_in_the_dashboard(live_server, lab, make_user, make_tenant, browser_page):
    """Chemistry offers an image to Physics: pending, it is not in Physics' catalogue; alice (Physics' admin)
    accepts it on the images page and can use it from then on."""
    page, errors = browser_page
    from playwright.sync_api import expect

    from images.models import ImageShare
    from images.sharing import share_image

    _alice, physics = lab
    chemistry = make_tenant("Chemistry Lab")
    bob = make_user("bob", password=PASSWORD)
    Membership.objects.create(user=bob, tenant=chemistry, role=Membership.Role.MEMBER)
    image = Image.objects.create(
        name="Chemistry workstation",
        tenant=chemistry,
        disk_format="qcow2",
        stored_format="qcow2",
        status=Image.Status.ACTIVE,
        size=64 * 1024 * 1024,
    )
    share = share_image(actor=bob, image=image, reference=physics.slug)
    base = live_server.url
    sign_in(page, base, "alice", PASSWORD)

    page.goto(base + reverse("images"))
    offer = page.locator(f'#lc-incoming-shares [data-share="{share.pk}"]')
    expect(offer).to_contain_text("Chemistry workstation")
    expect(offer).to_contain_text("from Chemistry Lab")
    expect(page.locator(f'#lc-images tr[data-image="{image.pk}"]')).to_have_count(0)
    page.screenshot(path=str(SHOTS / "labcloud-image-share-pending.png"), full_page=True)

    offer.get_by_role("button", name="Accept").click()
    page.wait_for_url(base + reverse("image_detail", args=[image.pk]))
    expect(page.locator(".lc-messages")).to_contain_text("is now in the catalogue of Physics Lab")
    expect(page.locator("#lc-share-remove")).to_be_visible()
    assert ImageShare.objects.get(pk=share.pk).status == ImageShare.Status.ACCEPTED

    page.goto(base + reverse("images"))
    expect(page.locator(f'#lc-images tr[data-image="{image.pk}"]')).to_have_count(1)
    expect(page.locator("#lc-incoming-shares")).to_have_count(0)
    errors = without_live_socket_errors(errors)
    assert not errors, errors
