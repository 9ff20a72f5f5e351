"""Storage volumes: upload an image file into a host's pool through libvirt's stream API.

This works for remote hosts (qemu+ssh://, qemu+tls://) with no shared filesystem: the
bytes travel over the libvirt connection. Volume XML is built with ElementTree.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from portal.backends.base import BackendError, ProgressCallback, VolumeRef
from portal.backends.libvirt.connection import connect

CHUNK = 1024 * 1024


def volume_xml(*, name: str, capacity: int, fmt: str = "raw") -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    return ET.tostring(vol, encoding="unicode")


def _pool(conn: libvirt.virConnect, pool_name: str) -> libvirt.virStoragePool:
    try:
        pool = conn.storagePoolLookupByName(pool_name)
    except libvirt.libvirtError as exc:
        raise BackendError(f"storage pool {pool_name!r} not found: {exc.get_error_message()}") from exc
    if not pool.isActive():
        raise BackendError(f"storage pool {pool_name!r} is not active")
    return pool


def _ref(pool_name: str, vol: libvirt.virStorageVol) -> VolumeRef:
    _type, capacity, allocation = vol.info()
    return VolumeRef(pool=pool_name, name=vol.name(), path=vol.path(), capacity=capacity, allocation=allocation)


def find_volume(uri: str, *, pool_name: str, name: str) -> VolumeRef | None:
    pool = _pool(connect(uri), pool_name)
    try:
        return _ref(pool_name, pool.storageVolLookupByName(name))
    except libvirt.libvirtError:
        return None


def upload_file(
    uri: str, *, pool_name: str, name: str, source: Path, progress: ProgressCallback | None = None
) -> VolumeRef:
    """Create volume ``name`` in ``pool_name`` and stream ``source`` into it; replaces a leftover of a failed copy."""
    conn = connect(uri)
    pool = _pool(conn, pool_name)
    with contextlib.suppress(libvirt.libvirtError):  # a leftover of an earlier, failed copy
        pool.storageVolLookupByName(name).delete(0)
    size = os.path.getsize(source)
    try:
        vol = pool.createXML(volume_xml(name=name, capacity=size), 0)
    except libvirt.libvirtError as exc:
        raise BackendError(f"cannot create volume {name!r}: {exc.get_error_message()}") from exc
    stream = conn.newStream(0)
    state = {"sent": 0, "percent": -1}

    def read_chunk(_stream, nbytes: int, fh) -> bytes:
        data = fh.read(min(nbytes, CHUNK))
        state["sent"] += len(data)
        percent = state["sent"] * 100 // size
        if progress is not None and percent != state["percent"]:
            state["percent"] = percent
            progress(percent)
        return data

    try:
        vol.upload(stream, 0, size, 0)
        with open(source, "rb") as fh:
            stream.sendAll(read_chunk, fh)
        stream.finish()
    except (libvirt.libvirtError, OSError) as exc:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)
        raise BackendError(f"upload of {name!r} failed: {exc}") from exc
    pool.refresh(0)
    return _ref(pool_name, pool.storageVolLookupByName(name))


def delete_volume(uri: str, *, pool_name: str, name: str) -> bool:
    """Delete a volume; False if it was not there."""
    pool = _pool(connect(uri), pool_name)
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError:
        return False
    try:
        vol.delete(0)
    except libvirt.libvirtError as exc:
        raise BackendError(f"cannot delete volume {name!r}: {exc.get_error_message()}") from exc
    return True
