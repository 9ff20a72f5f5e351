"""The web serial console: ``ws/instances/<pk>/serial/`` bridges a browser terminal (xterm.js) to the
instance's serial port (libvirt ``virDomainOpenConsole``, see ``portal.backends.libvirt.serial``).

Protocol: the server sends the guest's output as **binary** frames (raw bytes, as the guest wrote
them; xterm.js decodes UTF-8 itself). The browser sends keystrokes as text frames (UTF-8) or binary
frames; both go to the serial port unchanged. There is no other message: the serial port has no
size, so there is nothing to resize.

Access: signed in (else close 4401) and allowed to *change* the instance through the access gate
(``Instance.objects.restrict(user, CHANGE)``; someone else's instance looks exactly like a missing
one: close 4403). The instance must be running on a host (else 4409). Access is re-checked every
``recheck_seconds`` while the socket is open: a removed membership, a deactivated user, signing out
of the portal session the socket was opened with, or an instance that is no longer running closes
the session (4403 / 4401 / 4401 / 4409); so does CONSOLE_MAX_SESSION_SECONDS (4408).

Several viewers: **the newest session takes over.** libvirt allows one console stream per domain;
the console is opened with ``VIR_DOMAIN_CONSOLE_FORCE``, so a second browser (same or other user,
on any web process) gets the console and the first one is closed with 4410 ("taken over by another
session"); its page says so and offers to reconnect (which takes it back). This is simple, works
across several web processes without any shared state, and never mixes two people's typing.

Other close codes: 1000 the guest stopped (end of the console stream), 4502 the console could not
be opened or broke (host unreachable…).

Audit: ``console.serial.start`` (or the refusal, outcome ``denied``) and ``console.serial.end``
with user, tenant, instance, client IP and the reason the session ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from dataclasses import dataclass

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404

from portal.access import CHANGE
from portal.backends.base import BackendError
from portal.backends.libvirt import serial as backend
from portal.models import AuditEvent
from portal.services import record_audit
from vms.access import access_instance_by_id
from vms.actions import host_refusal
from vms.compute import Capability, compute_for, host_free, instance_capabilities
from vms.consoles.tokens import user_of_session_cookie
from vms.models import Host, Instance

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_RUNNING = 4409
CLOSE_MAX_LENGTH = 4408
CLOSE_TAKEN_OVER = 4410
CLOSE_UNSUPPORTED = 4406  # the instance's host has no serial console (an OpenStack cloud: Nova's console only)
CLOSE_FAILED = 4502
CLOSE_HOST_DOWN = 4503  # the instance's host is down (the watcher says so)

OUTPUT_QUEUE_CHUNKS = 64  # chunks of guest output waiting for the browser (each ≤ 64 KiB)
OUTPUT_BYTES_PER_SECOND = 1024 * 1024  # far above any terminal's needs; a flood is slowed down

END_CODES = {
    backend.STOPPED: CLOSE_NORMAL,
    backend.TAKEN_OVER: CLOSE_TAKEN_OVER,
    backend.FAILED: CLOSE_FAILED,
}


# ---------------------------------------------------------------- services (sync, ORM)


@dataclass(frozen=True)
class SerialTarget:
    instance_id: int
    host: Host
    uuid: str


def serial_access(user_id: int, instance_id: int, session_key: str | None = None) -> int | SerialTarget:
    """The console target of the instance for this user as the database says now, else a close code.

    With ``session_key`` (the browser's portal session), that session must still be signed in as
    this user: signing out in another tab ends the serial session too.
    """
    if session_key is not None and user_of_session_cookie(session_key) != user_id:
        return CLOSE_UNAUTHENTICATED
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not user.is_active:
        return CLOSE_UNAUTHENTICATED
    try:
        instance = access_instance_by_id(user=user, instance_id=instance_id, action=CHANGE)
    except (Http404, PermissionDenied):
        return CLOSE_FORBIDDEN
    if instance.state != Instance.State.RUNNING or instance.host is None:
        return CLOSE_NOT_RUNNING
    if Capability.SERIAL_CONSOLE not in instance_capabilities(instance):
        return CLOSE_UNSUPPORTED
    if host_refusal(instance) is not None:
        return CLOSE_HOST_DOWN
    return SerialTarget(instance_id=instance.pk, host=instance.host, uuid=str(instance.uuid))


def audit_serial(
    *, user_id: int | None, instance_id: int, action: str, ip: str | None, outcome: str = "", **detail
) -> None:
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    instance = Instance.objects.filter(pk=instance_id).select_related("tenant").first()
    record_audit(
        user=user,
        action=action,
        target=instance,
        tenant=instance.tenant if instance is not None else None,
        outcome=outcome or AuditEvent.Outcome.SUCCESS,
        ip=ip,
        detail={"instance_id": instance_id, **detail},
    )


# ---------------------------------------------------------------- consumer


class SerialConsumer(AsyncWebsocketConsumer):
    recheck_seconds = 3.0

    async def connect(self) -> None:
        self.console: backend.SerialConsole | None = None
        self.tasks: list[asyncio.Task] = []
        self.ended = False
        self.instance_id = int(self.scope["url_route"]["kwargs"]["pk"])
        client = self.scope.get("client") or (None, None)
        self.ip = client[0]
        user = self.scope.get("user")
        # Refusals accept first and then close, so the browser sees the close code.
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user_id = user.pk
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        target = await database_sync_to_async(serial_access)(self.user_id, self.instance_id, self.session_key)
        if isinstance(target, int):
            await self._audit("console.serial.start", outcome=AuditEvent.Outcome.DENIED, code=target)
            await self.close(code=target)
            return
        loop = asyncio.get_running_loop()
        # Bounded: when the browser reads slower than the guest writes, the reader thread waits here
        # and libvirt's stream holds the rest back (see _pump for the rate limit).
        self.output: asyncio.Queue[bytes | str] = asyncio.Queue(maxsize=OUTPUT_QUEUE_CHUNKS)

        def on_data(data: bytes) -> None:
            future = asyncio.run_coroutine_threadsafe(self.output.put(data), loop)
            while True:
                try:
                    future.result(timeout=1)
                    return
                except concurrent.futures.TimeoutError:
                    if self.ended:
                        future.cancel()
                        return

        def on_end(reason: str) -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                asyncio.run_coroutine_threadsafe(self.output.put(reason), loop)

        console = compute_for(target.host).serial_console(target.host, target.uuid, on_data=on_data, on_end=on_end)
        try:
            await asyncio.to_thread(console.open)
        except BackendError as exc:
            log.warning("serial console of instance %s: %s", target.instance_id, exc.message)  # for the operator
            error = host_free(exc.message, target.host)[:300]  # the tenant's admins read the audit trail
            await self._audit("console.serial.start", outcome=AuditEvent.Outcome.FAILURE, error=error)
            await self.close(code=CLOSE_FAILED)
            return
        self.console = console
        self.started = time.monotonic()
        try:
            await self._audit("console.serial.start")
        except BaseException:
            # channels calls disconnect() only for a connected socket: let go of the console here.
            self.ended = True
            await asyncio.to_thread(console.close)
            raise
        self.tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._recheck_loop())]

    async def _audit(self, action: str, outcome: str = "", **detail) -> None:
        await database_sync_to_async(audit_serial)(
            user_id=getattr(self, "user_id", None),
            instance_id=self.instance_id,
            action=action,
            ip=self.ip,
            outcome=outcome,
            **detail,
        )

    async def _pump(self) -> None:
        """Guest output → browser, at most OUTPUT_BYTES_PER_SECOND; a str in the queue is why the stream ended.

        A guest can write to its serial port far faster than any terminal reads (QEMU's port has no
        baud rate): above the limit the pump pauses, the queue fills and the guest's output waits in
        libvirt, instead of piling up in this process's memory.
        """
        window, sent = time.monotonic(), 0
        while True:
            item = await self.output.get()
            if isinstance(item, str):
                await self._end(item, END_CODES.get(item, CLOSE_FAILED))
                return
            await self.send(bytes_data=item)
            sent += len(item)
            if sent >= OUTPUT_BYTES_PER_SECOND:
                pause = window + 1 - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                window, sent = time.monotonic(), 0

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(self.recheck_seconds)
            if time.monotonic() - self.started > settings.CONSOLE_MAX_SESSION_SECONDS:
                await self._end("maximum length", CLOSE_MAX_LENGTH)
                return
            target = await database_sync_to_async(serial_access)(self.user_id, self.instance_id, self.session_key)
            if isinstance(target, int):
                await self._end("access", target)
                return

    async def _end(self, reason: str, code: int | None) -> None:
        """Stop the console once: audit, close the websocket (unless it is gone already)."""
        if self.ended or self.console is None:
            return
        self.ended = True
        await asyncio.to_thread(self.console.close)
        await self._audit("console.serial.end", reason=reason, seconds=round(time.monotonic() - self.started, 1))
        if code is not None:
            await self.close(code=code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.console is None or self.ended:
            return
        data = bytes_data if bytes_data is not None else (text_data or "").encode()
        await asyncio.to_thread(self.console.write, data)

    async def disconnect(self, code: int) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        await self._end(backend.CLOSED, None)
