"""The libvirt adapter: instances are domains, disks are volumes in the host's storage pool.

Instances are addressed on their host by UUID (``Instance.uuid`` is the libvirt domain UUID); their
volumes are named after it (``root_volume``…). Every step is idempotent (a volume that exists is
reused, a domain defined again with the same UUID is the same domain, a started domain stays
started), so a task redelivered after a worker died finishes the job.

The watcher's side is in ``watch`` (``reconcile`` delegates to it); ``guest_stats`` serves its metrics.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import Q
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from images import qemu
from images.distribution import wait_for_copy
from images.models import Image, ImageReplica
from portal.backends.base import (
    BackendError,
    DiskSpec,
    DomainStats,
    HostStats,
    InstanceState,
    NicFilter,
    NotFound,
)
from portal.backends.cloudinit import build_nocloud_seed, hostname_from
from portal.backends.libvirt import storage
from portal.backends.libvirt.driver import LibvirtDriver, random_vnc_password
from portal.backends.libvirt.serial import SerialConsole
from portal.services import ConflictError, ServiceError
from portal.texts import said
from vms import operations
from vms.compute import state
from vms.compute.base import AdapterBase, Capability, ConsoleEndpoint, FirewallPlan, HostFact, given_credentials
from vms.compute.libvirt import migration
from vms.compute.libvirt.firewall import apply_plan, port_for
from vms.compute.libvirt.images import ensure_image_on_host, shared_with_others
from vms.compute.libvirt.spec import (
    build_spec,
    disk_volume,
    driver_for,
    instance_volumes,
    libvirt_uri,
    observed,
    port_filter_name,
    root_volume,
    seed_volume,
    shared_storage,
)
from vms.compute.libvirt.watch import reconcile_host
from vms.compute.state import host_state_changed, mark_host_down
from vms.compute.texts import EVACUATED, MIGRATED
from vms.models import Host, Instance, InstanceDisk, Operation, Snapshot
from vms.networks import ensure_on_host

log = logging.getLogger(__name__)

GIB = 1024**3
DETACH_TIMEOUT = 30  # seconds a guest gets to release a hot-unplugged disk

HOST_CAPABILITIES = frozenset(Capability) - {Capability.TENANT_PROJECTS}
# An adopted domain's disks and devices are the host's, not the portal's: nothing that rebuilds them.
ADOPTED_MISSING = frozenset(
    {
        Capability.RESIZE,
        Capability.LIVE_RESOURCES,
        Capability.SECURITY_GROUPS,
        Capability.INSTALL_FROM_ISO,
        Capability.EXTRA_DISKS,
        Capability.CAPTURE,
        Capability.MIGRATE,
    }
)
SETTINGS_FIELDS = (
    "uri",
    "storage_pool",
    "storage_share",
    "migration_address",
    "default_network",
    "vnc_listen",
    "virt_type",
    "cpu_mode",
    "cpu_model",
    "cpu_allocation_ratio",
    "ram_allocation_ratio",
    "disk_allocation_ratio",
    "reserved_ram_mib",
)


# ---------------------------------------------------------------- names and the driver


def _nic_filter(driver: LibvirtDriver, network: str | None, port: str | None = None) -> NicFilter | None:
    """Anti-spoofing for the instance's NIC (every NIC the portal defines gets it: networks are shared), through
    its port filter (its security groups) when it has one."""
    return driver.nic_filter(network, port=port) if network else None


def _start(driver: LibvirtDriver, uuid: str, port: str | None) -> InstanceState:
    """Start a domain, its NICs filtered first (a domain defined before they were keeps no unfiltered NIC)."""
    driver.filter_nics(uuid, port=port)
    return driver.start(uuid)


def _network_name(instance: Instance) -> str | None:
    if instance.network_id is not None:
        return ensure_on_host(network=instance.network, host=instance.host)
    return instance.host.default_network or None


def _seed(instance: Instance) -> bytes:
    """The instance's NoCloud seed ISO (the same bytes for the same rows: a migration builds it again there)."""
    keys = [instance.keypair.public_key] if instance.keypair is not None else []
    return build_nocloud_seed(
        instance_id=str(instance.uuid),
        hostname=hostname_from(instance.name, fallback=f"instance-{str(instance.uuid)[:8]}"),
        ssh_keys=keys,
        user_data=instance.user_data or None,
    )


def _record(instance: Instance, domain: InstanceState) -> None:
    state.record_task_result(instance, observed(domain))


class LibvirtAdapter(AdapterBase):
    kind = Host.Kind.LIBVIRT

    # ------------------------------------------------------------ capabilities

    def host_capabilities(self, host: Host) -> frozenset[Capability]:
        return HOST_CAPABILITIES

    def capabilities(self, instance: Instance) -> frozenset[Capability]:
        return HOST_CAPABILITIES - ADOPTED_MISSING if instance.adopted else HOST_CAPABILITIES

    def describe(self, host: Host) -> str:
        return _("a libvirt host")

    def limits_note(self, instance: Instance) -> str:
        if instance.adopted:
            return _(
                "This instance was adopted: its disks and devices are managed on the host, so the portal "
                "cannot do these:"
            )
        return super().limits_note(instance)

    def missing_reason(self, instance: Instance, action: str) -> str:
        if instance.adopted:
            return _("Instance “%(name)s” was adopted: its disks and devices are managed on the host, not here.") % {
                "name": instance.name
            }
        return super().missing_reason(instance, action)

    # ------------------------------------------------------------ launch

    def launch(self, operation: Operation, instance: Instance, *, start: bool = True) -> str:
        host = instance.host
        driver = driver_for(host)
        image = instance.image
        if image is None or image.status != Image.Status.ACTIVE:
            raise ServiceError(said(gettext_noop("The image of this instance is gone or no longer active.")))
        if not image.replicas.filter(host=host, state=ImageReplica.State.READY).exists():
            operations.progress(operation=operation, percent=5, message=_("Copying the image to the host"))

        def copy_progress(percent: int) -> None:
            operations.progress(operation=operation, percent=5 + percent * 55 // 100)

        replica = wait_for_copy(
            lambda: ensure_image_on_host(image=image, host=host, operation=operation, progress=copy_progress),
            operation=operation,
        )
        pool = host.storage_pool
        size = instance.disk_gib * GIB
        operations.progress(operation=operation, percent=65, message=_("Creating the disk and the seed"))
        if driver.find_volume(pool, root_volume(instance)) is None:
            if instance.installing:
                driver.create_volume(pool, root_volume(instance), size)
            else:
                size = max(size, image.virtual_size or 0)
                driver.create_overlay(
                    pool,
                    root_volume(instance),
                    replica.volume,
                    size,
                    backing_pool=replica.pool if replica.pool != pool else None,
                    backing_format=image.stored_format or "qcow2",
                )
        if not instance.installing:  # always written: a crash may have left a partial seed behind
            driver.upload_bytes(pool, seed_volume(instance), _seed(instance))
        network = _network_name(instance)
        port = port_for(driver, instance) if network else None
        try:
            facts = driver.describe(str(instance.uuid))
        except NotFound:
            driver.define(build_spec(instance, network=network, nic_filter=_nic_filter(driver, network, port)))
            facts = driver.describe(str(instance.uuid))
        else:  # defined by an earlier attempt
            driver.filter_nics(str(instance.uuid), port=port)
        mac = facts.spec.mac_address or instance.mac_address  # libvirt picks the MAC when the domain is defined
        if start:
            operations.progress(operation=operation, percent=90, message=_("Starting"))
            domain = driver.start(str(instance.uuid))
        else:
            domain = driver.state(str(instance.uuid))
        Instance.objects.filter(pk=instance.pk).update(mac_address=mac or "")
        instance.mac_address = mac or ""
        _record(instance, domain)
        return _("Instance is running.")

    # ------------------------------------------------------------ power

    def power(self, operation: Operation, instance: Instance, action: str) -> None:
        driver = driver_for(instance.host)
        uuid = str(instance.uuid)
        handlers = {
            "start": lambda: _start(driver, uuid, port_for(driver, instance)),
            "stop": lambda: driver.power_off(uuid),
            "reboot": lambda: driver.reboot(uuid),
            "reset": lambda: driver.reset(uuid),
            "pause": lambda: driver.pause(uuid),
            "resume": lambda: driver.resume(uuid),
            "shutdown": lambda: self._shutdown(driver, operation, uuid),
        }
        _record(instance, handlers[action]())

    @staticmethod
    def _shutdown(driver: LibvirtDriver, operation: Operation, uuid: str) -> InstanceState:
        domain = driver.shutdown(uuid)
        deadline = time.monotonic() + settings.LABCLOUD_SHUTDOWN_TIMEOUT
        while domain.state not in ("shutoff", "crashed"):
            if time.monotonic() > deadline:
                operations.progress(operation=operation, percent=80, message=_("No reaction to ACPI; powering off"))
                return driver.power_off(uuid)
            operations.heartbeat(operation=operation)
            time.sleep(0.5)
            domain = driver.state(uuid)
        return domain

    def finish_install(self, operation: Operation, instance: Instance) -> None:
        driver = driver_for(instance.host)
        uuid = str(instance.uuid)
        driver.power_off(uuid)
        Instance.objects.filter(pk=instance.pk).update(installing=False)
        instance.installing = False
        port = self._redefine(driver, instance)  # the same domain without the installer, disk first
        _record(instance, _start(driver, uuid, port))

    @staticmethod
    def _redefine(driver: LibvirtDriver, instance: Instance) -> str | None:
        network = driver.describe(str(instance.uuid)).spec.network
        port = port_for(driver, instance) if network else None
        driver.define(build_spec(instance, network=network, nic_filter=_nic_filter(driver, network, port)))
        return port

    # ------------------------------------------------------------ sizes and disks

    def resize(self, operation: Operation, instance: Instance) -> None:
        driver = driver_for(instance.host)
        operations.progress(operation=operation, percent=30, message=_("Growing the disk"))
        driver.resize_volume(instance.host.storage_pool, root_volume(instance), instance.disk_gib * GIB)
        operations.progress(operation=operation, percent=70, message=_("Redefining"))
        self._redefine(driver, instance)
        _record(instance, driver.state(str(instance.uuid)))

    def set_resources(self, operation: Operation, instance: Instance) -> None:
        """Running: vCPUs hot-added (RAM changes are refused while running, see ``lifecycle.set_resources``).
        Shut off: the domain is redefined, ``<memory>`` itself becomes the new RAM."""
        driver = driver_for(instance.host)
        uuid = str(instance.uuid)
        if instance.state == Instance.State.RUNNING:
            domain = driver.set_vcpus(uuid, instance.vcpus)
        else:
            self._redefine(driver, instance)
            domain = driver.state(uuid)
        _record(instance, domain)

    def attach_disk(self, operation: Operation, instance: Instance, disk: InstanceDisk) -> None:
        if not disk.volume:  # named after the disk's row
            disk.volume = disk_volume(instance, disk.pk)
            InstanceDisk.objects.filter(pk=disk.pk).update(volume=disk.volume)
        driver = driver_for(instance.host)
        pool = instance.host.storage_pool
        if driver.find_volume(pool, disk.volume) is None:
            driver.create_volume(pool, disk.volume, disk.size_gib * GIB)
        already = next((d for d in driver.describe(str(instance.uuid)).spec.disks if d.volume == disk.volume), None)
        if already is not None and not disk.attached:  # attached before a crash: just record it
            InstanceDisk.objects.filter(pk=disk.pk).update(attached=True, target=already.target or "")
        elif not disk.attached:
            attached = driver.attach_disk(
                str(instance.uuid), DiskSpec(device="disk", pool=pool, volume=disk.volume, format="qcow2")
            )
            InstanceDisk.objects.filter(pk=disk.pk).update(attached=True, target=attached.target or "")

    def detach_disk(self, operation: Operation, instance: Instance, disk: InstanceDisk) -> None:
        driver = driver_for(instance.host)
        uuid = str(instance.uuid)
        if disk.attached and disk.target:
            driver.detach_disk(uuid, disk.target)
            # A live unplug needs the guest's cooperation: delete the volume only once QEMU let go of it.
            deadline = time.monotonic() + DETACH_TIMEOUT
            while disk.target in self._live_targets(driver, uuid):
                if time.monotonic() > deadline:
                    raise BackendError(
                        _("The guest did not release disk %(target)s; it is removed at the next shut down.")
                        % {"target": disk.target}
                    )
                time.sleep(0.5)
        driver.delete_volume(instance.host.storage_pool, disk.volume)

    @staticmethod
    def _live_targets(driver: LibvirtDriver, uuid: str) -> set[str]:
        facts = driver.describe(uuid, inactive=False)
        return {d.target for d in facts.spec.disks if d.target} if facts.active else set()

    def discard_disk(self, instance: Instance, disk: InstanceDisk) -> None:
        """A disk whose attach failed: its volume goes (best effort)."""
        try:
            driver_for(instance.host).delete_volume(instance.host.storage_pool, disk.volume)
        except BackendError:
            log.warning("could not delete the volume of a failed disk attach", exc_info=True)

    # ------------------------------------------------------------ snapshots

    def create_snapshot(self, operation: Operation, instance: Instance, snapshot: Snapshot) -> None:
        driver = driver_for(instance.host)
        uuid = str(instance.uuid)
        if snapshot.name not in {s.name for s in driver.snapshot_list(uuid)}:
            driver.snapshot_create(uuid, snapshot.name, snapshot.description)
        operations.progress(operation=operation, percent=90, message=_("Measuring the snapshot storage"))
        self._measure_after_change(instance)

    def revert_snapshot(self, operation: Operation, instance: Instance, snapshot: Snapshot) -> None:
        driver = driver_for(instance.host)
        uuid = str(instance.uuid)
        # The request compared the snapshot's row with the instance; the host's own record decides.
        then = driver.snapshot_spec(uuid, snapshot.name)
        if then is not None and (then.effective_max_memory_mib > instance.ram_mib or then.vcpus > instance.vcpus):
            raise ConflictError(
                said(
                    gettext_noop(
                        "Snapshot “%(name)s” would bring back %(ram)d MiB of RAM and %(vcpus)d vCPUs, more than the "
                        "instance counts (%(counted_ram)d MiB, %(counted_vcpus)d vCPUs); resize it first."
                    ),
                    name=snapshot.name,
                    ram=then.effective_max_memory_mib,
                    vcpus=then.vcpus,
                    counted_ram=instance.ram_mib,
                    counted_vcpus=instance.vcpus,
                )
            )
        _record(instance, driver.snapshot_revert(uuid, snapshot.name, port=port_for(driver, instance)))
        self._measure_after_change(instance)

    def delete_snapshot(self, operation: Operation, instance: Instance, snapshot: Snapshot) -> None:
        driver_for(instance.host).snapshot_delete(str(instance.uuid), snapshot.name)
        self._measure_after_change(instance)

    def _measure_after_change(self, instance: Instance) -> None:
        """Measure after the host created, reverted or deleted a snapshot: the host did it, so a failed
        measurement must not fail the operation (the next capacity refresh measures again)."""
        try:
            self.measure_snapshots(instance)
        except (BackendError, OSError) as exc:
            log.warning("snapshot storage of instance %s not measured: %s", instance.pk, exc)

    def measure_snapshots(self, instance: Instance) -> int:
        """Measure what the instance's snapshots hold in the pool and store it (``Instance.snapshot_bytes``).

        Internal qcow2 snapshots live inside the instance's volumes: the blocks the guest has
        rewritten since a snapshot (the old ones stay for it) and, for a running instance, its saved
        memory. Per writable qcow2 disk of the domain, that is the volume's allocation (libvirt)
        minus what its current contents need alone (``qemu-img measure`` of the top layer, no
        backing file, no snapshots): exact to the metadata, and cheap (it reads the cluster tables,
        not the data). It needs the volume's file, so on a host that is not this machine the
        portal counts only what a volume holds beyond its virtual size (a lower bound; the pool
        guard of the scheduler still sees the pool). Without snapshots it is 0. A local volume that
        cannot be measured never lowers the figure: it stays at least what was measured before.
        """
        host = instance.host
        driver = driver_for(host)
        uuid = str(instance.uuid)
        held, unmeasured = 0, False
        if driver.snapshot_list(uuid):
            local = not urlsplit(host.uri).hostname
            for disk in driver.describe(uuid).spec.disks:
                if disk.device != "disk" or disk.readonly or (disk.format or "qcow2") != "qcow2":
                    continue
                part = self._held_beyond_contents(driver, disk, local=local)
                unmeasured |= part is None
                held += part or 0
        if unmeasured:
            held = max(
                held, Instance.objects.filter(pk=instance.pk).values_list("snapshot_bytes", flat=True).first() or 0
            )
        Instance.objects.filter(pk=instance.pk).update(snapshot_bytes=held)
        instance.snapshot_bytes = held
        return held

    @staticmethod
    def _held_beyond_contents(driver: LibvirtDriver, disk: DiskSpec, *, local: bool) -> int | None:
        """What a disk's snapshots hold; None when a local volume could not be measured."""
        if disk.volume is not None:
            volume = driver.find_volume(disk.pool, disk.volume)
            if volume is None:
                return 0
            path, allocation, capacity = Path(volume.path), volume.allocation, volume.capacity
        elif disk.path is not None and local and Path(disk.path).exists():  # an adopted domain's own file
            path = Path(disk.path)
            allocation, capacity = path.stat().st_blocks * 512, 0
        else:
            return 0
        alone = capacity
        if local and path.exists():
            try:
                alone = qemu.measure_alone(path)
            except (qemu.QemuImgError, OSError) as exc:
                log.error("cannot measure the snapshots in %s: %s", path, exc)
                return None
        return max(0, allocation - alone)

    # ------------------------------------------------------------ migration

    def migrate(self, operation: Operation, instance: Instance, destination: Host) -> str:
        """Live (running) or cold (shut off) to ``destination``; the row follows only after libvirt finished."""
        if instance.host_id == destination.pk:  # an earlier attempt's worker died after the row moved
            return MIGRATED
        if migration.landed(instance):  # ... or after libvirt finished: the source's copies and the rows are left
            migration.remove_source_copies(instance, instance.host, destination)
            message = MIGRATED
        else:
            message = migration.migrate(
                operation, instance, destination, seed=None if instance.installing else _seed(instance)
            )
        Instance.objects.filter(pk=instance.pk).update(host=destination, migration_target=None)
        instance.host, instance.migration_target = destination, None
        _record(instance, driver_for(destination).state(str(instance.uuid)))
        return message

    def evacuate(self, operation: Operation, instance: Instance, destination: Host) -> str:
        """Rebuild on ``destination`` an instance whose host is down: its disks reused on shared storage, else
        made anew from its image (extra disks blank); its old copy goes when the dead host answers again."""
        source = instance.host
        try:  # the last word before a second copy of the guest exists: is its host really away?
            driver_for(source).capacity(source.storage_pool or None)
        except BackendError:
            pass
        else:
            raise ConflictError(
                said(
                    gettext_noop("The host of instance “%(name)s” answers again: migrate it instead."),
                    name=instance.name,
                )
            )
        driver = driver_for(destination)
        pool = destination.storage_pool
        shared = shared_storage(source, destination)
        if shared:
            driver.refresh_pool(pool)
        # What the member is told was lost, counted once: a retry after the rows were deleted says the same.
        if "snapshots_lost" not in operation.params:
            operation.params = {**operation.params, "snapshots_lost": instance.snapshots.count()}
            Operation.objects.filter(pk=operation.pk).update(params=operation.params)
        instance.host = destination  # the launch's steps, there (a root disk that is there is reused)
        try:
            for disk in instance.disks.filter(attached=True).exclude(volume=""):
                if driver.find_volume(pool, disk.volume) is None:
                    driver.create_volume(pool, disk.volume, disk.size_gib * GIB)
            self.launch(operation, instance, start=instance.desired_power_state == Instance.PowerState.RUNNING)
        except Exception:
            self._abandon_rebuild(instance, driver, pool, shared=shared)
            instance.host = source
            raise
        # The snapshots' records were on the dead host (and their blocks in its disks, unless shared).
        Snapshot.objects.filter(instance=instance).delete()
        Instance.objects.filter(pk=instance.pk).update(
            host=destination, migration_target=None, evacuated_from=source, snapshot_bytes=0
        )
        instance.migration_target, instance.evacuated_from, instance.snapshot_bytes = None, source, 0
        _record(instance, driver.state(str(instance.uuid)))
        return EVACUATED[(shared, operation.params["snapshots_lost"] > 0)]  # the member reads it on the operation

    @staticmethod
    def _abandon_rebuild(instance: Instance, driver: LibvirtDriver, pool: str, *, shared: bool) -> None:
        """A rebuild that failed: its domain goes from the destination, and the volumes it made (not shared ones)."""
        try:
            driver.undefine(str(instance.uuid))
            if not shared:
                volumes = [
                    root_volume(instance),
                    seed_volume(instance),
                    *instance.disks.values_list("volume", flat=True),
                ]
                for volume in filter(None, volumes):
                    driver.delete_volume(pool, volume)
        except BackendError:
            log.warning("instance %s: the failed rebuild's leftovers stay on the destination", instance.uuid)

    def shares_storage(self, host: Host, other: Host) -> bool:
        return shared_storage(host, other)

    # ------------------------------------------------------------ removal

    def remove(self, instance: Instance, operation: Operation | None = None) -> None:
        """Domain, root disk, seed and extra disks off the host; what is already gone is fine.

        Without ``operation`` (cleaning up after a failed launch) a host that does not answer is logged.
        """
        driver = driver_for(instance.host)
        pool = instance.host.storage_pool
        if operation is not None:
            operations.progress(operation=operation, percent=20, message=_("Removing the domain"))
        try:
            driver.undefine(str(instance.uuid))
            driver.remove_filter(port_filter_name(str(instance.uuid)))
            if operation is not None:
                operations.progress(operation=operation, percent=60, message=_("Deleting the disks"))
            for volume in instance_volumes(instance):
                driver.delete_volume(pool, volume)
        except BackendError:
            if operation is not None:
                raise
            log.warning("could not clean up instance %s after a failed launch", instance.uuid, exc_info=True)

    # ------------------------------------------------------------ console and capture (web process)

    def console(self, instance: Instance, *, ttl: int) -> ConsoleEndpoint:
        """A one-time VNC password on the running domain, valid for ``ttl`` seconds; the portal's proxy connects."""
        password = random_vnc_password()
        try:
            target = driver_for(instance.host).set_vnc_password(str(instance.uuid), password, valid_seconds=ttl)
        except BackendError as exc:
            log.warning("console of instance %s: %s", instance.pk, exc.message)
            raise ConflictError(said(gettext_noop("The console of this instance is not available right now."))) from exc
        return ConsoleEndpoint(vnc_host=target.host, vnc_port=target.port, password=password)

    def console_target(self, instance: Instance) -> ConsoleEndpoint:
        """Where the running instance's VNC server listens now (BackendError when it does not run or answer):
        the console proxy checks a token's address against it."""
        target = driver_for(instance.host).console_target(str(instance.uuid))
        return ConsoleEndpoint(vnc_host=target.host, vnc_port=target.port)

    def capture_source(self, instance: Instance) -> Path:
        """The root disk's file, when the host is this machine (the image pipeline reads it from there)."""
        try:
            volume = driver_for(instance.host).find_volume(instance.host.storage_pool, root_volume(instance))
        except BackendError as exc:
            log.warning("capture of instance %s: %s", instance.pk, exc.message)  # names the host: for the log
            raise ConflictError(
                said(
                    gettext_noop("The host of instance “%(name)s” did not answer; try again later."), name=instance.name
                )
            ) from exc
        if volume is None or not Path(volume.path).exists():
            raise ConflictError(
                said(
                    gettext_noop(
                        "The disk of instance “%(name)s” is not on this machine; capture works for local hosts only."
                    ),
                    name=instance.name,
                )
            )
        return Path(volume.path)

    # ------------------------------------------------------------ hosts

    def check_host(self, host: Host) -> Host:
        """Ask the host for its capacity and store it; an unreachable host becomes DOWN with the error as reason."""
        try:
            capacity = driver_for(host).capacity(host.storage_pool or None)
        except BackendError as exc:
            log.info("host %s is down: %s", host.name, exc.message)
            return mark_host_down(host=host, reason=exc.message)
        host.cpus = capacity.cpus
        host.memory_mib = capacity.memory_mib
        host.free_memory_mib = capacity.free_memory_mib
        host.pool_capacity = capacity.pool_capacity
        host.pool_available = capacity.pool_available
        host.backend_version = capacity.libvirt_version
        was_down = Host.objects.filter(pk=host.pk, state=Host.State.DOWN).exists()
        host.state = Host.State.UP if host.enabled else Host.State.DISABLED
        host.state_reason = ""
        host.last_seen = timezone.now()
        host.save(update_fields=list(Host.REPORTED_FIELDS))
        if was_down:
            host_state_changed(host_id=host.pk)
        self._measure_snapshots_on(host)
        return host

    def _measure_snapshots_on(self, host: Host) -> None:
        """Snapshot storage grows while guests rewrite blocks their snapshots keep: measured again at each refresh."""
        with_snapshots = (
            Instance.objects.filter(host=host)
            .filter(Q(snapshots__isnull=False) | Q(snapshot_bytes__gt=0))
            .exclude(state=Instance.State.DELETING)
            .select_related("host")
            .distinct()
        )
        for instance in with_snapshots:
            try:
                self.measure_snapshots(instance)
            except (BackendError, OSError) as exc:  # the domain vanished meanwhile, say: the watcher deals with it
                log.info("snapshot storage of instance %s not measured: %s", instance.pk, exc)

    def check_summary(self, host: Host) -> str:
        return _("%(host)s: %(cpus)s CPUs, %(ram)s MiB RAM.") % {
            "host": host.name,
            "cpus": host.cpus,
            "ram": host.memory_mib,
        }

    def location(self, host: Host) -> str:
        return host.uri

    def host_facts(self, host: Host) -> list[HostFact]:
        cpu = host.get_cpu_mode_display() + (f" ({host.cpu_model})" if host.cpu_model else "")
        return [
            HostFact(_("Virtualization"), host.get_virt_type_display(), "virt-type"),
            HostFact(_("CPU mode"), cpu, "cpu-mode"),
            HostFact(
                _("Free RAM"), f"{host.free_memory_mib} MiB" if host.free_memory_mib is not None else "—", "free-ram"
            ),
            HostFact(
                _("Pool free space"),
                filesizeformat(host.pool_available) if host.pool_available is not None else "—",
                "pool-free",
            ),
            HostFact(_("libvirt"), host.backend_version or "—", "version"),
        ]

    def settings_fields(self) -> tuple[str, ...]:
        return SETTINGS_FIELDS

    def validate_settings(self, host: Host) -> None:
        if not host.uri:
            raise ServiceError(said(gettext_noop("A libvirt host needs its URI.")), field="uri")
        if host.cpu_mode == Host.CpuMode.CUSTOM and not host.cpu_model:
            raise ServiceError(said(gettext_noop("CPU mode “custom” needs a CPU model.")), field="cpu_model")

    def apply_login(self, host: Host, *, credentials: dict[str, str], clear: bool) -> None:
        if given_credentials(credentials):
            raise ServiceError(said(gettext_noop("A libvirt host has no cloud credentials.")), field="credentials")
        if clear:
            host.credentials = ""

    def forget(self, host: Host) -> None:
        """Nothing to forget: connections are kept per URI and checked for life at each use."""

    def remove_image_copy(self, replica: ImageReplica) -> None:
        if shared_with_others(replica):
            return  # the last host on the shared storage removes the file
        storage.delete_volume(libvirt_uri(replica.host), pool_name=replica.pool, name=replica.volume)

    # ------------------------------------------------------------ the watcher

    def reconcile(self, host: Host, *, since=None) -> dict[str, int]:
        return reconcile_host(host)

    def guest_stats(self, host: Host) -> list[DomainStats]:
        """The raw counters of every running domain of the host (one driver call), for the metrics."""
        return driver_for(host).domain_stats()

    def host_stats(self, host: Host) -> HostStats:
        """The host's own CPU times and memory (two driver calls), for the host page's graphs."""
        return driver_for(host).host_stats()

    def serial_console(self, host: Host, uuid: str, *, on_data, on_end) -> SerialConsole:
        """The domain's serial console as a byte pipe, on a connection of its own (not opened yet)."""
        return SerialConsole(libvirt_uri(host), uuid, on_data=on_data, on_end=on_end)

    def copy_image(self, host: Host, image: Image, *, operation=None, progress=None) -> ImageReplica:
        return ensure_image_on_host(image=image, host=host, operation=operation, progress=progress)

    def apply_firewall(self, host: Host, plan: FirewallPlan) -> None:
        """The plan's filters, then each instance's NICs pointed at its port filter, live and in the config (a
        domain defined before security groups existed, or edited on the host, is brought in line)."""
        driver = driver_for(host)
        apply_plan(driver, plan)
        for uuid, _groups in plan.ports:
            try:
                driver.filter_nics(uuid, port=port_filter_name(uuid))
            except NotFound:
                continue  # not defined yet (its launch gives it the filter) or gone
