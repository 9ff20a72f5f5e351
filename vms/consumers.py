"""WebSocket consumers of the compute app.

``LiveConsumer`` (``ws/live/``) relays the live updates of ``vms.realtime`` to the browser: cloud
admins join the ``staff`` group (everything), other users the ``tenant-<id>`` group of each tenant
they are a member of. ``?tenant=<id>`` narrows the stream to one tenant (staff included).
``?instance=<id>`` (the instance page) also joins ``instance-<id>`` when the user may view that
instance: the instance's metrics points go only there, not to every page of the tenant.

Access is re-checked while the socket is open: before relaying an event the consumer reloads the
user's memberships when the last check is older than ``recheck_seconds``, leaves the groups of
tenants the user no longer belongs to, and drops instance events of tenants not (or no longer)
allowed. A user who lost all access (deactivated, removed from the filtered tenant or from every
tenant) is disconnected.

The socket belongs to the portal session it was opened with (as the serial console's does): before
every event the consumer checks that this session is still signed in as the same user, so signing
out (in another tab, or the session expiring or being deleted) stops the stream at the next event;
a timer (``idle_recheck_seconds``) re-checks everything when no event comes, and closes an idle socket
of a signed-out session too.

Close codes: 4401 not signed in (signed out, session expired, or deactivated), 4403 the tenant asked
for is not yours, 4400 a malformed query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import translation

from portal.access import MEMBER_ROLES, is_cloud_admin, tenant_ids_for
from vms.access import access_instance_by_id
from vms.consoles.tokens import user_of_session_cookie
from vms.models.operations import translated
from vms.realtime import STAFF_GROUP, instance_group, tenant_group

log = logging.getLogger(__name__)

CLOSE_BAD_REQUEST = 4400
# The stored texts each event kind carries untranslated (with ``<field>_args``), translated per reader.
LOCALISED = {"operation": ("message", "error"), "instance": ("state_reason",)}
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


def _sees(user, instance_id: int) -> bool:
    try:
        access_instance_by_id(user=user, instance_id=instance_id)
    except (Http404, PermissionDenied):
        return False
    return True


def _signed_in(user_id: int, session_key: str | None) -> bool:
    """Whether the portal session the socket was opened with is still signed in as this user."""
    return session_key is None or user_of_session_cookie(session_key) == user_id


def _access(
    user_id: int, instance_id: int | None = None, session_key: str | None = None
) -> tuple[bool, bool, frozenset[int], bool]:
    """(active, cloud admin, tenant ids, may view ``instance_id``) of the user as the database says now.

    Not active either when ``session_key`` (the socket's portal session) is no longer signed in as the user.
    """
    if not _signed_in(user_id, session_key):
        return False, False, frozenset(), False
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not user.is_active:
        return False, False, frozenset(), False
    tenants = frozenset(tenant_ids_for(user, MEMBER_ROLES).values_list("tenant_id", flat=True))
    sees_instance = instance_id is not None and _sees(user, instance_id)
    return True, is_cloud_admin(user), tenants, sees_instance


def _language(asked: str) -> str:
    """The page's language (``lang=`` of the socket's address, one of LANGUAGES), else the portal's default."""
    try:
        return translation.get_supported_language_variant(asked) if asked else settings.LANGUAGE_CODE
    except LookupError:
        return settings.LANGUAGE_CODE


class LiveConsumer(AsyncJsonWebsocketConsumer):
    recheck_seconds = 3.0  # memberships are reloaded before an event when the last check is older than this
    idle_recheck_seconds = 15.0  # without events, everything is re-checked this often

    async def connect(self) -> None:
        self.groups_joined: set[str] = set()
        self.tenant_filter: int | None = None
        self.instance_filter: int | None = None
        self.checked_at = 0.0
        self.watchdog: asyncio.Task | None = None
        self.session_key = getattr(self.scope.get("session"), "session_key", None)
        user = self.scope.get("user")
        # Refusals accept first and then close, so the browser sees the close code (not a failed handshake).
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_UNAUTHENTICATED)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.language = _language(query.get("lang", [""])[0])
        try:
            if "tenant" in query:
                self.tenant_filter = int(query["tenant"][0])
            if "instance" in query:
                self.instance_filter = int(query["instance"][0])
        except ValueError:
            await self._refuse(CLOSE_BAD_REQUEST)
            return
        self.user_id = user.pk
        refused = await self.recheck()  # joins the groups before the handshake completes: no event is missed
        await self.accept()
        if refused:
            await self.close(code=refused)
            return
        # The page learns it listens now (a refusal opens the socket too, then closes it): what it does
        # once it listens (redraw what changed while it did not) waits for this, not for the socket's opening.
        await self.send_json({"type": "ready", "data": {}})
        self.watchdog = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Re-check access and the session while no event comes; close the socket when they are gone."""
        while True:
            await asyncio.sleep(self.idle_recheck_seconds)
            if time.monotonic() - self.checked_at < self.idle_recheck_seconds:
                continue  # an event re-checked meanwhile
            try:
                refused = await self.recheck()
            except Exception:  # the database hiccuped: try again at the next tick
                log.warning("live updates: re-check failed", exc_info=True)
                continue
            if refused:
                await self.close(code=refused)
                return

    async def _refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)

    async def recheck(self) -> int | None:
        """Reload the user's access and join or leave groups to match; a close code when nothing is left."""
        active, admin, tenant_ids, sees_instance = await database_sync_to_async(_access)(
            self.user_id, self.instance_filter, self.session_key
        )
        self.checked_at = time.monotonic()
        self.is_admin, self.tenant_ids = admin, tenant_ids
        if not active:
            await self._leave_all()
            return CLOSE_UNAUTHENTICATED
        if self.tenant_filter is not None:
            allowed = admin or self.tenant_filter in tenant_ids
            wanted = {tenant_group(self.tenant_filter)} if allowed else set()
        else:
            wanted = {STAFF_GROUP} if admin else {tenant_group(t) for t in tenant_ids}
        if not wanted:  # removed from the tenant asked for, or from every tenant
            await self._leave_all()
            return CLOSE_FORBIDDEN
        if sees_instance:  # the instance page: its metrics points too
            wanted.add(instance_group(self.instance_filter))
        for group in self.groups_joined - wanted:
            await self.channel_layer.group_discard(group, self.channel_name)
        for group in wanted - self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = wanted
        return None

    async def _leave_all(self) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = set()

    async def disconnect(self, code: int) -> None:
        watchdog = getattr(self, "watchdog", None)
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        await self._leave_all()

    async def receive_json(self, content: Any, **kwargs) -> None:
        """The stream is one-way; anything the browser sends is ignored."""

    def _allowed(self, event: dict[str, Any]) -> bool:
        data = event.get("data") or {}
        tenant_id = data.get("tenant_id") if isinstance(data, dict) else None
        if self.tenant_filter is not None and tenant_id is not None and tenant_id != self.tenant_filter:
            return False
        if self.is_admin or tenant_id is None:
            return True  # events without a tenant reach only the groups this user is (still) in
        return tenant_id in self.tenant_ids

    async def live_event(self, message: dict[str, Any]) -> None:
        if not self.groups_joined:
            return
        if time.monotonic() - self.checked_at >= self.recheck_seconds:
            refused = await self.recheck()
        elif not await database_sync_to_async(_signed_in)(self.user_id, self.session_key):
            await self._leave_all()
            refused = CLOSE_UNAUTHENTICATED
        else:
            refused = None
        if refused:
            await self.close(code=refused)
            return
        event = message.get("event") or {}
        if self._allowed(event):
            await self.send_json(self._in_language(event))

    def _in_language(self, event: dict[str, Any]) -> dict[str, Any]:
        """An operation's message and error, an instance's state reason, as its reader's page reads them:
        stored untranslated (with their parameters), translated here in the page's language."""
        data = event.get("data")
        fields = LOCALISED.get(event.get("type"))
        if fields is None or not isinstance(data, dict):
            return event
        data = dict(data)
        with translation.override(self.language):
            for field in fields:
                data[field] = translated(data.get(field) or "", data.pop(f"{field}_args", None))
        return {**event, "data": data}
