"""Console tokens (vms.consoles): issue, claim once within the TTL, re-check access; the API action.

Tests that need a real VNC server define and start a tiny domain (GRUB rescue ISO as CD-ROM, 128 MiB,
TCG) on ``qemu:///system`` and are marked ``libvirt_guests``; the rest work on rows only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import timedelta

import libvirt
import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from portal.backends.base import DiskSpec, InstanceSpec
from portal.backends.libvirt.connection import connect
from portal.factories import make_instance
from portal.models import AuditEvent, Membership
from portal.services import ConflictError
from portal.testing import assert_access_matrix, assert_problem
from vms.consoles import tokens
from vms.models import ConsoleSession, Host, Instance

ORIGIN = "http://portal.test"
CREATED = {"anonymous": 401, "outsider": 404, "member": 201, "tenant_admin": 201, "cloud_admin": 201}


@pytest.fixture(autouse=True)
def _console_settings(settings):
    settings.CONSOLE_ALLOWED_ORIGINS = [ORIGIN]
    settings.CONSOLE_PUBLIC_URL = "wss://portal.test/websockify"


def start_console_domain(portal_host, guest_media, instance: Instance, *, serial_log: str | None = None) -> None:
    """Define and start a real domain for ``instance`` (VNC on 127.0.0.1 right after start, no boot needed)."""
    lctest = portal_host.lctest
    uuid = lctest.track(str(instance.uuid))
    iso = DiskSpec(device="cdrom", path=str(guest_media["grub-rescue-cdrom.iso"]), readonly=True, boot_order=1)
    spec = InstanceSpec(
        uuid=uuid,
        name=lctest.name(f"console-{instance.pk}"),
        virt_type="qemu",
        memory_mib=128,
        disks=(iso,),
        vnc_listen="127.0.0.1",
        serial_log=serial_log,
    )
    lctest.driver.define(spec)
    lctest.driver.start(uuid)


@pytest.fixture
def console_instance(actors, portal_host, guest_media):
    instance = make_instance(actors.tenant, host=portal_host, name="vm1")
    start_console_domain(portal_host, guest_media, instance)
    return instance


def vnc_domain_on_test_driver(instance: Instance, *, port: int = 5900) -> None:
    """A running domain of ``instance`` on libvirt's ``test:///default`` whose VNC server is at 127.0.0.1:``port``
    (the proxy asks the host where the console listens before it connects); replaced when it exists."""
    conn = connect("test:///default")
    with contextlib.suppress(libvirt.libvirtError):
        old = conn.lookupByUUIDString(str(instance.uuid))
        if old.isActive():
            old.destroy()
        old.undefine()
    xml = (
        f"<domain type='test'><name>lctest-console-{instance.pk}-{str(instance.uuid)[:8]}</name>"
        f"<uuid>{instance.uuid}</uuid><memory unit='MiB'>64</memory><os><type>hvm</type></os>"
        f"<devices><graphics type='vnc' port='{port}' autoport='no' listen='127.0.0.1'/></devices></domain>"
    )
    conn.defineXML(xml).create()


def issued(instance: Instance, user, *, expires_in: int = 60, **fields) -> tuple[str, ConsoleSession]:
    """A console session row with a known token, for a domain on ``test:///default`` listening at its target."""
    if instance.host is not None and instance.host.uri == "test:///default":
        vnc_domain_on_test_driver(instance)
    token = f"tok-{instance.pk}-{ConsoleSession.objects.count()}-{'x' * 30}"
    session = ConsoleSession.objects.create(
        tenant=instance.tenant,
        instance=instance,
        user=user,
        token_hash=tokens.hash_token(token),
        target_host="127.0.0.1",
        target_port=5900,
        expires_at=timezone.now() + timedelta(seconds=expires_in),
        **fields,
    )
    return token, session


@pytest.fixture
def fake_host(db, test_driver):
    """A host on libvirt's ``test:///default`` (``test_driver`` removes the ``lctest-`` domains made there)."""
    return Host.objects.create(name="node1", uri="test:///default", state=Host.State.UP)


# ------------------------------------------------------------------ claim (rows only)


def test_claim_once_within_ttl_then_refused(actors, fake_host, caplog):
    instance = make_instance(actors.tenant, host=fake_host, name="vm1")
    token, session = issued(instance, actors.member)
    claimed = tokens.claim_token(token=token, origin=ORIGIN, ip="10.0.0.9")
    assert claimed == tokens.ClaimedConsole(session_id=session.pk, host="127.0.0.1", port=5900)
    session.refresh_from_db()
    assert session.used_at is not None and session.client_ip == "10.0.0.9"
    assert AuditEvent.objects.filter(action="console.start", user=actors.member).count() == 1

    with caplog.at_level(logging.WARNING, logger="vms.consoles"):
        assert tokens.claim_token(token=token, origin=ORIGIN) is None
    assert "already used" in caplog.text and token not in caplog.text

    tokens.end_session(session=session.pk, reason="closed")
    tokens.end_session(session=session.pk, reason="again")  # once only
    session.refresh_from_db()
    assert session.ended_at is not None and session.end_reason == "closed"
    assert AuditEvent.objects.filter(action="console.end").count() == 1


def test_expired_unknown_malformed_and_wrong_origin_refused(actors, fake_host, caplog):
    instance = make_instance(actors.tenant, host=fake_host, name="vm1")
    expired, _ = issued(instance, actors.member, expires_in=-1)
    fresh, fresh_session = issued(instance, actors.member)
    with caplog.at_level(logging.WARNING, logger="vms.consoles"):
        assert tokens.claim_token(token=expired, origin=ORIGIN) is None
        assert tokens.claim_token(token="nope" * 10, origin=ORIGIN) is None
        assert tokens.claim_token(token="", origin=ORIGIN) is None
        assert tokens.claim_token(token="x" * 500, origin=ORIGIN) is None
        assert tokens.claim_token(token=fresh, origin="http://evil.test") is None
    assert "token expired" in caplog.text and "unknown token" in caplog.text and "origin not allowed" in caplog.text
    assert expired not in caplog.text and fresh not in caplog.text
    # a wrong origin uses the token up: it cannot be retried from the right origin
    assert tokens.claim_token(token=fresh, origin=ORIGIN) is None
    fresh_session.refresh_from_db()
    assert fresh_session.ended_at is not None
    assert AuditEvent.objects.filter(action="console.refused", outcome="denied").count() == 6


def test_token_of_another_signed_in_user_is_refused(actors, fake_host):
    """A browser sends its portal session cookie to the proxy: a token issued to someone else is refused."""
    from django.test import Client

    from vms.consoles.proxy import session_cookie

    instance = make_instance(actors.tenant, host=fake_host, name="vm1")
    other = Client()
    other.force_login(actors.tenant_admin)  # same tenant, but not the user the token was issued to
    other_key = other.cookies[settings.SESSION_COOKIE_NAME].value
    header = f"csrftoken=abc; {settings.SESSION_COOKIE_NAME}={other_key}"
    assert session_cookie(header) == other_key
    # another app's cookies on the same host, malformed for Python's SimpleCookie, hide nothing
    for before in ('prefs={"a":1}', "a=b c", 'x="unterminated'):
        assert session_cookie(f"{before}; {settings.SESSION_COOKIE_NAME}={other_key}") == other_key
    assert tokens.user_of_session_cookie(other_key) == actors.tenant_admin.pk
    assert tokens.user_of_session_cookie("no-such-session") is None

    stolen, stolen_session = issued(instance, actors.member)
    assert tokens.claim_token(token=stolen, origin=ORIGIN, browser_user_id=actors.tenant_admin.pk) is None
    stolen_session.refresh_from_db()
    assert stolen_session.end_reason == "refused: user"
    assert AuditEvent.objects.get(action="console.refused").detail["reason"] == "token of another user"
    # the owner's own browser, and an API client without a cookie, are fine
    mine, _ = issued(instance, actors.member)
    assert tokens.claim_token(token=mine, origin=ORIGIN, browser_user_id=actors.member.pk) is not None
    bearer, _ = issued(instance, actors.member)
    assert tokens.claim_token(token=bearer, origin=ORIGIN) is not None


def test_dashboard_console_needs_a_running_instance_of_ones_own(actors, fake_host):
    from vms.tests.views.test_instances import login

    stopped = make_instance(actors.tenant, host=fake_host, name="vm1", state=Instance.State.SHUTOFF)
    ticket_url = reverse("instance_console_ticket", args=[stopped.pk])
    page_url = reverse("instance_console", args=[stopped.pk])
    anonymous = Client()
    signed_out = anonymous.post(ticket_url)  # JSON for the page's script, not the sign-in page
    assert signed_out.status_code == 401 and "Sign in again" in signed_out.json()["error"]
    assert anonymous.get(page_url).status_code == 302
    assert login(actors.outsider).post(ticket_url).status_code == 404
    assert login(actors.outsider).get(page_url).status_code == 404
    member = login(actors.member)
    assert member.get(ticket_url).status_code == 405
    response = member.post(ticket_url)
    assert response.status_code == 409
    assert "only available while the instance is running" in response.json()["error"]
    page = member.get(page_url)
    assert page.status_code == 200
    assert b'id="lc-console-config"' in page.content and b"vms/console.js" in page.content
    detail = member.get(reverse("instance_detail", args=[stopped.pk]))
    assert b'id="lc-console"' in detail.content
    assert not ConsoleSession.objects.exists()


def test_claim_refuses_a_token_whose_console_moved(actors, fake_host):
    """Issue #17 (7f): the token names the VNC address and port the instance had when it was issued; the
    instance restarted on another port (or moved to another host) since: refused, not connected."""
    instance = make_instance(actors.tenant, host=fake_host, name="vm1")
    token, session = issued(instance, actors.member)
    vnc_domain_on_test_driver(instance, port=5901)  # restarted: another port
    assert tokens.claim_token(token=token, origin=ORIGIN) is None
    session.refresh_from_db()
    assert session.end_reason == "refused: target"
    event = AuditEvent.objects.get(action="console.refused")
    assert event.detail["reason"] == "the instance's console is no longer where the token was issued for"

    token, session = issued(instance, actors.member)
    elsewhere = Host.objects.create(name="node2", uri="qemu+tcp://127.0.0.1:1/system", state=Host.State.UP)
    Instance.objects.filter(pk=instance.pk).update(host=elsewhere)  # moved to a host that does not answer
    assert tokens.claim_token(token=token, origin=ORIGIN) is None
    session.refresh_from_db()
    assert session.end_reason == "refused: target"


def test_claim_rechecks_access_and_state(actors, fake_host):
    instance = make_instance(actors.tenant, host=fake_host, name="vm1")
    token, _ = issued(instance, actors.member)
    Membership.objects.filter(user=actors.member, tenant=actors.tenant).delete()
    assert tokens.claim_token(token=token, origin=ORIGIN) is None  # bound to the issuing user, who left

    token, _ = issued(instance, actors.tenant_admin)
    Instance.objects.filter(pk=instance.pk).update(state=Instance.State.SHUTOFF)
    assert tokens.claim_token(token=token, origin=ORIGIN) is None


def test_session_still_allowed(actors, fake_host, settings):
    instance = make_instance(actors.tenant, host=fake_host, name="vm1")
    token, session = issued(instance, actors.member)
    assert not tokens.session_still_allowed(session_id=session.pk)  # not claimed yet
    tokens.claim_token(token=token, origin=ORIGIN)
    assert tokens.session_still_allowed(session_id=session.pk)
    settings.CONSOLE_MAX_SESSION_SECONDS = 0
    assert not tokens.session_still_allowed(session_id=session.pk)
    settings.CONSOLE_MAX_SESSION_SECONDS = 3600
    Membership.objects.filter(user=actors.member, tenant=actors.tenant).delete()
    assert not tokens.session_still_allowed(session_id=session.pk)
    instance.delete()
    assert not tokens.session_still_allowed(session_id=session.pk)


def test_open_console_refuses_instances_not_running(actors, fake_host):
    stopped = make_instance(actors.tenant, host=fake_host, name="vm1", state=Instance.State.SHUTOFF)
    with pytest.raises(ConflictError):
        tokens.open_console(user=actors.member, instance=stopped)
    nowhere = make_instance(actors.tenant, name="vm2")
    with pytest.raises(ConflictError):
        tokens.open_console(user=actors.member, instance=nowhere)
    # running in the database, but no such domain on its host: a clean conflict, not a 500
    missing = make_instance(actors.tenant, host=fake_host, name="vm3")
    response = actors.client("member").post(f"/api/v1/instances/{missing.pk}/console/")
    assert_problem(response, 409, "conflict")
    assert not ConsoleSession.objects.exists()


def test_read_only_api_token_cannot_open_a_console(actors, fake_host):
    from portal.services import create_api_token

    instance = make_instance(actors.tenant, host=fake_host, name="vm1")
    _, raw = create_api_token(user=actors.member, name="ro")  # the default scope is read
    response = actors.client("anonymous").post(
        f"/api/v1/instances/{instance.pk}/console/", HTTP_AUTHORIZATION=f"Bearer {raw}"
    )
    assert response.status_code == 403


# ------------------------------------------------------------------ real VNC server


@pytest.mark.libvirt_guests
def test_open_console_stores_only_the_hash_and_sets_a_one_time_password(actors, console_instance):
    from vms.tests.compute.test_libvirt_guests import vnc_login

    ticket = tokens.open_console(user=actors.member, instance=console_instance, ip="10.0.0.1")
    assert len(ticket.token) >= 43  # 32 random bytes, URL-safe base64
    assert ticket.url == f"wss://portal.test/websockify?token={ticket.token}"
    session = ConsoleSession.objects.get()
    assert session.token_hash == hashlib.sha256(ticket.token.encode()).hexdigest()
    assert ticket.token not in str(list(ConsoleSession.objects.values()))
    assert session.target_host == "127.0.0.1" and session.target_port >= 5900
    assert session.user == actors.member and session.tenant == actors.tenant
    assert vnc_login(session.target_host, session.target_port, ticket.password)
    assert not vnc_login(session.target_host, session.target_port, "wrong123")
    event = AuditEvent.objects.get(action="console.issue")
    assert event.ip == "10.0.0.1" and ticket.token not in str(event.detail)


@pytest.mark.libvirt_guests
def test_console_api_access_matrix(actors, console_instance):
    url = f"/api/v1/instances/{console_instance.pk}/console/"
    assert_access_matrix(actors, method="post", url=url, expected=CREATED)
    response = actors.client("member").post(url)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"url", "token", "password", "expires_at"}
    assert body["url"].endswith(body["token"])


@pytest.mark.libvirt_guests
def test_dashboard_console_ticket_access_matrix(actors, console_instance):
    from vms.tests.views.test_instances import login

    url = reverse("instance_console_ticket", args=[console_instance.pk])
    assert Client().post(url).status_code == 401
    assert login(actors.outsider).post(url).status_code == 404
    for user in (actors.member, actors.tenant_admin, actors.cloud_admin):
        response = login(user).post(url)
        assert response.status_code == 201, user
        body = response.json()
        assert set(body) == {"protocol", "url", "password", "expires_at"}
        assert body["protocol"] == "vnc" and "token=" in body["url"] and len(body["password"]) == 8
    assert ConsoleSession.objects.filter(instance=console_instance).count() == 3
