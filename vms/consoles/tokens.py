"""Console tokens: issued by the portal, claimed once by the console proxy (``manage.py consoleproxy``).

``open_console`` checks nothing about access itself (the caller found the instance through the
access gate with CHANGE), sets a one-time VNC password on the running domain and stores only the
SHA-256 of a random token. ``claim_token`` runs in the proxy: it marks the token used with one
conditional UPDATE (so a token opens at most one connection, within its TTL), then re-checks the
Origin header, the user's access and the instance's host and state, and asks the instance's host
where its VNC server listens now: a token issued for another address or port (the instance was
restarted with another port, or moved) is refused, since that address may now be another guest's.
``session_still_allowed`` is polled by the proxy during a live session; ``end_session`` records its end.

Refusals are logged at WARNING without the token, and audited as ``console.refused``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from portal.access import CHANGE
from portal.backends.base import BackendError
from portal.models import AuditEvent
from portal.services import ConflictError, record_audit
from vms.actions import host_refusal
from vms.compute import Capability, compute_for, instance_capabilities
from vms.models import ConsoleSession, Instance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsoleTicket:
    """What the browser gets: the proxy URL with the token, and the one-time VNC password."""

    url: str
    token: str
    password: str
    expires_at: datetime
    session_id: int


@dataclass(frozen=True)
class ClaimedConsole:
    """What the proxy connects to for a claimed token."""

    session_id: int
    host: str
    port: int


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def console_url(token: str) -> str:
    base = settings.CONSOLE_PUBLIC_URL
    return f"{base}{'&' if '?' in base else '?'}{urlencode({'token': token})}"


def open_console(*, user, instance: Instance, ip: str | None = None) -> ConsoleTicket:
    """Issue a console ticket for a running instance.

    Through the portal's proxy (a random token, stored hashed, and a one-time VNC password on the
    domain), or, where the backend has a console proxy of its own (Nova's noVNC), its URL.
    """
    if instance.state != Instance.State.RUNNING or instance.host_id is None:
        raise ConflictError(_("The console is only available while the instance is running."))
    if Capability.GRAPHICAL_CONSOLE not in instance_capabilities(instance):
        raise ConflictError(_("This instance has no console in the browser."))
    if (down := host_refusal(instance)) is not None:  # said at once, as every action on a down host
        raise down
    ttl = settings.CONSOLE_TOKEN_TTL_SECONDS
    endpoint = compute_for(instance.host).console(instance, ttl=ttl)
    expires_at = timezone.now() + timedelta(seconds=ttl)
    if endpoint.url:  # the backend's own console proxy, with its own token
        record_audit(
            user=user,
            action="console.issue",
            target=instance,
            tenant=instance.tenant,
            ip=ip,
            detail={"kind": "novnc", "cloud": instance.host.name},
        )
        return ConsoleTicket(url=endpoint.url, token="", password="", expires_at=expires_at, session_id=0)
    token = secrets.token_urlsafe(32)
    session = ConsoleSession.objects.create(
        tenant_id=instance.tenant_id,
        instance=instance,
        user=user,
        kind=ConsoleSession.Kind.VNC,
        token_hash=hash_token(token),
        target_host=endpoint.vnc_host,
        target_port=endpoint.vnc_port,
        expires_at=expires_at,
    )
    record_audit(
        user=user,
        action="console.issue",
        target=instance,
        tenant=instance.tenant,
        ip=ip,
        detail={"session": session.pk, "kind": session.kind},
    )
    return ConsoleTicket(
        url=console_url(token), token=token, password=endpoint.password, expires_at=expires_at, session_id=session.pk
    )


def origin_allowed(origin: str | None) -> bool:
    return bool(origin) and origin.rstrip("/") in {o.rstrip("/") for o in settings.CONSOLE_ALLOWED_ORIGINS}


def _refuse(reason: str, *, session: ConsoleSession | None = None, ip: str | None = None) -> None:
    logger.warning(
        "console token refused: %s (session %s, client %s)", reason, session.pk if session else "-", ip or "-"
    )
    record_audit(
        user=session.user if session else None,
        action="console.refused",
        target=session.instance if session else None,
        tenant=session.tenant if session else None,
        outcome=AuditEvent.Outcome.DENIED,
        ip=ip,
        detail={"reason": reason, **({"session": session.pk} if session else {})},
    )


def _running_instance(session: ConsoleSession) -> Instance | None:
    """The session's instance if its user may still change it and it runs on a host."""
    return (
        Instance.objects.restrict(session.user, CHANGE)
        .filter(pk=session.instance_id, state=Instance.State.RUNNING, host__isnull=False)
        .select_related("host")
        .first()
    )


def _still_on_target(session: ConsoleSession) -> bool:
    return _running_instance(session) is not None


def _console_unmoved(session: ConsoleSession, instance: Instance) -> bool:
    """Whether the instance's VNC server still listens at the address and port the token was issued for."""
    try:
        now = compute_for(instance.host).console_target(instance)
    except (BackendError, ConflictError) as exc:
        logger.warning("console session %s: where the console listens is unknown: %s", session.pk, exc)
        return False
    return (now.vnc_host, now.vnc_port) == (session.target_host, session.target_port)


def user_of_session_cookie(session_key: str | None) -> int | None:
    """The id of the user signed in with this portal session cookie, if any (for the proxy's user check)."""
    if not session_key or len(session_key) > 64:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    try:
        value = store.get(SESSION_KEY)
    except Exception:  # a broken or foreign cookie is no sign-in
        return None
    return int(value) if value is not None and str(value).isdigit() else None


def claim_token(
    *, token: str | None, origin: str | None, ip: str | None = None, browser_user_id: int | None = None
) -> ClaimedConsole | None:
    """Use up a console token: the target to connect to, or None (refused, logged and audited).

    ``browser_user_id`` is the user of the portal session cookie the browser sent along, when it
    sent one (the proxy on the portal's own host or origin gets it): a token issued to someone else
    is refused then. API clients without a cookie use the token alone.
    """
    if not token or len(token) > 200:
        _refuse("missing or malformed token", ip=ip)
        return None
    now = timezone.now()
    digest = hash_token(token)
    with transaction.atomic():
        claimed = ConsoleSession.objects.filter(token_hash=digest, used_at__isnull=True, expires_at__gt=now).update(
            used_at=now, client_ip=ip
        )
        session = ConsoleSession.objects.select_related("user", "instance", "tenant").filter(token_hash=digest).first()
    if session is None:
        _refuse("unknown token", ip=ip)
        return None
    if not claimed:
        _refuse("token already used" if session.used_at else "token expired", session=session, ip=ip)
        return None
    if browser_user_id is not None and browser_user_id != session.user_id:
        _end(session, "refused: user")
        _refuse("token of another user", session=session, ip=ip)
        return None
    if not origin_allowed(origin):
        _end(session, "refused: origin")
        _refuse(f"origin not allowed: {origin!r}", session=session, ip=ip)
        return None
    instance = _running_instance(session) if session.user.is_active else None
    if instance is None:
        _end(session, "refused: access")
        _refuse("no access or instance not running", session=session, ip=ip)
        return None
    if not _console_unmoved(session, instance):
        _end(session, "refused: target")
        _refuse("the instance's console is no longer where the token was issued for", session=session, ip=ip)
        return None
    record_audit(
        user=session.user,
        action="console.start",
        target=session.instance,
        tenant=session.tenant,
        ip=ip,
        detail={"session": session.pk, "kind": session.kind},
    )
    return ClaimedConsole(session_id=session.pk, host=session.target_host, port=session.target_port)


def _end(session: ConsoleSession, reason: str) -> None:
    ConsoleSession.objects.filter(pk=session.pk, ended_at__isnull=True).update(
        ended_at=timezone.now(), end_reason=reason[:64]
    )


def session_still_allowed(*, session_id: int) -> bool:
    """For the proxy's periodic check: user active and still with access, instance running, within max length."""
    session = ConsoleSession.objects.select_related("user").filter(pk=session_id, ended_at__isnull=True).first()
    if session is None or session.used_at is None or not session.user.is_active:
        return False
    if timezone.now() - session.used_at > timedelta(seconds=settings.CONSOLE_MAX_SESSION_SECONDS):
        return False
    return _still_on_target(session)


def end_session(*, session: ConsoleSession | int, reason: str) -> None:
    """Record the end of a claimed session (once) and audit it."""
    if isinstance(session, int):
        session = ConsoleSession.objects.select_related("user", "instance", "tenant").filter(pk=session).first()
        if session is None:  # the instance was deleted (CASCADE)
            return
    now = timezone.now()
    if not ConsoleSession.objects.filter(pk=session.pk, ended_at__isnull=True).update(
        ended_at=now, end_reason=reason[:64]
    ):
        return
    record_audit(
        user=session.user,
        action="console.end",
        target=session.instance,
        tenant=session.tenant,
        ip=session.client_ip,
        detail={
            "session": session.pk,
            "reason": reason,
            "seconds": round((now - session.used_at).total_seconds()) if session.used_at else 0,
        },
    )
