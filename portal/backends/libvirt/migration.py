"""Moving a domain from one libvirt host to another: live (``virDomainMigrate3``) or, shut off, by definition.

The portal drives a *managed direct* migration: it holds a connection to both daemons, so neither
needs to reach the other's libvirt URI (only QEMU's migration and NBD ports of the destination,
at ``MigrationPlan.address``). The domain's XML for the destination is the source's, rewritten with
ElementTree: each disk points at the destination's file (live definition, ``type='file'``: libvirt
pre-creates nothing, the caller did) or volume (persistent definition), the NIC at the destination's
network and anti-spoofing filter, the VNC server at the destination's listen address.

Storage: on shared storage the disks stay where they are (libvirt 9 does not recognise every shared
file system and wants ``VIR_MIGRATE_UNSAFE``, see docs/operator-guide.md); otherwise the writable
disks are mirrored over NBD into the copies the caller pre-created (``VIR_MIGRATE_NON_SHARED_INC``:
an overlay whose base is already there copies only its own blocks).

While the job runs, ``migrate`` polls the job's statistics for ``on_progress``, aborts the job when
``should_cancel`` says so or the deadline passes (unless it may switch to post-copy first), and
reports the completed job's figures (downtime included) at the end.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import libvirt

from portal.backends.base import BackendError, NicFilter
from portal.backends.libvirt.connection import connect
from portal.backends.libvirt.domain import add_filterref

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# A call in the watching loop that takes longer than this is logged (it holds up the deadline).
SLOW_CALL_SECONDS = 5.0
# Polls a post-copy switch waits, at most, for a job that is about to finish in pre-copy.
HOLD_POLLS = 4


class MigrationCancelled(BackendError):
    """The job was aborted on request or at its deadline (``reason``); the guest runs on the source, untouched."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "cancelled" or "deadline"


@dataclass(frozen=True)
class DiskMove:
    """Where one disk of the domain (by target, ``vda``) lives on the destination."""

    target: str
    path: str  # the file on the destination (live definition)
    pool: str  # the volume there (persistent definition)
    volume: str
    copy: bool  # mirrored during the migration (a writable disk without shared storage)


@dataclass(frozen=True)
class MigrationPlan:
    uuid: str
    source_uri: str
    destination_uri: str
    disks: tuple[DiskMove, ...]
    live: bool  # the guest runs (False: a shut-off domain is defined there, nothing copied)
    shared_storage: bool
    address: str = ""  # where the destination's QEMU listens for the migration stream ("" = its host name)
    networks: dict[str, str] = field(default_factory=dict)  # source network name -> destination's
    nic_filters: dict[str, NicFilter | None] = field(default_factory=dict)  # destination network -> its filter
    vnc_listen: str = ""
    timeout: float = 600.0  # seconds before the job is aborted (or switched to post-copy)
    post_copy: bool = False  # at the deadline, switch to post-copy instead of aborting
    max_downtime_ms: int = 0  # 0: libvirt's default (300 ms)
    bandwidth_mib: int = 0  # MiB/s; 0: unlimited


@dataclass(frozen=True)
class MigrationProgress:
    """One look at a running migration job (bytes; None when the hypervisor does not say)."""

    elapsed_ms: int
    data_total: int | None
    data_processed: int | None
    data_remaining: int | None
    disk_total: int | None = None
    disk_remaining: int | None = None
    downtime_ms: int | None = None
    iteration: int | None = None

    @property
    def percent(self) -> int:
        if not self.data_total:
            return 0
        return max(0, min(99, int(100 * (self.data_total - (self.data_remaining or 0)) / self.data_total)))


@dataclass(frozen=True)
class MigrationResult:
    seconds: float
    downtime_ms: int | None
    post_copy: bool  # it switched to post-copy


def _stats(stats: dict) -> MigrationProgress:
    return MigrationProgress(
        elapsed_ms=int(stats.get("time_elapsed", 0)),
        data_total=stats.get("data_total"),
        data_processed=stats.get("data_processed"),
        data_remaining=stats.get("data_remaining"),
        disk_total=stats.get("disk_total"),
        disk_remaining=stats.get("disk_remaining"),
        downtime_ms=stats.get("downtime"),
        iteration=stats.get("memory_iteration"),
    )


def rewrite_domain_xml(xml: str, plan: MigrationPlan, *, persistent: bool) -> str:
    """The source's domain XML as the destination should define it (see the module's docstring)."""
    root = ET.fromstring(xml)  # noqa: S314 - the source libvirtd's own XML
    moves = {d.target: d for d in plan.disks}
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        move = moves.get(target.get("dev", "") if target is not None else "")
        source = disk.find("source")
        if move is None or source is None:
            continue  # an empty CD-ROM drive, say: nothing to point anywhere
        kept = [child for child in source if child.tag not in ("seclabel",)]
        disk.remove(source)
        new = ET.Element("source")
        if persistent:
            disk.set("type", "volume")
            new.set("pool", move.pool)
            new.set("volume", move.volume)
        else:
            disk.set("type", "file")
            new.set("file", move.path)
        new.extend(kept)
        disk.insert(list(disk).index(disk.find("driver")) + 1 if disk.find("driver") is not None else 0, new)
        for stale in disk.findall("backingStore"):  # the destination's chain is its own
            disk.remove(stale)
    for nic in root.findall("devices/interface[@type='network']"):
        source = nic.find("source")
        if source is None:
            continue
        network = plan.networks.get(source.get("network", ""), source.get("network", ""))
        source.set("network", network)
        for key in ("bridge", "portid"):
            source.attrib.pop(key, None)
        for old in nic.findall("filterref"):
            nic.remove(old)
        wanted = plan.nic_filters.get(network)
        if wanted is not None:
            add_filterref(nic, wanted)
    if plan.vnc_listen:
        for graphics in root.findall("devices/graphics[@type='vnc']"):
            graphics.set("listen", plan.vnc_listen)
            for listen in graphics.findall("listen"):
                if listen.get("type") == "address":
                    listen.set("address", plan.vnc_listen)
    return ET.tostring(root, encoding="unicode")


def migration_flags(plan: MigrationPlan) -> int:
    flags = libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if not plan.live:
        return flags | libvirt.VIR_MIGRATE_OFFLINE
    flags |= libvirt.VIR_MIGRATE_LIVE
    # Post-copy takes precedence over auto-converge, as in Nova: throttling a guest for the whole pre-copy
    # only to switch anyway at the deadline slows it for nothing (under TCG, to a near halt).
    flags |= libvirt.VIR_MIGRATE_POSTCOPY if plan.post_copy else libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if plan.shared_storage:
        flags |= libvirt.VIR_MIGRATE_UNSAFE  # libvirt 9 cannot tell a shared directory from a local one
    elif any(d.copy for d in plan.disks):
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    return flags


def _params(plan: MigrationPlan, dom: libvirt.virDomain) -> dict:
    inactive = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
    params: dict = {
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: rewrite_domain_xml(dom.XMLDesc(inactive), plan, persistent=True),
    }
    if plan.live:
        live = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = rewrite_domain_xml(dom.XMLDesc(live), plan, persistent=False)
        copied = [d.target for d in plan.disks if d.copy]
        if copied and not plan.shared_storage:
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = copied
        if plan.address:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{_bracketed(plan.address)}"
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = plan.address
        if plan.bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = plan.bandwidth_mib
    else:
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML]
    return params


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def migrate(
    plan: MigrationPlan,
    *,
    on_progress: Callable[[MigrationProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    poll: float = 0.5,
) -> MigrationResult:
    """Run the migration; MigrationCancelled when aborted, BackendError when it failed (the guest stays on
    the source in both cases: libvirt rolls a failed migration back)."""
    try:
        source, destination = connect(plan.source_uri), connect(plan.destination_uri)
        dom = source.lookupByUUIDString(plan.uuid)
        params, flags = _params(plan, dom), migration_flags(plan)
    except libvirt.libvirtError as exc:
        raise BackendError(f"migration of {plan.uuid} not started: {exc.get_error_message()}") from exc
    if plan.live and plan.max_downtime_ms:
        with contextlib.suppress(libvirt.libvirtError):
            dom.migrateSetMaxDowntime(plan.max_downtime_ms, 0)
    outcome: dict = {}

    def run() -> None:
        try:
            dom.migrate3(destination, params, flags)
        except libvirt.libvirtError as exc:
            outcome["error"] = exc

    def timed(name: str, call: Callable[..., _T], *args) -> _T:
        # A call that should answer at once but does not would hold up the deadline and the post-copy
        # switch: said with its name, so a slow run shows what waited.
        begun = time.monotonic()
        try:
            return call(*args)
        finally:
            took = time.monotonic() - begun
            if took > SLOW_CALL_SECONDS:
                log.warning("migration of %s: %s took %.1f s", plan.uuid, name, took)

    started = time.monotonic()
    worker = threading.Thread(target=run, name=f"migrate-{plan.uuid}", daemon=True)
    worker.start()
    aborted = switched = refused_post_copy = False
    held_back = 0
    why = ""
    try:
        while worker.is_alive():
            worker.join(poll)
            if not worker.is_alive() or not plan.live:
                break
            stats: dict = {}
            with contextlib.suppress(libvirt.libvirtError):
                stats = timed("reading the job's statistics", dom.jobStats, 0)
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE and on_progress:
                timed("reporting progress", on_progress, _stats(stats))
            elapsed = time.monotonic() - started
            late = elapsed > plan.timeout
            # Post-copy that QEMU never took within a second timeout: aborted like a job without post-copy.
            too_late = late and (not plan.post_copy or (not switched and elapsed > 2 * plan.timeout))
            cancel = not aborted and should_cancel is not None and timed("asking for a cancel", should_cancel)
            if not aborted and (cancel or too_late):
                aborted, why = True, "cancelled" if cancel else "deadline"
                log.info("aborting the migration of %s (%s)", plan.uuid, why)
                with contextlib.suppress(libvirt.libvirtError):
                    dom.abortJob()
            elif late and plan.post_copy and not switched and held_back < HOLD_POLLS and about_to_finish(stats, poll):
                # A job about to finish in pre-copy finishes so: a switch asked for as QEMU completes the
                # pre-copy races its completion. Held back for a few polls at most (one that stays
                # "about to finish" is not finishing).
                held_back += 1
            elif late and plan.post_copy and not switched:
                # Refused until the job's memory phase has begun (QEMU: "Postcopy must be started after
                # migration has been started"): asked again at the next poll until it takes.
                try:
                    timed("switching to post-copy", dom.migrateStartPostCopy, 0)
                except libvirt.libvirtError as exc:
                    if not refused_post_copy:  # said once; asked again at each poll
                        log.info("migration of %s: post-copy not started yet: %s", plan.uuid, exc.get_error_message())
                    refused_post_copy = True
                else:
                    switched = True
                    log.info("switched the migration of %s to post-copy", plan.uuid)
    except BaseException:
        # The watching failed (the database went away, the task's time limit): the job must not run on
        # unwatched, nor may the caller clean up under it. Abort it and wait until libvirt has let go.
        log.warning("migration of %s: watching it failed; aborting the job", plan.uuid)
        with contextlib.suppress(libvirt.libvirtError):
            dom.abortJob()
        worker.join()
        raise
    worker.join()
    seconds = time.monotonic() - started
    error = outcome.get("error")
    if error is not None:
        if aborted:
            message = f"migration of {plan.uuid} aborted ({why}): {error.get_error_message()}"
            raise MigrationCancelled(message, reason=why) from error
        raise BackendError(f"migration of {plan.uuid} failed: {error.get_error_message()}") from error
    downtime = None
    with contextlib.suppress(libvirt.libvirtError):  # libvirt keeps the finished job's figures on the destination
        moved = destination.lookupByUUIDString(plan.uuid)
        downtime = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED).get("downtime")
    return MigrationResult(seconds=seconds, downtime_ms=downtime, post_copy=switched)


def about_to_finish(stats: dict, poll: float) -> bool:
    """The job's memory phase would end within a poll at the rate it runs (unknown: False)."""
    remaining, rate = stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_REMAINING), stats.get(libvirt.VIR_DOMAIN_JOB_MEMORY_BPS)
    if remaining is None or not rate:
        return False
    return remaining <= rate * poll


def domain_on(uri: str, uuid: str) -> str | None:
    """``"active"``, ``"defined"`` or None: where a domain is after a migration that may or may not have happened."""
    try:
        dom = connect(uri).lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise BackendError(f"cannot look up {uuid} on {uri}: {exc.get_error_message()}") from exc
    return "active" if dom.isActive() else "defined"
