"""Storage volumes: upload images and seeds into a host's pool, copy-on-write overlays, blank disks.

This works for remote hosts (qemu+ssh://, qemu+tls://) with no shared filesystem: the
bytes travel over the libvirt connection. Volume XML is built with ElementTree.
"""

from __future__ import annotations

import contextlib
import io
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import BinaryIO

import libvirt

from portal.backends.base import BackendError, NotFound, ProgressCallback, VolumeRef
from portal.backends.libvirt.connection import connect

CHUNK = 1024 * 1024
# qcow2 v3: v2 (libvirt's default, "0.10") cannot be resized once it holds internal snapshots.
QCOW2_COMPAT = "1.1"


def volume_xml(*, name: str, capacity: int, fmt: str = "raw") -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    if fmt == "qcow2":
        ET.SubElement(target, "compat").text = QCOW2_COMPAT
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


def _stream_into(
    conn: libvirt.virConnect,
    pool: libvirt.virStoragePool,
    *,
    name: str,
    size: int,
    fh: BinaryIO,
    fmt: str = "raw",
    progress: ProgressCallback | None = None,
) -> libvirt.virStorageVol:
    """Create volume ``name`` (replacing a leftover of a failed copy) and stream ``size`` bytes of ``fh`` into it."""
    with contextlib.suppress(libvirt.libvirtError):  # a leftover of an earlier, failed copy
        pool.storageVolLookupByName(name).delete(0)
    try:
        vol = pool.createXML(volume_xml(name=name, capacity=size, fmt=fmt), 0)
    except libvirt.libvirtError as exc:
        raise BackendError(f"cannot create volume {name!r}: {exc.get_error_message()}") from exc
    stream = conn.newStream(0)
    state = {"sent": 0, "percent": -1}

    def read_chunk(_stream, nbytes: int, fh) -> bytes:
        data = fh.read(min(nbytes, CHUNK))
        state["sent"] += len(data)
        percent = state["sent"] * 100 // size if size else 100
        if progress is not None and percent != state["percent"]:
            state["percent"] = percent
            progress(percent)
        return data

    try:
        vol.upload(stream, 0, size, 0)
        stream.sendAll(read_chunk, fh)
        stream.finish()
    except (libvirt.libvirtError, OSError) as exc:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)
        raise BackendError(f"upload of {name!r} failed: {exc}") from exc
    return vol


def upload_file(
    uri: str, *, pool_name: str, name: str, source: Path, progress: ProgressCallback | None = None
) -> VolumeRef:
    """Create volume ``name`` in ``pool_name`` and stream ``source`` into it; replaces a leftover of a failed copy."""
    conn = connect(uri)
    pool = _pool(conn, pool_name)
    size = os.path.getsize(source)
    try:
        fh = open(source, "rb")  # noqa: SIM115 - closed below, also when the upload fails
    except OSError as exc:
        raise BackendError(f"cannot read {source}: {exc}") from exc
    with fh:
        _stream_into(conn, pool, name=name, size=size, fh=fh, progress=progress)
    pool.refresh(0)
    return _ref(pool_name, pool.storageVolLookupByName(name))


def upload_bytes(uri: str, *, pool_name: str, name: str, data: bytes, fmt: str = "raw") -> VolumeRef:
    """Create volume ``name`` holding ``data`` (a seed ISO, a small image); replaces a leftover."""
    conn = connect(uri)
    pool = _pool(conn, pool_name)
    vol = _stream_into(conn, pool, name=name, size=len(data), fh=io.BytesIO(data), fmt=fmt)
    return _ref(pool_name, vol)  # no pool refresh: it probes every volume of the pool (slow in big pools)


def _volume_format(vol: libvirt.virStorageVol) -> str:
    fmt = ET.fromstring(vol.XMLDesc(0)).find("target/format")  # noqa: S314 - libvirt's own XML
    return fmt.get("type", "raw") if fmt is not None else "raw"


def overlay_xml(*, name: str, capacity: int, backing_path: str, backing_format: str) -> str:
    """A qcow2 volume whose backing store is another volume (copy-on-write)."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="qcow2")
    ET.SubElement(target, "compat").text = QCOW2_COMPAT
    backing = ET.SubElement(vol, "backingStore")
    ET.SubElement(backing, "path").text = backing_path
    ET.SubElement(backing, "format", type=backing_format)
    return ET.tostring(vol, encoding="unicode")


def create_overlay(
    uri: str,
    *,
    pool_name: str,
    name: str,
    backing_volume: str,
    size_bytes: int,
    backing_pool: str | None = None,
    backing_format: str | None = None,
) -> VolumeRef:
    """A qcow2 overlay ``name`` on ``backing_volume`` (the image cached on this host), grown to ``size_bytes``.

    The virtual size is ``size_bytes`` (the flavor's disk), never smaller than the image's own
    virtual size: a smaller flavor is refused. ``backing_format`` is what the image is known to be
    (the image catalogue knows); without it, the format libvirt found in the pool is used. A base
    volume that itself has a backing file is refused: cached images must stand alone. Replaces a
    leftover volume of the same name.
    """
    conn = connect(uri)
    pool = _pool(conn, pool_name)
    source_pool = _pool(conn, backing_pool) if backing_pool else pool
    try:
        base = source_pool.storageVolLookupByName(backing_volume)
    except libvirt.libvirtError as exc:
        raise BackendError(f"image volume {backing_volume!r} not found: {exc.get_error_message()}") from exc
    _type, base_capacity, _alloc = base.info()
    if size_bytes < base_capacity:
        raise BackendError(
            f"disk size {size_bytes} bytes is smaller than the image's virtual size ({base_capacity} bytes)"
        )
    with contextlib.suppress(libvirt.libvirtError):
        pool.storageVolLookupByName(name).delete(0)
    if ET.fromstring(base.XMLDesc(0)).find("backingStore/path") is not None:  # noqa: S314 - libvirt's own XML
        raise BackendError(f"image volume {backing_volume!r} has a backing file itself; refusing to build on it")
    fmt = backing_format or _volume_format(base)
    xml = overlay_xml(name=name, capacity=size_bytes, backing_path=base.path(), backing_format=fmt)
    try:
        pool.createXML(xml, 0)
    except libvirt.libvirtError as exc:
        raise BackendError(f"cannot create overlay {name!r}: {exc.get_error_message()}") from exc
    return _ref(pool_name, pool.storageVolLookupByName(name))


def create_volume(uri: str, *, pool_name: str, name: str, size_bytes: int, fmt: str = "qcow2") -> VolumeRef:
    """A blank volume (the target disk of an ISO install); replaces a leftover of the same name."""
    pool = _pool(connect(uri), pool_name)
    with contextlib.suppress(libvirt.libvirtError):
        pool.storageVolLookupByName(name).delete(0)
    try:
        vol = pool.createXML(volume_xml(name=name, capacity=size_bytes, fmt=fmt), 0)
    except libvirt.libvirtError as exc:
        raise BackendError(f"cannot create volume {name!r}: {exc.get_error_message()}") from exc
    return _ref(pool_name, vol)


def pool_usage(uri: str, *, pool_name: str) -> tuple[int, int, int]:
    """(capacity, allocation, available) of a pool, in bytes."""
    pool = _pool(connect(uri), pool_name)
    try:
        with contextlib.suppress(libvirt.libvirtError):
            pool.refresh(0)
        _state, capacity, allocation, available = pool.info()
    except libvirt.libvirtError as exc:
        raise BackendError(f"cannot read storage pool {pool_name!r}: {exc.get_error_message()}") from exc
    return capacity, allocation, available


def list_volumes(uri: str, *, pool_name: str) -> list[VolumeRef]:
    pool = _pool(connect(uri), pool_name)
    with contextlib.suppress(libvirt.libvirtError):
        pool.refresh(0)
    refs = []
    for vol in pool.listAllVolumes(0):
        with contextlib.suppress(libvirt.libvirtError):  # deleted meanwhile
            refs.append(_ref(pool_name, vol))
    return refs


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


def resize_volume(uri: str, *, pool_name: str, name: str, size_bytes: int) -> VolumeRef:
    """Grow a volume to ``size_bytes`` (its virtual size); shrinking is refused."""
    pool = _pool(connect(uri), pool_name)
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        raise NotFound(f"volume {name!r} not found in pool {pool_name!r}") from exc
    _type, capacity, _alloc = vol.info()
    if size_bytes < capacity:
        raise BackendError(f"volume {name!r} is {capacity} bytes; shrinking to {size_bytes} bytes is not possible")
    if size_bytes > capacity:
        try:
            vol.resize(size_bytes, 0)
        except libvirt.libvirtError as exc:
            raise BackendError(f"cannot resize volume {name!r}: {exc.get_error_message()}") from exc
    return _ref(pool_name, vol)


def download_file(uri: str, *, pool_name: str, name: str, target: Path) -> int:
    """Stream volume ``name`` of ``pool_name`` into the local file ``target`` (its bytes as stored); the size."""
    conn = connect(uri)
    try:
        vol = _pool(conn, pool_name).storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        raise NotFound(f"volume {name!r} not found in pool {pool_name!r}") from exc
    stream = conn.newStream(0)
    written = 0

    def sink(_stream, data: bytes, fh) -> int:
        nonlocal written
        written += len(data)
        return fh.write(data)

    try:
        with open(target, "wb") as fh:
            vol.download(stream, 0, 0, 0)
            stream.recvAll(sink, fh)
            stream.finish()
    except (libvirt.libvirtError, OSError) as exc:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise BackendError(f"download of {name!r} failed: {exc}") from exc
    return written


def refresh_pool(uri: str, *, pool_name: str) -> None:
    """Have libvirt look at the pool's directory again (files another host put there on shared storage)."""
    with contextlib.suppress(libvirt.libvirtError):  # a refresh already running is as good
        _pool(connect(uri), pool_name).refresh(0)
