"""The console proxy: websockify with the portal's token plugin (run by ``manage.py consoleproxy``).

websockify forks one child process per connection; the token is claimed there, from the database
(``vms.consoles.tokens.claim_token``), together with the Origin header. While the session lives, a
watchdog thread in the child re-checks ``session_still_allowed`` every CONSOLE_RECHECK_SECONDS and
cuts the VNC side when access is gone or the maximum session length is reached; the proxy loop
then closes the WebSocket. The session's end is recorded in the database and the audit log.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
from urllib.parse import parse_qs, urlparse

from django.conf import settings
from django.db import connections
from django.http.cookie import parse_cookie
from websockify.token_plugins import BasePlugin
from websockify.websocketproxy import ProxyRequestHandler, WebSocketProxy

from vms.consoles import tokens

logger = logging.getLogger(__name__)
TOKEN_IN_TEXT = re.compile(r"token=[^&\s'\"]*")


def session_cookie(header: str | None) -> str | None:
    """The portal's session cookie from a Cookie header (browsers send it to the proxy on the same host).

    Django's own lenient parser: ``http.cookies.SimpleCookie`` stops at the first cookie it finds
    malformed (another app's JSON-valued cookie, say), which would hide the session cookie after it.
    """
    if not header:
        return None
    return parse_cookie(header).get(settings.SESSION_COOKIE_NAME) or None


class DatabaseTokenPlugin(BasePlugin):
    """Looks console tokens up in the portal's database (each token opens one connection)."""

    def __init__(self, src: str | None = None) -> None:
        super().__init__(src)

    def claim(
        self, token: str | None, *, origin: str | None, ip: str | None, cookie: str | None = None
    ) -> tokens.ClaimedConsole | None:
        connections.close_all()  # never reuse a connection inherited from the listening process
        try:
            browser_user_id = tokens.user_of_session_cookie(session_cookie(cookie))
            return tokens.claim_token(token=token, origin=origin, ip=ip, browser_user_id=browser_user_id)
        finally:
            connections.close_all()

    def lookup(self, token: str):
        """websockify's interface; without an Origin header every token is refused (see ``claim``)."""
        claimed = self.claim(token, origin=None, ip=None)
        return (claimed.host, claimed.port) if claimed else None


class ConsoleRequestHandler(ProxyRequestHandler):
    """Checks Origin and token before the WebSocket handshake, and watches the live session."""

    session_id: int | None = None

    def log_message(self, format: str, *args) -> None:
        """websockify's request log, with tokens in paths replaced by ``token=…``."""
        message = TOKEN_IN_TEXT.sub("token=…", format % args if args else format)
        super().log_message("%s", message)

    def _refuse(self) -> None:
        with contextlib.suppress(OSError):
            self.send_error(403, "Forbidden")
        raise self.server.EClose("")  # nothing logged by websockify (its message would carry the token)

    def validate_connection(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        tokens = query.get("token") or [None]
        ip = self.client_address[0] if self.client_address else None
        claimed = self.server.token_plugin.claim(
            tokens[0], origin=self.headers.get("Origin"), ip=ip, cookie=self.headers.get("Cookie")
        )
        if claimed is None:
            self._refuse()
        self.session_id = claimed.session_id
        self.server.target_host = claimed.host
        self.server.target_port = claimed.port

    def new_websocket_client(self) -> None:
        reason = "closed"
        try:
            super().new_websocket_client()
        except self.CClose as exc:
            reason = str(exc.args[1]) if len(exc.args) > 1 else "closed"
            raise
        finally:
            if getattr(self, "_cut_reason", None):
                reason = self._cut_reason
            with contextlib.suppress(Exception):
                tokens.end_session(session=self.session_id, reason=reason or "closed")
            connections.close_all()

    def do_proxy(self, target: socket.socket) -> None:
        stop = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(target, stop), daemon=True)
        watchdog.start()
        try:
            super().do_proxy(target)
        finally:
            stop.set()

    def _watch(self, target: socket.socket, stop: threading.Event) -> None:
        interval = settings.CONSOLE_RECHECK_SECONDS
        try:
            while not stop.wait(interval):
                try:
                    allowed = tokens.session_still_allowed(session_id=self.session_id)
                except Exception:
                    logger.exception("console session %s: check failed", self.session_id)
                    continue
                if not allowed:
                    self._cut_reason = "access ended"
                    logger.info("console session %s: access ended, closing", self.session_id)
                    # recv() on the target returns b"" at once: the proxy loop closes the WebSocket.
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_RD)
                    return
        finally:
            connections.close_all()


def make_proxy(*, host: str, port: int) -> WebSocketProxy:
    proxy = WebSocketProxy(
        RequestHandlerClass=ConsoleRequestHandler,
        listen_host=host,
        listen_port=port,
        token_plugin=DatabaseTokenPlugin(),
        heartbeat=30,
    )
    # Plain HTTP requests get 405: never serve files (websockify's handler would serve the working folder).
    proxy.only_upgrade = True
    proxy.file_only = True
    return proxy
