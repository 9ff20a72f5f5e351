"""A domain's serial console (``virDomainOpenConsole``) as a byte pipe, for the web serial console.

``SerialConsole`` opens the console of a running domain through a *blocking* libvirt stream (no
event loop needed) and reads it on a daemon thread of its own: every chunk goes to ``on_data``,
and ``on_end`` is called once with the reason the stream ended. ``write`` sends keystrokes from any
thread (libvirt streams allow a send while another thread is blocked in ``recv``); ``close``
aborts the stream, which wakes the reader at once.

Each session has a libvirt connection of its own (``open_dedicated``): a blocking ``recv`` on a
shared connection stalls the other calls made on it (seen as a hang when a second session opened
the console while the first one was reading).

One session per domain: libvirt allows a single console stream per domain. The console is opened
with ``VIR_DOMAIN_CONSOLE_FORCE``, so a new session takes over and the previous stream fails with
an I/O error; the reader then looks at the domain: still running means ``TAKEN_OVER``, otherwise
``STOPPED``.

No ORM here: callers pass the host URI and the domain UUID.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import libvirt

from portal.backends.base import BackendError, NotFound

from .connection import open_dedicated

log = logging.getLogger(__name__)

# Why a console session ended (the argument of on_end).
CLOSED = "closed"  # close() was called
STOPPED = "stopped"  # the guest shut off (end of stream)
TAKEN_OVER = "taken_over"  # another session opened the console with FORCE
FAILED = "failed"  # the stream broke for another reason (host unreachable…)

CHUNK = 64 * 1024


class SerialConsole:
    def __init__(self, uri: str, uuid: str, *, on_data: Callable[[bytes], None], on_end: Callable[[str], None]) -> None:
        self.uri, self.uuid = uri, uuid
        self.on_data, self.on_end = on_data, on_end
        self._closing = threading.Event()
        self._send_lock = threading.Lock()
        self._stream: libvirt.virStream | None = None
        self._dom: libvirt.virDomain | None = None
        self._thread: threading.Thread | None = None
        self._conn: libvirt.virConnect | None = None
        self._released = False
        self._release_lock = threading.Lock()

    def open(self) -> None:
        """Attach to the console (taking it over from another session) and start reading."""
        conn = self._conn = open_dedicated(self.uri)  # HostUnreachable passes through
        try:
            self._dom = conn.lookupByUUIDString(self.uuid)
            if not self._dom.isActive():
                raise BackendError(f"serial console of {self.uuid}: the domain is not running")
            self._stream = conn.newStream(0)
            self._dom.openConsole(None, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        except (libvirt.libvirtError, BackendError) as exc:
            self._release()
            if isinstance(exc, BackendError):
                raise
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"serial console of {self.uuid}: {exc.get_error_message()}") from exc
            raise BackendError(f"serial console of {self.uuid}: {exc.get_error_message()}") from exc
        self._thread = threading.Thread(target=self._run, name=f"serial-{self.uuid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        reason = STOPPED
        try:
            while not self._closing.is_set():
                data = self._stream.recv(CHUNK)
                if not isinstance(data, bytes) or not data:  # end of stream: the guest stopped
                    break
                self.on_data(data)
        except libvirt.libvirtError as exc:
            reason = self._why_broken(exc)
        except Exception:  # pragma: no cover - a failing callback must not kill the session silently
            log.exception("serial console reader of %s failed", self.uuid)
            reason = FAILED
        if self._closing.is_set():
            reason = CLOSED
        else:
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.abort()
        try:
            self.on_end(reason)
        finally:
            if self._closing.is_set():  # close() may have given up waiting for this thread
                self._release()

    def _why_broken(self, exc: libvirt.libvirtError) -> str:
        if self._closing.is_set():
            return CLOSED
        try:
            active = self._dom.isActive()
        except libvirt.libvirtError:
            return FAILED
        if active:
            log.info("serial console of %s taken over (%s)", self.uuid, exc.get_error_message())
            return TAKEN_OVER
        return STOPPED

    def write(self, data: bytes) -> None:
        """Send input to the guest's serial port; ignored once the session ended."""
        if not data or self._stream is None or self._closing.is_set():
            return
        with self._send_lock:
            view = memoryview(data)
            try:
                while view:
                    sent = self._stream.send(bytes(view))
                    if sent <= 0:
                        return
                    view = view[sent:]
            except libvirt.libvirtError as exc:
                log.info("serial console of %s: write failed: %s", self.uuid, exc.get_error_message())

    def close(self, timeout: float = 5) -> None:
        """Abort the stream (wakes the reader), wait for the reader to finish, close the connection."""
        if not self._closing.is_set():
            self._closing.set()
            if self._stream is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._stream.abort()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._release()

    def _release(self) -> None:
        """Close this session's own connection (once, from whichever thread gets here first)."""
        with self._release_lock:
            if self._released or self._conn is None:
                return
            self._released = True
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()
