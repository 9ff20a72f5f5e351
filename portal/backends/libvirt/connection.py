"""One libvirt connection per host URI per process, reopened when it dies."""

from __future__ import annotations

import contextlib
import threading

import libvirt

from portal.backends.base import HostUnreachable

_connections: dict[str, libvirt.virConnect] = {}
_lock = threading.Lock()


def _quiet(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; errors reach us as exceptions anyway."""


libvirt.registerErrorHandler(_quiet, None)


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
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HostUnreachable(f"cannot connect to {uri}: {exc.get_error_message()}") from exc
        _connections[uri] = conn
        return conn


def forget(uri: str) -> None:
    """Drop (and close) the cached connection of ``uri``."""
    with _lock:
        conn = _connections.pop(uri, None)
    if conn is not None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
