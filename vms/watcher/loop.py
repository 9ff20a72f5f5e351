"""The host watcher: libvirt domain events and a periodic full reconcile, written into the database.

One process (``manage.py watch_hosts``) keeps one long-lived connection per enabled libvirt host
(the cached connection of ``portal.backends.libvirt.connection``) with a lifecycle event callback
registered on it. libvirt calls the callback in its event-loop thread; the callback only puts the
event on a queue. The main thread takes events off the queue, asks the host for the domain's
current state and records it (``vms.compute.state.record_observed``), which publishes the change to
the channel layer: a start or stop reaches the browser well within a second.

Events can be missed (the watcher was down, the connection dropped), so every
``WATCHER_RECONCILE_SECONDS`` the watcher also runs the adapter's ``reconcile`` for every watched host,
which also picks up new, removed and disabled hosts; every ``WATCHER_CAPACITY_SECONDS`` it runs
the adapter's ``check_host``. A host that does not answer is marked down and retried with exponential
backoff; on reconnect its events are registered again and it is reconciled at once. Every
``METRICS_INTERVAL_SECONDS`` it samples the counters of every running domain of each connected
host (``vms.watcher.metrics.sample_host``, one libvirt call per host), keeping the previous round's raw
counters in memory to turn them into rates.

OpenStack clouds (hosts of kind ``openstack``) have no event stream the portal can subscribe to:
every ``WATCHER_CLOUD_POLL_SECONDS`` the watcher asks each cloud for the servers changed since its
previous poll (Nova's ``changes-since``, which also lists deleted servers), and at every reconcile
it lists all servers (the OpenStack adapter's ``reconcile``). A cloud that does not answer is marked down and
retried with the same backoff as a libvirt host. The clouds are polled in a thread of their own, one
round at a time, so a cloud that hangs instead of refusing never delays the libvirt events.

Everything else touching the database runs in the main thread; both close stale database
connections (``close_old_connections``) each round, so a restarted database costs one round.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid as uuidlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import libvirt
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db import connection as db_connection
from django.utils import timezone
from django.utils.translation import gettext as _

from portal.backends.base import BackendError
from portal.backends.libvirt import connection
from vms.compute import compute_for
from vms.compute import libvirt as libvirt_compute
from vms.compute import state as observed_state
from vms.compute.openstack.adapter import poll_window
from vms.models import Host, Instance
from vms.watcher import metrics

log = logging.getLogger(__name__)

BACKOFF_MIN = 2.0  # seconds before the first retry of a host that went down
BACKOFF_MAX = 120.0
TICK = 0.5  # longest wait for an event before the loop looks at its timers and the stop flag
HEALTH_SECONDS = 2.0  # how often the watched connections are checked for life
FIRST_POINT_SECONDS = 2.0  # a new instance's second metrics reading, after its first (then the usual interval)

# Lifecycle event → power state, for when the host cannot be asked (the event is all we know).
EVENT_STATES = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: "running",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "running",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "paused",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "shutoff",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "paused",
}


@dataclass(frozen=True)
class DomainEvent:
    uri: str
    uuid: str
    event: int
    detail: int
    received: float  # time.monotonic() in the event-loop thread


@dataclass
class Watch:
    """One watched host: its registered callback and its retry schedule."""

    host_id: int
    name: str
    uri: str
    conn: libvirt.virConnect | None = None
    callback_id: int | None = None
    failures: int = 0
    retry_at: float = 0.0

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.callback_id is not None


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


class HostWatcher:
    """The watcher's state and main loop; ``run()`` blocks until ``stop()`` (or a signal handler) is called."""

    def __init__(
        self,
        *,
        host_names: Iterable[str] = (),
        reconcile_seconds: float | None = None,
        capacity_seconds: float | None = None,
        metrics_seconds: float | None = None,
    ) -> None:
        self.host_names = sorted(set(host_names))
        self.reconcile_seconds = float(reconcile_seconds or settings.WATCHER_RECONCILE_SECONDS)
        self.capacity_seconds = float(capacity_seconds or settings.WATCHER_CAPACITY_SECONDS)
        self.metrics_seconds = float(
            metrics_seconds if metrics_seconds is not None else settings.METRICS_INTERVAL_SECONDS
        )  # 0: no sampling
        # Raw counters of the previous metrics round, per host id then domain UUID (rates need two readings).
        self.metric_counters: dict[int, dict[str, metrics.Counters]] = {}
        self.host_readings: dict[int, metrics.Counters] = {}  # each host's own last reading (its CPU times)
        self.metric_rounds = 0  # metrics rounds done (for tests and the benchmark)
        self.events: queue.Queue[DomainEvent] = queue.Queue()
        self.watches: dict[int, Watch] = {}
        # One event registration per connection (libvirt refuses a second one for the same callback),
        # shared by the hosts that name the same URI.
        self.listeners: dict[str, tuple[libvirt.virConnect, int]] = {}
        self.stopping = threading.Event()
        # set once the first round (connect, reconcile, refresh) is done; the clouds' first round may still run
        self.ready = threading.Event()
        self.handled = 0  # events applied (for tests and the benchmark)
        self.cloud_seconds = float(settings.WATCHER_CLOUD_POLL_SECONDS)
        # Per cloud: when its last successful poll started, and when it may be tried again after a failure.
        self.cloud_polled: dict[int, object] = {}
        self.cloud_retry: dict[int, tuple[float, float]] = {}  # host id → (next try, backoff)
        self.cloud_polls = 0  # cloud polls done (for tests)
        # Clouds are talked to in a thread of their own, one round at a time, so that a cloud that hangs
        # (rather than refusing) never holds up the libvirt events; a reconcile or verify that falls due
        # while a round runs is done by the next round.
        self._cloud_pool: ThreadPoolExecutor | None = None
        self._cloud_round: Future | None = None
        self._cloud_full_due = False
        self._cloud_verify_due = False

    # ------------------------------------------------------------------ hosts

    def hosts(self, *, enabled_only: bool) -> list[Host]:
        qs = Host.objects.libvirt()
        if enabled_only:
            qs = qs.filter(enabled=True)
        if self.host_names:
            qs = qs.filter(name__in=self.host_names)
        return list(qs.order_by("name"))

    def clouds(self) -> list[Host]:
        qs = Host.objects.clouds().filter(enabled=True)
        if self.host_names:
            qs = qs.filter(name__in=self.host_names)
        return list(qs.order_by("name"))

    def poll_clouds(self, *, full: bool = False) -> None:
        """Changes since the last poll of every enabled cloud (``full``: every server, a reconcile)."""
        now = time.monotonic()
        for host in self.clouds():
            if self.stopping.is_set():
                return
            retry_at, backoff = self.cloud_retry.get(host.pk, (0.0, 0.0))
            if now < retry_at:
                continue
            started = timezone.now()
            last = None if full else self.cloud_polled.get(host.pk)
            try:
                counts = compute_for(host).reconcile(host, since=poll_window(last))
            except Exception as exc:  # one cloud's trouble never stops the loop nor the other clouds
                backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, backoff * 2))
                self.cloud_retry[host.pk] = (time.monotonic() + backoff, backoff)
                self.cloud_polled.pop(host.pk, None)  # back up: reconcile fully
                if isinstance(exc, BackendError):
                    log.warning("cloud %s did not answer (%s); retry in %.0f s", host.name, exc.message, backoff)
                else:
                    log.exception("polling cloud %s failed; retry in %.0f s", host.name, backoff)
                continue
            self.cloud_retry.pop(host.pk, None)
            self.cloud_polled[host.pk] = started
            if full or counts["changed"] or counts["vanished"]:
                log.info("%s cloud %s: %s", "reconciled" if full or last is None else "polled", host.name, counts)
        self.cloud_polls += 1

    def verify_clouds(self) -> None:
        """Log in to every enabled cloud not in backoff: Up, or Down with the reason."""
        now = time.monotonic()
        for host in self.clouds():
            if self.stopping.is_set():
                return
            if now < self.cloud_retry.get(host.pk, (0.0, 0.0))[0]:
                continue  # in backoff: its next poll tells
            try:
                compute_for(host).check_host(host)
            except Exception:
                log.exception("verifying cloud %s failed", host.name)

    @property
    def cloud_round_running(self) -> bool:
        return self._cloud_round is not None and not self._cloud_round.done()

    def start_cloud_round(self) -> bool:
        """Poll the clouds in the background (a full reconcile and a verify if due); False while one runs."""
        if self.cloud_round_running:
            return False
        full, verify = self._cloud_full_due, self._cloud_verify_due
        self._cloud_full_due = self._cloud_verify_due = False
        if self._cloud_pool is None:
            self._cloud_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watcher-clouds")
        self._cloud_round = self._cloud_pool.submit(self._clouds_round, full=full, verify=verify)
        return True

    def _clouds_round(self, *, full: bool, verify: bool) -> None:
        close_old_connections()
        try:
            if verify:
                self.verify_clouds()
            self.poll_clouds(full=full)
        except Exception as exc:  # a database outage or a bug: the next round tries again
            kind = "database error" if isinstance(exc, DatabaseError) else "error"
            log.exception("%s while polling the clouds", kind)
        finally:
            close_old_connections()

    def _stop_cloud_rounds(self) -> None:
        """Wait for the round in progress (it stops between clouds), then close the thread's database connection."""
        if self._cloud_pool is None:
            return
        self._cloud_pool.submit(db_connection.close)  # runs in the rounds' thread, after the last round
        self._cloud_pool.shutdown(wait=True)
        self._cloud_pool = None

    def refresh_all(self) -> None:
        for host in self.hosts(enabled_only=False):
            watch = self.watches.get(host.pk)
            if watch is not None and not watch.connected:
                continue  # in backoff: its reconnect attempt refreshes it
            compute_for(host).check_host(host)
            log.info("host %s: %s", host.name, host.get_state_display() if not host.state_reason else host.state_reason)

    def reconcile_all(self, *, skip: frozenset[int] | set[int] = frozenset()) -> None:
        for host in self.hosts(enabled_only=True):
            watch = self.watches.get(host.pk)
            if host.pk in skip or (watch is not None and not watch.connected):
                continue
            self.reconcile(host)

    def reconcile(self, host: Host) -> bool:
        try:
            counts = compute_for(host).reconcile(host)
        except BackendError as exc:
            log.warning("reconcile of host %s failed: %s", host.name, exc.message)
            watch = self.watches.get(host.pk)
            if watch is not None:
                self._went_down(watch, exc.message)
            return False
        log.info("reconciled host %s: %s", host.name, ", ".join(f"{k} {v}" for k, v in counts.items()))
        return True

    def sample_all(self) -> int:
        """One metrics round: the counters of every running domain of each connected host, stored as rates.
        The number of instances seen for the first time (no point yet: a second reading gives it)."""
        primed = 0
        for host in self.hosts(enabled_only=True):
            watch = self.watches.get(host.pk)
            if watch is None or not watch.connected:
                self.metric_counters.pop(host.pk, None)  # down or not watched yet: start afresh
                self.host_readings.pop(host.pk, None)
                continue
            counters = self.metric_counters.setdefault(host.pk, {})
            try:
                result = metrics.sample_host(
                    host=host, counters=counters, host_previous=self.host_readings.get(host.pk)
                )
            except BackendError as exc:  # the health check and reconcile deal with the host itself
                log.warning("metrics of host %s failed: %s", host.name, exc.message)
                self.metric_counters.pop(host.pk, None)
                self.host_readings.pop(host.pk, None)
                continue
            if result.host_reading is not None:
                self.host_readings[host.pk] = result.host_reading
            primed += result.primed
            log.debug(
                "metrics of host %s: %d domains, %d points, %d pruned in %.3f s",
                host.name,
                result.domains,
                result.stored,
                result.pruned,
                result.seconds,
            )
        for host_id in set(self.metric_counters) - set(self.watches):
            del self.metric_counters[host_id]
        for host_id in set(self.host_readings) - set(self.watches):
            del self.host_readings[host_id]
        self.metric_rounds += 1
        return primed

    def once(self) -> None:
        """One capacity refresh and one reconcile of every selected host (``watch_hosts --once``)."""
        self.refresh_all()
        self.reconcile_all()
        self.verify_clouds()
        self.poll_clouds(full=True)

    # ------------------------------------------------------------------ events

    def _on_lifecycle(self, _conn, dom, event: int, detail: int, uri: str) -> None:
        """libvirt event-loop thread: hand the event to the main loop, nothing else."""
        try:
            self.events.put(DomainEvent(uri, dom.UUIDString(), event, detail, time.monotonic()))
        except Exception:  # never let an exception escape into libvirt's loop
            log.exception("could not queue a domain event")

    def sync_watches(self) -> None:
        """Watch every enabled host (new ones get registered), forget removed or disabled ones."""
        current = {host.pk: host for host in self.hosts(enabled_only=True)}
        for host_id in list(self.watches):
            watch = self.watches[host_id]
            host = current.get(host_id)
            if host is None or host.uri != watch.uri:
                log.info("no longer watching host %s", watch.name)
                self._unregister(watch)
                del self.watches[host_id]
        for host_id, host in current.items():
            if host_id not in self.watches:
                log.info("watching host %s (%s)", host.name, host.uri)
                self.watches[host_id] = Watch(host_id=host_id, name=host.name, uri=host.uri)

    def _register(self, watch: Watch) -> None:
        listener = self.listeners.get(watch.uri)
        if listener is not None and not _alive(listener[0]):
            self._drop_listener(watch.uri)
            listener = None
        if listener is None:
            conn = connection.connect(watch.uri)  # HostUnreachable when it does not answer
            try:
                callback_id = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, watch.uri
                )
            except libvirt.libvirtError as exc:
                raise BackendError(
                    _("Cannot listen for domain events on %(uri)s: %(error)s")
                    % {"uri": watch.uri, "error": exc.get_error_message()}
                ) from exc
            listener = self.listeners[watch.uri] = (conn, callback_id)
        watch.conn, watch.callback_id = listener

    def _drop_listener(self, uri: str) -> None:
        listener = self.listeners.pop(uri, None)
        if listener is not None:
            with contextlib.suppress(libvirt.libvirtError):
                listener[0].domainEventDeregisterAny(listener[1])

    def _unregister(self, watch: Watch) -> None:
        shared = any(w is not watch and w.uri == watch.uri and w.connected for w in self.watches.values())
        if watch.connected and not shared:
            self._drop_listener(watch.uri)
        watch.conn, watch.callback_id = None, None

    def _went_down(self, watch: Watch, reason: str) -> None:
        self._unregister(watch)
        watch.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (watch.failures - 1))
        watch.retry_at = time.monotonic() + delay
        went_down = (
            Host.objects.filter(pk=watch.host_id, enabled=True)
            .exclude(state=Host.State.DOWN)
            .update(state=Host.State.DOWN, state_reason=reason[:255])
        )
        if went_down:
            observed_state.host_state_changed(host_id=watch.host_id)
        else:
            Host.objects.filter(pk=watch.host_id, enabled=True).update(state_reason=reason[:255])
        log.warning("host %s is down (%s); retrying in %.0f s", watch.name, reason, delay)

    def connect_watches(self) -> set[int]:
        """Register events on hosts not yet connected whose retry time has come; reconcile them at once.

        Returns the ids of the hosts it connected (and so just reconciled)."""
        connected: set[int] = set()
        now = time.monotonic()
        for watch in list(self.watches.values()):
            if watch.connected or now < watch.retry_at:
                continue
            try:
                self._register(watch)
            except BackendError as exc:
                self._went_down(watch, exc.message)
                continue
            log.info("host %s: listening for domain events", watch.name)
            watch.failures = 0
            host = Host.objects.filter(pk=watch.host_id).first()
            if host is not None:
                compute_for(host).check_host(host)
                self.reconcile(host)  # catch up on whatever happened while we were not listening
                connected.add(host.pk)
        return connected

    def check_health(self) -> None:
        """A connection libvirt closed (keepalive timeout, daemon restart) means: down, reconnect later."""
        for watch in self.watches.values():
            if not watch.connected:
                continue
            if not _alive(watch.conn):
                connection.forget(watch.uri)
                self._went_down(watch, _("Lost the connection to %(uri)s.") % {"uri": watch.uri})

    def handle(self, event: DomainEvent) -> bool:
        """Apply one domain event: look the instance up by UUID, ask for its state, store it."""
        try:
            key = uuidlib.UUID(event.uuid)
        except ValueError:
            return False
        instance = Instance.objects.filter(uuid=key).select_related("host").first()
        if instance is None:
            return False  # unmanaged domain: the next reconcile lists it
        host = instance.host
        if host is None or host.uri != event.uri:
            return False  # about a copy on another host (a migration's source, say): not this row's fact
        # Even after an UNDEFINED event: a running domain that was undefined lives on (transient), and a
        # task may have redefined it meanwhile. Only the host knows.
        changed = self._apply_current_state(host, instance, event)
        if changed:
            self.handled += 1
            log.info("instance %s (%s) is now %s", instance.name, instance.uuid, instance.state)
        return changed

    def _apply_current_state(self, host: Host, instance: Instance, event: DomainEvent) -> bool:
        """Ask the host for the domain's state now (events may be coalesced); the event itself if it cannot answer."""
        try:
            domain = libvirt_compute.domain_state(host=host, uuid=event.uuid)
        except BackendError:
            fallback = EVENT_STATES.get(event.event)
            return fallback is not None and observed_state.record_observed(
                instance, observed_state.Observed(state=fallback)
            )
        if domain is None:  # undefined, or a transient domain that stopped: gone
            return libvirt_compute.mark_vanished(instance=instance)
        return observed_state.record_observed(instance, libvirt_compute.observed(domain))

    def drain(self, timeout: float) -> None:
        """Handle queued events, waiting up to ``timeout`` seconds for the first; duplicates are applied once."""
        try:
            first = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return
        batch = [first]
        with contextlib.suppress(queue.Empty):
            while len(batch) < 500:
                batch.append(self.events.get_nowait())
        seen: set[tuple[str, str]] = set()
        for event in reversed(batch):  # the newest event per domain; the state is asked for anyway
            key = (event.uri, event.uuid)
            if key in seen:
                continue
            seen.add(key)
            try:
                self.handle(event)
            except Exception:  # one bad event must not stop the watcher; the next reconcile repairs the row
                log.exception("could not apply a domain event of %s", event.uuid)
                close_old_connections()

    # ------------------------------------------------------------------ main loop

    def stop(self, *_args) -> None:
        self.stopping.set()

    def run(self) -> None:
        if connection.start_event_loop():
            log.info("libvirt event loop started")
        log.info(
            "watcher running: reconcile every %.0f s, capacity every %.0f s, metrics %s%s",
            self.reconcile_seconds,
            self.capacity_seconds,
            f"every {self.metrics_seconds:g} s" if self.metrics_seconds > 0 else "off",
            f", hosts {', '.join(self.host_names)}" if self.host_names else "",
        )
        next_reconcile = next_capacity = next_health = 0.0
        next_metrics = 0.0 if self.metrics_seconds > 0 else float("inf")
        quick = False  # the round under way is the short second reading of new instances
        next_cloud = 0.0
        try:
            while not self.stopping.is_set():
                close_old_connections()
                now = time.monotonic()
                try:
                    if now >= next_reconcile:
                        self.sync_watches()
                        self.reconcile_all(skip=self.connect_watches())
                        self._cloud_full_due = True
                        next_reconcile = time.monotonic() + self.reconcile_seconds
                    else:
                        self.connect_watches()
                    if now >= next_capacity:
                        self._cloud_verify_due = True
                        self.refresh_all()
                        next_capacity = time.monotonic() + self.capacity_seconds
                    if now >= next_cloud or self._cloud_full_due or self._cloud_verify_due:
                        # while a round still runs (a slow or hanging cloud), look again a tick later
                        started = self.start_cloud_round()
                        next_cloud = time.monotonic() + (self.cloud_seconds if started else TICK)
                    if now >= next_health:
                        self.check_health()
                        next_health = time.monotonic() + HEALTH_SECONDS
                    if now >= next_metrics:
                        next_metrics = now + self.metrics_seconds  # a steady beat: rates need even intervals
                        primed = self.sample_all()
                        # A new instance's first point needs a second reading: taken soon, once, not a whole
                        # interval later (its page would say "No samples yet" meanwhile). Rates use the real
                        # time between the two readings.
                        quick = bool(primed) and not quick and self.metrics_seconds > FIRST_POINT_SECONDS
                        if quick:
                            next_metrics = time.monotonic() + FIRST_POINT_SECONDS
                except Exception as exc:  # a database outage or a bug: log, wait, go on (reconcile repairs)
                    kind = "database error" if isinstance(exc, DatabaseError) else "error"
                    log.exception("%s in the watcher loop; retrying in %.0f s", kind, BACKOFF_MIN)
                    close_old_connections()
                    self.stopping.wait(BACKOFF_MIN)
                    continue
                self.ready.set()
                next_due = min(next_reconcile, next_capacity, next_health, next_metrics, next_cloud)
                wait = min(TICK, max(0.0, next_due - time.monotonic()))
                self.drain(wait)
        finally:
            self._stop_cloud_rounds()
            for uri in list(self.listeners):
                self._drop_listener(uri)
            for watch in self.watches.values():
                watch.conn, watch.callback_id = None, None
            close_old_connections()
            log.info("watcher stopped")
