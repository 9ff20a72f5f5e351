"""`manage.py consoleproxy` for real: a child process on 127.0.0.1 with this test's database, a real
domain's VNC server on qemu:///system, and a minimal WebSocket client (RFC 6455, raw socket).
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from portal.factories import make_instance
from portal.models import AuditEvent, Membership
from portal.testing import child_process, database_url_of_this_test, free_port
from vms.consoles import tokens
from vms.models import ConsoleSession
from vms.tests.consoles.test_tokens import ORIGIN, start_console_domain

pytestmark = [pytest.mark.libvirt_guests, pytest.mark.django_db(transaction=True)]


class WsConnection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the server (unmasked)."""
        b1, b2 = self._read(2)
        length = b2 & 0x7F
        if length == 126:
            length = int.from_bytes(self._read(2), "big")
        elif length == 127:
            length = int.from_bytes(self._read(8), "big")
        return b1 & 0x0F, self._read(length)

    def close(self) -> None:
        self.sock.close()


def ws_connect(port: int, token: str | None, *, origin: str | None = ORIGIN) -> tuple[int, WsConnection]:
    """HTTP status of the upgrade and the connection (usable when the status is 101)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    path = "/websockify" + (f"?token={token}" if token is not None else "")
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: binary",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    conn = WsConnection(sock)
    head = b""
    try:
        while b"\r\n\r\n" not in conn.buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            conn.buf += chunk
    except OSError:
        pass
    head, _, conn.buf = conn.buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, conn


def read_banner(conn: WsConnection) -> bytes:
    opcode, payload = conn.frame()
    assert opcode == 2, (opcode, payload)
    return payload


@pytest.fixture
def proxy(portal_host, tmp_path):
    port = free_port()
    log = tmp_path / "consoleproxy.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_this_test(),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "CONSOLE_ALLOWED_ORIGINS": ORIGIN,
        "CONSOLE_RECHECK_SECONDS": "0.5",
        "LABCLOUD_DOMAIN_PREFIX": settings.LABCLOUD_DOMAIN_PREFIX,
    }
    args = [sys.executable, "manage.py", "consoleproxy", "--host", "127.0.0.1", "--port", str(port)]
    with child_process(args, env=env, log=log, port=port) as proc:
        proc.log = log
        proc.port = port
        yield proc


@pytest.fixture
def console_instance(actors, portal_host, guest_media):
    instance = make_instance(actors.tenant, host=portal_host)
    start_console_domain(portal_host, guest_media, instance)
    return instance


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_token_opens_one_vnc_connection_and_refusals(actors, console_instance, proxy):
    ticket = tokens.open_console(user=actors.member, instance=console_instance)
    status, conn = ws_connect(proxy.port, ticket.token)
    assert status == 101
    assert read_banner(conn).startswith(b"RFB 003.008")
    conn.close()
    wait_for(lambda: ConsoleSession.objects.filter(pk=ticket.session_id, ended_at__isnull=False).exists())

    assert ws_connect(proxy.port, ticket.token)[0] == 403  # reused

    expired = tokens.open_console(user=actors.member, instance=console_instance)
    ConsoleSession.objects.filter(pk=expired.session_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ws_connect(proxy.port, expired.token)[0] == 403

    wrong_origin = tokens.open_console(user=actors.member, instance=console_instance)
    assert ws_connect(proxy.port, wrong_origin.token, origin="http://evil.test")[0] == 403
    no_origin = tokens.open_console(user=actors.member, instance=console_instance)
    assert ws_connect(proxy.port, no_origin.token, origin=None)[0] == 403

    assert ws_connect(proxy.port, "unknown" * 7)[0] == 403
    assert ws_connect(proxy.port, "")[0] == 403
    assert ws_connect(proxy.port, None)[0] == 403

    log = proxy.log.read_text()
    for token in (ticket.token, expired.token, wrong_origin.token, no_origin.token):
        assert token not in log
    actions = list(AuditEvent.objects.filter(action__startswith="console.").values_list("action", flat=True))
    assert actions.count("console.start") == 1 and actions.count("console.end") == 1
    assert actions.count("console.refused") == 7


def test_live_session_closed_when_membership_removed(actors, console_instance, proxy):
    ticket = tokens.open_console(user=actors.member, instance=console_instance)
    status, conn = ws_connect(proxy.port, ticket.token)
    assert status == 101
    assert read_banner(conn).startswith(b"RFB 003.008")
    time.sleep(1.5)  # still allowed: the connection stays up
    assert ConsoleSession.objects.get(pk=ticket.session_id).ended_at is None

    Membership.objects.filter(user=actors.member, tenant=actors.tenant).delete()
    started = time.monotonic()
    conn.sock.settimeout(10)
    with pytest.raises((ConnectionError, OSError)):
        while True:
            opcode, _ = conn.frame()
            if opcode == 8:  # close frame
                raise ConnectionError("closed by the proxy")
    assert time.monotonic() - started < 5
    conn.close()
    wait_for(lambda: ConsoleSession.objects.filter(pk=ticket.session_id, ended_at__isnull=False).exists())
    session = ConsoleSession.objects.get(pk=ticket.session_id)
    assert session.end_reason == "access ended"
    assert AuditEvent.objects.filter(action="console.end", detail__reason="access ended").exists()


def test_a_token_for_another_vnc_port_is_refused(actors, portal_host, console_instance, proxy):
    """Issue #17 (7f): a token issued, then the instance restarted with another VNC port (its old port now
    someone else's: here a listening socket standing in for another guest's VNC server). The proxy must
    refuse the token instead of connecting to whatever listens at the old address now."""
    driver, uuid = portal_host.lctest.driver, str(console_instance.uuid)
    ticket = tokens.open_console(user=actors.member, instance=console_instance)
    session = ConsoleSession.objects.get(pk=ticket.session_id)
    old_port = session.target_port
    driver.power_off(uuid)
    squatter = socket.socket()
    # Free now (the instance's QEMU is gone), though connections to it may linger in TIME_WAIT.
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", old_port))
    squatter.listen(1)
    squatter.settimeout(0.5)
    try:
        driver.start(uuid)
        assert driver.console_target(uuid).port != old_port  # restarted elsewhere

        status, conn = ws_connect(proxy.port, ticket.token)
        conn.close()
        with pytest.raises(TimeoutError):
            squatter.accept()  # the proxy never connected to the old address
        assert status == 403
    finally:
        squatter.close()
    session.refresh_from_db()
    assert session.end_reason == "refused: target"
    refused = AuditEvent.objects.get(action="console.refused")
    assert refused.detail["reason"] == "the instance's console is no longer where the token was issued for"
    assert ticket.token not in proxy.log.read_text()

    # A token issued now, for the new port, works.
    fresh = tokens.open_console(user=actors.member, instance=console_instance)
    status, conn = ws_connect(proxy.port, fresh.token)
    assert status == 101 and read_banner(conn).startswith(b"RFB 003.008")
    conn.close()
