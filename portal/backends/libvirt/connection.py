"""One libvirt connection per host URI per process, reopened when it dies.

libvirt connections are thread-safe: every thread of a process (web, worker, watcher) shares the
cached one. ``connect()`` checks ``isAlive()`` and reopens a dead connection, so a restarted
libvirtd or a dropped SSH tunnel costs one failed call (the caller sees ``HostUnreachable``,
see ``LibvirtDriver``) and the next call reconnects. Calls are not retried automatically: only the
caller knows whether its operation is safe to repeat.

Keepalive: libvirt's keepalive (a ping every ``KEEPALIVE_INTERVAL`` s; the connection is closed
after ``KEEPALIVE_COUNT`` unanswered ones) needs an event loop in the process. A long-lived
process that wants dead hosts noticed promptly and events delivered (the watcher) calls
``start_event_loop()`` once, *before* it connects; from then on every new connection gets keepalive
and a close callback that drops it from the cache. Web and worker processes do without: their
calls are short and ``isAlive()`` is checked on every ``connect()``.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import libvirt

from portal.backends.base import HostUnreachable

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL = 5  # seconds between pings
KEEPALIVE_COUNT = 3  # unanswered pings before the connection is closed

_connections: dict[str, libvirt.virConnect] = {}
_lock = threading.Lock()
_event_loop: threading.Thread | None = None


def _quiet(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; errors reach us as exceptions anyway."""


libvirt.registerErrorHandler(_quiet, None)


def start_event_loop() -> bool:
    """Register libvirt's default event loop and run it in a daemon thread (once per process).

    Returns True when this call started it. Call before the first ``connect()`` so that
    connections get keepalive and domain events can be delivered.
    """
    global _event_loop
    with _lock:
        if _event_loop is not None:
            return False
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:  # pragma: no cover - keeps the loop alive
                    log.exception("libvirt event loop iteration failed")

        _event_loop = threading.Thread(target=run, name="libvirt-event-loop", daemon=True)
        _event_loop.start()
        return True


def event_loop_running() -> bool:
    return _event_loop is not None


def _on_close(conn: libvirt.virConnect, reason: int, uri: str) -> None:
    """Close callback (event loop thread): forget the connection so the next connect() reopens it."""
    log.warning("libvirt connection to %s closed (reason %s)", uri, reason)
    # No _lock here: a thread holding it may be waiting on libvirt, which may wait on this thread.
    # Single dict operations are atomic; at worst connect() finds the dead one and isAlive() fails.
    if _connections.get(uri) is conn:
        _connections.pop(uri, None)


def _open(uri: str) -> libvirt.virConnect:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HostUnreachable(f"cannot connect to {uri}: {exc.get_error_message()}") from exc
    if _event_loop is not None:
        # Local drivers (test:///) have no keepalive and no close callback: that is fine.
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(_on_close, uri)
    return conn


def open_dedicated(uri: str) -> libvirt.virConnect:
    """A connection of the caller's own, not shared through the cache; the caller closes it.

    For blocking streams (the serial console): while one thread waits in a blocking
    ``virStream.recv``, other calls on the same connection can stall, so a stream that may block
    for hours must not share the cached connection with anyone else.
    """
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HostUnreachable(f"cannot connect to {uri}: {exc.get_error_message()}") from exc


def connect(uri: str) -> libvirt.virConnect:
    with _lock:
        conn = _connections.get(uri)
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            _connections.pop(uri, None)
        conn = _open(uri)
        _connections[uri] = conn
        return conn


def reconnect(uri: str) -> libvirt.virConnect:
    """Drop the cached connection of ``uri`` and open a new one."""
    forget(uri)
    return connect(uri)


def forget(uri: str) -> None:
    """Drop (and close) the cached connection of ``uri``."""
    with _lock:
        conn = _connections.pop(uri, None)
    if conn is not None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
